"""ILRe: context compression by in-model token recall at an intermediate layer.

Importing the package is cheap: the public names below are loaded from their modules on
first use (PEP 562), so ``import ilre_engine`` (and the integrations, the command line's
help) do not pay for torch and transformers until an engine is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BudgetError,
    ContextTooLongError,
    EmptyInputError,
    EncodedContextError,
    ILReError,
    InsufficientMemoryError,
    InvalidDocumentError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

_LAZY = {
    "EMBEDDED_MODEL": "loading",
    "GAP_MARKER": "selection",
    "Hybrid": "hybrid",
    "CorpusStore": "store",
    "EncodedContext": "context",
    "ILRe": "engine",
    "ILReConfig": "config",
    "Prefilter": "prefilter",
    "RecallResult": "results",
    "Span": "results",
    "TokenCounter": "budget",
    "TokenizedContext": "context",
    "embedded_model_path": "loading",
    "join_spans": "selection",
    "resolve_budget": "budget",
}

if TYPE_CHECKING:
    from .budget import TokenCounter, resolve_budget
    from .config import ILReConfig
    from .context import EncodedContext, TokenizedContext
    from .engine import ILRe
    from .hybrid import Hybrid
    from .loading import EMBEDDED_MODEL, embedded_model_path
    from .prefilter import Prefilter
    from .results import RecallResult, Span
    from .selection import GAP_MARKER, join_spans
    from .store import CorpusStore


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "EMBEDDED_MODEL",
    "GAP_MARKER",
    "BudgetError",
    "ContextTooLongError",
    "CorpusStore",
    "EmptyInputError",
    "EncodedContext",
    "EncodedContextError",
    "Hybrid",
    "ILRe",
    "ILReConfig",
    "ILReError",
    "InsufficientMemoryError",
    "InvalidDocumentError",
    "Prefilter",
    "RecallResult",
    "Span",
    "TokenCounter",
    "TokenizedContext",
    "UnsupportedModelError",
    "embedded_model_path",
    "join_spans",
    "resolve_budget",
]
