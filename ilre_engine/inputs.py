"""Checks of what users pass in: contexts as documents of text, and queries."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import EmptyInputError, InvalidDocumentError


def as_documents(context: str | bytes | Sequence[str | bytes]) -> tuple[str, ...]:
    """`context` (a text, or a sequence of documents) as a tuple of texts; bytes are decoded
    as UTF-8. Raises `EmptyInputError` when there is no text, `InvalidDocumentError` naming
    the first document that is not text (or not UTF-8, with the byte offset)."""
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
