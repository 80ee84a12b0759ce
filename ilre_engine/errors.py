"""One exception hierarchy, so a pipeline can catch everything ILRe refuses with one clause.

`ILReError` subclasses `ValueError` because every refusal is about the value of an input
(a context, a budget, a model); callers that already catch `ValueError` keep working.
"""

from __future__ import annotations


class ILReError(ValueError):
    """Base class of every error ILRe raises on purpose."""


class EmptyInputError(ILReError):
    """A context, document or query is empty or only whitespace."""


class ConfigError(ILReError):
    """A setting (of `ILReConfig`, or an argument such as a token count) is of the wrong type
    or out of range."""


class BudgetError(ILReError):
    """A budget is missing, given twice, or out of range."""


class InvalidDocumentError(ILReError):
    """A document is not text (or not valid UTF-8)."""


class ContextTooLongError(ILReError):
    """A context (or a query, or both together) is longer than the configured maximum."""


class InsufficientMemoryError(ILReError, MemoryError):
    """Encoding would need more memory than the device has; raised before any work starts.

    Also a `MemoryError`, so code that already handles running out of memory catches it."""


class UnsupportedModelError(ILReError):
    """The engine cannot drive this model (architecture, missing files, too few layers)."""


class EncodedContextError(ILReError):
    """A saved or passed encoded context does not match the engine or is damaged."""


class DirectoryError(ILReError):
    """A directory to save into or create a store in cannot be used: it is a file, or cannot
    be created."""


class UnknownDocumentError(ILReError, KeyError):
    """A document id a corpus store does not hold live (or a value that is no document id).

    Also a `KeyError`, which the store raised for unknown ids before."""

    __str__ = BaseException.__str__  # the message as written, not quoted as a KeyError's
