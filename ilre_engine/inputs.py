"""Checking what callers pass in: contexts as documents, and queries.

Torch-free, so the command line can refuse bad input before it loads a model.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import EmptyInputError, InvalidDocumentError


def as_documents(context: str | Sequence[str]) -> tuple[str, ...]:
    """`context` as a tuple of documents: one string is one document, bytes are decoded as
    UTF-8. Raises `EmptyInputError` when there are no documents or all are whitespace, and
    `InvalidDocumentError` for a document that is neither text nor valid UTF-8."""
    documents = (context,) if isinstance(context, (str, bytes)) else tuple(context)
    if not documents:
        raise EmptyInputError("the context has no documents")
    checked = []
    for index, document in enumerate(documents):
        if isinstance(document, bytes):
            try:
                document = document.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidDocumentError(
                    f"document {index} is not valid UTF-8 at byte offset {error.start}"
                ) from error
        if not isinstance(document, str):
            raise InvalidDocumentError(f"document {index} is a {type(document).__name__}, not text")
        checked.append(document)
    if not any(d.strip() for d in checked):
        raise EmptyInputError("the context is empty (only whitespace)")
    return tuple(checked)


def check_query(query: str) -> None:
    """Raise `EmptyInputError` unless `query` is a string with some non-whitespace."""
    if not isinstance(query, str) or not query.strip():
        raise EmptyInputError("the query is empty")
