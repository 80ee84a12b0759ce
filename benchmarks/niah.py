"""Needle-in-a-haystack recall of the embedded model, by layer, length and pooling kernels.

    python benchmarks/niah.py --layers 5 --lengths 8000,32000 --depths 20
    python benchmarks/niah.py --layers 5,11,17 --lengths 8000 --depths 20      # choosing l_R
    python benchmarks/niah.py --kernels 1,5,9,17 --kernels 9 --kernels 1 --lengths 8000,32000

A task hides "The special magic number for <city> is <7 digits>." at a depth of the Paul
Graham essays and asks for it; recall is the share of depths (evenly spread, 0.025 to
0.975) whose number appears in the compressed text at the given budget. For each layer,
each context is encoded once and every kernel setting recalls from that encoding. Prints a
Markdown table (one row per layer x kernels x length).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from ilre_engine import ILRe, ILReConfig
from ilre_engine.calibration.tasks import haystack, needle_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="5", help="comma-separated retrieval layers")
    parser.add_argument("--lengths", default="8000,32000", help="comma-separated token counts")
    parser.add_argument("--depths", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.05, help="budget as a share of the input")
    parser.add_argument(
        "--kernels", action="append", help="comma-separated kernel sizes (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kernel_sets = [tuple(int(k) for k in ks.split(",")) for ks in args.kernels or ["1,5,9,17"]]

    rows = []
    for layer in (int(x) for x in args.layers.split(",")):
        engine = ILRe.from_pretrained(layer=layer)
        for length in (int(x) for x in args.lengths.split(",")):
            text = haystack(engine.tokenizer, length)
            rng = random.Random(args.seed)
            hits = {k: 0 for k in kernel_sets}
            seconds = []
            for i in range(args.depths):
                task = needle_task(text, (i + 0.5) / args.depths, rng)
                started = time.perf_counter()
                encoded = engine.encode(task.context)
                for kernels in kernel_sets:
                    engine.config = ILReConfig(kernel_sizes=kernels)
                    result = engine.recall(encoded, task.query, ratio=args.ratio)
                    hits[kernels] += task.recalled(result.text)
                seconds.append(time.perf_counter() - started)
                print(
                    f"layer {layer} len {length} depth {task.depth:.3f}: "
                    + " ".join(f"{k}={hits[k]}" for k in kernel_sets),
                    flush=True,
                )
            for kernels in kernel_sets:
                rows.append(
                    (layer, kernels, length, hits[kernels], args.depths, statistics.median(seconds))
                )

    print(f"\n| layer | kernels | tokens | recall at {args.ratio:.0%} | median s / sample |")
    print("|---|---|---|---|---|")
    for layer, kernels, length, hit, total, median in rows:
        print(
            f"| {layer} | {','.join(map(str, kernels))} | {length} | {hit}/{total} | {median:.1f} |"
        )


if __name__ == "__main__":
    main()
