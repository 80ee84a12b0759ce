"""`CorpusStore`: documents encoded one by one into durable shards, recalled as one corpus."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from transformers import AutoModel

from ilre_engine import (
    EmptyInputError,
    EncodedContextError,
    ILRe,
    ILReConfig,
    ILReError,
    persistence,
)
from ilre_engine import store as store_module
from ilre_engine.store import CorpusStore, write_shard
from ilre_engine.streaming import ATTENTION_NAME
from ilre_engine.tokenization import tokenize_each
from tests.tiny_models import worded_config

QUESTION = "Which lock logged a delay of 21 minutes?"
DOCUMENTS = [
    f"Entry {i}: the keeper of lock {i} logged a delay of {i * 7} minutes at the gate. " * 3
    for i in range(7)
]

REPORTS = [
    f"Report {i}. The river barges moved grain and timber past the mill on day {i}, "
    "and the clerks wrote down the weights in the ledger before the evening bell."
    for i in range(40)
]
REPORTS.insert(20, "Report 17b. The keeper of the north lock set the safe combination to 4-19-73.")
REPORT_QUESTION = "What combination did the keeper of the north lock set?"
"""41 reports, the 21st (id 20) the only one that answers `REPORT_QUESTION` ("4-19-73")."""


def _tiny(tokenizer, seed: int = 0) -> ILRe:
    """A tiny Gemma 3 over the embedded model's tokenizer, with a window of 160 positions, so
    that long documents are read in segments."""
    config = worded_config(tokenizer)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config, attn_implementation=ATTENTION_NAME).eval()
    settings = ILReConfig(chunk_size=32, max_query_tokens=24)
    return ILRe(model, tokenizer, layer=1, name=f"tiny-{seed}", config=settings)


def same(a, b) -> bool:
    """Equal results, scores up to float rounding (shards sum in another order)."""
    where = [(s.document, s.start, s.end) for s in a.spans]
    return (
        a.text == b.text
        and where == [(s.document, s.start, s.end) for s in b.spans]
        and all(
            abs(x.score - y.score) <= 1e-6 * abs(y.score)
            for x, y in zip(a.spans, b.spans, strict=True)
        )
        and (a.input_tokens, a.output_tokens, a.budget_tokens)
        == (b.input_tokens, b.output_tokens, b.budget_tokens)
    )


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return _tiny(tokenizer)


@pytest.fixture
def filled(tiny, tmp_path):
    store = CorpusStore.create(tmp_path / "store", tiny)
    store.add(DOCUMENTS[:3], [{"n": i} for i in range(3)])
    store.add(DOCUMENTS[3:], [{"n": i} for i in range(3, 7)])
    return store


def test_a_store_recalls_within_budget_and_reopens_the_same(filled, tiny):
    assert len(filled) == 7 and filled.num_tokens > 160  # past the tiny window
    result = filled.recall(QUESTION, budget_tokens=25)
    assert 0 < result.output_tokens <= 25 and not result.unchanged
    for span in result.spans:
        text, metadata = filled.document(span.document)
        assert metadata == {"n": span.document} and text[span.start : span.end] in result.text
    reopened = CorpusStore.open(filled.directory, tiny)
    assert reopened.recall(QUESTION, budget_tokens=25) == result


def test_shards_do_not_change_what_is_recalled(filled, tiny, tmp_path):
    whole = CorpusStore.create(tmp_path / "whole", tiny)
    whole.add(DOCUMENTS, [{"n": i} for i in range(7)])
    for budget in (15, 40):
        assert same(
            whole.recall(QUESTION, budget_tokens=budget),
            filled.recall(QUESTION, budget_tokens=budget),
        )


def test_a_deleted_document_is_as_if_never_added(filled, tiny, tmp_path):
    filled.delete([1, 4])
    without = CorpusStore.create(tmp_path / "without", tiny)
    without.add([d for i, d in enumerate(DOCUMENTS) if i not in (1, 4)])
    assert len(filled) == len(without) == 5
    scores, expected = filled.token_scores(QUESTION), without.token_scores(QUESTION)
    assert sorted(scores) == [0, 2, 3, 5, 6]
    for kept, alone in zip(scores.values(), expected.values(), strict=True):
        assert np.allclose(kept, alone, rtol=1e-5, atol=0)
    assert (
        filled.recall(QUESTION, budget_tokens=40).input_tokens
        == without.recall(QUESTION, budget_tokens=40).input_tokens
    )
    with pytest.raises(KeyError):
        filled.delete([4])
    with pytest.raises(KeyError):
        filled.document(1)
    # The whole store back when the budget covers it, deleted documents left out.
    everything = filled.recall(QUESTION, ratio=1.0)
    assert everything.unchanged and {s.document for s in everything.spans} == {0, 2, 3, 5, 6}


def test_a_writer_that_dies_before_its_commit_leaves_the_store_as_it_was(filled, tiny, monkeypatch):
    before = filled.recall(QUESTION, budget_tokens=25)

    def die(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(store_module.os, "replace", die)
    with pytest.raises(OSError, match="killed"):
        filled.add(["A document that never lands."])
    monkeypatch.undo()
    reopened = CorpusStore.open(filled.directory, tiny)
    assert len(reopened) == 7 and reopened.recall(QUESTION, budget_tokens=25) == before
    assert len(reopened.discard_pending()) == 1
    reopened.add(["One more entry."])
    names = sorted(p.name.split("-")[0] for p in filled.directory.iterdir() if p.is_dir())
    assert names == ["shard"] * 3 and len(reopened) == 8


def test_shards_written_elsewhere_are_committed_in_order(tiny, tmp_path):
    """What a distributed encode does: writers write shards, one process commits them."""
    store = CorpusStore.create(tmp_path / "s", tiny)
    first = write_shard(store.directory, tiny, DOCUMENTS[:2], [{"n": 0}, {"n": 1}])
    second = write_shard(store.directory, tiny, DOCUMENTS[2:5])
    assert len(store) == 0  # written, not committed
    assert store.commit([second, first]) == [[0, 1, 2], [3, 4]]
    assert store.document(3) == (DOCUMENTS[0], {"n": 0}) and len(store) == 5
    with pytest.raises(ValueError, match="pending"):
        store.commit(["shard-0123456789ab"])


def test_documents_tokenized_beforehand_make_the_same_shard(tiny, tmp_path):
    """What `encode_corpus`'s tokenizer stage hands `write_shard`: the documents' tokens and
    reader-token counts, computed elsewhere."""
    store = CorpusStore.create(tmp_path / "s", tiny)
    texts = DOCUMENTS[:3]
    tokenized = tokenize_each(tiny.tokenizer, texts)
    counts = {tiny.counter.name: [tiny.counter.count(text) for text in texts]}
    names = [
        write_shard(store.directory, tiny, texts, [{"n": 1}] * 3),
        write_shard(
            store.directory, tiny, texts, [{"n": 1}] * 3, tokenized=tokenized, budget_counts=counts
        ),
    ]
    (record, extra), (record_1, extra_1) = (
        persistence.read(store.directory / name, tiny, mapped=True) for name in names
    )
    assert extra == extra_1 and torch.equal(record.keys, record_1.keys)
    for name, array in record.tokens.items():
        assert np.array_equal(array, record_1.tokens[name]), name

    with pytest.raises(ILReError, match="3 documents but 2 tokenized contexts"):
        write_shard(store.directory, tiny, texts, tokenized=tokenized[:2])
    with pytest.raises(ILReError, match="its document's alone, in order"):
        write_shard(store.directory, tiny, texts, tokenized=tokenized[::-1])
    with pytest.raises(ILReError, match="3 counts per counter"):
        write_shard(store.directory, tiny, texts, budget_counts={"words": [1, 2]})
    assert len(list(store.directory.glob("pending-*"))) == 2  # the refused wrote nothing


def test_damage_and_other_models_are_refused(filled, tokenizer):
    with pytest.raises(EncodedContextError, match="was encoded by"):
        CorpusStore.open(filled.directory, _tiny(tokenizer, seed=1))
    filled.check()
    shard = next(p for p in filled.directory.iterdir() if p.name.startswith("shard-"))
    tensors = next(shard.glob("tensors-*.safetensors"))
    with tensors.open("r+b") as handle:  # flip the last byte of the keys' data
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(EncodedContextError, match="damaged"):
        filled.check()
    manifest = filled.directory / store_module.MANIFEST
    manifest.write_text(manifest.read_text().replace('"deleted": []', '"deleted": [0]'))
    with pytest.raises(EncodedContextError, match="checksum"):
        CorpusStore.open(filled.directory, filled.engine)


def test_bad_input_is_refused(tiny, tmp_path):
    store = CorpusStore.create(tmp_path / "s", tiny)
    with pytest.raises(Exception, match="already holds"):
        CorpusStore.create(tmp_path / "s", tiny)
    with pytest.raises(EmptyInputError):
        store.recall(QUESTION, budget_tokens=10)
    with pytest.raises(EmptyInputError):
        store.add(["  "])
    with pytest.raises(ValueError, match="metadata"):
        store.add(["one", "two"], [{}])
    with pytest.raises(EncodedContextError, match="no corpus store"):
        CorpusStore.open(tmp_path / "none", tiny)


def test_a_needle_among_many_documents_is_found(engine, tmp_path):
    """The embedded model: the one document among 41 that holds the fact scores highest, and
    its value is kept."""
    crowded = CorpusStore.create(tmp_path / "crowded", engine)
    crowded.add(REPORTS)
    scores = crowded.token_scores(REPORT_QUESTION)
    best = {document: s.max() for document, s in scores.items()}
    assert max(best, key=best.get) == 20
    assert "4-19-73" in crowded.recall(REPORT_QUESTION, budget_tokens=30).text


def test_a_store_recalls_in_as_many_passes_as_the_engine(filled, tiny):
    """Two passes by default, as for one context: the second asks with the first pass's best
    text before the question, and the scores are the mean of both passes."""
    from ilre_engine.scoring import SEED_TOKENS
    from ilre_engine.selection import select_within_budget

    assert tiny.config.recall_passes == 2
    pipeline, keys = tiny.pipeline, filled._keys(None)
    context = keys.tokens
    first = pipeline.pass_scores(keys, *tiny.query_ids(QUESTION)).cpu().numpy()
    _, seed = select_within_budget(
        context, first, SEED_TOKENS, tiny.counter.count, tiny.config.granularity
    )
    follow_up = pipeline.follow_up_ids(seed, QUESTION, filled._manifest["query_position"])
    second = pipeline.pass_scores(keys, *follow_up).cpu().numpy()
    assert not np.allclose(first, second)  # the second pass asks something else
    scores = filled.token_scores(QUESTION)
    for document, kept in scores.items():
        expected = (first + second)[context.doc_ids == document] / 2
        assert np.allclose(kept, expected, rtol=1e-5, atol=1e-9)
