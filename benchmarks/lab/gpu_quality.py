"""ILRe's rows of the quality benchmark, and the needle test at 20 depths, on the GPU.

    python benchmarks/lab/gpu_quality.py prepare                     # CPU: tasks, tokens, the pack
    python benchmarks/lab/gpu_quality.py run --out OUT               # GPU, .device_carry/quality
    python benchmarks/lab/gpu_quality.py score --gpu OUT             # CPU: spans, recall, tables

`benchmarks/quality.py` runs every method on the CPU, where ILRe's encodes of 32k tokens take
about a minute each on two cores. This script moves only the model's work to the GPU: the
same tasks (`quality.iter_tasks`, same seeds), tokenised on the CPU by the real engine; the
trunk packed as `gpu_gemma_spans.py` packs it (the GGUF's own quantised blocks of layers
0..11 and the embedding rows the tasks use, checked bit-identical to the real engine's
weights); the GPU computes every variant's token scores in float32 (where the embedded
model's spans were shown identical to the CPU's, `gpu_gemma_spans.py`); and `score` turns
the scores into budgeted spans on the CPU with the engine's own `select_within_budget` and
budget tokenizer, and writes records in `quality.py`'s format, for `quality.py --combine`.

Variants: ``ilre`` (the shipped profile's layer and kernels) and its kernel ablations
``ilre_k1``, ``ilre_k9``, ``ilre_kmulti``, all from one encoding; ``ilre_l11`` (layer 11, the
next global-attention layer); ``ilre_l11_w512`` / ``ilre_l11_wfull`` (layer 11 re-encoded
with a streaming window of 512 / no eviction, for `quality.py`'s window families). Every
length gets every variant (on the CPU the deep ones run at 4k and 8k only).
The needle set (``--niah-lengths``, ``--niah-samples``) is ``niah_single`` at 20 evenly
spread depths, the test of `benchmarks/niah.py`, with the engine as shipped.
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

DEEP_LAYER = 11
"""The next global-attention layer of the embedded model: the layer ablation."""
RATIOS = (0.05, 0.1)


def task_sets(args) -> dict[str, tuple[list[int], list[str], int]]:
    """Per set: (lengths, families, samples)."""
    return {
        "quality": (
            [int(x) for x in args.lengths.split(",")],
            list(quality.TASK_FAMILIES),
            args.samples,
        ),
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


def prepare(args) -> None:
    from ilre_engine import ILRe
    from ilre_engine.tokenization import tokenize_documents

    pack: Path = args.pack
    pack.mkdir(parents=True, exist_ok=True)
    engine = ILRe.from_pretrained(device="cpu")
    deep = ILRe.from_pretrained(device="cpu", layer=DEEP_LAYER)
    arrays: dict[str, np.ndarray] = {}
    lead_ins: dict[str, int] = {}
    for name, length, family, sample, task in each_task(engine, args):
        tokens = tokenize_documents(engine.tokenizer, (task.context,))
        assert np.array_equal(tokens.doc_ids, token_layout(len(tokens))[0]), "one document"
        query_ids, lead_in = engine.query_ids(task.query)
        assert deep.query_ids(task.query) == (query_ids, lead_in)
        k = key(name, length, family, sample)
        arrays[f"{k}|ids"] = tokens.input_ids.astype(np.int32)
        arrays[f"{k}|query"] = np.asarray(query_ids, dtype=np.int32)
        lead_ins[k] = lead_in
    np.savez_compressed(pack / "tasks.npz", **arrays)
    (pack / "tasks.json").write_text(
        json.dumps(
            {
                "lead_in": lead_ins,
                "layers": {"ilre": engine.layer, "deep": deep.layer},
                "configs": {
                    "ilre": dataclasses.asdict(engine.config),
                    "deep": dataclasses.asdict(deep.config),
                },
                "model": engine.name,
            }
        )
    )
    ids = np.concatenate(list(arrays.values())).astype(np.int64)
    pack_trunk(pack, ids, max(engine.layer, deep.layer))
    print(f"{len(lead_ins)} tasks")


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

    def engine_at(layer: int, config) -> ILRe:
        trunk = build_trunk(pack, state, layer, args.device, torch.float32)
        return ILRe(trunk, None, layer=layer, name=meta["model"], config=config)

    base = _config(meta["configs"]["ilre"])
    deep_base = _config(meta["configs"]["deep"])
    engine = engine_at(meta["layers"]["ilre"], base)
    deep = engine_at(meta["layers"]["deep"], deep_base)
    kernels = {m: k for m, k in quality.KERNEL_ABLATIONS.items() if tuple(k) != base.kernel_sizes}
    windows = set(args.window_families.split(","))
    # One file per length (the deep variants of 32k in their own): each under the 16 MiB
    # that the device returns per file.
    scores: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, float] = {}

    def timed_scores(eng: ILRe, tokens, query, lead_in):
        """Encode + scores, timed; returns (scores, seconds, encoded)."""
        started = time.perf_counter()
        encoded = eng.encode_tokens(tokens, progress=False)
        # .cpu() waits for the device's work.
        result = eng.scores_for_ids(encoded, query, lead_in).float().cpu().numpy()
        return result, time.perf_counter() - started, encoded

    names = sorted({k.rsplit("|", 1)[0] for k in tasks.files})
    # Warm up once so the first task's time is not the CUDA start-up.
    first = names[0]
    ids = tasks[f"{first}|ids"].astype(np.int64)
    warm = TokenizedContext(("",), ids, *token_layout(len(ids)))
    timed_scores(engine, warm, tasks[f"{first}|query"].tolist(), meta["lead_in"][first])
    for name in names:
        set_name, length, family, _sample = name.split("|")
        ids = tasks[f"{name}|ids"].astype(np.int64)
        tokens = TokenizedContext(("",), ids, *token_layout(len(ids)))
        query, lead_in = tasks[f"{name}|query"].tolist(), meta["lead_in"][name]
        bucket = scores.setdefault(length, {})
        deep_bucket = scores.setdefault(f"{length}-deep" if int(length) > 16000 else length, {})
        bucket[f"{name}|ilre"], seconds[f"{name}|ilre"], encoded = timed_scores(
            engine, tokens, query, lead_in
        )
        if set_name == "niah":
            continue
        for method, sizes in kernels.items():
            engine.config = dataclasses.replace(base, kernel_sizes=tuple(sizes))
            bucket[f"{name}|{method}"] = (
                engine.scores_for_ids(encoded, query, lead_in).cpu().numpy()
            )
        engine.config = base
        variants = {f"ilre_l{deep.layer}": deep_base}
        if family in windows:
            for label, window in quality.WINDOWS.items():
                variants[f"ilre_l{deep.layer}_{label}"] = dataclasses.replace(
                    deep_base, window=window
                )
        for method, config in variants.items():
            deep.config = config
            deep_bucket[f"{name}|{method}"], seconds[f"{name}|{method}"], _ = timed_scores(
                deep, tokens, query, lead_in
            )
        deep.config = deep_base
        print(name, f"{seconds[f'{name}|ilre']:.3f} s", flush=True)
    for bucket_name, arrays in scores.items():
        if arrays:
            np.savez_compressed(out / f"scores-{bucket_name}.npz", **arrays)
    (out / "seconds.json").write_text(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "seconds": seconds,
            }
        )
    )


def token_layout(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """doc_ids, offsets and word ids of a one-document context for the GPU, whose scores
    depend only on the ids and doc_ids: the first token (BOS) is no document's, every other
    one is document 0's (`prepare` checks this of every task)."""
    doc_ids = np.zeros(length, dtype=np.int32)
    doc_ids[0] = -1
    return doc_ids, np.zeros((length, 2), dtype=np.int64), np.arange(length)


