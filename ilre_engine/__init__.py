"""ILRe: context compression by in-model token recall at an intermediate layer."""

from .engine import EncodedContext, ILRe, ILReConfig, RecallResult, resolve_budget
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
