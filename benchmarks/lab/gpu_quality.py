"""ILRe's rows of the quality benchmark, and the needle test at 20 depths, on the GPU.

    python benchmarks/lab/gpu_quality.py prepare                     # CPU: tasks, tokens, the pack
    python benchmarks/lab/gpu_quality.py run --out OUT               # GPU, .device_carry/quality
    python benchmarks/lab/gpu_quality.py follow --gpu OUT            # CPU: second-pass queries
    python benchmarks/lab/gpu_quality.py run --follow --out OUT2     # GPU: the second pass
    python benchmarks/lab/gpu_quality.py score --gpu OUT --follow-gpu OUT2  # CPU: tables

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

Two recall passes (the engine's default, `ILReConfig.recall_passes`) take two trips, since
the second pass's query holds text the first pass chose and the pack holds only the
embedding rows of ids known in advance: `follow` picks each task's seed from the first
pass's scores and builds the follow-up query exactly as `RecallPipeline.token_scores` does (the
engine's own `select_within_budget` and `follow_up_ids`), then repacks the trunk with their
ids; `run --follow` scores the follow-up queries (default variant only); `score` ranks by
the mean of both passes, as the engine does. Scores travel as float16 of ``score * L``
(about 1 on average), every token's: the device returns at most 64 MiB.

`--lengths` takes ``LENGTH[:SAMPLES]`` items, so long cells can have fewer samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import re
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
from output_folder import dated_folder

RATIOS = (0.05, 0.1)
DEFAULT_VARIANT = "prior_k17"
"""The scoring of the engine as shipped (the profile's kernel, the prior), which `follow`
gives a second pass."""
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


def cells(lengths: str, samples: int) -> list[tuple[int, int]]:
    """``(length, samples)`` of ``"16000,64000:2"``: a length's own count after a colon."""
    out = []
    for item in lengths.split(","):
        length, _, count = item.partition(":")
        out.append((int(length), int(count) if count else samples))
    return out


def task_sets(args) -> dict[str, tuple[list[tuple[int, int]], list[str]]]:
    """Per set: ((length, samples) ..., families)."""
    return {
        "quality": (cells(args.lengths, args.samples), quality.family_names(args.families)),
        "niah": (cells(args.niah_lengths, args.niah_samples), ["niah_single"]),
    }


def each_task(engine, args):
    """``(set, length, family, sample, task)`` of both sets, in a fixed order."""
    for name, (lengths, families) in task_sets(args).items():
        for length, samples in lengths:
            for _, family, sample, task in quality.iter_tasks(
                engine.tokenizer, [length], families, samples, args.seed
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
    contexts: dict[str, np.ndarray] = {}
    lead_ins: dict[str, int] = {}
    for name, length, family, sample, task in each_task(engine, args):
        tokens = tokenize_documents(engine.tokenizer, (task.context,))
        assert np.array_equal(tokens.doc_ids, token_layout(len(tokens))[0]), "one document"
        k = key(name, length, family, sample)
        contexts[k] = tokens.input_ids.astype(np.int32)
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
    save_contexts(pack, contexts)
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
    ids = np.concatenate([*arrays.values(), *contexts.values()]).astype(np.int64)
    pack_trunk(pack, ids, engine.layer)
    print(f"{len(contexts)} tasks, {len(ids):,} ids")


def save_contexts(pack: Path, contexts: dict[str, np.ndarray]) -> None:
    """Every task's context ids in one xz stream: tasks share their haystack, which xz's
    window finds across tasks (zlib's 32 KiB does not), so a pack of millions of tokens
    fits the device's 64 MiB."""
    bounds = np.cumsum([0, *map(len, contexts.values())]).tolist()
    with lzma.open(pack / "contexts.npy.xz", "wb", preset=6) as file:
        np.save(file, np.concatenate(list(contexts.values())))
    spans = {k: bounds[i : i + 2] for i, k in enumerate(contexts)}
    (pack / "contexts.json").write_text(json.dumps(spans))


def load_contexts(pack: Path) -> dict[str, np.ndarray]:
    """`save_contexts`'s ids by task name."""
    with lzma.open(pack / "contexts.npy.xz", "rb") as file:
        ids = np.load(file)
    spans = json.loads((pack / "contexts.json").read_text())
    return {k: ids[begin:end] for k, (begin, end) in spans.items()}


def _config(raw: dict):
    """An `ILReConfig` from its JSON form (kernel sizes come back as a list)."""
    from ilre_engine import ILReConfig

    return ILReConfig(**{**raw, "kernel_sizes": tuple(raw["kernel_sizes"])})


def run(args) -> None:
    from ilre_engine import ILRe
    from ilre_engine.context import TokenizedContext
    from ilre_engine.scoring import ContextKeys

    pack, out = args.pack, args.out
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((pack / "tasks.json").read_text())
    tasks = np.load(pack / "tasks.npz")
    follow = np.load(pack / "follow.npz") if args.follow else None
    follow_lead_in = json.loads((pack / "follow.json").read_text()) if args.follow else {}
    state = rebuild_state(pack)
    layer, base = meta["layer"], _config(meta["config"])
    trunk = build_trunk(pack, state, layer, args.device, getattr(torch, args.dtype))
    engine = ILRe(trunk, None, layer=layer, name=meta["model"], config=base)
    if args.fp8:
        engine.fp8()
    prior_ids = {
        v: (tasks[f"prior|{v}"].tolist(), meta["lead_in"][f"prior|{v}"])
        for v in SCORINGS
        if f"prior|{v}" in tasks.files
    }
    # Files (and seconds.json) within the device's eight of 16 MiB, tasks dealt round-robin.
    buckets: list[dict[str, np.ndarray]] = [{} for _ in range(args.buckets)]
    seconds: dict[str, float] = {}
    segments: dict[str, int] = {}
    variants = [DEFAULT_VARIANT] if args.follow else args.variants.split(",")
    contexts = load_contexts(pack)
    names = sorted(k for k in contexts if re.search(args.match, k))

    def scores(encoded, name: str, variant: str) -> torch.Tensor:
        engine.config = variant_config(base, variant)
        if variant in prior_ids:
            # The prior's head scores, computed once per encoding (as the engine caches them).
            key_ = f"{engine.config.query_template}|{engine.config.prior_query}"
            if key_ not in encoded.cache.priors:
                keys = ContextKeys(encoded, engine.config.score_block)
                encoded.cache.priors[key_] = engine.pipeline.head_scores(
                    keys, *prior_ids[variant], exact=True
                )
        if follow is not None:
            query, lead_in = follow[name].tolist(), follow_lead_in[name]
        else:
            query = tasks[f"{name}|query|{variant}"].tolist()
            lead_in = meta["lead_in"][f"{name}|{variant}"]
        return engine.scores_for_ids(encoded, query, lead_in)

    for index, name in enumerate([names[0], *names]):  # the first run warms the device up
        if follow is not None and name not in follow.files:  # no room for a seed: one pass
            continue
        ids = contexts[name].astype(np.int64)
        tokens = TokenizedContext(("",), ids, *token_layout(len(ids)))
        torch.cuda.synchronize() if args.device == "cuda" else None
        started = time.perf_counter()
        encoded = engine.encode_tokens(tokens, progress=False)
        first = scores(encoded, name, DEFAULT_VARIANT).float().cpu()
        elapsed = time.perf_counter() - started
        if index == 0:
            continue
        seconds[name] = elapsed
        segments[name] = len(engine.plan_segments(len(ids)))
        bucket = buckets[index % len(buckets)]
        for variant in variants:
            values = first if variant == DEFAULT_VARIANT else scores(encoded, name, variant)
            scaled = values.float().cpu() * len(values)
            bucket[f"{name}|{variant}|scaled"] = scaled.numpy().astype(np.float16)
        engine.config = base
        print(name, f"{elapsed:.3f} s", flush=True)
    for number, arrays in enumerate(buckets):
        np.savez_compressed(out / f"scores-{number}.npz", **arrays)
    (out / "seconds.json").write_text(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
                "dtype": args.dtype,
                "fp8": args.fp8,
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "seconds": seconds,
                "segments": segments,
                "max_positions": engine.max_positions,
            }
        )
    )


