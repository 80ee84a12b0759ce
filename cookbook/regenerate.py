"""Regenerate the cookbook notebooks' outputs from the current engine, or check them.

    python cookbook/regenerate.py            # run every notebook, write its outputs back
    python cookbook/regenerate.py --check    # run every notebook, exit 1 if an output differs
    python cookbook/regenerate.py cookbook/langchain_ilre.ipynb   # just that one

Each notebook runs top to bottom offline (``HF_HUB_OFFLINE=1``) in a fresh kernel whose
working directory is a temporary folder. The written notebook carries no timing metadata and
no standard error (library warnings and progress bars, which name this machine's paths).
Outputs are compared in everything but timings (`comparable`): the text of every other output
with durations and rates masked, images by their pixels (not by the PNG file's bytes, which
name the library that wrote them). The tests (``tests/test_cookbook_*.py``) run the same check,
so CI fails on a committed output that a fresh run no longer gives.
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
from hashlib import sha256
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


def _pixels(png: str) -> str:
    """A digest of a base64 PNG's decoded pixels."""
    from matplotlib.image import imread

    image = imread(io.BytesIO(b64decode(png)), format="png")
    return f"png {image.shape} {sha256(image.tobytes()).hexdigest()[:16]}"


def comparable(notebook: Any) -> list[str]:
    """One line per cell and output: what a fresh run must reproduce, timings masked and
    standard error left out."""
    lines = []
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
                        lines.append(f"  {mime}: {_pixels(data)}")
                    else:
                        value = data if isinstance(data, str) else json.dumps(data)
                        lines.append(f"  {mime}: {_masked(value)}")
    return lines


def differences(path: Path, fresh: Any) -> list[str]:
    """A unified diff of the committed notebook at `path` against `fresh` (empty: the same
    in everything but timings)."""
    import nbformat

    committed = comparable(nbformat.read(path, as_version=4))
    return list(
        difflib.unified_diff(
            committed, comparable(fresh), "committed", "fresh run", lineterm="", n=1
        )
    )


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
