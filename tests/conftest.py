"""Shared fixtures: the embedded model's engine and tokenizer, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLE = Path(__file__).parents[1] / "ilre_engine" / "data" / "sample.txt"
"""The bundled sample the README's first command compresses."""
QUESTION = "How much longer must the lifeboat crew wait at low tide?"
"""A question the sample answers ("twenty-five minutes")."""


@pytest.fixture(scope="session")
def engine():
    """The engine on the embedded Gemma 3 270M, as a user gets it from `from_pretrained()`."""
    from ilre_engine import ILRe

    return ILRe.from_pretrained()


@pytest.fixture(scope="session")
def tokenizer(engine):
    return engine.tokenizer


@pytest.fixture(scope="session")
def sample():
    return SAMPLE.read_text(encoding="utf-8")
