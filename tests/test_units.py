"""Units that follow the text's structure: hard wraps continue a sentence, structure ends one,
list items gather into runs, names and numbers stay whole."""

from __future__ import annotations

import itertools
import re
import textwrap

import numpy as np

from ilre_engine.context import TokenizedContext
from ilre_engine.selection import PASSAGE_TOKENS, unit_ids
from ilre_engine.units import LIST_RUN_CHARS, phrase_starts, unit_ends


def pieces(text: str, ends: np.ndarray) -> list[str]:
    bounds = [0, *ends.tolist(), len(text)]
    return [text[a:b].strip() for a, b in itertools.pairwise(bounds) if text[a:b].strip()]


def test_a_hard_wrapped_paragraph_is_read_as_its_sentences():
    prose = (
        "The lifeboat crew waited at the slipway for the tide to turn, as they had done every "
        "winter since the old pier was closed. Nobody spoke. Dr. Ilse Marrow checked the "
        "radio twice, e.g. for the coastguard's call, and then sat down."
    )
    wrapped = textwrap.fill(prose, 60)
    assert wrapped.count("\n") >= 3
    sentences = pieces(wrapped, unit_ends(wrapped).sentence)
    assert [" ".join(s.split()) for s in sentences] == [
        "The lifeboat crew waited at the slipway for the tide to turn, as they had done every "
        "winter since the old pier was closed.",
        "Nobody spoke.",
        "Dr. Ilse Marrow checked the radio twice, e.g. for the coastguard's call, and then sat "
        "down.",
    ]
    assert not any(end in unit_ends(wrapped).clause for end in _line_starts(wrapped))


def _line_starts(text: str) -> list[int]:
    return [i + 1 for i, ch in enumerate(text) if ch == "\n"]


def test_structure_still_ends_units_and_paragraphs():
    text = "# Notes\nA title line\n\nFirst paragraph ends here\n\n| a | b |\n| 1 | 2 |\nLast line"
    ends = unit_ends(text)
    assert pieces(text, ends.sentence) == [
        "# Notes",
        "A title line",
        "First paragraph ends here",
        "| a | b |",
        "| 1 | 2 |",
        "Last line",
    ]
    assert pieces(text, ends.paragraph) == [
        "# Notes",
        "A title line",
        "First paragraph ends here",
        "| a | b |\n| 1 | 2 |\nLast line",
    ]


def test_list_items_gather_into_runs_whose_clauses_are_the_items():
    text = (
        "Incidents this week:\n"
        "1. Harbour crane — delayed.\n"
        "2. Pier lights — fixed\n"
        "3. Gate B: open\n"
        "The inspector noted it."
    )
    ends = unit_ends(text)
    assert pieces(text, ends.sentence) == [
        "Incidents this week:",
        "1. Harbour crane — delayed.\n2. Pier lights — fixed\n3. Gate B: open",
        "The inspector noted it.",
    ]
    items = pieces(text, ends.clause)
    assert "2. Pier lights —" in items and "1." not in items  # a marker ends nothing


def test_a_long_list_is_cut_into_runs_of_bounded_length():
    text = "\n".join(f"- item {i} of the inventory, checked and signed" for i in range(40))
    runs = pieces(text, unit_ends(text).sentence)
    assert 1 < len(runs) < 40
    assert all(len(run) <= LIST_RUN_CHARS for run in runs)
    assert "\n".join(runs) == text


def test_names_dates_and_numbers_are_one_word_unit():
    text = "met Margaret Okonkwo on 3 March 2021 at the Quay. Then she left"
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    starts = np.array([a for a, _ in words])
    ends = np.array([b for _, b in words])
    begins = phrase_starts(text, starts, ends)
    units = np.cumsum(begins)
    grouped: dict[int, list[str]] = {}
    for (a, b), unit in zip(words, units, strict=True):
        grouped.setdefault(int(unit), []).append(text[a:b])
    phrases = [" ".join(v) for v in grouped.values()]
    assert "Margaret Okonkwo" in phrases and "3 March 2021" in phrases
    assert "Quay. Then" not in " | ".join(phrases)  # never across punctuation


def test_passages_pack_a_paragraphs_sentences_and_never_cross_it(tokenizer):
    from ilre_engine.tokenization import tokenize_documents

    paragraph = " ".join(f"Sentence {i} says something about the harbour." for i in range(30))
    text = f"{paragraph}\n\nA new paragraph starts here. It is short."
    context: TokenizedContext = tokenize_documents(tokenizer, [text])
    passages = unit_ids(context, "passage")
    sentences = unit_ids(context, "sentence")
    inside = passages >= 0
    sizes = np.bincount(passages[inside])
    assert len(sizes) > 1 and sizes.max() <= PASSAGE_TOKENS
    # Each passage is whole sentences, and the second paragraph is a passage of its own.
    for passage in np.unique(passages[inside]):
        held = np.unique(sentences[passages == passage])
        assert np.isin(sentences[np.isin(sentences, held)], held).all()
    second = context.offsets[:, 0] >= text.index("A new")
    assert len(np.unique(passages[second & inside])) == 1
    assert not np.isin(passages[second & inside], passages[~second & inside]).any()
