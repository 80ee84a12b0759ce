"""ILRe `compress` against one full forward of the same model, on the CPU, side by side.

    python benchmarks/cpu_speed.py --lengths 8000,32000 --repeats 3

For each length, each variant runs in its own fresh process (so peak RSS is its own), the
variants alternating, `--repeats` times; the table gives median seconds, median peak RSS
and the ratios. "full forward" is the untruncated base model (all 18 layers of the
embedded Gemma 3, SDPA attention, building its KV cache, no LM head) over the same tokens;
"ilre compress" is encode + recall at a 5% budget, starting from the text. Both load
their weights before the clock starts. The state ILRe holds is printed beside: the keys at
l_R and the early layers' sink + window, against the bound sink + window + chunk per layer.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def run_one(variant: str, length: int) -> dict[str, float]:
    import torch
    from transformers import AutoModel

    from ilre_engine import ILRe
    from ilre_engine.calibration.tasks import haystack, needle_task

    engine = ILRe.from_pretrained()
    import random

    task = needle_task(haystack(engine.tokenizer, length), 0.5, random.Random(0))
    out: dict[str, float] = {}
    if variant == "full":
        from ilre_engine.loading import resolve_model

        model = AutoModel.from_pretrained(resolve_model(None).path, dtype=torch.float32).eval()
        ids = engine.tokenizer(task.context, return_tensors="pt")["input_ids"]
        del engine
        started = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids, use_cache=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="8000,32000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return

    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        runs: dict[str, list[dict[str, float]]] = {"ilre": [], "full": []}
        for _ in range(args.repeats):
            for variant in runs:
                done = subprocess.run(
                    [sys.executable, __file__, "--one", variant, str(length)],
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


if __name__ == "__main__":
    main()
