"""The long-document recipe runs offline, one folder to an answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "cookbook" / "long_documents.py"


def test_the_recipe_answers_from_a_store_of_a_folder(tmp_path):
    store = tmp_path / "store"
    args = [sys.executable, str(SCRIPT), "--demo", "--store", str(store)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    kept = [line for line in done.stdout.splitlines() if line.startswith("  kept from ")]
    assert kept and kept[0].split(": ", 1)[0].endswith("essay-3.txt")  # the fact's file first
    assert "(found)" in done.stdout, done.stdout
    assert (store / "store.json").exists()
