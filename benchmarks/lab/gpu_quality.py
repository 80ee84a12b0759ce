"""ILRe's rows of the quality benchmark, and the needle test at 20 depths, on the GPU.

    python benchmarks/lab/gpu_quality.py prepare                     # CPU: tasks, tokens, the pack
    python benchmarks/lab/gpu_quality.py run --out OUT               # GPU, .device_carry/quality
    python benchmarks/lab/gpu_quality.py score --gpu OUT             # CPU: spans, recall, tables

`benchmarks/quality.py` runs every method on the CPU, where ILRe's encodes of 32k tokens take
about a minute each on two cores. This script moves only the model's work to the GPU: the
same tasks (`quality.iter_tasks`, same seeds), tokenised on the CPU by the real engine, with
the query tokens each scoring variant reads (`engine.query_ids`); the trunk packed by
`gguf_pack.pack_trunk` (the GGUF's own quantised blocks of layers 0..l_R and the embedding
rows the tasks use, checked bit-identical to the real engine's weights); the GPU encodes
each task once and computes every scoring variant's token scores in float32 with the
engine's own `scores_for_ids`; `score` turns the scores into budgeted spans on the CPU with
the engine's own `select_within_budget` (at each granularity) and budget tokenizer, and
writes results in `quality.py`'s format, for `quality.py --combine`.

The device returns at most 64 MiB, so `run` keeps, per task and variant, the top
`KEPT_SHARE` of the token scores (float16, with their positions); the other tokens score
below all of them. A budget of 10% never reaches past them: `score` checks that every
selection's units rank within what was kept, and counts the selections where one did not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

import quality
from gguf_pack import build_trunk, pack_trunk, rebuild_state

RATIOS = (0.05, 0.1)
KEPT_SHARE = 0.3
PRIOR = "What is this text about?"
REPEATED = "\n\nQuestion: {query}\nThe question again: {query}"

SCORINGS = {
    "prior_k17": {"prior_query": PRIOR, "kernel_sizes": (17,)},
    "plain_k17": {"prior_query": None, "kernel_sizes": (17,)},
    "prior_kavg": {
        "prior_query": PRIOR,
        "kernel_sizes": (1, 5, 9, 17),
        "kernel_allocation": "average",
    },
    "prior_k1": {"prior_query": PRIOR, "kernel_sizes": (1,)},
    "prior_k17_repeat": {"prior_query": PRIOR, "kernel_sizes": (17,), "query_template": REPEATED},
}
"""Scoring variants, all read from one encoding of each task: config overrides."""

METHODS = {
    "ilre": ("prior_k17", "sentence"),
    "ilre_r1": ("plain_k17", "word"),
    "ilre_noprior": ("plain_k17", "sentence"),
    "ilre_word": ("prior_k17", "word"),
    "ilre_clause": ("prior_k17", "clause"),
    "ilre_kavg": ("prior_kavg", "sentence"),
    "ilre_k1": ("prior_k1", "sentence"),
    "ilre_repeat": ("prior_k17_repeat", "sentence"),
}
"""Rows of the benchmark: (scoring variant, granularity). ``ilre_r1`` is round 1's recall
(word units, no prior) with this round's tokenisation and query fixes."""


def task_sets(args) -> dict[str, tuple[list[int], list[str], int]]:
    """Per set: (lengths, families, samples)."""
    families = quality.family_names(args.families)
    return {
        "quality": ([int(x) for x in args.lengths.split(",")], families, args.samples),
        "niah": (
            [int(x) for x in args.niah_lengths.split(",")],
            ["niah_single"],
            args.niah_samples,
        ),
    }


def each_task(engine, args):
    """``(set, length, family, sample, task)`` of both sets, in a fixed order."""
    for name, (lengths, families, samples) in task_sets(args).items():
        for length, family, sample, task in quality.iter_tasks(
            engine.tokenizer, lengths, families, samples, args.seed
        ):
            yield name, length, family, sample, task


def key(*parts) -> str:
    return "|".join(map(str, parts))


def variant_config(base, name: str):
    return dataclasses.replace(base, **SCORINGS[name])


