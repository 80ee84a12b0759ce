"""GPU: the FP8 trunk (`ILRe.fp8()`) against bf16, compiled, Llama-3.1-8B shape, one process.

    PYTHONPATH=. python benchmarks/gpu_fp8.py --out OUT/gpu_fp8.json    # 2.5 minutes on an H200
    PYTHONPATH=. python benchmarks/gpu_fp8.py --smoke --length 8192     # CPU, tiny widths

The trunk of `gpu_long_context.py` (random bf16 weights, l_R = 3, sink 128, window 1024),
compiled, chunk 4096, one context of `--length` tokens and one 64-token query. In order, on
the same weights:

1. bf16, eager: one encode, its recall scores (the rounding-noise reference for ranking).
2. bf16, compiled (`ILRe.compile()`): encode and recall `--repeats` times (median), peak
   memory, scores; a profile of one 128k encode by kernel.
3. FP8 (`ilre_engine.fp8.quantize_trunk`, what `ILRe.fp8()` runs; layers compiled afresh):
   the same, and against bf16: the share of the top 5% tokens by score that both keep, and
   the relative error of the keys at l_R and of the scores.
4. FP8 with the kernels' fast accumulation (`Fp8Linear.fast_accum`): the same, no profile.

Full prefill is not run again: the ratio uses the quadratic fit of the H200 run in
`results/2026-12-01-h200/gpu.json` (621 s at 1M). Prints one table and writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_long_context import GiB, kernel_breakdown, llama_8b, random_tokens, seconds, time_ilre
from output_folder import dated_path
from transformers import AutoModel

from ilre_engine import ILRe, ILReConfig
from ilre_engine.architectures import adapter_for
from ilre_engine.compiled import compile_layers
from ilre_engine.fp8 import Fp8Linear, quantize_trunk, swap_linears
from ilre_engine.streaming import ATTENTION_NAME
from ilre_engine.testing.reference import relative_error

H200_RESULTS = Path(__file__).parent / "results" / "2026-12-01-h200" / "gpu.json"
CHECK_KEYS = 65536
"""Keys compared between variants: the first tokens' (all of them would hold 2 GiB more)."""


