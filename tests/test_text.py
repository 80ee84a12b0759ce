"""Offsets, spans and budgets on the embedded tokenizer, for arbitrary text."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilre_engine.budget import TokenCounter
from ilre_engine.selection import GAP_MARKER, join_spans, select_within_budget, spans_from_mask
from ilre_engine.tokenization import tokenize_documents

# Letters of several scripts, CJK, emoji, combining marks and whitespace runs.
ALPHABET = st.characters(
    codec="utf-8",
    categories=("L", "N", "P", "S", "Zs", "Mn"),
    include_characters="\n\t  \u3000🎉👩‍💻東京",
)
DOCUMENTS = st.lists(st.text(ALPHABET, min_size=0, max_size=60), min_size=1, max_size=4)
SLOW = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def check_spans(documents, spans, text):
    assert text == join_spans(documents, spans)
    previous = None
    for span in spans:
        document = documents[span.document]
        assert 0 <= span.start < span.end <= len(document)
        piece = document[span.start : span.end]
        assert piece == piece.strip() and piece
        if previous is not None:
            assert (previous.document, previous.end) < (span.document, span.start)
            if previous.document == span.document:
                assert previous.end < span.start  # never overlapping or touching
        previous = span
    assert text.count(GAP_MARKER) >= max(len(spans) - 1, 0)


@SLOW
@given(documents=DOCUMENTS, data=st.data())
def test_every_span_is_its_document_slice(tokenizer, documents, data):
    context = tokenize_documents(tokenizer, documents)
    for index, document in enumerate(documents):
        mine = context.doc_ids == index
        offsets = context.offsets[mine]
        assert (offsets[:, 0] <= offsets[:, 1]).all() and (offsets[:, 1] <= len(document)).all()
    selected = np.array(
        data.draw(st.lists(st.booleans(), min_size=len(context), max_size=len(context))), dtype=bool
    )
    scores = np.random.default_rng(0).random(len(context))
    spans = spans_from_mask(context, selected, scores)
    check_spans(documents, spans, join_spans(documents, spans))


@SLOW
@given(documents=DOCUMENTS, budget=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_budgeted_selection_never_exceeds_the_budget(tokenizer, documents, budget, seed):
    context = tokenize_documents(tokenizer, documents)
    counter = TokenCounter()
    scores = np.random.default_rng(seed).random(len(context)).astype(np.float32)
    spans, text = select_within_budget(context, scores, budget, counter.count)
    assert counter.count(text) <= budget
    check_spans(documents, spans, text)


def test_tokens_cover_each_document_and_nothing_straddles(tokenizer):
    documents = ["First document.", "Zweites Dokument: über 東京 🎉", "third\n\n  spaced   out  "]
    context = tokenize_documents(tokenizer, documents)
    assert context.input_ids[0] == tokenizer.bos_token_id and context.doc_ids[0] == -1
    for index, document in enumerate(documents):
        offsets = context.offsets[context.doc_ids == index]
        covered = "".join(document[s:e] for s, e in offsets if e > s)
        # Byte-fallback tokens repeat their character; every character is covered in order.
        assert set(covered) == set(document)
        assert offsets[0, 0] == 0 and offsets[-1, 1] == len(document)


def test_selection_grows_to_whole_words(tokenizer):
    documents = ["The antidisestablishmentarianism debate continues"]
    context = tokenize_documents(tokenizer, documents)
    word = documents[0].index("antidis")
    inside = np.flatnonzero((context.offsets[:, 0] > word) & (context.offsets[:, 1] < word + 28))
    assert len(inside), "the long word must be split into several tokens for this test"
    scores = np.zeros(len(context), dtype=np.float32)
    scores[inside[0]] = 1.0
    _, text = select_within_budget(context, scores, 7, TokenCounter().count)
    assert "antidisestablishmentarianism" in text


def test_counter_defaults_to_offline_cl100k():
    counter = TokenCounter()
    assert counter.count("hello world") == 2
    assert counter.count("") == 0
