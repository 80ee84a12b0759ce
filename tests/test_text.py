"""Offsets, spans and budgets on the embedded tokenizer, for arbitrary text."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilre_engine.budget import TokenCounter
from ilre_engine.selection import (
    GAP_MARKER,
    _BestFirst,
    join_spans,
    select_within_budget,
    spans_from_mask,
    spans_from_ranges,
    unit_ids,
)
from ilre_engine.tokenization import _continues_word, tokenize_documents, tokenize_each

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
@given(documents=DOCUMENTS, data=st.data())
def test_spans_of_unit_ranges_equal_spans_of_their_tokens(tokenizer, documents, data):
    """The selection builds spans from the ranges of the units it took (time in the units,
    not the context): the same spans as from a mask of their tokens."""
    context = tokenize_documents(tokenizer, documents)
    ids = unit_ids(context, data.draw(st.sampled_from(["word", "clause", "sentence"])))
    present = np.unique(ids[ids >= 0])
    if not len(present):
        return
    chosen = data.draw(st.lists(st.sampled_from(present.tolist()), max_size=8))
    firsts = np.array([np.flatnonzero(ids == u)[0] for u in chosen], dtype=np.int64)
    lasts = np.array([np.flatnonzero(ids == u)[-1] for u in chosen], dtype=np.int64)
    mask = np.zeros(len(context), dtype=bool)
    for first, last in zip(firsts, lasts, strict=True):
        mask[first : last + 1] = True
    scores = np.random.default_rng(len(chosen)).random(len(context))
    assert spans_from_ranges(context, firsts, lasts, scores) == spans_from_mask(
        context, mask, scores
    )


@SLOW
@given(text=st.text(ALPHABET, max_size=80), data=st.data())
def test_a_token_continues_a_word_exactly_when_it_starts_inside_one(text, data):
    """Words are runs of characters that are neither white space nor CJK, and single CJK
    characters (the regular expression below says it as the module docstring does)."""
    cjk = "\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003ffff"
    words = [m.span() for m in re.finditer(f"[{cjk}]|[^\\s{cjk}]+", text)]
    starts = np.array(
        sorted(data.draw(st.lists(st.integers(0, len(text)), min_size=1, max_size=20))),
        dtype=np.int64,
    )
    expected = [any(a < s < b for a, b in words) for s in starts]
    expected[0] = False
    assert _continues_word(text, starts).tolist() == expected


@SLOW
@given(documents=DOCUMENTS)
def test_documents_tokenised_together_equal_each_tokenised_alone(tokenizer, documents):
    for together, text in zip(tokenize_each(tokenizer, documents), documents, strict=True):
        alone = tokenize_documents(tokenizer, [text])
        for field in ("input_ids", "doc_ids", "offsets", "word_ids"):
            assert np.array_equal(getattr(together, field), getattr(alone, field))
        assert together.documents == alone.documents


@pytest.mark.parametrize("seed", range(3))
def test_units_are_handed_out_best_first_ties_together(seed):
    """A selection sorts only a budget's worth of units: each batch holds every unit at
    least as good as any later one, and the frontier is the best score left."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(5000) * 20) / 20  # many ties, across every cut
    ranking = _BestFirst(scores)
    handed: list[int] = []
    while ranking.frontier > -np.inf:
        batch = ranking.next_batch()
        batch_scores = [-score for score, _, _ in batch]
        assert min(batch_scores) > ranking.frontier or not len(ranking.remaining)
        handed += [index for _, _, index in sorted(batch)]
    assert handed == sorted(range(len(scores)), key=lambda i: (-scores[i], i))


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


def test_a_tokenizer_without_bos_gets_an_end_of_text_sink(tokenizer):
    """Qwen2-style tokenizers have no BOS: the first word of the text must not become the
    attention sink (which takes most of the attention mass and is never selected)."""
    import copy

    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None and no_bos.eos_token_id is not None
    context = tokenize_documents(no_bos, ["Alpha beta gamma."])
    assert context.input_ids[0] == no_bos.eos_token_id and context.doc_ids[0] == -1
    assert context.doc_ids[1] == 0 and context.offsets[1, 0] == 0


@pytest.mark.parametrize(
    "value",
    [
        "3f2b9c1e-7a44-4d0b-9e8f-2c6a1b5d7e90",
        "https://intranet.example.org/builds/orion-7/artifacts?run=4421&sig=9f8e7d",
        "a94a8fe5ccb19ba61c4c8c7b7f8b1d2e3f4a5b6c",
        "orion-7.build.4421-rc2",
    ],
)
@pytest.mark.parametrize("granularity", ["word", "clause", "sentence"])
def test_long_unbroken_strings_come_out_whole_or_not_at_all(tokenizer, value, granularity):
    documents = [f"The deploy log was long. The release token is {value} for tonight. Done."]
    context = tokenize_documents(tokenizer, documents)
    start = documents[0].index(value)
    inside = np.flatnonzero((context.offsets[:, 0] >= start) & (context.doc_ids == 0))
    scores = np.zeros(len(context), dtype=np.float32)
    scores[inside[0]] = 1.0  # only the value's first piece was recalled
    counter = TokenCounter()
    for budget in range(1, counter.count(documents[0]) + 1):
        _, text = select_within_budget(context, scores, budget, counter.count, granularity)
        assert counter.count(text) <= budget
        pieces = [p for p in re.split(r"[^\w]+", value) if len(p) > 3]
        kept = [p for p in pieces if p in text]
        assert not kept or value in text, (budget, text)
    assert value in text


def test_a_unit_that_does_not_fit_gives_way_to_what_does(tokenizer):
    """The best unit is longer than the budget: the budget goes to the next best units that
    fit instead of coming back empty."""
    documents = ["🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉 party! The meeting moved to Tuesday. Bring the keys."]
    context = tokenize_documents(tokenizer, documents)
    scores = np.linspace(0.5, 0.1, len(context)).astype(np.float32)
    scores[1] = 1.0  # the emoji run is the best unit, and costs more than the budget
    counter = TokenCounter()
    _, text = select_within_budget(context, scores, 8, counter.count, "word")
    assert "🎉" not in text and text and counter.count(text) <= 8


def test_sentence_granularity_keeps_whole_sentences(tokenizer):
    documents = [
        "Rain fell all week. The vault code is seven, forty-one, twelve. Tea was served at four."
    ]
    context = tokenize_documents(tokenizer, documents)
    scores = np.zeros(len(context), dtype=np.float32)
    scores[np.flatnonzero(context.offsets[:, 0] >= documents[0].index("vault"))[0]] = 1.0
    counter = TokenCounter()
    _, text = select_within_budget(context, scores, 20, counter.count, "sentence")
    assert "The vault code is seven, forty-one, twelve." in text
