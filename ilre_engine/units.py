"""Where the units of a selection end in a text, following the text's own structure.

A selection (`ilre_engine.selection`) is made of whole units: sentences, their clauses, and
words. Plain text is rarely one sentence per line, so a line break alone ends nothing:

- **Hard-wrapped prose** (lines of about 70 columns, as e-mail, plain-text essays and
  READMEs are written) continues across its line breaks: a sentence ends at its terminal
  punctuation, wherever the line breaks fall.
- **Structure still ends units**: a blank line (a paragraph), a line that starts a list
  item, a heading (``#``) or a table row (``|``), and the line of a heading or table row
  itself.
- **List items are not sentences**: the ``1.`` or ``a)`` that opens an item ends nothing,
  and consecutive items form one sentence-level unit, a *list run*, of up to
  `LIST_RUN_CHARS` characters; each item is a clause of it. A list cut into fragments is
  then recalled fragment by fragment, each whole, rather than an item here and there.
- **Abbreviations and initials** (``Dr.``, ``e.g.``, ``J.``) end no sentence.

Words that make one name, date or number ("Margaret Okonkwo", "3 March 2021") are one word
unit (`phrase_starts`), so a selection down to words never keeps half a name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

LIST_RUN_CHARS = 320
"""The longest list run (consecutive list items as one sentence-level unit), in characters:
about 64 model tokens, the chunk size at which chunk retrieval keeps list fragments best."""

PHRASE_WORDS = 5
"""The most words joined into one word unit of a name, date or number."""

_LIST_ITEM = re.compile(r"[ \t]*(?:[-*•·‣▪◦]|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)])[ \t]+\S")
_HEADING = re.compile(r"[ \t]*#{1,6}[ \t]")
_TABLE_ROW = re.compile(r"[ \t]*\|")
_TERMINAL = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|[。！？]")
_CLAUSE = re.compile(r"[,;:]+[\"'”’)\]]*(?=\s)|\s[—–-]+(?=\s)|[，；：]")
_ABBREVIATIONS = frozenset(
    (
        *("mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "e.g", "i.e", "cf"),
        *("no", "nos", "fig", "figs", "approx", "inc", "ltd", "co", "mt", "al"),
        *("jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"),
    )
)
_WORD_BEFORE = re.compile(r"([\w.]+)$")


class UnitEnds(NamedTuple):
    """Character positions where units of a text end (each unit runs up to its end,
    exclusive; the text's end closes the last one), each sorted: every paragraph end is a
    sentence end, every sentence end a clause end."""

    paragraph: np.ndarray
    sentence: np.ndarray
    clause: np.ndarray


def unit_ends(text: str) -> UnitEnds:
    """Where the paragraphs (ended by a blank line or a heading), the sentence-level units
    and the clauses of `text` end."""
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    kinds = [_line_kind(line) for line in lines]
    breaks: list[int] = []
    paragraphs: list[int] = []
    items: list[tuple[int, int]] = []  # each list item's first and last character
    markers = np.zeros(len(text) + 1, dtype=bool)  # the characters of list item markers
    for i, (line, kind, start) in enumerate(zip(lines, kinds, starts, strict=True)):
        end_of_line = start + len(line)
        if kind == "item":
            items.append((start, end_of_line))
            markers[start : start + _marker_length(line)] = True
        elif kind == "continuation" and items and items[-1][1] == start - 1:
            items[-1] = (items[-1][0], end_of_line)
        if i + 1 < len(lines) and _breaks_after(kind, kinds[i + 1]):
            breaks.append(end_of_line + 1)
            if "blank" in (kind, kinds[i + 1]) or "heading" in (kind, kinds[i + 1]):
                paragraphs.append(end_of_line + 1)
    terminal = [
        m.end()
        for m in _TERMINAL.finditer(text)
        if not markers[m.end() - 1] and not _abbreviation(text, m.start())
    ]
    clauses = [m.end() for m in _CLAUSE.finditer(text) if not markers[m.end() - 1]]
    sentence_ends = np.unique(np.asarray(terminal + breaks, dtype=np.int64))
    runs = _list_runs(items)
    inside = np.zeros(len(sentence_ends), dtype=bool)
    for first, stop in runs:
        inside |= (sentence_ends > first) & (sentence_ends <= stop + 1)
    run_ends = [stop + 1 for _, stop in runs]
    item_breaks = [stop + 1 for _, stop in items]
    kept = np.concatenate([sentence_ends[~inside], np.asarray(run_ends, dtype=np.int64)])
    clause_ends = np.asarray(terminal + breaks + clauses + item_breaks, dtype=np.int64)
    return UnitEnds(
        np.unique(np.asarray(paragraphs, dtype=np.int64)), np.unique(kept), np.unique(clause_ends)
    )


def _line_kind(line: str) -> str:
    if not line.strip():
        return "blank"
    if _LIST_ITEM.match(line):
        return "item"
    if _HEADING.match(line):
        return "heading"
    if _TABLE_ROW.match(line):
        return "row"
    if line[:1] in (" ", "\t"):
        return "continuation"  # of a list item when one comes before, else text
    return "text"


def _breaks_after(kind: str, following: str) -> bool:
    """Whether the line break between lines of these kinds ends a unit: a paragraph break,
    a heading or table row, or a list item's start; never a hard wrap within a paragraph or
    an item."""
    if {"blank", "heading", "row"} & {kind, following}:
        return True
    if following == "item":
        return True
    return kind == "item" and following == "text"


def _marker_length(line: str) -> int:
    """Characters of a list item's marker and the white space after it."""
    match = _LIST_ITEM.match(line)
    return match.end() - 1 if match else 0


def _abbreviation(text: str, stop: int) -> bool:
    """Whether the terminal punctuation at `stop` closes an abbreviation or an initial."""
    if text[stop : stop + 1] != ".":
        return False
    found = _WORD_BEFORE.search(text, max(0, stop - 12), stop)
    if not found:
        return False
    word = found.group(1)
    return (len(word) == 1 and word.isupper()) or word.lower() in _ABBREVIATIONS


def _list_runs(items: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Consecutive list items (each starting on the line after the one before ends) packed
    into runs of at most `LIST_RUN_CHARS` characters; a run of one item is no run."""
    runs: list[tuple[int, int]] = []
    first = stop = -2
    count = 0
    for start, end in items:
        if start == stop + 1 and end - first <= LIST_RUN_CHARS:
            stop, count = end, count + 1
            continue
        if count > 1:
            runs.append((first, stop))
        first, stop, count = start, end, 1
    if count > 1:
        runs.append((first, stop))
    return runs


def phrase_starts(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which of the words ``text[starts[i]:ends[i]]`` (in order) begin a word unit: a word
    that continues a name, date or number (capitalised or numeric, after one such word and
    a single space) joins the one before, up to `PHRASE_WORDS` words."""
    if not len(starts):
        return np.zeros(0, dtype=bool)
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    inside = starts < len(points)
    namely = np.zeros(len(starts), dtype=bool)
    namely[inside] = _holds(points[starts[inside]], lambda c: c.isupper() or c.isdigit())
    # Joined only across a single space after a letter or digit: never across punctuation,
    # so a word unit stays within its clause.
    gap_start, gap_end = ends[:-1], starts[1:]
    spaced = (gap_end - gap_start == 1) & (gap_start >= 1) & (gap_start < len(points))
    spaced[spaced] = points[gap_start[spaced]] == ord(" ")
    spaced[spaced] = _holds(points[gap_start[spaced] - 1], str.isalnum)
    single_space = np.r_[False, spaced]
    begins = ~(single_space & namely & np.roll(namely, 1))
    begins[0] = True
    run = np.cumsum(begins) - 1
    run_start = np.flatnonzero(begins)[run]
    return begins | ((np.arange(len(starts)) - run_start) % PHRASE_WORDS == 0)


def _holds(points: np.ndarray, test: Callable[[str], bool]) -> np.ndarray:
    """`test` of each code point's character, asked once per distinct code point."""
    distinct, where = np.unique(points, return_inverse=True)
    return np.array([test(chr(c)) for c in distinct.tolist()], dtype=bool)[where]
