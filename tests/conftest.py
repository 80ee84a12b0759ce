"""Shared fixtures: the embedded model's engine and tokenizer, loaded once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine():
    """The engine on the embedded Gemma 3 270M, as a user gets it from `from_pretrained()`."""
    from ilre_engine import ILRe

    return ILRe.from_pretrained()


@pytest.fixture(scope="session")
def tokenizer(engine):
    return engine.tokenizer
