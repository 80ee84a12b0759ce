"""Does a second process's idle CUDA context slow the engine's encode on the same GPU?

    PYTHONPATH=. python benchmarks/lab/gpu_contexts.py --pack PACK --out result.json

Times `Encoder.document_keys` over the pack's first `--documents` documents (ray_gpu.py's pack
and engine) in this process: alone, while another process holds an idle CUDA context on the
GPU (it made one tensor and sleeps), and alone again after it exits; and the latency of a
tiny kernel followed by a synchronisation, of a launch, and of a plain Python loop in each
state. ray_gpu.py's driver holds such a context while the actor encodes, and an actor's
process lingers while the next way runs. Several `--batch-documents` compare batch sizes in
one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))

from ray_gpu import build_engine, corpus

IDLE_CONTEXT = (
    "import time, torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize(); "
    "print('ready', flush=True); time.sleep(3600)"
)


def add_us(repeats: int, synchronize_each: bool) -> float:
    """Microseconds per tiny kernel: its launch, and with `synchronize_each` the wait for it."""
    x = torch.zeros(8, device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        x.add_(1)
        if synchronize_each:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e6


def python_loop_ms(repeats: int = 1_000_000) -> float:
    """The host's speed at plain Python (the encode is bound by its host work)."""
    start, total = time.perf_counter(), 0
    for i in range(repeats):
        total += i
    return (time.perf_counter() - start) * 1e3


def measure(engine, contexts, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.encoder.document_keys(contexts)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {
        "encode_seconds": times,
        "median": statistics.median(times),
        "sync_latency_us": add_us(2000, synchronize_each=True),
        "launch_us": add_us(20000, synchronize_each=False),
        "python_loop_ms": python_loop_ms(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--documents", type=int, default=512)
    parser.add_argument("--batch-documents", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from ilre_engine.tokenization import tokenize_documents

    result = {"device": torch.cuda.get_device_name(), "documents": args.documents, "runs": {}}
    for batch in args.batch_documents:
        engine = build_engine(str(args.pack), "cuda", "bfloat16", batch)
        contexts = [
            tokenize_documents(engine.tokenizer, [text])
            for text in corpus(args.pack, args.documents)
        ]
        result["model_tokens"] = sum(len(c) for c in contexts)
        with torch.inference_mode():
            engine.encoder.document_keys(contexts[:64])  # warm-up
            run = {"alone": measure(engine, contexts, args.repeats)}
            idle = subprocess.Popen(
                [sys.executable, "-c", IDLE_CONTEXT], stdout=subprocess.PIPE, text=True
            )
            assert idle.stdout.readline().strip() == "ready"
            run["idle_context_alive"] = measure(engine, contexts, args.repeats)
            idle.kill()
            idle.wait()
            time.sleep(2)
            run["alone_again"] = measure(engine, contexts, args.repeats)
        result["runs"][str(batch)] = run
        print(batch, json.dumps(run), flush=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
