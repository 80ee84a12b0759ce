"""Recall latency of a `CorpusStore` for one question, at 1M and 10M corpus tokens.

    python benchmarks/store_latency.py --tokens 1000000,10000000 --device cpu --dir /tmp/s
    python benchmarks/store_latency.py --tokens 1000000,10000000 --device cuda --dir /tmp/s

Recall's cost grows with the number of keys, not with what wrote them, so the store's shards
are written directly (`persistence.write`) with random keys of the embedded model's shape
(Gemma 3 270M: one key head of width 256 at layer 5, four query heads), synthetic documents
of 1,000 one-token words each, and a random model of that shape for the query pass. Encoding
is measured elsewhere (`gpu_long_context.py`, the README's tables). Every step after that is
the store's own code (`CorpusStore.commit` of the written shards): opening the memory-mapped
shards, the standalone query pass, the exact
two-pass softmax over every key, the prior (cold: computed; warm: cached), pooling and the
budgeted selection. Prints one JSON line per size: medians of `--repeats` recalls.

With ``--prefilter k,nprobe[,lists]`` each size is also recalled through that `Prefilter`, the
exact and the prefiltered recall taking turns in each repeat: the line adds the index's
build time and memory, the prefiltered median and the share of the exact recall's text it
keeps (`prefilter.kept_share`; random keys have no clusters for the index to find, so the
share on real keys is `store_prefilter.py`'s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, Gemma3TextConfig

from ilre_engine import ILRe, ILReConfig, Prefilter, persistence
from ilre_engine.prefilter import kept_share
from ilre_engine.store import CorpusStore
from ilre_engine.streaming import ATTENTION_NAME

WORDS_PER_DOCUMENT = 1000
SHARD_TOKENS = 1_000_000


class WordTokenizer:
    """One token per word of ``w<k>`` words: enough for the store's query pass and sink."""

    bos_token_id = 1
    name_or_path = "word-tokenizer"
    is_fast = True

    def __len__(self) -> int:
        return 4096

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        ids, offsets, position = [], [], 0
        for word in text.split():
            start = text.index(word, position)
            position = start + len(word)
            ids.append(2 + hash(word) % 4000)
            offsets.append((start, position))
        return {"input_ids": ids, "offset_mapping": offsets}


def engine_for(device: str, dtype: torch.dtype, passes: int) -> ILRe:
    config = Gemma3TextConfig(
        vocab_size=4096,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        max_position_embeddings=32768,
        sliding_window=512,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
    )
    torch.manual_seed(0)
    model = AutoModel.from_config(config, attn_implementation=ATTENTION_NAME, dtype=dtype)
    model = model.eval().to(device)
    settings = ILReConfig(kernel_sizes=(17,), kernel_allocation="heads", recall_passes=passes)
    # The budget in words: the lent GPU has no offline tiktoken, and both runs count alike.
    return ILRe(
        model,
        WordTokenizer(),
        layer=5,
        name="latency",
        config=settings,
        budget_tokenizer=lambda text: len(text.split()),
    )


def write_shard(store: CorpusStore, engine: ILRe, tokens: int, seed: int) -> str:
    """One pending shard of `tokens` tokens in documents of `WORDS_PER_DOCUMENT` words (plus
    a sink each), as `ilre_engine.store.write_shard` writes it but with random keys."""
    rng = np.random.default_rng(seed)
    per = WORDS_PER_DOCUMENT + 1
    count = tokens // per
    text = " ".join(f"w{k}" for k in range(WORDS_PER_DOCUMENT))
    starts = np.array(
        [
            text.index(f"w{k}", text.index(f"w{k - 1}") if k else 0)
            for k in range(WORDS_PER_DOCUMENT)
        ]
    )
    lengths = np.array([len(f"w{k}") for k in range(WORDS_PER_DOCUMENT)])
    one = np.stack([np.r_[0, starts], np.r_[0, starts + lengths]], axis=1)
    length = count * per
    doc_ids = np.repeat(np.arange(count), per).astype(np.int32)
    doc_ids[::per] = -1
    record = persistence.Record(
        documents=tuple([text] * count),
        tokens={
            "input_ids": rng.integers(2, 4000, size=length).astype(np.int64),
            "doc_ids": doc_ids,
            "offsets": np.tile(one, (count, 1)).astype(np.int64),
            "word_ids": np.arange(length, dtype=np.int64),
        },
        keys=torch.randn(1, length, 256, dtype=engine.model.dtype),
        kept={},
        identity=engine.identity,
        query_position=engine.encoder.plan_segments(1, end_aligned=True)[0].position + 1,
    )
    counts = {engine.counter.name: [engine.counter.count(text)] * count}
    name = f"pending-{seed:012x}"
    extra = {"metadata": [{}] * count, "budget_counts": counts}
    persistence.write(record, store.directory / name, extra=extra)
    return name


def prefilter_from(spec: str, float16: bool = True) -> Prefilter:
    """A `Prefilter` from ``k,nprobe`` or ``k,nprobe,lists``."""
    values = [int(x) for x in spec.split(",")]
    return Prefilter(*values[:3], float16=float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1000000,10000000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on the CPU, else bfloat16")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ilre-store-latency"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--passes", type=int, default=2, help="recall passes (engine default 2)")
    parser.add_argument(
        "--prefilter", default=None, help="k,nprobe[,lists]: also recall through a Prefilter"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "bfloat16"))
    engine = engine_for(args.device, dtype, args.passes)
    question = "w17 w401 w999 which word comes after w400"
    prefilter = prefilter_from(args.prefilter) if args.prefilter else None
    for tokens in (int(t) for t in args.tokens.split(",")):
        root = args.dir / f"{tokens}"
        store = CorpusStore.create(root, engine)
        started = time.perf_counter()
        store.commit(
            [
                write_shard(store, engine, min(SHARD_TOKENS, tokens - first), seed + 1)
                for seed, first in enumerate(range(0, tokens, SHARD_TOKENS))
            ]
        )
        written = time.perf_counter() - started
        opened = CorpusStore.open(root, engine)
        started = time.perf_counter()
        opened.recall(question, budget_tokens=args.budget)
        cold = time.perf_counter() - started
        extra = {}
        if prefilter is not None:
            shards = [opened._load(shard) for shard in opened._shards]
            masks = [opened._live_tokens(loaded) for loaded in shards]
            started = time.perf_counter()
            index = opened._key_index([s.keys for s in shards], masks, prefilter)
            extra["prefilter"] = args.prefilter
            extra["index_lists"] = index.lists
            extra["index_build_s"] = round(time.perf_counter() - started, 1)
            extra["index_mib"] = round(index.nbytes / 2**20, 1)
        warm, approximate = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = opened.recall(question, budget_tokens=args.budget)
            warm.append(time.perf_counter() - started)
            if prefilter is not None:
                started = time.perf_counter()
                filtered = opened.recall(question, budget_tokens=args.budget, prefilter=prefilter)
                approximate.append(time.perf_counter() - started)
        if prefilter is not None:
            extra["prefilter_median_s"] = round(statistics.median(approximate), 3)
            extra["share_kept"] = round(kept_share(result, filtered), 3)
        print(
            json.dumps(
                {
                    "tokens": opened.num_tokens,
                    "documents": len(opened),
                    "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                    "threads": torch.get_num_threads(),
                    "dtype": str(dtype),
                    "recall_passes": args.passes,
                    "write_s": round(written, 2),
                    "first_recall_s": round(cold, 3),
                    "recall_median_s": round(statistics.median(warm), 3),
                    "output_tokens": result.output_tokens,
                    **extra,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
