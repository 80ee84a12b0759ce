"""Regenerate the cookbook notebooks' outputs from the current engine, or check them.

    python cookbook/regenerate.py            # run every notebook, write its outputs back
    python cookbook/regenerate.py --check    # run every notebook, exit 1 if an output differs
    python cookbook/regenerate.py cookbook/langchain_ilre.ipynb   # just that one

Each notebook runs top to bottom offline (``HF_HUB_OFFLINE=1``) in a fresh kernel whose
working directory is a temporary folder. The written notebook carries no timing metadata and
no standard error (library warnings and progress bars, which name this machine's paths).
Outputs are compared in everything but timings (`comparable`): the text of every other output
with durations and rates masked, images by their pixels (not by the PNG file's bytes, which
name the library that wrote them), within a tolerance for antialiasing: a plot whose scores
move by a CPU's floating-point rounding (float32 or bfloat16) redraws a few edge pixels one
level apart, and that is the same plot to its reader (`same_pixels`). The tests
(``tests/test_cookbook_*.py``) run the same check, so CI fails on a committed output that a
fresh run no longer gives.
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import re
import sys
import tempfile
from base64 import b64decode
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NOTEBOOKS = (HERE / "langchain_ilre.ipynb", HERE / "llamaindex_ilre.ipynb")

_TIMINGS = (
    # tqdm: "[00:01<00:02, 3.45it/s]", "12.3s/it"; durations: "1.2 s", "340ms", "0:00:12"
    (re.compile(r"\[\d+:\d\d(:\d\d)?<[^\]]*\]"), "[<time>]"),
    (re.compile(r"\d+(\.\d+)?\s?(it/s|s/it|ms|s)\b"), "<time>"),
    (re.compile(r"\b\d+:\d\d:\d\d(\.\d+)?\b"), "<time>"),
)


def execute(path: Path, timeout: int = 900) -> Any:
    """The notebook at `path`, run top to bottom in a fresh kernel, offline; raises
    ``CellExecutionError`` (with the cell and its traceback) when a cell fails."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the kernel inherits it
    with tempfile.TemporaryDirectory() as folder:
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": folder}},
        )
        client.execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
    return notebook


def _masked(text: str) -> str:
    for pattern, mask in _TIMINGS:
        text = pattern.sub(mask, text)
    return text


PIXEL_LEVELS = 8 / 255
"""How far a pixel's channel may move before the pixel counts as changed."""

CHANGED_PIXELS = 1e-3
"""The share of an image's pixels that may change before the image differs: a fresh plot
of the same scores redraws a few antialiased edge pixels (7 of 219,661, by 1/255, between
a bfloat16 and a float32 prior)."""


def _pixels(png: str) -> Any:
    """A base64 PNG's decoded pixels (an array of height x width x channels)."""
    from matplotlib.image import imread

    return imread(io.BytesIO(b64decode(png)), format="png")


def same_pixels(committed: str, fresh: str) -> bool:
    """Whether two base64 PNGs show the same image: equal shapes, and at most
    `CHANGED_PIXELS` of the pixels moved by more than `PIXEL_LEVELS` in any channel."""
    import numpy as np

    old, new = _pixels(committed), _pixels(fresh)
    if old.shape != new.shape:
        return False
    changed = (np.abs(old.astype(np.float32) - new.astype(np.float32)) > PIXEL_LEVELS).any(-1)
    return bool(changed.mean() <= CHANGED_PIXELS)


def _images(notebook: Any) -> list[str]:
    return [
        output["data"]["image/png"]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]


def comparable(notebook: Any) -> list[str]:
    """One line per cell and output: what a fresh run must reproduce, timings masked and
    standard error left out; an image by its number and shape (its pixels are compared by
    `differences`)."""
    lines = []
    images = 0
    for index, cell in enumerate(notebook.cells):
        lines.append(f"[{index}] {cell.cell_type}: {cell.source}")
        for output in cell.get("outputs", []):
            kind = output.output_type
            if kind == "stream":
                if output.name != "stderr":
                    lines.append(f"  {output.name}: {_masked(output.text)}")
            elif kind == "error":
                lines.append(f"  error: {output.ename}: {output.evalue}")
            else:
                for mime, data in sorted(output.get("data", {}).items()):
                    if mime == "image/png":
                        lines.append(f"  {mime}: image {images}, {_pixels(data).shape}")
                        images += 1
                    else:
                        value = data if isinstance(data, str) else json.dumps(data)
                        lines.append(f"  {mime}: {_masked(value)}")
    return lines


def differences(path: Path, fresh: Any) -> list[str]:
    """A unified diff of the committed notebook at `path` against `fresh`, then a line for
    each image whose pixels differ (empty: the same in everything but timings)."""
    import nbformat

    committed = nbformat.read(path, as_version=4)
    diff = list(
        difflib.unified_diff(
            comparable(committed), comparable(fresh), "committed", "fresh run", lineterm="", n=1
        )
    )
    pairs = zip(_images(committed), _images(fresh), strict=False)
    return diff + [
        f"image {number}: its pixels differ"
        for number, (old, new) in enumerate(pairs)
        if not same_pixels(old, new)
    ]


def write(path: Path, notebook: Any) -> None:
    import nbformat

    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.notebooks or NOTEBOOKS:
        fresh = execute(path)
        if args.check:
            diff = differences(path, fresh)
            print(f"{path.name}: {'differs' if diff else 'up to date'}")
            if diff:
                print("\n".join(diff))
                failed += 1
        else:
            write(path, fresh)
            print(f"{path.name}: written")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
