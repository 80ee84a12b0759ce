"""Model tokens with their sources: documents in, a `TokenizedContext` out.

Documents are tokenised one by one (so no token straddles two documents) and concatenated
as ``<bos> doc0 <sep> doc1 <sep> ...``. Every token keeps its document index and character
offsets in that document; tokens of the separator and special tokens belong to no document
(index -1) and are never selected. Tokens are also grouped into words, so a selection grows
to whole words: a word is a run of letters and digits of alphabetic scripts (CJK ideographs,
kana and hangul count one character a word), capped at `MAX_WORD_TOKENS` tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .context import TokenizedContext
from .errors import ILReError

DOCUMENT_SEPARATOR = "\n\n"

MAX_WORD_TOKENS = 16

_WORD = re.compile(r"[^\W_\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003ffff]+")


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