def load_scores(gpu: Path) -> tuple[dict[str, np.ndarray], dict]:
    """A `run`'s token scores (``score * L``, float32) by ``name|variant``, and its timing."""
    stored: dict[str, np.ndarray] = {}
    for path in sorted(gpu.glob("scores-*.npz")):
        arrays = np.load(path)
        stored.update({k.removesuffix("|scaled"): arrays[k].astype(np.float32) for k in arrays})
    return stored, json.loads((gpu / "seconds.json").read_text())


def follow(args) -> None:
    """The follow-up query of every task whose first pass left room for one, as the engine
    builds it (`RecallPipeline.token_scores`), into the pack; the trunk repacked with their ids."""
    from ilre_engine import ILRe
    from ilre_engine.scoring import SEED_TOKENS
    from ilre_engine.selection import select_within_budget
    from ilre_engine.tokenization import tokenize_documents

    engine = ILRe.from_pretrained(device="cpu")
    stored, _ = load_scores(args.gpu)
    queries: dict[str, np.ndarray] = {}
    lead_ins: dict[str, int] = {}
    for set_name, length, family, sample, task in each_task(engine, args):
        name = key(set_name, length, family, sample)
        tokens = tokenize_documents(engine.tokenizer, (task.context,))
        _, seed = select_within_budget(
            tokens,
            stored[f"{name}|{DEFAULT_VARIANT}"],
            SEED_TOKENS,
            engine.counter.count,
            engine.config.granularity,
        )
        last = engine.plan_segments(len(tokens))[-1]  # where the query began, as encoded
        follow_up = engine.pipeline.follow_up_ids(seed, task.query, last.end_position)
        if follow_up is not None:
            queries[name] = np.asarray(follow_up[0], dtype=np.int32)
            lead_ins[name] = follow_up[1]
    np.savez_compressed(args.pack / "follow.npz", **queries)
    (args.pack / "follow.json").write_text(json.dumps(lead_ins))
    tasks = np.load(args.pack / "tasks.npz")
    known = [tasks[k] for k in tasks.files] + list(load_contexts(args.pack).values())
    ids = np.concatenate(known + list(queries.values()))
    pack_trunk(args.pack, ids.astype(np.int64), engine.layer)
    print(f"{len(queries)} follow-up queries")