def prepare(args) -> None:
    from ilre_engine import ILRe
    from ilre_engine.tokenization import tokenize_documents

    pack: Path = args.pack
    pack.mkdir(parents=True, exist_ok=True)
    engine = ILRe.from_pretrained(device="cpu")
    base = engine.config
    arrays: dict[str, np.ndarray] = {}
    lead_ins: dict[str, int] = {}
    for name, length, family, sample, task in each_task(engine, args):
        tokens = tokenize_documents(engine.tokenizer, (task.context,))
        assert np.array_equal(tokens.doc_ids, token_layout(len(tokens))[0]), "one document"
        k = key(name, length, family, sample)
        arrays[f"{k}|ids"] = tokens.input_ids.astype(np.int32)
        for variant in SCORINGS:
            engine.config = variant_config(base, variant)
            query_ids, lead_in = engine.query_ids(task.query)
            arrays[f"{k}|query|{variant}"] = np.asarray(query_ids, dtype=np.int32)
            lead_ins[f"{k}|{variant}"] = lead_in
            if engine.config.prior_query is not None:
                prior_ids, prior_lead_in = engine.query_ids(engine.config.prior_query)
                arrays[f"prior|{variant}"] = np.asarray(prior_ids, dtype=np.int32)
                lead_ins[f"prior|{variant}"] = prior_lead_in
        engine.config = base
    np.savez_compressed(pack / "tasks.npz", **arrays)
    (pack / "tasks.json").write_text(
        json.dumps(
            {
                "lead_in": lead_ins,
                "layer": engine.layer,
                "config": {k: v for k, v in dataclasses.asdict(base).items()},
                "model": engine.name,
            }
        )
    )
    ids = np.concatenate(list(arrays.values())).astype(np.int64)
    pack_trunk(pack, ids, engine.layer)
    print(f"{sum(1 for k in arrays if k.endswith('|ids'))} tasks, {len(ids):,} ids")


def _config(raw: dict):
    """An `ILReConfig` from its JSON form (kernel sizes come back as a list)."""
    from ilre_engine import ILReConfig

    return ILReConfig(**{**raw, "kernel_sizes": tuple(raw["kernel_sizes"])})


def run(args) -> None:
    from ilre_engine import ILRe
    from ilre_engine.context import TokenizedContext

    pack, out = args.pack, args.out
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((pack / "tasks.json").read_text())
    tasks = np.load(pack / "tasks.npz")
    state = rebuild_state(pack)
    layer, base = meta["layer"], _config(meta["config"])
    trunk = build_trunk(pack, state, layer, args.device, torch.float32)
    engine = ILRe(trunk, None, layer=layer, name=meta["model"], config=base)
    prior_ids = {
        v: (tasks[f"prior|{v}"].tolist(), meta["lead_in"][f"prior|{v}"])
        for v in SCORINGS
        if f"prior|{v}" in tasks.files
    }
    # Seven files (and seconds.json: the device returns eight) under its 16 MiB a file,
    # tasks dealt round-robin.
    buckets: list[dict[str, np.ndarray]] = [{} for _ in range(7)]
    seconds: dict[str, float] = {}
    segments: dict[str, int] = {}
    variants = args.variants.split(",")
    names = sorted({k.rsplit("|", 1)[0] for k in tasks.files if k.endswith("|ids")})

    def scores(encoded, name: str, variant: str) -> torch.Tensor:
        engine.config = variant_config(base, variant)
        if variant in prior_ids:
            # The prior's head scores, computed once per encoding (as the engine caches them).
            key_ = f"{engine.config.query_template}|{engine.config.prior_query}"
            if key_ not in encoded.prior_scores:
                encoded.prior_scores[key_] = engine.head_scores_for_ids(
                    encoded, *prior_ids[variant]
                )
        query = tasks[f"{name}|query|{variant}"].tolist()
        return engine.scores_for_ids(encoded, query, meta["lead_in"][f"{name}|{variant}"])

    for index, name in enumerate([names[0], *names]):  # the first run warms the device up
        ids = tasks[f"{name}|ids"].astype(np.int64)
        tokens = TokenizedContext(("",), ids, *token_layout(len(ids)))
        torch.cuda.synchronize() if args.device == "cuda" else None
        started = time.perf_counter()
        encoded = engine.encode_tokens(tokens, progress=False)
        first = scores(encoded, name, "prior_k17").float().cpu()
        elapsed = time.perf_counter() - started
        if index == 0:
            continue
        seconds[name] = elapsed
        segments[name] = len(engine.plan_segments(len(ids)))
        bucket = buckets[index % len(buckets)]
        for variant in variants:
            values = first if variant == "prior_k17" else scores(encoded, name, variant).cpu()
            kept = max(1, int(np.ceil(KEPT_SHARE * len(values))))
            top = torch.topk(values.float(), kept)
            positions = np.uint16 if len(values) <= 1 << 16 else np.uint32
            bucket[f"{name}|{variant}|at"] = top.indices.numpy().astype(positions)
            bucket[f"{name}|{variant}|score"] = top.values.numpy().astype(np.float16)
        engine.config = base
        print(name, f"{elapsed:.3f} s", flush=True)
    for number, arrays in enumerate(buckets):
        np.savez_compressed(out / f"scores-{number}.npz", **arrays)
    (out / "seconds.json").write_text(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "seconds": seconds,
                "segments": segments,
                "max_positions": engine.max_positions,
            }
        )
    )


