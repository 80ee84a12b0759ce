"""ILRe: context compression by in-model token recall at an intermediate layer.

The public names load lazily (PEP 562): importing the package, or the torch-free
``ilre_engine.errors`` and ``ilre_engine.cli``, does not import torch or transformers; the
first use of a name such as `ILRe` imports the submodule that defines it.
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

if TYPE_CHECKING:
    from .engine import EncodedContext, ILRe, ILReConfig, RecallResult, resolve_budget
    from .loading import EMBEDDED_MODEL
    from .text import GAP_MARKER, Span, TokenCounter

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED_MODEL",
    "GAP_MARKER",
    "BudgetError",
    "ContextTooLongError",
    "EmptyInputError",
    "EncodedContext",
    "EncodedContextError",
    "ILRe",
    "ILReConfig",
    "ILReError",
    "InsufficientMemoryError",
    "InvalidDocumentError",
    "RecallResult",
    "Span",
    "TokenCounter",
    "UnsupportedModelError",
    "resolve_budget",
]

_LAZY = {
    "EncodedContext": ".engine",
    "ILRe": ".engine",
    "ILReConfig": ".engine",
    "RecallResult": ".engine",
    "resolve_budget": ".engine",
    "EMBEDDED_MODEL": ".loading",
    "GAP_MARKER": ".text",
    "Span": ".text",
    "TokenCounter": ".text",
}
"""Each lazily loaded public name and the submodule that defines it."""


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first use and cache the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