def token_layout(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """doc_ids, offsets and word ids of a one-document context for the GPU, whose scores
    depend only on the ids and doc_ids: the first token (the sink) is no document's, every
    other one is document 0's (`prepare` checks this of every task)."""
    doc_ids = np.zeros(length, dtype=np.int32)
    doc_ids[0] = -1
    return doc_ids, np.zeros((length, 2), dtype=np.int64), np.arange(length)


def score(args) -> None:
    from ilre_engine import ILRe, resolve_budget
    from ilre_engine.selection import select_within_budget
    from ilre_engine.tokenization import tokenize_documents

    engine = ILRe.from_pretrained(device="cpu")
    counter = engine.counter
    stored, timing = load_scores(args.gpu)
    if args.follow_gpu is not None:  # the mean of both passes, as the engine ranks
        second, second_timing = load_scores(args.follow_gpu)
        for name, values in second.items():
            stored[name] = (stored[name] + values) / 2
            task = name.rsplit("|", 1)[0]
            timing["seconds"][task] += second_timing["seconds"][task]
    reports = {name: {"meta": {}, "records": []} for name in ("quality", "niah")}
    for set_name, length, family, sample, task in each_task(engine, args):
        name = key(set_name, length, family, sample)
        tokens = tokenize_documents(engine.tokenizer, (task.context,))
        encoded = SimpleNamespace(tokens=tokens)
        input_tokens = counter.count(task.context)
        records = reports[set_name]["records"]
        record = quality.recorder(records, task, family, length, sample, input_tokens, counter)
        methods = {"ilre": METHODS["ilre"]} if set_name == "niah" else METHODS
        for method, (variant, granularity) in methods.items():
            if f"{name}|{variant}" not in stored:  # a run limited by --variants
                continue
            token_scores = stored[f"{name}|{variant}"]
            ranks = quality.answer_ranks(encoded, task, token_scores)
            for ratio in RATIOS:
                budget = resolve_budget(input_tokens, None, ratio)
                started = time.perf_counter()
                spans, text = select_within_budget(
                    tokens, token_scores, budget, counter.count, granularity
                )
                select_s = time.perf_counter() - started
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
    for set_name, report in reports.items():
        records = report["records"]
        cells_, families = task_sets(args)[set_name]
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
            "recall_passes": 2 if args.follow_gpu is not None else 1,
            "budget_tokenizer": counter.name,
            "lengths": [length for length, _ in cells_],
            "ratios": list(RATIOS),
            "samples": {length: samples for length, samples in cells_},
            "families": families,
            "methods": list(dict.fromkeys(r["method"] for r in records)),
            "seed": args.seed,
        }
        path = (args.results or dated_folder("gpu")) / f"{set_name}_gpu.json"
        quality.save_report(path, report)
        print(f"{set_name}: {len(records)} records -> {path}")
        print(
            quality.markdown_table(
                records,
                families,
                report["meta"]["lengths"],
                report["meta"]["methods"],
                list(RATIOS),
            )
        )
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("prepare", "run", "follow", "score"))
    parser.add_argument("--pack", type=Path, default=Path(".device_carry/quality"))
    parser.add_argument("--out", type=Path, default=Path("quality_out"), help="run: results")
    parser.add_argument("--device", default="cuda", help="run: where (cpu to check it)")
    parser.add_argument("--gpu", type=Path, help="follow, score: the folder `run` wrote")
    parser.add_argument("--follow", action="store_true", help="run: the follow-up pass")
    parser.add_argument("--dtype", default="float32", help="run: the trunk's dtype")
    parser.add_argument("--fp8", action="store_true", help="run: FP8 trunk (bfloat16 dtype)")
    parser.add_argument("--match", default="", help="run: only tasks whose name matches")
    parser.add_argument("--buckets", type=int, default=7, help="run: score files written")
    parser.add_argument(
        "--follow-gpu", type=Path, help="score: the folder `run --follow` wrote (two passes)"
    )
    parser.add_argument(
        "--results", type=Path, help="score: JSONs (default: benchmarks/results/<date>-gpu/)"
    )
    parser.add_argument("--lengths", default="4000,8000,16000,32000")
    parser.add_argument("--families", default="all")
    parser.add_argument("--samples", type=int, default=10, help="where --lengths gives none")
    parser.add_argument("--niah-lengths", default="8000,32000")
    parser.add_argument("--niah-samples", type=int, default=20, help="depths of the needle set")
    parser.add_argument(
        "--variants", default=",".join(SCORINGS), help="run: the scoring variants to compute"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {"prepare": prepare, "run": run, "follow": follow, "score": score}[args.step](args)


if __name__ == "__main__":
    main()
