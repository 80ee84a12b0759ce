"""The context types: a `TokenizedContext` (tokens and their sources) and an `EncodedContext`
(what the streaming prefill keeps of it: keys at the retrieval layer, early-layer windows).

The engine builds them; `ilre_engine.persistence` is their on-disk format, which knows
nothing of these classes: an `EncodedContext` converts to and from its `Record`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import persistence
from .identity import EncodingIdentity


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


@dataclass
class KeptKV:
    """Keys and values one early layer keeps between chunks.

    `sink_*` hold positions ``[0, len)`` and `recent_*` the positions just before the next
    chunk; the two never overlap. Tensors are ``(streams, kv_heads, n, head_dim)``: one
    stream but in a batch of documents (`ilre_engine.streaming.stream_batch`).
    """

    sink_size: int
    keep: int
    sink_keys: torch.Tensor
    sink_values: torch.Tensor
    recent_keys: torch.Tensor
    recent_values: torch.Tensor

    @classmethod
    def empty(cls, like: torch.Tensor, sink_size: int, keep: int) -> KeptKV:
        none = like[:, :, :0]
        return cls(sink_size, keep, none, none, none, none)

    def nbytes(self) -> int:
        tensors = (self.sink_keys, self.sink_values, self.recent_keys, self.recent_values)
        return sum(t.numel() * t.element_size() for t in tensors)

    def first_rows(self, count: int) -> KeptKV:
        """What the first `count` streams of a batch keep (`streaming.stream_batch` drops
        the streams that ended)."""
        return KeptKV(
            self.sink_size,
            self.keep,
            self.sink_keys[:count],
            self.sink_values[:count],
            self.recent_keys[:count],
            self.recent_values[:count],
        )

    def sink_only(self) -> KeptKV:
        """A copy with the sink alone: what every segment of a long context starts from
        (`ilre_engine.segments`)."""
        none = self.sink_keys[:, :, :0]
        return KeptKV(
            self.sink_size, self.keep, self.sink_keys.clone(), self.sink_values.clone(), none, none
        )

    def compact(self) -> KeptKV:
        """A copy whose tensors own exactly their elements. While streaming, the kept windows
        are views into the last chunk's concatenation, which they would keep alive whole."""
        return KeptKV(
            self.sink_size,
            self.keep,
            self.sink_keys.clone(),
            self.sink_values.clone(),
            self.recent_keys.clone(),
            self.recent_values.clone(),
        )


@dataclass
class RecallCache:
    """What recalls over one source of keys keep for later ones (`ilre_engine.scoring`).

    All of it follows from the text and the keys, so it is never saved, and a source whose
    keys change starts a new one.

    Attributes:
        units: the selection's unit ids and layouts by granularity (`ilre_engine.selection`).
        embeddings: a `Hybrid`'s passage embeddings by passage size (`ilre_engine.hybrid`).
        priors: the prior question's head scores by query template and prior question.
        input_tokens: the whole text counted in each budget tokenizer, by its name.
    """

    units: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    priors: dict[str, torch.Tensor] = field(default_factory=dict)
    input_tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class EncodedContext:
    """A context read up to the retrieval layer; reusable for any number of queries.

    Attributes:
        tokens: the model tokens and where each came from.
        keys: ``(kv_heads, L, head_dim)`` keys of every token at the retrieval layer.
        kept: per early layer, the sink and window keys and values a query attends to.
        identity: the model, retrieval layer, tokenizer, sink and window that encoded it
            (`ILRe.identity`, with the stream's sink and window); checked against the
            engine's when it is recalled from or loaded. Its fields are also read as
            ``layer``, ``model_name``, ``sink``, ``window``, ``fingerprint``,
            ``tokenizer_name`` and ``tokenizer_sha256``.
        query_position: where a query's positions begin: right after the context (its
            length, the default), or for a context read in segments the end they all share
            (`ilre_engine.segments`).
    """

    tokens: TokenizedContext
    keys: torch.Tensor
    kept: dict[int, KeptKV]
    identity: EncodingIdentity
    query_position: int | None = None
    cache: RecallCache = field(default_factory=RecallCache, repr=False, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.query_position is None:
            self.query_position = len(self.tokens)

    @property
    def documents(self) -> tuple[str, ...]:
        return self.tokens.documents

    @property
    def layer(self) -> int:
        return self.identity.layer

    @property
    def model_name(self) -> str:
        return self.identity.model_name

    @property
    def sink(self) -> int:
        return self.identity.sink

    @property
    def window(self) -> int:
        return self.identity.window

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def tokenizer_name(self) -> str | None:
        return self.identity.tokenizer_name

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.identity.tokenizer_sha256

    def __len__(self) -> int:
        return len(self.tokens)

    def save(
        self, directory: str | os.PathLike[str], *, extra: dict[str, Any] | None = None
    ) -> Path:
        """Write to `directory` atomically (format: `ilre_engine.persistence`).

        Args:
            extra: JSON payloads committed with the context, by name (lowercase letters,
                digits and ``_``); `load_with_extra` returns them.
        """
        return persistence.write(self._record(), directory, extra=extra)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], engine: persistence.Encoder) -> EncodedContext:
        """Read a saved context for `engine`; a different model, layer or tokenizer, a damaged
        file or a newer format raises `EncodedContextError`."""
        return cls.load_with_extra(directory, engine)[0]

    @classmethod
    def load_with_extra(
        cls, directory: str | os.PathLike[str], engine: persistence.Encoder
    ) -> tuple[EncodedContext, dict[str, Any]]:
        """`load`, and the extra payloads saved with the context."""
        record, extra = persistence.read(directory, engine)
        tokens = TokenizedContext(documents=record.documents, **record.tokens)
        kept = {
            layer: KeptKV(*sizes, **{name: part[None] for name, part in parts.items()})
            for layer, (sizes, parts) in record.kept.items()
        }
        context = cls(
            tokens=tokens,
            keys=record.keys,
            kept=kept,
            identity=record.identity,
            query_position=record.query_position,
        )
        return context, extra

    def _record(self) -> persistence.Record:
        tokens = self.tokens
        kept_parts = ("sink_keys", "sink_values", "recent_keys", "recent_values")
        return persistence.Record(
            documents=tokens.documents,
            tokens={
                "input_ids": tokens.input_ids,
                "doc_ids": tokens.doc_ids,
                "offsets": tokens.offsets,
                "word_ids": tokens.word_ids,
            },
            keys=self.keys,
            kept={
                layer: ((kv.sink_size, kv.keep), {n: getattr(kv, n)[0] for n in kept_parts})
                for layer, kv in self.kept.items()
            },
            identity=self.identity,
            query_position=self.query_position,
        )

    def nbytes(self) -> int:
        """Bytes held on the device: keys at the retrieval layer plus the early layers' windows."""
        kept = sum(kv.nbytes() for kv in self.kept.values())
        return self.keys.numel() * self.keys.element_size() + kept