def token_layout(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """doc_ids, offsets and word ids of a one-document context for the GPU, whose scores
    depend only on the ids and doc_ids: the first token (the sink) is no document's, every
    other one is document 0's (`prepare` checks this of every task)."""
    doc_ids = np.zeros(length, dtype=np.int32)
    doc_ids[0] = -1
    return doc_ids, np.zeros((length, 2), dtype=np.int64), np.arange(length)


def full_scores(at: np.ndarray, values: np.ndarray, length: int) -> tuple[np.ndarray, float]:
    """The kept top scores in place, every other token below all of them; and the lowest
    kept score, under which a selection would read guessed order."""
    floor = float(values.min())
    out = np.full(length, floor - 1.0, dtype=np.float32)
    out[at.astype(np.int64)] = values.astype(np.float32)
    return out, floor


def score(args) -> None:
    from ilre_engine import ILRe, resolve_budget
    from ilre_engine.selection import select_within_budget
    from ilre_engine.tokenization import tokenize_documents

    gpu: Path = args.gpu
    timing = json.loads((gpu / "seconds.json").read_text())
    engine = ILRe.from_pretrained(device="cpu")
    counter = engine.counter
    stored: dict[str, np.ndarray] = {}
    for path in sorted(gpu.glob("scores-*.npz")):
        arrays = np.load(path)
        stored.update({k: arrays[k] for k in arrays.files})
    reports = {name: {"meta": {}, "records": []} for name in ("quality", "niah")}
    below_kept = 0
    for set_name, length, family, sample, task in each_task(engine, args):
        name = key(set_name, length, family, sample)
        tokens = tokenize_documents(engine.tokenizer, (task.context,))
        encoded = SimpleNamespace(tokens=tokens)
        input_tokens = counter.count(task.context)
        records = reports[set_name]["records"]
        record = quality.recorder(records, task, family, length, sample, input_tokens, counter)
        methods = {"ilre": METHODS["ilre"]} if set_name == "niah" else METHODS
        for method, (variant, granularity) in methods.items():
            if f"{name}|{variant}|at" not in stored:  # a run limited by --variants
                continue
            token_scores, floor = full_scores(
                stored[f"{name}|{variant}|at"], stored[f"{name}|{variant}|score"], len(tokens)
            )
            ranks = quality.answer_ranks(encoded, task, token_scores)
            for ratio in RATIOS:
                budget = resolve_budget(input_tokens, None, ratio)
                started = time.perf_counter()
                spans, text = select_within_budget(
                    tokens, token_scores, budget, counter.count, granularity
                )
                select_s = time.perf_counter() - started
                below_kept += any(span.score < floor for span in spans)
                record(
                    method,
                    ratio,
                    text,
                    timing["seconds"][name] + select_s,
                    answer_ranks=ranks,
                    kept_model_tokens=quality.kept_model_tokens(
                        encoded, SimpleNamespace(spans=spans)
                    ),
                    model_tokens=len(tokens),
                    device=f"{timing['device']} (model, float32) + CPU (spans)",
                )
    print(f"selections that reached below the kept top {KEPT_SHARE:.0%}: {below_kept}")
    for set_name, report in reports.items():
        records = report["records"]
        lengths, families, samples = task_sets(args)[set_name]
        report["meta"] = {
            "command": "python benchmarks/lab/gpu_quality.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{timing['device']} for the model (float32), this CPU for spans",
            "torch": timing["torch"],
            "transformers": timing["transformers"],
            "engine": {
                "model": engine.name,
                "layer": engine.layer,
                "kernel_sizes": list(engine.config.kernel_sizes),
                "config": dataclasses.asdict(engine.config),
            },
            "methods_defined": {m: list(v) for m, v in METHODS.items()},
            "scorings": {k: {**v} for k, v in SCORINGS.items()},
            "kept_share": KEPT_SHARE,
            "selections_below_kept": below_kept,
            "budget_tokenizer": counter.name,
            "lengths": lengths,
            "ratios": list(RATIOS),
            "samples": samples,
            "families": families,
            "methods": list(dict.fromkeys(r["method"] for r in records)),
            "seed": args.seed,
        }
        path = args.results / f"results_{set_name}_gpu.json"
        quality.save_report(path, report)
        print(f"{set_name}: {len(records)} records -> {path}")
        print(
            quality.markdown_table(
                records, families, lengths, report["meta"]["methods"], list(RATIOS)
            )
        )
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("prepare", "run", "score"))
    parser.add_argument("--pack", type=Path, default=Path(".device_carry/quality"))
    parser.add_argument("--out", type=Path, default=Path("quality_out"), help="run: results")
    parser.add_argument("--device", default="cuda", help="run: where (cpu to check it)")
    parser.add_argument("--gpu", type=Path, help="score: the folder `run` wrote")
    parser.add_argument("--results", type=Path, default=Path("benchmarks"), help="score: JSONs")
    parser.add_argument("--lengths", default="4000,8000,16000,32000")
    parser.add_argument("--families", default="all")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--niah-lengths", default="8000,32000")
    parser.add_argument("--niah-samples", type=int, default=20, help="depths of the needle set")
    parser.add_argument(
        "--variants", default=",".join(SCORINGS), help="run: the scoring variants to compute"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {"prepare": prepare, "run": run, "score": score}[args.step](args)


if __name__ == "__main__":
    main()
