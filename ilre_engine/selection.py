"""Budgeted selection (step 5 of the method): token scores in, whole units of text out.

A selection is made of *units*: sentences, clauses or words (`GRANULARITIES`), never parts
of a word, so a UUID, a URL or a number written as words comes out whole or not at all.
`select_within_budget` ranks the units of the chosen granularity by their best token's
score and takes them best first while they fit the budget; a unit too long for what is left
gives way to its own finer units (a sentence to its clauses, a clause to its words), so the
budget is spent on the best text that fits, not left empty. Every returned selection has
been counted with the budget tokenizer: the budget always holds.

`spans_from_mask` turns selected tokens into `Span`s of the source documents, and
`join_spans` into the compressed text.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .context import TokenizedContext
from .results import Span
from .tokenization import WHITE_SPACE
from .units import UnitEnds, phrase_starts, unit_ends

GAP_MARKER = " … "
"""Joins two spans of `RecallResult.text` that are not adjacent in the source."""

GRANULARITIES = ("word", "clause", "sentence", "passage")
"""Units a selection is made of, finest first: words (names, dates and numbers whole),
clauses, sentences (or list runs), and passages (`PASSAGE_TOKENS`)."""

SPLIT_SHARE = 0.5
"""A unit too long for what is left of the budget gives way to its finer units only when it
scores at least this share of the best unit: an answer inside a long sentence still comes
out as its clause or words, while the rest of the budget is not filled with fragments of
sentences that merely scored something (on hard-wrapped essays, most spans that did not
start and end on a sentence boundary were such fillers)."""

PASSAGE_TOKENS = 128
"""The longest passage: consecutive sentence units of one paragraph packed up to this many
model tokens (a longer sentence is a passage of its own); a selection of passages ranks
them as chunk retrieval ranks its chunks, by ILRe's scores."""


def unit_ids(
    context: TokenizedContext, granularity: str, scans: dict[int, _TextScan] | None = None
) -> np.ndarray:
    """``(L,)`` id of the unit each token belongs to (-1 outside the documents); ids increase
    along the context. A token belongs to the unit of its first non-space character. Where
    units end follows the text's structure (`ilre_engine.units`).

    `scans`: each document's `_TextScan` by index, filled as needed, so that several
    granularities of one context read each text once."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if scans is None:
        scans = {}
    ids = np.full(len(context), -1, dtype=np.int64)
    first_unit = 0
    for document, members in _document_tokens(context):
        text = context.documents[document]
        if document not in scans:
            scans[document] = _TextScan(text, _first_visible(text, context.offsets[members]))
        scan = scans[document]
        if granularity == "word":
            local = _phrase_ids(
                text, context.word_ids[members], scan.starts, context.offsets[members]
            )
        elif granularity == "passage":
            local = _passage_ids(scan.ends, scan.starts)
        else:
            bounds = scan.ends.sentence if granularity == "sentence" else scan.ends.clause
            local = np.searchsorted(bounds, scan.starts, side="right")
        # Unit ids count only the units that hold tokens, so they stay dense.
        _, dense = np.unique(local, return_inverse=True)
        ids[members] = first_unit + dense
        first_unit += int(dense.max()) + 1
    return ids


class _TextScan:
    """One document's tokens' first visible characters, and where its units end (read on
    first use): what every granularity of it is cut from."""

    def __init__(self, text: str, starts: np.ndarray) -> None:
        self.text = text
        self.starts = starts
        self._ends: UnitEnds | None = None

    @property
    def ends(self) -> UnitEnds:
        if self._ends is None:
            self._ends = unit_ends(self.text)
        return self._ends


def _document_tokens(context: TokenizedContext) -> Iterator[tuple[int, np.ndarray]]:
    """Each document that holds tokens, with its tokens' positions in context order (found
    in one sort rather than one scan per document)."""
    tokens = np.flatnonzero(context.doc_ids >= 0)
    order = np.argsort(context.doc_ids[tokens], kind="stable")
    tokens, owners = tokens[order], context.doc_ids[tokens[order]]
    present = np.unique(owners)
    bounds = np.searchsorted(owners, np.r_[present, len(context.documents)])
    for document, begin, end in zip(present.tolist(), bounds[:-1], bounds[1:], strict=True):
        yield document, tokens[begin:end]


def _passage_ids(ends: UnitEnds, starts: np.ndarray) -> np.ndarray:
    """Each token's passage among one document's tokens (`starts`: their first visible
    characters): its paragraph's sentence units packed up to `PASSAGE_TOKENS` tokens."""
    _, sentences = np.unique(
        np.searchsorted(ends.sentence, starts, side="right"), return_inverse=True
    )
    paragraph = np.searchsorted(ends.paragraph, starts, side="right")
    sizes = np.bincount(sentences)
    first_token = np.searchsorted(sentences, np.arange(len(sizes)))
    of_sentence = np.empty(len(sizes), dtype=np.int64)
    passage, filled, previous = -1, 0, None
    for sentence, (size, owner) in enumerate(
        zip(sizes.tolist(), paragraph[first_token].tolist(), strict=True)
    ):
        if owner != previous or (filled and filled + size > PASSAGE_TOKENS):
            passage, filled, previous = passage + 1, 0, owner
        of_sentence[sentence] = passage
        filled += size
    return of_sentence[sentences]


