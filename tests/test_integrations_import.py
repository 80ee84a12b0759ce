"""Importing a framework face costs the framework's own import, not the engine's.

Each check runs in a fresh interpreter started from the repository root (so that this tree
is the one imported): after importing a face, neither torch nor transformers is loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    "face", ["langchain_ilre", "llama_index.postprocessor.ilre", "llama_index.retrievers.ilre"]
)
def test_importing_a_face_loads_neither_torch_nor_transformers(face):
    check = (
        f"import sys, {face}; "
        "heavy = sorted({'torch', 'transformers', 'ilre_engine.engine'} & set(sys.modules)); "
        "assert not heavy, heavy"
    )
    run = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
