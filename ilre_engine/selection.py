"""Budgeted selection (steps 4 and 5 of the method): token scores in, spans of text out.

`select_within_budget` keeps the largest top-k of the pooled token scores whose text fits
the budget; `spans_from_mask` turns selected tokens into `Span`s of the source documents,
and `join_spans` into the compressed text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .context import TokenizedContext
from .results import Span

GAP_MARKER = " … "
"""Joins two spans of `RecallResult.text` that are not adjacent in the source."""


def spans_from_mask(
    context: TokenizedContext, selected: np.ndarray, scores: np.ndarray
) -> list[Span]:
    """Merge selected tokens into spans: runs of consecutive tokens of one document, trimmed of
    surrounding whitespace, dropped when they hold no letter or digit; a span's score is the
    highest score among its tokens."""
    selected = selected & (context.doc_ids >= 0)
    if not selected.any():
        return []
    padded = np.concatenate(([False], selected, [False]))
    doc_change = np.concatenate(([True], context.doc_ids[1:] != context.doc_ids[:-1], [True]))
    starts = np.flatnonzero(padded[1:-1] & (~padded[:-2] | doc_change[:-1]))
    ends = np.flatnonzero(padded[1:-1] & (~padded[2:] | doc_change[1:])) + 1
    # Unselected tokens score -inf, so each reduction (which runs to the next start) sees
    # only its own run.
    span_scores = np.maximum.reduceat(np.where(selected, scores, -np.inf), starts)
    spans: list[Span] = []
    for first, last, score in zip(starts, ends - 1, span_scores, strict=True):
        document = int(context.doc_ids[first])
        text = context.documents[document]
        start, end = int(context.offsets[first, 0]), int(context.offsets[last, 1])
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if not any(ch.isalnum() for ch in text[start:end]):
            continue  # a lone quote or dash spends budget and tells the reader nothing
        if spans and spans[-1].document == document and spans[-1].end >= start:
            previous = spans.pop()
            start, score = previous.start, max(previous.score, float(score))
            end = max(end, previous.end)
        spans.append(Span(document, start, end, float(score)))
    return spans


def join_spans(documents: Sequence[str], spans: Sequence[Span]) -> str:
    """The compressed text: the spans' slices in source order, joined by `GAP_MARKER`."""
    return GAP_MARKER.join(documents[s.document][s.start : s.end] for s in spans)


def whole_documents(documents: Sequence[str]) -> tuple[tuple[Span, ...], str]:
    """Every non-empty document as one span, and their text as `RecallResult.text` joins it."""
    spans = tuple(Span(i, 0, len(d), 1.0) for i, d in enumerate(documents) if d)
    return spans, join_spans(documents, spans)


def select_within_budget(
    context: TokenizedContext,
    token_scores: np.ndarray,
    budget: int,
    count_tokens: Callable[[str], int],
) -> tuple[list[Span], str]:
    """The spans of the largest top-k selection whose text counts at most `budget` tokens.

    The count of a selection's text is near-monotone in k (merging spans can drop a gap
    marker), so a binary search finds the largest fitting k and every returned selection
    has been counted: the budget always holds.
    """
    selectable = (context.doc_ids >= 0) & (context.offsets[:, 1] > context.offsets[:, 0])
    order = np.argsort(-np.where(selectable, token_scores, -np.inf), kind="stable")
    order = order[: int(selectable.sum())]
    num_words = int(context.word_ids[-1]) + 1 if len(context.word_ids) else 0

    def build(k: int) -> tuple[list[Span], str]:
        words = np.zeros(num_words, dtype=bool)
        words[context.word_ids[order[:k]]] = True
        spans = spans_from_mask(context, words[context.word_ids] & selectable, token_scores)
        return spans, join_spans(context.documents, spans)

    best: tuple[list[Span], str] = ([], "")
    low, high = 1, len(order)
    while low <= high:
        k = (low + high) // 2
        candidate = build(k)
        if count_tokens(candidate[1]) <= budget:
            best, low = candidate, k + 1
        else:
            high = k - 1
    return best
