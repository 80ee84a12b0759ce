"""Build the `ilre` wheel and the three partner wheels into one folder.

    python ilre_integrations/distributions/build_wheels.py [OUT]        (OUT: dist/ by default)

Each distribution is copied to a temporary folder first, so that no stale ``build/`` or
``*.egg-info`` of the checkout can add or hide a file, and built there with
``pip wheel --no-deps --no-build-isolation`` (setuptools from the running environment, no
network). The folder then installs without any index, the dependencies coming from wherever
the installer finds them::

    pip install --no-index --find-links OUT --find-links WHEELS_OF_THE_DEPENDENCIES \\
        ilre langchain-ilre llama-index-postprocessor-ilre llama-index-retrievers-ilre

Prints one line per wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = ROOT / "ilre_integrations" / "distributions"
PARTNERS = ("langchain-ilre", "llama-index-postprocessor-ilre", "llama-index-retrievers-ilre")
"""The partner distributions, each a folder of `DISTRIBUTIONS`."""

_ROOT_FILES = ("pyproject.toml", "README.md", "LICENSE")
_ROOT_PACKAGES = ("ilre_engine", "ilre_integrations")
_LEFTOVERS = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")


def _clean_copy(source: Path, target: Path) -> None:
    """What a build of `source` reads, copied to `target` without build leftovers."""
    if source != ROOT:
        shutil.copytree(source, target, ignore=_LEFTOVERS)
        return
    target.mkdir()
    for name in _ROOT_FILES:
        shutil.copy2(ROOT / name, target / name)
    for name in _ROOT_PACKAGES:
        # The partner distributions are not part of the ilre wheel (pyproject excludes them).
        ignore = shutil.ignore_patterns(
            "build", "dist", "*.egg-info", "__pycache__", "distributions"
        )
        shutil.copytree(ROOT / name, target / name, ignore=ignore)


def build_wheel(source: Path, out: Path) -> Path:
    """Build the wheel of the distribution at `source` into `out`; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        copy, wheels = Path(work) / "src", Path(work) / "wheels"
        _clean_copy(source, copy)
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
                *("-q", "--disable-pip-version-check", "-w", str(wheels), str(copy)),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode:
            raise RuntimeError(f"building {source.name} failed:\n{done.stdout}{done.stderr}")
        (wheel,) = wheels.glob("*.whl")
        return Path(shutil.copy2(wheel, out / wheel.name))


def build_all(out: Path) -> list[Path]:
    """The `ilre` wheel and the partner wheels, built into `out`."""
    return [build_wheel(source, out) for source in (ROOT, *(DISTRIBUTIONS / n for n in PARTNERS))]


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "dist")
    for wheel in build_all(target):
        print(wheel)