def _phrase_ids(
    text: str, word_ids: np.ndarray, starts: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Each token's word unit among one document's tokens: its word, joined with the words
    around it that make one name, date or number (`units.phrase_starts`)."""
    first = np.flatnonzero(np.diff(word_ids, prepend=word_ids[0] - 1))
    last = np.r_[first[1:], len(word_ids)] - 1
    begins = phrase_starts(text, starts[first], offsets[last, 1])
    return np.repeat(np.cumsum(begins), np.diff(np.r_[first, len(word_ids)]))


def _first_visible(text: str, offsets: np.ndarray) -> np.ndarray:
    """Each token's first non-space character (its start when it has none)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    visible = np.flatnonzero(~np.isin(points, WHITE_SPACE))
    if not len(visible):
        return offsets[:, 0]
    after = np.searchsorted(visible, offsets[:, 0])
    first = visible[np.minimum(after, len(visible) - 1)]
    return np.where((after < len(visible)) & (first < offsets[:, 1]), first, offsets[:, 0])


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
    run_scores = np.maximum.reduceat(np.where(selected, scores, -np.inf), starts)
    return _spans_of_runs(context, starts, ends, run_scores)


def spans_from_ranges(
    context: TokenizedContext, firsts: np.ndarray, lasts: np.ndarray, scores: np.ndarray
) -> list[Span]:
    """`spans_from_mask` of the tokens ``[firsts[i], lasts[i]]`` (inclusive ranges, each
    within one document), in time that grows with the ranges, not with the context."""
    order = np.argsort(firsts, kind="stable")
    firsts, lasts = firsts[order], lasts[order]
    starts: list[int] = []
    ends: list[int] = []
    for first, last in zip(firsts.tolist(), lasts.tolist(), strict=True):
        document = context.doc_ids[first]
        if starts and first <= ends[-1] and context.doc_ids[ends[-1] - 1] == document:
            ends[-1] = max(ends[-1], last + 1)  # touches or overlaps the run before
        else:
            starts.append(first)
            ends.append(last + 1)
    run_scores = [
        scores[a:b][context.doc_ids[a:b] >= 0].max() for a, b in zip(starts, ends, strict=True)
    ]
    return _spans_of_runs(context, starts, ends, run_scores)


def _spans_of_runs(
    context: TokenizedContext,
    starts: Sequence[int],
    ends: Sequence[int],
    run_scores: Sequence[float],
) -> list[Span]:
    """Spans of runs of selected tokens ``[starts[i], ends[i])`` of one document each, in
    context order: trimmed, dropped without a letter or digit, merged where they meet."""
    spans: list[Span] = []
    for first, stop, score in zip(starts, ends, run_scores, strict=True):
        document = int(context.doc_ids[first])
        text = context.documents[document]
        start, end = int(context.offsets[first, 0]), int(context.offsets[stop - 1, 1])
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


def unit_runs(ids: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, ...]:
    """For `members` (token positions in context order whose unit `ids` are >= 0, each
    unit's tokens together): where each unit begins among them, and each unit's first and
    last token."""
    starts = np.flatnonzero(np.diff(ids[members], prepend=-2))
    ends = np.r_[starts[1:], len(members)][: len(starts)] - 1
    return starts, members[starts], members[ends]


class _Units:
    """The units of one granularity that hold selectable tokens: each one's first and last
    token, and their scores (their best token's) where asked for.

    The layout depends on the text alone and is cached with the unit ids; scores are taken
    only for the units a selection looks at (every unit of the coarsest granularity, the
    finer units of those that did not fit), so a selection costs one pass over the context,
    not one per granularity."""

    PARTS = ("members", "starts", "first", "last")

    def __init__(self, granularity: str, cache: dict[str, np.ndarray]) -> None:
        self.members, self.starts, self.first, self.last = (
            cache[f"{granularity}/{part}"] for part in self.PARTS
        )

    @classmethod
    def layout(cls, granularity: str, cache: dict[str, np.ndarray]) -> None:
        """Put in `cache` the selectable tokens in unit order, where each unit begins among
        them, and each unit's first and last token."""
        members = np.flatnonzero((cache[granularity] >= 0) & cache["selectable"])
        parts = (members, *unit_runs(cache[granularity], members))
        cache.update(
            {f"{granularity}/{name}": part for name, part in zip(cls.PARTS, parts, strict=True)}
        )

    def scores(self, token_scores: np.ndarray, low: int = 0, high: int | None = None) -> np.ndarray:
        """The best token score of each unit of ``[low, high)``."""
        high = len(self.starts) if high is None else high
        if high <= low:
            return token_scores[:0]
        begin = self.starts[low]
        end = self.starts[high] if high < len(self.starts) else len(self.members)
        chosen = token_scores[self.members[begin:end]]
        return np.maximum.reduceat(chosen, self.starts[low:high] - begin)


class _BestFirst:
    """The units of the coarsest granularity in order of score (ties by index, as a heap of
    all of them would pop them), handed to a heap a few at a time: a selection takes a
    budget's worth of units, not a sort of every unit of a long context."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores
        self.remaining = np.arange(len(scores))
        self.size = 1024
        self.frontier = float(scores.max()) if len(scores) else -np.inf
        """The best score not handed out yet (-inf when none is left)."""

    def next_batch(self) -> list[tuple[float, int, int]]:
        """Heap items ``(-score, 0, index)`` of every remaining unit that scores at least the
        `size`-th best remaining score (so ties across the cut come out together)."""
        scores = self.scores[self.remaining]
        if len(scores) > self.size:
            cut = np.partition(scores, len(scores) - self.size)[len(scores) - self.size]
            chosen = scores >= cut
        else:
            chosen = np.ones(len(scores), dtype=bool)
        batch = [
            (-float(score), 0, int(index))
            for score, index in zip(scores[chosen], self.remaining[chosen], strict=True)
        ]
        self.remaining = self.remaining[~chosen]
        self.size *= 2
        left = self.scores[self.remaining]
        self.frontier = float(left.max()) if len(left) else -np.inf
        return batch


def prepare_units(
    context: TokenizedContext, granularity: str, cache: dict[str, np.ndarray]
) -> None:
    """Fill `cache` with what `select_within_budget` at `granularity` reads of the text: the
    unit ids and layouts of that granularity and every finer one."""
    _unit_cache(context, GRANULARITIES[: GRANULARITIES.index(granularity) + 1][::-1], cache)


def _unit_cache(
    context: TokenizedContext, finer: Sequence[str], cache: dict[str, np.ndarray]
) -> None:
    """Fill `cache` with each granularity's unit ids and `_Units` layout (text only)."""
    if "selectable" not in cache:
        offsets = context.offsets
        cache["selectable"] = (context.doc_ids >= 0) & (offsets[:, 1] > offsets[:, 0])
    scans: dict[int, _TextScan] = {}
    for g in finer:
        if g not in cache:
            cache[g] = unit_ids(context, g, scans)
        if f"{g}/members" not in cache:
            _Units.layout(g, cache)


def select_within_budget(
    context: TokenizedContext,
    token_scores: np.ndarray,
    budget: int,
    count_tokens: Callable[[str], int],
    granularity: str = "sentence",
    units: dict[str, np.ndarray] | None = None,
) -> tuple[list[Span], str]:
    """The best-scoring units of `granularity` whose joined text counts at most `budget`.

    `units`: a cache of `unit_ids` of this context by granularity (and of their layout),
    filled as needed (they depend on the text only, so recalls over one context share them).

    Units are taken best first (a unit scores its best token); one that does not fit what is
    left of the budget is replaced by its finer units, which compete with the rest, when it
    scores at least `SPLIT_SHARE` of the best unit. The
    taken units are then counted as the joined text they make: the longest prefix of the
    order they were taken in that fits is kept, and what is left of the budget is filled
    again, so the result is as full as the units allow and never over the budget.
    """
    finer = GRANULARITIES[: GRANULARITIES.index(granularity) + 1][::-1]
    if units is None:
        units = {}
    prepare_units(context, granularity, units)
    levels = [_Units(g, units) for g in finer]
    coarsest = _BestFirst(levels[0].scores(token_scores))
    split_floor = SPLIT_SHARE * coarsest.frontier
    gap = count_tokens(GAP_MARKER)
    cost_cache: dict[tuple[int, int], int] = {}

    def text_of(level: int, index: int) -> str:
        units = levels[level]
        first, last = int(units.first[index]), int(units.last[index])
        document = int(context.doc_ids[first])
        start, end = int(context.offsets[first, 0]), int(context.offsets[last, 1])
        return context.documents[document][start:end].strip()

    taken: list[tuple[int, int]] = []
    edges: dict[int, int] = {}  # first and last token of each taken unit: how many units end there

    def cost(level: int, index: int) -> int:
        """The unit's own tokens, plus a gap marker unless it continues a taken unit."""
        key = (level, index)
        if key not in cost_cache:
            cost_cache[key] = count_tokens(text_of(level, index))
        first, last = int(levels[level].first[index]), int(levels[level].last[index])
        joins = f"last:{first - 1}" in edges or f"first:{last + 1}" in edges or not taken
        return cost_cache[key] + (0 if joins else gap)

    def mark(level: int, index: int, change: int) -> None:
        for name in (f"first:{levels[level].first[index]}", f"last:{levels[level].last[index]}"):
            edges[name] = edges.get(name, 0) + change
            if not edges[name]:
                del edges[name]

    def take(level: int, index: int) -> None:
        taken.append((level, index))
        mark(level, index, 1)

    def children(level: int, index: int) -> list[tuple[float, int, int]]:
        units, finer_units = levels[level], levels[level + 1]
        lo = int(np.searchsorted(finer_units.first, units.first[index], side="left"))
        hi = int(np.searchsorted(finer_units.first, units.last[index], side="right"))
        scores = finer_units.scores(token_scores, lo, hi)
        return [(-float(score), level + 1, lo + i) for i, score in enumerate(scores)]

    heap: list[tuple[float, int, int]] = []
    best: tuple[list[Span], str] = ([], "")
    spent = 0
    for _ in range(4):  # fill, count exactly, fill what is left: a few rounds suffice
        added = False
        while budget - spent > gap:  # a unit costs at least one token and a gap
            # Ties go to the coarsest units first, as one heap of every unit would order them.
            if not heap or -heap[0][0] <= coarsest.frontier:
                for item in coarsest.next_batch():
                    heapq.heappush(heap, item)
            if not heap:
                break
            negated, level, index = heapq.heappop(heap)
            price = cost(level, index)
            if spent + price <= budget:
                take(level, index)
                spent += price
                added = True
            elif level + 1 < len(levels) and -negated >= split_floor:
                for child in children(level, index):
                    heapq.heappush(heap, child)
        if not added:
            break
        keep = _longest_fitting_prefix(context, levels, taken, token_scores, budget, count_tokens)
        best, kept = keep
        for level, index in taken[kept:]:  # what did not fit after all is given back
            mark(level, index, -1)
        del taken[kept:]
        spent = count_tokens(best[1])
    return best


def _longest_fitting_prefix(
    context: TokenizedContext,
    levels: list[_Units],
    taken: list[tuple[int, int]],
    scores: np.ndarray,
    budget: int,
    count_tokens: Callable[[str], int],
) -> tuple[tuple[list[Span], str], int]:
    """The spans and text of the longest prefix of `taken` that fits `budget`, and that
    prefix's length: all of it when it fits (as it almost always does: each unit was taken at
    its own count, and a join rarely counts more), else by binary search (a longer prefix
    never counts fewer tokens but for merged gap markers); every returned candidate was
    counted."""

    def build(n: int) -> tuple[list[Span], str]:
        firsts = np.array([levels[level].first[index] for level, index in taken[:n]])
        lasts = np.array([levels[level].last[index] for level, index in taken[:n]])
        spans = spans_from_ranges(context, firsts, lasts, scores)
        return spans, join_spans(context.documents, spans)

    whole = build(len(taken))
    if count_tokens(whole[1]) <= budget:
        return whole, len(taken)
    best: tuple[tuple[list[Span], str], int] = (([], ""), 0)
    low, high = 1, len(taken) - 1
    while low <= high:
        middle = (low + high) // 2
        candidate = build(middle)
        if count_tokens(candidate[1]) <= budget:
            best, low = (candidate, middle), middle + 1
        else:
            high = middle - 1
    return best
