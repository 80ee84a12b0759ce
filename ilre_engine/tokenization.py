"""Model tokens with their sources: documents in, a `TokenizedContext` out.

Documents are tokenised one by one (so no token straddles two documents) and concatenated
as ``<sink> doc0 <sep> doc1 <sep> ...``. The sink is the beginning-of-sequence token, or for
tokenizers without one (Qwen2) the end-of-text token, so that the attention sink is never a
word of the text. Every token keeps its document index and character offsets in that
document; the sink, separators and special tokens belong to no document (index -1) and are
never selected. Tokens are also grouped into words, so that a selection never cuts one: a
word is a whitespace-delimited run of characters (a UUID, a URL or a dotted identifier is one
word), except that CJK ideographs, kana and hangul count one character a word.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from .context import TokenizedContext
from .errors import ILReError

DOCUMENT_SEPARATOR = "\n\n"

_TOKENIZER_LOCK = threading.Lock()

WHITE_SPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)
"""Every code point `str.isspace` accepts (none lies above U+3000)."""


def sink_token_id(tokenizer: Any) -> int | None:
    """The token that opens a context as its attention sink: beginning-of-sequence, else
    end-of-text (what models without BOS see between documents in training), else padding."""
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def tokenize_documents(
    tokenizer: Any, documents: Sequence[str], *, first_document: int = 0
) -> TokenizedContext:
    """Tokenise `documents` with character offsets (needs a fast Hugging Face tokenizer).

    With `first_document` > 0 the result continues a context of that many documents: it
    starts with a separator instead of the beginning-of-sequence token, and its document
    indices start there.
    """
    encoded = _encode(tokenizer, documents)
    return _assemble(tokenizer, documents, encoded, first_document)


def tokenize_each(tokenizer: Any, documents: Sequence[str]) -> list[TokenizedContext]:
    """``tokenize_documents(tokenizer, [document])`` for each document (each its own
    context, as a `CorpusStore` reads them), with one call of the tokenizer for all: a fast
    tokenizer encodes a batch on several threads."""
    encoded = _encode(tokenizer, documents)
    return [
        _assemble(tokenizer, [text], {key: [values[i]] for key, values in encoded.items()}, 0)
        for i, text in enumerate(documents)
    ]


def _encode(tokenizer: Any, documents: Sequence[str]) -> dict[str, list]:
    if not getattr(tokenizer, "is_fast", False):
        raise ILReError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: ILRe needs character offsets"
        )
    # A call sets the backend's truncation and padding where they differ from the last
    # call's, and the backend refuses a change while another thread encodes ("Already
    # borrowed"): one call at a time, each still encoding its batch on several threads.
    with _TOKENIZER_LOCK:
        encoded = tokenizer(list(documents), add_special_tokens=False, return_offsets_mapping=True)
    return {key: encoded[key] for key in ("input_ids", "offset_mapping")}


def _assemble(
    tokenizer: Any, documents: Sequence[str], encoded: dict[str, list], first_document: int
) -> TokenizedContext:
    """The context of `documents` from their encodings (`_encode`)."""
    sink = sink_token_id(tokenizer)
    prefix = [] if first_document or sink is None else [sink]
    separator: list[int] = []
    if first_document or len(documents) > 1:
        separator = tokenizer(DOCUMENT_SEPARATOR, add_special_tokens=False)["input_ids"]

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

    word_ids = np.cumsum(~np.concatenate(continues)) - 1
    return TokenizedContext(
        documents=tuple(documents),
        input_ids=np.concatenate(ids),
        doc_ids=np.concatenate(docs),
        offsets=np.concatenate(offsets),
        word_ids=word_ids,
    )


def _continues_word(text: str, starts: np.ndarray) -> np.ndarray:
    """True for each token that starts strictly inside a word (so it extends the previous
    one): its first character and the one before it are both word characters (neither white
    space nor CJK, whose characters are words of their own)."""
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    in_word = ~np.isin(points, WHITE_SPACE) & ~_is_cjk(points)
    inside = (starts > 0) & (starts < len(points))
    here = np.minimum(starts, max(len(points) - 1, 0))
    result = inside & in_word[here] & in_word[np.maximum(here - 1, 0)] if len(points) else inside
    if len(result):
        result[0] = False
    return result


def _is_cjk(points: np.ndarray) -> np.ndarray:
    """Code points of CJK ideographs, kana and hangul (U+2E80-9FFF, AC00-D7AF, F900-FAFF,
    20000-3FFFF)."""
    return (
        ((points >= 0x2E80) & (points <= 0x9FFF))
        | ((points >= 0xAC00) & (points <= 0xD7AF))
        | ((points >= 0xF900) & (points <= 0xFAFF))
        | ((points >= 0x20000) & (points <= 0x3FFFF))
    )


def cut_to_tokens(tokenizer: Any, text: str, count: int) -> str:
    """`text` up to the first of `tokenizer`'s tokens past the first `count` (tokenised
    alone), trailing spaces stripped: at least one character shorter when it holds more."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    if len(offsets) <= count:
        return text
    # The first dropped token's start: a character split over several byte tokens goes whole.
    end = min(int(offsets[max(count, 0)][0]), len(text) - 1)
    return text[:end].rstrip()


_identities: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def tokenizer_identity(tokenizer: Any) -> str:
    """What identifies a tokenizer by content, not by where it was loaded from: the SHA-256 of
    a fast tokenizer's backend JSON (vocabulary, merges, normalizer, added tokens) and of its
    beginning-of-sequence id; for a slow tokenizer, of its vocabulary; ``"none"`` for no
    tokenizer (engines driven by token ids only). Computed once per tokenizer object (about a
    second for a 262k vocabulary) and cached; computed again when tokens were added since."""
    if tokenizer is None:
        return "none"
    size = _vocabulary_size(tokenizer)
    with contextlib.suppress(KeyError, TypeError):
        cached_size, identity = _identities[tokenizer]
        if cached_size == size:
            return identity
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(b"backend\0" + backend.to_str().encode("utf-8"))
    elif hasattr(tokenizer, "get_vocab"):
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
        digest.update(b"vocab\0" + vocab.encode("utf-8"))
    else:
        digest.update(b"type\0" + type(tokenizer).__qualname__.encode("utf-8"))
    digest.update(f"\0bos={getattr(tokenizer, 'bos_token_id', None)!r}".encode())
    identity = digest.hexdigest()
    with contextlib.suppress(TypeError):  # not weakly referenceable: computed again next time
        _identities[tokenizer] = (size, identity)
    return identity


def _vocabulary_size(tokenizer: Any) -> int:
    """Tokens including added ones (-1 when unknown): a cheap sign the tokenizer changed."""
    try:
        return len(tokenizer)
    except TypeError:
        return -1