def top_share(scores: torch.Tensor, reference: torch.Tensor, share: float = 0.05) -> float:
    """Share of `reference`'s top `share` tokens that `scores`' top `share` also holds."""
    k = max(1, int(len(scores) * share))
    kept = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    kept[torch.topk(scores.float(), k).indices] = True
    return float(kept[torch.topk(reference.float(), k).indices].sum()) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=1048576)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--sink", type=int, default=128)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-length", type=int, default=131072)
    parser.add_argument("--out", help="default: benchmarks/results/<date>-<machine>/")
    parser.add_argument("--smoke", action="store_true", help="tiny widths on the CPU")
    args = parser.parse_args()
    cuda = not args.smoke
    args.out = args.out or dated_path("gpu_fp8.json", "cuda" if cuda else "cpu")
    device = "cuda" if cuda else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    # The CPU check traces the layers without generating code (as tests/test_compiled.py).
    compile_options = {} if cuda else {"backend": "aot_eager"}
    report: dict = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (smoke)",
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "length": args.length,
        "chunk": args.chunk,
    }
    config = llama_8b(args.length + 4 * args.chunk + 4096, args.smoke)
    trunk_config = llama_8b(args.length + 4 * args.chunk + 4096, args.smoke)
    adapter_for(trunk_config).truncate(trunk_config, args.layer + 1)
    cfg = ILReConfig(
        chunk_size=args.chunk,
        sink=args.sink,
        window=args.window,
        score_block=32768,
        prior_query=None,
    )
    torch.manual_seed(0)
    with torch.device(device):
        trunk = AutoModel.from_config(
            trunk_config, dtype=torch.bfloat16, attn_implementation=ATTENTION_NAME
        ).eval()
    engine = ILRe(trunk, tokenizer=None, layer=args.layer, name="llama-3.1-8b-shape", config=cfg)
    query = np.random.default_rng(1).integers(0, config.vocab_size, size=64).tolist()
    tokens = random_tokens(args.length, config.vocab_size, args.length)  # time_ilre's input
    warm = random_tokens(4 * args.chunk + 123, config.vocab_size, 0)
    profile_tokens = random_tokens(min(args.profile_length, args.length), config.vocab_size, 3)

    def scores_and_keys() -> tuple[torch.Tensor, torch.Tensor]:
        encoded = engine.encode_tokens(tokens, progress=False)
        scores = engine.scores_for_ids(encoded, query)
        return scores, encoded.keys[:, :CHECK_KEYS].clone()

    def variant(name: str, reference: dict | None) -> dict:
        """Compile afresh, time, score; compare with `reference` (the bf16 variant)."""
        torch._dynamo.reset()
        compile_layers(trunk, **compile_options)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        row: dict = {
            "variant": name,
            "resident_gib": torch.cuda.memory_allocated() / GiB if cuda else 0.0,
        }
        row["compile_s"] = seconds(
            lambda: engine.scores_for_ids(engine.encode_tokens(warm, progress=False), query)
        )
        row.update(time_ilre(engine, config, args, args.length, query, cuda))
        row["scores"], row["keys"] = scores_and_keys()
        if reference is not None:
            row["top5_shared"] = top_share(row["scores"], reference["scores"])
            row["keys_rel_error"] = relative_error(row["keys"], reference["keys"])
            row["scores_rel_error"] = relative_error(row["scores"], reference["scores"])
        if cuda and name != "fp8_fast_accum":
            row["kernels"] = kernel_breakdown(engine, profile_tokens)
        printable = {k: v for k, v in row.items() if k not in ("scores", "keys")}
        print(json.dumps(printable), flush=True)
        return row

    # 1. bf16 eager: the noise floor of ranking between two bf16 encodes.
    engine.scores_for_ids(engine.encode_tokens(warm, progress=False), query)
    eager_scores, eager_keys = scores_and_keys()
    # 2. bf16 compiled
    rows = [variant("bf16", None)]
    bf16 = rows[0]
    report["bf16_eager_vs_compiled"] = {
        "top5_shared": top_share(eager_scores, bf16["scores"]),
        "keys_rel_error": relative_error(eager_keys, bf16["keys"]),
        "scores_rel_error": relative_error(eager_scores, bf16["scores"]),
    }
    print(json.dumps(report["bf16_eager_vs_compiled"]), flush=True)
    del eager_scores, eager_keys
    # 3. FP8: the engine's switch (on the CPU, where it refuses, the swap it performs).
    report["fp8_projections"] = (quantize_trunk if cuda else swap_linears)(trunk, args.layer)
    rows.append(variant("fp8", bf16))
    # 4. FP8, fast accumulation
    for module in trunk.modules():
        if isinstance(module, Fp8Linear):
            module.fast_accum = True
    rows.append(variant("fp8_fast_accum", bf16))

    report["variants"] = [{k: v for k, v in r.items() if k not in ("scores", "keys")} for r in rows]
    if H200_RESULTS.exists():
        fit = json.loads(H200_RESULTS.read_text())["full_prefill"]["quadratic_fit"]
        report["full_prefill_fit_s"] = float(np.poly1d(fit)(args.length))
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)
    print_table(report)


def print_table(report: dict) -> None:
    full = report.get("full_prefill_fit_s")
    print(f"\n{report['device']}, torch {report['torch']}, transformers {report['transformers']}")
    print(f"bf16 eager vs compiled: {report['bf16_eager_vs_compiled']}")
    print(
        "| trunk | tokens | encode s (runs) | recall s | total s | vs full prefill "
        "| resident GiB | peak GiB | top 5% shared with bf16 | keys rel. error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in report["variants"]:
        runs = ", ".join(f"{s:.3f}" for s in row["encode_runs"])
        ratio = f"{full / row['total_s']:.0f}x" if full else "-"
        shared = f"{row['top5_shared']:.3f}" if "top5_shared" in row else "-"
        error = f"{row['keys_rel_error']:.4f}" if "keys_rel_error" in row else "-"
        print(
            f"| {row['variant']} | {row['tokens']} | {row['encode_s']:.3f} ({runs}) "
            f"| {row['recall_s']:.3f} | {row['total_s']:.3f} | {ratio} "
            f"| {row['resident_gib']:.2f} | {row['peak_gib']:.2f} | {shared} | {error} |"
        )
    for row in report["variants"]:
        if "kernels" in row:
            kernels = row["kernels"]
            print(
                f"{row['variant']} profile, {kernels['tokens']} tokens: matmul "
                f"{kernels['matmul_ms']:.1f} ms, attention {kernels['attention_ms']:.1f} ms, "
                f"other {kernels['other_ms']:.1f} ms, wall {kernels['wall_ms']:.1f} ms"
            )
            for ms, name in kernels["top_kernels_ms"]:
                print(f"  {ms:8.2f} ms  {name}")


if __name__ == "__main__":
    main()
