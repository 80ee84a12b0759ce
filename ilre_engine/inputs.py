"""Checks of what users pass in: contexts as documents of text, and queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import EmptyInputError, InvalidDocumentError


def as_documents(context: str | bytes | Sequence[str | bytes]) -> tuple[str, ...]:
    """`context` (a text, or a sequence of documents) as a tuple of texts; bytes are decoded
    as UTF-8. Raises `EmptyInputError` when there is no text, `InvalidDocumentError` when the
    context is neither a text nor a sequence of texts, naming the first document that is not
    text (or not UTF-8, with the byte offset, or holds a lone surrogate, with its offset)."""
    if isinstance(context, (str, bytes)):
        documents: tuple = (context,)
    elif isinstance(context, Mapping) or not isinstance(context, Sequence):
        raise InvalidDocumentError(
            f"the context is a {type(context).__name__}: give a text or a sequence of texts"
        )
    else:
        documents = tuple(context)
    if not documents:
        raise EmptyInputError("the context has no documents")
    checked = tuple(
        decode_document(document, f"document {index}") for index, document in enumerate(documents)
    )
    if not any(d.strip() for d in checked):
        raise EmptyInputError("the context is empty (only whitespace)")
    return checked


def decode_document(document: str | bytes, name: str) -> str:
    """One document as text, its bytes decoded as UTF-8; `InvalidDocumentError` naming it
    (`name`: ``document 3``, or a file's path) when it is not text, not UTF-8 (with the byte
    offset) or holds a lone surrogate (with the character offset). Empty text is returned:
    whether that is an error depends on the other documents."""
    if isinstance(document, bytes):
        try:
            document = document.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidDocumentError(
                f"{name} is not valid UTF-8 at byte offset {error.start}"
            ) from error
    if not isinstance(document, str):
        raise InvalidDocumentError(f"{name} is a {type(document).__name__}, not text")
    _check_encodable(document, name)
    return document


def check_query(query: str) -> None:
    """Raise `EmptyInputError` unless `query` is a string with some non-whitespace, and
    `InvalidDocumentError` when it holds a lone surrogate (not text a tokenizer can read)."""
    if not isinstance(query, str) or not query.strip():
        raise EmptyInputError("the query is empty")
    _check_encodable(query, "the query")


def _check_encodable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidDocumentError(
            f"{what} holds a lone surrogate at character {error.start}, which is not text"
        ) from error
