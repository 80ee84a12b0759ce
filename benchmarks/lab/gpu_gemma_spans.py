"""The embedded Gemma 3 270M on the GPU at 32k tokens: do its selected spans match the CPU run?

    python benchmarks/lab/gpu_gemma_spans.py prepare --pack .device_carry/gemma   # CPU, real engine
    python benchmarks/lab/gpu_gemma_spans.py run --pack .device_carry/gemma --out OUT   # the GPU
    python benchmarks/lab/gpu_gemma_spans.py compare --pack .device_carry/gemma --gpu OUT/gpu.npz \
        --json benchmarks/results/2026-11-25-h100/gpu_gemma.json

The GPU machine has no network and takes at most 64 MiB of files per call, and the embedded
model is a 253 MB GGUF. The engine only needs the embeddings and layers 0..5 (l_R = 5), and a
32k-token haystack uses only a few thousand distinct token ids. So `prepare` packs what the
run reads, *as stored in the GGUF*: the quantised blocks of layers 0..5 (about 30 MB), the
quantised embedding rows of the ids the context and query use, and the float32 norms. It
checks that dequantising the pack (with the `gguf` package, as the engine's conversion does)
rebuilds exactly the float32 weights of the real engine: the rebuilt trunk is bit-identical
for these ids, so every difference measured on the GPU is GPU arithmetic.

`prepare` also runs the real engine (`ILRe.from_pretrained()`, float32, CPU) on a needle task
over the first 32,000 tokens of the essays and saves its token scores. `run` rebuilds the
trunk on the GPU and computes the token scores in float32, in bfloat16, and in bfloat16
with `ILRe.compile()`, with the same engine code. `compare` turns each GPU score vector into
budgeted spans with the CPU run's tokens and budget tokenizer and compares them with the CPU
run's spans and scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from gguf_pack import build_trunk, pack_trunk, rebuild_state

LAYER = 5
TOKENS = 32000
DEPTH = 0.5
RATIO = 0.05


def prepare(pack: Path) -> None:
    """The CPU run (once) and the pack."""
    pack.mkdir(parents=True, exist_ok=True)
    if not (pack / "cpu.npz").exists():
        cpu_run(pack)
    write_trunk(pack)


def cpu_run(pack: Path) -> None:
    """The real engine on the CPU: the task, its tokens, the query and the token scores."""
    from ilre_engine import ILRe
    from ilre_engine.calibration.tasks import haystack, needle_task

    engine = ILRe.from_pretrained(device="cpu", layer=LAYER)
    # The GPU side has token ids but no tokenizer, so this comparison scores without the
    # neutral-question prior on both sides.
    engine.config = dataclasses.replace(engine.config, prior_query=None)
    task = needle_task(haystack(engine.tokenizer, TOKENS), DEPTH, random.Random(0))
    started = time.perf_counter()
    encoded = engine.encode(task.context)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    scores = engine.token_scores(encoded, task.query)
    scores_s = time.perf_counter() - started
    result = engine.recall(encoded, task.query, ratio=RATIO)
    query_ids, lead_in = engine.query_ids(task.query)
    tokens = encoded.tokens
    np.savez(
        pack / "cpu.npz",
        input_ids=tokens.input_ids,
        doc_ids=tokens.doc_ids,
        query_ids=np.asarray(query_ids, dtype=np.int64),
        lead_in=lead_in,
        scores=scores,
    )
    (pack / "task.json").write_text(
        json.dumps(
            {
                "context": task.context,
                "query": task.query,
                "answers": task.answers,
                "cpu_recalled": task.recalled(result.text),
                "cpu_spans": [s.to_dict() for s in result.spans],
                "cpu_encode_s": encode_s,
                "cpu_scores_s": scores_s,
                "tokens": len(tokens),
                "config": {
                    "chunk_size": engine.config.chunk_size,
                    "sink": engine.config.sink,
                    "window": engine.config.window,
                },
            }
        )
    )
    recalled = task.recalled(result.text)
    print(f"CPU: {len(tokens)} tokens, encode {encode_s:.1f} s, recalled {recalled}")


def write_trunk(pack: Path) -> None:
    """The pack of this benchmark's task: layers 0..LAYER, the ids of its context and query."""
    cpu = np.load(pack / "cpu.npz")
    pack_trunk(pack, np.concatenate([cpu["input_ids"], cpu["query_ids"]]), LAYER)


