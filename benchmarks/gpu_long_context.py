"""GPU long context: ILRe encode + recall against full prefill, Llama-3.1-8B shape, one GPU.

    python benchmarks/gpu_long_context.py --compile             # everything, ~6 minutes on an H100
    python benchmarks/gpu_long_context.py --lengths 131072 --full-lengths 16384,32768
    python benchmarks/gpu_long_context.py --smoke --compile --lengths 8192 --full-lengths 2048

Random bf16 weights built from a config on the GPU (timing does not depend on weight values):
hidden 4096, 32 layers, 32 query / 8 key heads, head_dim 128, intermediate 14336, vocab
128256, llama3 rope, l_R = 3. Steps, all in one process:

1. The engine's trunk alone (embeddings + layers 0..3): resident memory, then per length
   encode (streaming prefill, keys at l_R) and recall (a 64-token query: query pass, scores
   over every key, multi-kernel pooling, top 5% tokens), `--repeats` times, median; peak
   memory per length. With `--compile`, the eager engine is timed first at
   `--eager-lengths` (the same process, the same weights), then `ILRe.compile()` fuses the
   decoder layers and everything after runs compiled.
2. SDPA backends on one chunk of the sink + window pattern (the mask the engine uses), and
   FlashAttention with a lower-right causal mask (what a per-chunk window would allow).
3. The full 32-layer model, sharing the trunk's weights: exactness of the streaming keys at
   l_R against the model's own forward (bf16), without and with eviction; then full prefill
   (SDPA, building its KV cache) at `--full-lengths` while it fits, and a quadratic fit beyond.

Prints one table and writes JSON to `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from output_folder import dated_path
from transformers import AutoModel, LlamaConfig

from ilre_engine import ILRe, ILReConfig, compiled
from ilre_engine.architectures import adapter_for
from ilre_engine.context import TokenizedContext
from ilre_engine.streaming import ATTENTION_NAME
from ilre_engine.testing.reference import reference_states, relative_error

GiB = 2**30


def llama_8b(max_positions: int, smoke: bool = False) -> LlamaConfig:
    """The Llama-3.1-8B shape; `smoke` shrinks every width 16x to check the script on a CPU."""
    shrink = 16 if smoke else 1
    return LlamaConfig(
        hidden_size=4096 // shrink,
        num_hidden_layers=32,
        num_attention_heads=4 if smoke else 32,
        num_key_value_heads=2 if smoke else 8,
        head_dim=16 if smoke else 128,
        intermediate_size=14336 // shrink,
        vocab_size=128256 // shrink,
        max_position_embeddings=max_positions,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def random_tokens(length: int, vocab: int, seed: int) -> TokenizedContext:
    ids = np.random.default_rng(seed).integers(0, vocab, size=length).astype(np.int64)
    return TokenizedContext(
        documents=(" " * length,),
        input_ids=ids,
        doc_ids=np.zeros(length, dtype=np.int32),
        offsets=np.stack([np.arange(length), np.arange(1, length + 1)], axis=1),
        word_ids=np.arange(length),
    )


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fn) -> float:
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def ilre_flops_per_token(config: LlamaConfig, layer: int, cfg: ILReConfig) -> float:
    """Matrix FLOPs per context token: layers below l_R in full, the key projection at l_R,
    attention over sink + window + (on average) half a chunk."""
    d, heads, kv, hd, inter = (
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.intermediate_size,
    )
    projections = d * (heads * hd + 2 * kv * hd) + heads * hd * d + 3 * d * inter
    attention = 4 * heads * hd * (cfg.sink + cfg.window + cfg.chunk_size / 2)
    return layer * (2 * projections + attention) + 2 * d * kv * hd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="131072,262144,524288,1048576")
    parser.add_argument("--full-lengths", default="16384,32768,65536,131072,262144")
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--sink", type=int, default=128)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check-length", type=int, default=8192)
    parser.add_argument(
        "--sweep-chunks", default="1024,4096", help="other chunk sizes, timed once at the longest"
    )
    parser.add_argument("--compile", action="store_true", help="time ILRe.compile()'s engine")
    parser.add_argument(
        "--eager-lengths", default="1048576", help="with --compile: eager runs first, at these"
    )
    parser.add_argument("--eager-chunk", type=int, help="chunk of the eager runs (--chunk)")
    parser.add_argument("--skip-full", action="store_true", help="no full model (step 3)")
    parser.add_argument("--out", help="default: benchmarks/results/<date>-<machine>/")
    parser.add_argument("--smoke", action="store_true", help="tiny widths on the CPU")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    args.out = args.out or dated_path("gpu_long_context.json", device)
    cuda = device == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    lengths = [int(x) for x in args.lengths.split(",")]
    report: dict = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (smoke)",
        "torch": torch.__version__,
    }
    import transformers

    report["transformers"] = transformers.__version__
    config = llama_8b(max(lengths) + 4 * args.chunk + 4096, args.smoke)
    trunk_config = llama_8b(max(lengths) + 4 * args.chunk + 4096, args.smoke)
    adapter_for(trunk_config).truncate(trunk_config, args.layer + 1)
    # Random weights and no tokenizer: the neutral-question prior has no text to read.
    cfg = ILReConfig(
        chunk_size=args.chunk,
        sink=args.sink,
        window=args.window,
        score_block=32768,
        prior_query=None,
    )

    # 1. the trunk alone
    torch.manual_seed(0)
    with torch.device(device):
        trunk = AutoModel.from_config(
            trunk_config, dtype=torch.bfloat16, attn_implementation=ATTENTION_NAME
        ).eval()
    report["resident_gib"] = torch.cuda.memory_allocated() / GiB if cuda else 0.0
    engine = ILRe(trunk, tokenizer=None, layer=args.layer, name="llama-3.1-8b-shape", config=cfg)
    query = np.random.default_rng(1).integers(0, config.vocab_size, size=64).tolist()
    warm = random_tokens(4 * args.chunk + 123, config.vocab_size, 0)
    engine.scores_for_ids(engine.encode_tokens(warm), query)
    report["compiled"] = args.compile
    if args.compile:
        report["eager_chunk"] = args.eager_chunk or args.chunk
        engine.config = dataclasses.replace(cfg, chunk_size=report["eager_chunk"])
        report["eager"] = [
            time_ilre(engine, config, args, int(n), query, cuda)
            for n in args.eager_lengths.split(",")
            if n
        ]
        engine.config = cfg
        # The first compiled encode and query compile the layers (one graph for any length).
        report["compile_s"] = seconds(
            lambda e=engine: e.compile().scores_for_ids(e.encode_tokens(warm), query)
        )
        print(json.dumps({"compile_s": report["compile_s"]}), flush=True)
    report["ilre"] = [time_ilre(engine, config, args, length, query, cuda) for length in lengths]
    report["chunk_sweep"] = chunk_sweep(engine, config, args, max(lengths))
    if cuda:
        report["kernels"] = kernel_breakdown(engine, random_tokens(131072, config.vocab_size, 3))
        print(json.dumps(report["kernels"]), flush=True)

    # 2. SDPA backends on one chunk of the sink + window pattern
    if cuda:
        report["sdpa"] = sdpa_backends(args.chunk, args.sink, args.window)
        print(json.dumps(report["sdpa"]), flush=True)

    # 3. the full model: exactness, then full prefill
    if args.skip_full:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
        return
    with torch.device(device):
        full = AutoModel.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    missing, _ = full.load_state_dict(trunk.state_dict(), strict=False)
    assert not [k for k in missing if k.startswith(("embed", "layers.0.", "layers.3."))]
    report["exactness"] = exactness(engine, full, args, config.vocab_size)
    print(json.dumps(report["exactness"]), flush=True)
    del engine, trunk
    report["full_prefill"] = full_prefill(
        full, [int(x) for x in args.full_lengths.split(",")], device
    )
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)
    print_table(report)


def time_ilre(engine: ILRe, config, args, length: int, query: list[int], cuda: bool) -> dict:
    """Median encode and recall seconds at `length`, and the peak memory of those runs."""
    tokens = random_tokens(length, config.vocab_size, length)
    encode_s, recall_s = [], []
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.repeats):
        holder = {}
        encode_s.append(
            seconds(lambda h=holder: h.update(e=engine.encode_tokens(tokens, progress=False)))
        )
        encoded = holder.pop("e")

        def recall(encoded=encoded) -> None:
            scores = engine.scores_for_ids(encoded, query)
            torch.topk(scores, max(1, len(scores) // 20))

        recall_s.append(seconds(recall))
        del encoded
    row = {
        "tokens": length,
        "encode_s": statistics.median(encode_s),
        "recall_s": statistics.median(recall_s),
        "encode_runs": encode_s,
        "recall_runs": recall_s,
        "peak_gib": torch.cuda.max_memory_allocated() / GiB if cuda else 0.0,
    }
    row["total_s"] = row["encode_s"] + row["recall_s"]
    flops = ilre_flops_per_token(config, args.layer, engine.config) * length
    row["encode_tflops"] = flops / row["encode_s"] / 1e12
    print(json.dumps(row), flush=True)
    return row


def chunk_sweep(engine: ILRe, config, args, length: int) -> list[dict]:
    """Median encode seconds at `length` for each of `--sweep-chunks` (`--repeats` runs)."""
    rows, base = [], engine.config
    tokens = random_tokens(length, config.vocab_size, 5)
    for chunk in (int(x) for x in args.sweep_chunks.split(",") if x):
        engine.config = ILReConfig(
            chunk_size=chunk,
            sink=args.sink,
            window=args.window,
            score_block=base.score_block,
            prior_query=None,
        )
        engine.encode_tokens(random_tokens(2 * chunk, config.vocab_size, 0), progress=False)
        runs = [
            seconds(lambda: engine.encode_tokens(tokens, progress=False))
            for _ in range(args.repeats)
        ]
        rows.append({"chunk": chunk, "encode_s": statistics.median(runs), "encode_runs": runs})
        print(json.dumps(rows[-1]), flush=True)
    engine.config = base
    return rows


def kernel_breakdown(engine: ILRe, tokens: TokenizedContext) -> dict[str, float]:
    """GPU time of one encode by kernel family (ms), against its wall time, and the names of
    the kernels that took the most time."""
    from torch.profiler import ProfilerActivity, profile

    # Attention first: its kernels also carry "cutlass" or "sm90" in their names.
    families = {
        "attention": ("attention", "fmha", "flash", "cudnn", "sdpa", "mha"),
        "matmul": ("gemm", "cutlass", "nvjet", "xmma", "sm90_", "matmul"),
    }
    totals = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        wall = seconds(lambda: engine.encode_tokens(tokens, progress=False))
    top = []
    for event in prof.key_averages():
        micros = getattr(event, "self_device_time_total", None)
        if micros is None:
            micros = getattr(event, "self_cuda_time_total", 0.0)
        if not micros:
            continue
        top.append((micros / 1e3, event.key[:90]))
        name = event.key.lower()
        family = next((f for f, keys in families.items() if any(k in name for k in keys)), "other")
        totals[family] += micros / 1e3
    totals = {f"{k}_ms": v for k, v in totals.items()}
    totals["kernels_ms"] = sum(totals.values())
    totals["wall_ms"] = wall * 1e3
    totals["tokens"] = len(tokens)
    totals["top_kernels_ms"] = sorted(top, reverse=True)[:12]
    return totals


def sdpa_backends(chunk: int, sink: int, window: int) -> dict[str, float | str]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    kv = sink + window + chunk
    q = torch.randn(1, 32, chunk, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 32, kv, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    qpos = torch.arange(window + sink, window + sink + chunk, device="cuda")
    kpos = torch.arange(kv, device="cuda")
    distance = qpos[:, None] - kpos[None, :]
    mask = (distance >= 0) & ((distance < window) | (kpos < sink)[None, :])
    out: dict[str, float | str] = {"shape": f"q {chunk} x kv {kv}, 32 heads, d 128"}
    # The compiled engine's kernel: FlexAttention, block-sparse, the 8 key heads as they are.
    grouped = k[:, ::4].contiguous(), v[:, ::4].contiguous()
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        expected = F.scaled_dot_product_attention(
            q,
            grouped[0].repeat_interleave(4, 1),
            grouped[1].repeat_interleave(4, 1),
            attn_mask=mask,
        )
    flex = compiled.sink_window_attention(q, *grouped, sink, window, None)
    out["flex_relative_error"] = relative_error(flex, expected)
    runs = [
        seconds(lambda: compiled.sink_window_attention(q, *grouped, sink, window, None))
        for _ in range(10)
    ]
    out["flex+block_mask+grouped_heads_ms"] = statistics.median(runs) * 1e3
    cases = {
        "efficient+mask": (SDPBackend.EFFICIENT_ATTENTION, mask),
        "cudnn+mask": (SDPBackend.CUDNN_ATTENTION, mask),
        "math+mask": (SDPBackend.MATH, mask),
        "flash+lower_right_causal": (SDPBackend.FLASH_ATTENTION, causal_lower_right(chunk, kv)),
        "efficient+lower_right_causal": (
            SDPBackend.EFFICIENT_ATTENTION,
            causal_lower_right(chunk, kv),
        ),
    }
    for name, (backend, attn_mask) in cases.items():
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
                runs = [
                    seconds(
                        lambda m=attn_mask: F.scaled_dot_product_attention(q, k, v, attn_mask=m)
                    )
                    for _ in range(10)
                ]
            out[name + "_ms"] = statistics.median(runs) * 1e3
        except RuntimeError as error:
            out[name + "_ms"] = f"unavailable: {str(error).splitlines()[0][:80]}"
    return out


def exactness(engine: ILRe, full, args, vocab: int) -> dict[str, float]:
    tokens = random_tokens(args.check_length, vocab, 7)
    ids = torch.from_numpy(tokens.input_ids)
    result = {}
    base = engine.config
    for name, window in (("no_eviction", args.check_length), ("sink_window", args.window)):
        engine.config = ILReConfig(
            chunk_size=1000,
            sink=args.sink,
            window=window,
            score_block=base.score_block,
            prior_query=None,
        )
        keys = engine.encode_tokens(tokens, progress=False).keys
        reference_window = None if window >= args.check_length else window
        expected, _ = reference_states(
            full, ids, args.layer, sink=args.sink, window=reference_window
        )
        result[name + "_relative_error"] = relative_error(keys, expected)
    engine.config = base
    return result


def full_prefill(full, lengths: list[int], device: str) -> dict:
    measured = {}
    with torch.inference_mode():
        full(input_ids=torch.randint(0, 1000, (1, 4096), device=device), use_cache=True)
        for length in lengths:
            ids = torch.randint(0, full.config.vocab_size, (1, length), device=device)
            if device == "cuda":
                torch.cuda.empty_cache()
            try:
                measured[length] = seconds(lambda ids=ids: full(input_ids=ids, use_cache=True))
            except torch.OutOfMemoryError:
                measured[length] = None
                break
            print(json.dumps({"full_prefill_tokens": length, "s": measured[length]}), flush=True)
    points = [(n, s) for n, s in measured.items() if s is not None]
    fit = np.polyfit([n for n, _ in points], [s for _, s in points], 2).tolist()
    return {"measured_s": measured, "quadratic_fit": fit}


def print_table(report: dict) -> None:
    fit = np.poly1d(report["full_prefill"]["quadratic_fit"])
    measured = report["full_prefill"]["measured_s"]
    print(f"\n{report['device']}, torch {report['torch']}, transformers {report['transformers']}")
    print(f"trunk resident: {report['resident_gib']:.2f} GiB; exactness: {report['exactness']}")
    print(f"compiled: {report['compiled']}; chunk sweep: {report['chunk_sweep']}")
    print(
        "| engine | tokens | encode s | recall s | total s | encode TFLOP/s | peak GiB "
        "| full prefill s | speedup |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [("eager", row) for row in report.get("eager", [])]
    rows += [("compiled" if report["compiled"] else "eager", row) for row in report["ilre"]]
    for engine, row in rows:
        n = row["tokens"]
        full_s = measured.get(n) or measured.get(str(n))
        label = f"{full_s:.1f}" if full_s else f"{fit(n):.0f} (fit)"
        full_s = full_s or fit(n)
        print(
            f"| {engine} | {n} | {row['encode_s']:.2f} | {row['recall_s']:.3f} "
            f"| {row['total_s']:.2f} "
            f"| {row['encode_tflops']:.0f} | {row['peak_gib']:.2f} | {label} "
            f"| {full_s / row['total_s']:.0f}x |"
        )


if __name__ == "__main__":
    main()
