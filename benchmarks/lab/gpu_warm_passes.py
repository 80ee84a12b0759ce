"""Is a fresh process's encode slower until it has seen the corpus's shapes?

    PYTHONPATH=. python benchmarks/lab/gpu_warm_passes.py --pack PACK --out result.json

In one new process, encodes `ray_gpu.py`'s corpus (`Encoder.document_keys`, synchronised) in
batches of `--batch-size` documents, `--passes` times over, and reports each batch's time
and the caching allocator's device allocations in each pass. A Ray actor is such a fresh
process for every `encode_corpus` call, while `ray_gpu.py`'s single process had encoded
the same corpus in earlier rounds: a first pass as slow per batch as the actor (0.22-0.36 s
against 0.15 s) would explain the actor's slower encode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

from ray_gpu import build_engine, corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument(
        "--halves",
        action="store_true",
        help="pass 1 over the first half of the corpus, then passes over the second half: "
        "new document lengths (new shapes) after a warm first pass",
    )
    args = parser.parse_args()
    from ilre_engine.tokenization import tokenize_documents

    engine = build_engine(str(args.pack), "cuda", "bfloat16", None)
    contexts = [tokenize_documents(engine.tokenizer, [text]) for text in corpus(args.pack, None)]
    half = len(contexts) // 2

    def batches_of(part):
        return [part[i : i + args.batch_size] for i in range(0, len(part), args.batch_size)]

    result = {
        "device": torch.cuda.get_device_name(),
        "batch_documents": engine.encoder.batch_documents,
        "model_tokens": sum(len(c) for c in contexts),
        "passes": [],
    }
    for index in range(args.passes):
        if not args.halves:
            batches = batches_of(contexts)
        else:
            batches = batches_of(contexts[:half] if index == 0 else contexts[half:])
        allocations = torch.cuda.memory_stats().get("num_device_alloc", 0)
        seconds = []
        for batch in batches:
            torch.cuda.synchronize()
            start = time.perf_counter()
            engine.encoder.document_keys(batch)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        result["passes"].append(
            {
                "batch_seconds": seconds,
                "total_seconds": sum(seconds),
                "median_batch_seconds": statistics.median(seconds),
                "device_allocations": torch.cuda.memory_stats().get("num_device_alloc", 0)
                - allocations,
            }
        )
        print(json.dumps({k: v for k, v in result["passes"][-1].items() if k != "batch_seconds"}))
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