def score(args) -> None:
    from ilre_engine import ILRe, resolve_budget
    from ilre_engine.selection import select_within_budget
    from ilre_engine.tokenization import tokenize_documents

    gpu: Path = args.gpu
    timing = json.loads((gpu / "seconds.json").read_text())
    engine = ILRe.from_pretrained(device="cpu")
    counter = engine.counter
    tasks = np.load(args.pack / "tasks.npz")
    stored = {}
    for path in sorted(gpu.glob("scores-*.npz")):
        arrays = np.load(path)
        stored.update({k: arrays[k] for k in arrays.files})
    reports = {name: {"meta": {}, "records": []} for name in ("quality", "niah")}
    for set_name, length, family, sample, task in each_task(engine, args):
        name = key(set_name, length, family, sample)
        tokens = tokenize_documents(engine.tokenizer, (task.context,))
        assert np.array_equal(tokens.input_ids, tasks[f"{name}|ids"]), name
        encoded = SimpleNamespace(tokens=tokens)
        input_tokens = counter.count(task.context)
        records = reports[set_name]["records"]
        record = quality.recorder(records, task, family, length, sample, input_tokens, counter)
        methods = [k.rsplit("|", 1)[1] for k in stored if k.startswith(f"{name}|")]
        for method in methods:
            token_scores = stored[f"{name}|{method}"]
            ranks = quality.answer_ranks(encoded, task, token_scores)
            encode_key = (
                f"{name}|{method}" if f"{name}|{method}" in timing["seconds"] else f"{name}|ilre"
            )
            for ratio in RATIOS:
                budget = resolve_budget(input_tokens, None, ratio)
                started = time.perf_counter()
                spans, text = select_within_budget(tokens, token_scores, budget, counter.count)
                select_s = time.perf_counter() - started
                record(
                    method,
                    ratio,
                    text,
                    timing["seconds"][encode_key] + select_s,
                    answer_ranks=ranks,
                    kept_model_tokens=quality.kept_model_tokens(
                        encoded, SimpleNamespace(spans=spans)
                    ),
                    model_tokens=len(tokens),
                    device=f"{timing['device']} (model, float32) + CPU (spans)",
                )
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
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--niah-lengths", default="8000,32000")
    parser.add_argument("--niah-samples", type=int, default=20)
    parser.add_argument("--window-families", default="niah_single,niah_paraphrase,essay_qa")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {"prepare": prepare, "run": run, "score": score}[args.step](args)


if __name__ == "__main__":
    main()
