"""The quality benchmark's CI smoke: `benchmarks/quality.py --quick` runs, keeps ILRe's
single-needle recall above its floor (exit code 0), and writes the summary and records it
documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_quality_benchmark(tmp_path):
    out = tmp_path / "quality.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "benchmarks/quality.py", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| family | tokens |" in run.stdout

    report = json.loads(out.read_text())
    assert "records" not in report  # the committed file holds the summary only
    meta = report["meta"]
    assert isinstance(meta["engine"]["layer"], int) and meta["engine"]["kernel_sizes"]
    assert set(meta["methods"]) == {"ilre", "bm25", "truncation"}
    raw = out.with_name("quality.records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in raw]
    assert {r["method"] for r in records} == set(meta["methods"])
    assert {r["length"] for r in records} == set(meta["lengths"])
    for r in records:
        assert r["output_tokens"] <= r["budget"]
        assert isinstance(r["recalled"], bool) and r["seconds"] >= 0
    assert report["summary"]
