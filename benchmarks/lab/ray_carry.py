"""The two folders that carry `benchmarks/ray_gpu.py` and Ray to the lent GPU (lab tooling).

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \\
        -d WHEELS ray==2.60.0 jsonschema jsonschema-specifications referencing rpds-py
    python benchmarks/lab/ray_carry.py --wheels WHEELS --carry /work/main/.device_carry

The GPU machine has Python 3.12 without Ray and no network, and a call carries at most
64 MiB with the repository. Ray's wheel is 79 MB, 31 MB of it the jar of Ray for Java
(``ray/jars/``, which Python never loads: without it Ray starts no Java workers), so the
wheel is written again without it (its RECORD too), 45 MiB, and split in two: the first
part in ``ray_a``, carried by a first call, which leaves it in the repository for the
second, back to back; the rest in ``ray_b`` with the other wheels (the pure-Python
dependencies the machine lacks, and rpds-py), the pack of `ray_gpu.py prepare` (the trunk,
the tokenizer and the corpus) and a copy of `ray_gpu.py`, as the device runs the main
checkout. The parts are cut so that both calls carry about as much.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RAY = "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl"
DROPPED = "ray/jars/"


def slim_wheel(source: Path, target: Path) -> None:
    """`source` without the files under `DROPPED`, which its RECORD no longer lists."""
    with (
        zipfile.ZipFile(source) as wheel,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out,
    ):
        for info in wheel.infolist():
            if info.filename.startswith(DROPPED):
                continue
            data = wheel.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.splitlines(keepends=True)
                data = b"".join(line for line in lines if not line.startswith(DROPPED.encode()))
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, required=True, help="where pip downloaded them")
    parser.add_argument("--carry", type=Path, required=True, help="the main checkout's folder")
    parser.add_argument("--documents", type=int, default=2000)
    args = parser.parse_args()
    first, second = args.carry / "ray_a", args.carry / "ray_b"
    for folder in (first, second):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    (second / "deps").mkdir()
    for wheel in sorted(args.wheels.glob("*.whl")):
        if wheel.name != RAY:
            shutil.copy(wheel, second / "deps")
    script = Path(__file__).parents[1] / "ray_gpu.py"
    subprocess.run(
        [
            sys.executable,
            str(script),
            "prepare",
            "--pack",
            str(second / "pack"),
            "--documents",
            str(args.documents),
        ],
        check=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        slim = Path(scratch) / RAY
        slim_wheel(args.wheels / RAY, slim)
        data = slim.read_bytes()
    # Both calls about equal: the first part is half of all that the two folders carry.
    cut = min(len(data), (len(data) + size(second)) // 2)
    (first / "ray.whl.part-aa").write_bytes(data[:cut])
    (second / "ray.whl.part-ab").write_bytes(data[cut:])
    digest = hashlib.sha256(data).hexdigest()
    (second / "ray.whl.sha256").write_text(f"{digest}  /tmp/{RAY}\n")
    for folder in (first, second):
        print(f"{folder}: {size(folder) / 2**20:.1f} MiB")
    print(f"sha256 {digest}  {RAY} ({len(data) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
