"""The quality benchmark: its chunk peers (packing, picking, reciprocal rank fusion), the
choice of each peer's chunk size on the tuning samples and the table that reports it, and
the CI smoke: `benchmarks/quality.py --quick` runs, keeps ILRe's single-needle recall above
its floor (exit code 0), and writes the summary and records it documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from chunk_peers import (  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)
    choose_sizes,
    pack_sentences,
    pick_chunks,
    rrf_order,
    sentence_spans,
)
from quality import markdown_table  # noqa: E402

from ilre_engine import GAP_MARKER  # noqa: E402


def count_words(text: str) -> int:
    return len(text.split())


TEXT = " ".join(
    f"Sentence {i} has {'many ' * (i % 5)}words." for i in range(40)
)  # sentences of 4 to 8 words


def test_rrf_puts_an_item_both_rankings_like_above_one_only_one_ranks_first():
    # BM25 ranks 2 first and 0 second; the dense model 0 first and 2 last. RRF (k = 60):
    # 0 scores 1/62 + 1/61, 2 scores 1/61 + 1/63, 1 scores 1/63 + 1/62.
    assert rrf_order([[2, 0, 1], [0, 1, 2]]) == [0, 2, 1]
    # A tie goes to the first ranking's order.
    assert rrf_order([[0, 1], [1, 0]]) == [0, 1]
    assert rrf_order([[1, 0], [0, 1]]) == [1, 0]


def test_sentences_are_packed_up_to_the_size_never_split():
    sentences = sentence_spans(TEXT, count_words)
    assert len(sentences) == 40
    for size in (4, 16, 64):
        chunks = pack_sentences(TEXT, sentences, size)
        assert "".join(TEXT[a:b] for a, b in chunks) == TEXT
        for a, b in chunks:
            inside = [s for s in sentences if a <= s[0] < b]
            assert sum(s[2] for s in inside) <= size or len(inside) == 1
    assert len(pack_sentences(TEXT, sentences, 4)) == 40  # every sentence is longer than 4


def test_picked_chunks_are_the_best_that_fit_as_counting_every_join_finds():
    """The skip before counting changes nothing: the result is that of counting the joined
    text for every chunk of the ranking."""

    def every_join(chunks, order, budget):
        taken, best = [], ""
        for index in order:
            trial = sorted([*taken, index])
            joined = GAP_MARKER.join(TEXT[a:b].strip() for a, b in (chunks[i] for i in trial))
            if count_words(joined) <= budget:
                taken, best = trial, joined
        return best

    chunks = pack_sentences(TEXT, sentence_spans(TEXT, count_words), 16)
    order = sorted(range(len(chunks)), key=lambda i: (i * 7) % len(chunks))
    for budget in (5, 17, 30, 61, 100, 1000):
        picked = pick_chunks(TEXT, chunks, order, budget, count_words)
        assert picked == every_join(chunks, order, budget)
        tokens = [count_words(TEXT[a:b].strip()) for a, b in chunks]
        assert pick_chunks(TEXT, chunks, order, budget, count_words, tokens) == picked
        assert count_words(picked) <= budget


def record(method, length, ratio, recalled, split, family="niah_single", sample=0):
    return {
        "method": method,
        "length": length,
        "ratio": ratio,
        "recalled": recalled,
        "split": split,
        "family": family,
        "sample": sample,
    }


def test_each_peer_gets_the_size_that_kept_most_on_the_tuning_samples():
    records = [
        # tuning: bm25 keeps 1 of 2 at 32, 2 of 2 at 64 and at 128 (a tie: the smaller, 64)
        record("bm25@32", 4000, 0.05, True, "select"),
        record("bm25@32", 4000, 0.05, False, "select", sample=1),
        record("bm25@64", 4000, 0.05, True, "select"),
        record("bm25@64", 4000, 0.05, True, "select", sample=1),
        record("bm25@128", 4000, 0.05, True, "select"),
        record("bm25@128", 4000, 0.05, True, "select", sample=1),
        # another budget is chosen apart: here only 128 keeps the answer
        record("bm25@64", 4000, 0.1, False, "select"),
        record("bm25@128", 4000, 0.1, True, "select"),
        # the reported samples never choose: bm25@32 keeps everything there
        record("bm25@32", 4000, 0.05, True, "test"),
        record("bm25@32", 4000, 0.05, True, "test", sample=1),
    ]
    chosen = choose_sizes(records)
    assert chosen[("bm25", 4000, 0.05)] == {
        "size": 64,
        "hits": {32: 1, 64: 2, 128: 2},
        "samples": 2,
    }
    assert chosen[("bm25", 4000, 0.1)]["size"] == 128
    assert set(chosen) == {("bm25", 4000, 0.05), ("bm25", 4000, 0.1)}


def test_the_table_reports_each_peer_at_its_chosen_size_and_the_best_peer():
    tuning = [
        record("bm25@32", 4000, 0.05, False, "select"),
        record("bm25@64", 4000, 0.05, True, "select"),
        record("minilm@32", 4000, 0.05, True, "select"),
        record("minilm@64", 4000, 0.05, False, "select"),
    ]
    reported = [
        # bm25 at 32 keeps both, but 64 was chosen: the table says 1/2 (64)
        *(record("bm25@32", 4000, 0.05, True, "test", sample=i) for i in range(2)),
        *(record("bm25@64", 4000, 0.05, i == 0, "test", sample=i) for i in range(2)),
        *(record("minilm@32", 4000, 0.05, True, "test", sample=i) for i in range(2)),
        *(record("minilm@64", 4000, 0.05, False, "test", sample=i) for i in range(2)),
        *(record("ilre", 4000, 0.05, True, "test", sample=i) for i in range(2)),
        *(record("ilre_plain", 4000, 0.05, i == 1, "test", sample=i) for i in range(2)),
    ]
    table = markdown_table(
        tuning + reported, ["niah_single"], [4000], ["ilre", "ilre_plain", "bm25", "minilm"], [0.05]
    )
    header, _, row, total = table.splitlines()[2:]
    assert header == "| family | tokens | ilre | ilre_plain | bm25 | minilm | best peer |"
    assert row == "| niah_single | 4000 | 2/2 | 1/2 | 1/2 (64) | 2/2 (32) | 2/2 (minilm@32) |"
    assert total == "| **total** | | 2/2 | 1/2 | 1/2 | 2/2 | 2/2 |"


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
        timeout=1200,  # eight 4k/8k encodes on a shared 2-core machine
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| family | tokens |" in run.stdout

    report = json.loads(out.read_text())
    assert "records" not in report  # the committed file holds the summary only
    meta = report["meta"]
    assert isinstance(meta["engine"]["layer"], int) and meta["engine"]["kernel_sizes"]
    assert set(meta["methods"]) == {"ilre", "ilre_plain", "bm25", "truncation"}
    raw = out.with_name("quality.records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in raw]
    sized = {f"bm25@{size}" for size in meta["chunk_sizes"]}
    assert {r["method"] for r in records} == {"ilre", "ilre_plain", "truncation", *sized}
    assert {r["method"] for r in records if r["split"] == "select"} == sized
    assert {r["length"] for r in records} == set(meta["lengths"])
    for r in records:
        assert r["output_tokens"] <= r["budget"]
        assert isinstance(r["recalled"], bool) and r["seconds"] >= 0
    assert report["summary"]
    assert {key.split("|")[0] for key in report["selection"]} == {"bm25"}