def run(pack: Path, out: Path, device: str, dtypes: list[str], repeats: int) -> None:
    from ilre_engine import ILRe, ILReConfig
    from ilre_engine.context import TokenizedContext

    out.mkdir(parents=True, exist_ok=True)
    cpu = np.load(pack / "cpu.npz")
    task = json.loads((pack / "task.json").read_text())
    ids = cpu["input_ids"]
    tokens = TokenizedContext(
        documents=("",),
        input_ids=ids,
        doc_ids=cpu["doc_ids"],
        offsets=np.zeros((len(ids), 2), dtype=np.int64),
        word_ids=np.arange(len(ids)),
    )
    state = rebuild_state(pack)
    results = {}
    for name in dtypes:
        dtype = getattr(torch, name.removesuffix("+compile"))
        trunk = build_trunk(pack, state, LAYER, device, dtype)
        config_ = ILReConfig(**task["config"])
        engine = ILRe(trunk, None, layer=LAYER, name="gemma3-270m-rebuilt", config=config_)
        if name.endswith("+compile"):
            engine.compile()
        timings = []
        for _ in range(repeats):
            sync()
            started = time.perf_counter()
            encoded = engine.encode_tokens(tokens, progress=False)
            scores = engine.scores_for_ids(encoded, cpu["query_ids"].tolist(), int(cpu["lead_in"]))
            sync()
            timings.append(time.perf_counter() - started)
        results[name] = scores.float().cpu().numpy()
        print(json.dumps({"dtype": name, "encode_recall_s": timings}), flush=True)
        del engine, trunk, encoded
    np.savez(out / "gpu.npz", **results)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare(pack: Path, gpu: Path, out: Path | None) -> None:
    from ilre_engine import ILRe
    from ilre_engine.budget import resolve_budget
    from ilre_engine.selection import select_within_budget, whole_documents
    from ilre_engine.tokenization import tokenize_documents

    cpu = np.load(pack / "cpu.npz")
    task = json.loads((pack / "task.json").read_text())
    # The engine only tokenises and counts here: the scores come from the runs.
    engine = ILRe.from_pretrained(device="cpu", layer=LAYER)
    context = tokenize_documents(engine.tokenizer, (task["context"],))
    assert np.array_equal(context.input_ids, cpu["input_ids"])
    count = engine.counter.count
    budget = resolve_budget(count(whole_documents(context.documents)[1]), None, RATIO)
    reference = cpu["scores"]
    spans_cpu, _ = select_within_budget(context, reference, budget, count)
    saved = [(s["document"], s["start"], s["end"]) for s in task["cpu_spans"]]
    assert saved == [(s.document, s.start, s.end) for s in spans_cpu], "CPU spans not reproduced"
    k = max(1, len(reference) * RATIO)
    top_cpu = set(np.argsort(-reference, kind="stable")[: int(k)].tolist())
    rows = {}
    for name, scores in np.load(gpu).items():
        spans, text = select_within_budget(context, scores, budget, count)
        chars_cpu = _chars(spans_cpu)
        chars = _chars(spans)
        top = set(np.argsort(-scores, kind="stable")[: int(k)].tolist())
        rows[name] = {
            "score_relative_error": float(
                np.linalg.norm(scores.astype(np.float64) - reference)
                / np.linalg.norm(reference.astype(np.float64))
            ),
            "spans_gpu": len(spans),
            "spans_cpu": len(spans_cpu),
            "spans_identical": sum(
                (a.document, a.start, a.end) == (b.document, b.start, b.end)
                for a, b in zip(spans, spans_cpu, strict=False)
            )
            if len(spans) == len(spans_cpu)
            else None,
            "same_span_set": {(s.document, s.start, s.end) for s in spans}
            == {(s.document, s.start, s.end) for s in spans_cpu},
            "shared_spans": len(
                {(s.document, s.start, s.end) for s in spans}
                & {(s.document, s.start, s.end) for s in spans_cpu}
            ),
            "selected_chars_jaccard": len(chars & chars_cpu) / max(1, len(chars | chars_cpu)),
            "top5pct_tokens_shared": len(top & top_cpu) / len(top_cpu),
            "needle_recalled": all(a in text for a in task["answers"]),
        }
    report = {"tokens": len(reference), "budget": budget, **rows}
    runs = gpu.parent / "gemma.log"  # `run`'s timings, when its output was kept beside
    if runs.exists():
        for line in runs.read_text().splitlines():
            if line.startswith("{"):
                timing = json.loads(line)
                report[timing["dtype"]]["encode_recall_s"] = timing["encode_recall_s"]
    report["cpu_encode_s"] = task["cpu_encode_s"]
    print(json.dumps(report, indent=1))
    if out is not None:
        out.write_text(json.dumps(report, indent=1) + "\n")


def _chars(spans) -> set[tuple[int, int]]:
    return {(s.document, c) for s in spans for c in range(s.start, s.end)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("prepare", "run", "compare"))
    parser.add_argument("--pack", type=Path, default=Path(".device_carry/gemma"))
    parser.add_argument("--out", type=Path, default=Path("gemma_out"))
    parser.add_argument("--gpu", type=Path, help="gpu.npz written by `run` (compare)")
    parser.add_argument("--json", type=Path, help="compare: also write the report here")
    parser.add_argument("--device", default="cuda", help="run: where (cpu checks the rebuild)")
    parser.add_argument(
        "--dtypes",
        default="float32,bfloat16,bfloat16+compile",
        help="run: comma-separated; +compile runs ILRe.compile()'s engine",
    )
    parser.add_argument("--repeats", type=int, default=3, help="run: timed runs per dtype")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.pack)
    elif args.step == "run":
        run(args.pack, args.out, args.device, args.dtypes.split(","), args.repeats)
    else:
        compare(args.pack, args.gpu, args.json)


if __name__ == "__main__":
    main()
