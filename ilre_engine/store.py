"""`CorpusStore`: a corpus of any size on disk, recalled with one query pass over all of it.

Every document is its own stream (`ILRe.encode_tokens(..., end_aligned=True)`): it ends at
the position where the query begins, or is read in window-bounded segments that all end
there (`ilre_engine.segments`). So documents encode independently, a corpus has no length
limit, and one query pass serves every document: the query is read on its own after the
sink token (`ILRe.standalone_query_states`), and every key of every document lies at a
distance from it that the model was trained on, as if the question followed that document.

On disk::

    <directory>/store.json      the manifest: model, layer, tokenizer, the query's position,
                                the shards, the deleted documents, and its own SHA-256
    <directory>/shard-<id>/     the documents of one `add`: keys at the retrieval layer and
                                tokens, in the durable format of `ilre_engine.persistence`
                                (keys only), with their ids and metadata

An `add` writes a new shard and then commits the manifest with one atomic rename; a `delete`
commits a manifest that lists the document as deleted. A crash at any point leaves the store
as it was before or after the change, and writers to one directory are serialised by a
lock. Shards are memory-mapped: recall reads the keys block by block, so a store larger than
memory works (its tokens, texts and per-token scores are held in memory during a recall). On
a GPU, the keys of each shard move to the device when first read, while they fit.

Recall is exact: the softmax of each query head runs over every key of every live document
(two passes over blocks, as `recall.attention_scores` does), then the prior, pooling within
documents, further recall passes (`ILReConfig.recall_passes`, each over the whole store) and
budgeted selection of whole units, as `ILRe.recall` does for one context. Opt-in, a
`Prefilter` narrows each pass's softmax to the candidates of an index of the keys
(`ilre_engine.prefilter`, FAISS), for stores where reading every key is too slow. An
engine with a `Hybrid` mixes in its sentence-embedding prior, as for one context: the
store's passages are embedded at its first recall and kept in memory until it changes.

Longer than most modules because it owns a durable format of its own (the manifest, its
commits, pending shards) besides recall over many shards; the shards themselves are
`persistence`'s.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import fileio, persistence
from .budget import resolve_budget
from .context import TokenizedContext
from .engine import ILRe
from .errors import EmptyInputError, EncodedContextError, ILReError
from .inputs import as_documents
from .prefilter import KeyIndex, Prefilter, candidate_attention
from .recall import (
    blockwise_softmax,
    grouped_logits,
    mean_over_queries,
    pool_scores,
    remove_prior,
)
from .results import RecallResult
from .selection import select_within_budget, whole_documents
from .tokenization import sink_token_id, tokenize_each

FORMAT = "ilre-corpus-store"
FORMAT_VERSION = 1
MANIFEST = "store.json"
_SHARD = re.compile(r"shard-[0-9a-f]{12}")
_PENDING = re.compile(r"pending-[0-9a-f]{12}")


@dataclass(frozen=True)
class _Shard:
    """A shard as the manifest lists it."""

    name: str
    first_document: int
    documents: int
    tokens: int


@dataclass
class _Loaded:
    """A shard read for recall: its memory-mapped keys, tokens and payloads."""

    keys: torch.Tensor
    tokens: TokenizedContext
    document_ids: np.ndarray
    metadata: list[dict[str, Any]]
    budget_counts: dict[str, list[int]]


@dataclass(frozen=True)
class _Masks:
    """`CorpusStore._token_masks`: per shard, (tokens in the softmax, tokens that can
    score); the tokens in the softmax over the whole store (None: all of them); each token's
    document id."""

    shards: list[tuple[torch.Tensor, torch.Tensor]]
    present: torch.Tensor | None
    doc_ids: torch.Tensor


class CorpusStore:
    """Documents encoded one by one into shards on disk; `recall` keeps what a question
    attends to most across all of them, within a budget.

    Create one with `CorpusStore.create(directory, engine)`, reopen it with
    `CorpusStore.open(directory, engine)`. Document ids are assigned in order by `add` and
    never reused.
    """

    def __init__(self, directory: Path, engine: ILRe, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.engine = engine
        self._manifest = manifest
        self._loaded: dict[str, _Loaded] = {}
        self._prior: tuple[tuple, torch.Tensor] | None = None
        self._masks: tuple[tuple, _Masks] | None = None
        self._index: tuple[tuple, KeyIndex] | None = None
        self._combined: tuple[tuple, TokenizedContext, np.ndarray, dict, dict] | None = None

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | os.PathLike[str], engine: ILRe) -> CorpusStore:
        """An empty store in `directory` (created if needed); refuses one that holds a store."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        with fileio.exclusive_directory_lock(root):
            if (root / MANIFEST).exists():
                raise ILReError(f"{root} already holds a corpus store: open it instead")
            position = _query_position(engine)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "model_name": engine.name,
                "model_fingerprint": engine.fingerprint,
                "layer": engine.layer,
                "tokenizer_sha256": engine.tokenizer_sha256,
                "query_position": position,
                "next_document": 0,
                "shards": [],
                "deleted": [],
            }
            _commit(root, manifest)
        return cls(root, engine, manifest)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], engine: ILRe) -> CorpusStore:
        """The store in `directory`; `EncodedContextError` when it is missing, damaged, or
        was encoded by another model, layer or tokenizer."""
        root = Path(directory)
        return cls(root, engine, _read_manifest(root, engine))

    # -- what it holds ------------------------------------------------------------------------

    @property
    def _shards(self) -> list[_Shard]:
        return [_Shard(**entry) for entry in self._manifest["shards"]]

    @property
    def _state(self) -> tuple[tuple[str, ...], frozenset[int]]:
        """What the store's caches are kept for: its shards and deleted documents."""
        return tuple(s.name for s in self._shards), self.deleted

    @property
    def deleted(self) -> frozenset[int]:
        return frozenset(self._manifest["deleted"])

    def __len__(self) -> int:
        """Live documents."""
        return sum(s.documents for s in self._shards) - len(self.deleted)

    @property
    def num_tokens(self) -> int:
        """Model tokens of every shard, deleted documents included until they are rewritten."""
        return sum(s.tokens for s in self._shards)

    def document(self, document_id: int) -> tuple[str, dict[str, Any]]:
        """A live document's text and metadata."""
        for shard in self._shards:
            index = document_id - shard.first_document
            if 0 <= index < shard.documents and document_id not in self.deleted:
                loaded = self._load(shard)
                return loaded.tokens.documents[index], loaded.metadata[index]
        raise KeyError(f"no live document {document_id} in {self.directory}")

    # -- changes ------------------------------------------------------------------------------

    def add(
        self,
        documents: str | Sequence[str],
        metadata: Sequence[Mapping[str, Any]] | None = None,
        *,
        progress: bool | None = None,
    ) -> list[int]:
        """Encode `documents` (each its own stream) into a new shard and commit it; their ids.

        `metadata`: one JSON-serialisable mapping per document, returned by `document`
        (values JSON cannot hold are stored as their ``str``)."""
        pending = write_shard(self.directory, self.engine, documents, metadata, progress=progress)
        return self.commit([pending])[0]

    def commit(self, pending: Sequence[str]) -> list[list[int]]:
        """Make shards written by `write_shard` (their pending names) part of the store in one
        atomic commit, in order; each one's document ids. Writers elsewhere (other processes,
        a Ray cluster on a shared file system) write shards, one process commits them."""
        with fileio.exclusive_directory_lock(self.directory):
            manifest = _read_manifest(self.directory, self.engine)
            ids = []
            for name in pending:
                if not _PENDING.fullmatch(name):
                    raise ILReError(f"{name!r} is not a pending shard of write_shard")
                source = self.directory / name
                record, _ = persistence.read(source, self.engine, mapped=True)
                if record.query_position != manifest["query_position"]:
                    raise EncodedContextError(f"{source} places its queries elsewhere")
                shard = "shard-" + name.removeprefix("pending-")
                os.replace(source, self.directory / shard)
                first, count = manifest["next_document"], len(record.documents)
                manifest["shards"].append(
                    {
                        "name": shard,
                        "first_document": first,
                        "documents": count,
                        "tokens": int(record.keys.shape[1]),
                    }
                )
                manifest["next_document"] = first + count
                ids.append(list(range(first, first + count)))
            _commit(self.directory, manifest)
            self._manifest = manifest
        return ids

    def discard_pending(self) -> list[str]:
        """Remove the shards written but never committed (a writer died, or its commit was
        abandoned); their names. Call it when no writer is running."""
        with fileio.exclusive_directory_lock(self.directory):
            names = sorted(p.name for p in self.directory.iterdir() if _PENDING.fullmatch(p.name))
            for name in names:
                shutil.rmtree(self.directory / name)
        return names

    def delete(self, document_ids: Iterable[int]) -> None:
        """Delete documents: the committed manifest lists them, their shards stay as they are
        and recall reads past them. Unknown or already deleted ids raise `KeyError`."""
        with fileio.exclusive_directory_lock(self.directory):
            manifest = _read_manifest(self.directory, self.engine)
            known = {
                i
                for s in manifest["shards"]
                for i in range(s["first_document"], s["first_document"] + s["documents"])
            }
            gone = set(manifest["deleted"])
            wanted = set(document_ids)
            missing = sorted(wanted - (known - gone))
            if missing:
                raise KeyError(f"no live documents {missing[:10]} in {self.directory}")
            manifest["deleted"] = sorted(gone | wanted)
            _commit(self.directory, manifest)
            self._manifest = manifest

    def check(self) -> None:
        """Every check of loading, each data file's SHA-256 included (recall maps the keys
        without reading them whole): `EncodedContextError` on any damage."""
        for shard in self._shards:
            persistence.check_files(self.directory / shard.name, self.engine)

    # -- recall -------------------------------------------------------------------------------

    def recall(
        self,
        query: str,
        *,
        budget_tokens: int | None = None,
        ratio: float | None = None,
        prefilter: Prefilter | None = None,
    ) -> RecallResult:
        """Keep the tokens of the live documents that `query` attends to most, within a budget
        (reader-LLM tokens, or `ratio` of the live documents' tokens). Spans name documents by
        their store ids.

        Exact by default: every pass's softmax runs over every live key. With `prefilter`
        (`ilre_engine.prefilter`, needs ``pip install ilre[faiss]``), each pass scores exactly
        only the keys an inverted-file index over the store's keys finds for the query (the
        `Prefilter.k` best of each query row, in `Prefilter.nprobe` lists) and every sink;
        the rest score 0. The prior, pooling, further passes and selection are as for exact
        recall. The index is built at the first such recall (50 s and 0.5 GiB for a million
        keys on one CPU core; a progress bar above a million) and kept until the store
        changes; it lives on the host, also for a GPU engine (the query rows go to the host,
        the candidates come back). On this project's CPU, over 1M tokens of real text, k=256
        and nprobe=16 kept 96% of the exact recall's text and every needle, in a third of
        the time (benchmarks/README.md, "Approximate prefilter (FAISS)")."""
        engine = self.engine
        query_ids, lead_in = engine.query_ids(query)
        shards = [self._load(shard) for shard in self._shards]
        if not len(self):
            raise EmptyInputError(f"the store at {self.directory} holds no documents")
        context, live, units, embeddings = self._context(shards)
        input_tokens = self._input_tokens(shards, live)
        budget = resolve_budget(input_tokens, budget_tokens, ratio)
        if input_tokens <= budget:
            spans, text = whole_documents(context.documents)  # deleted ones are empty here
            return RecallResult(text, spans, input_tokens, input_tokens, budget, True)
        scores = self._pass_scores(
            shards, context, units, embeddings, query, query_ids, lead_in, prefilter
        )
        spans, text = select_within_budget(
            context, scores, budget, engine.counter.count, engine.config.granularity, units
        )
        return RecallResult(text, tuple(spans), input_tokens, engine.counter.count(text), budget)

    def token_scores(
        self, query: str, *, prefilter: Prefilter | None = None
    ) -> dict[int, np.ndarray]:
        """Per live document (by store id), the recall score of each of its model tokens for
        `query` (the mean of the passes' pooled scores, each normalised to sum 1 over the
        store); `prefilter` as for `recall`."""
        query_ids, lead_in = self.engine.query_ids(query)
        shards = [self._load(shard) for shard in self._shards]
        if not len(self):
            raise EmptyInputError(f"the store at {self.directory} holds no documents")
        context, live, units, embeddings = self._context(shards)
        scores = self._pass_scores(
            shards, context, units, embeddings, query, query_ids, lead_in, prefilter
        )
        return {int(i): scores[context.doc_ids == i] for i in np.flatnonzero(live)}

    def _pass_scores(
        self,
        shards: Sequence[_Loaded],
        context: TokenizedContext,
        units: dict[str, np.ndarray],
        embeddings: dict[str, np.ndarray],
        query: str,
        query_ids: Sequence[int],
        lead_in: int,
        prefilter: Prefilter | None,
    ) -> np.ndarray:
        """``(L,)`` scores over `ILReConfig.recall_passes` passes, as for one context
        (`ILRe.multi_pass_scores`), each pass over every shard; mixed with the engine's
        `Hybrid` prior when it has one (`units` and `embeddings`: the context's caches,
        `_context`)."""
        scores = self.engine.multi_pass_scores(
            context,
            query,
            (query_ids, lead_in),
            functools.partial(self._scores, shards, context, prefilter=prefilter),
            query_position=self._manifest["query_position"],
            unit_cache=units,
        )
        return self.engine.with_hybrid_prior(context, query, scores, units, embeddings)

    def _scores(
        self,
        shards: Sequence[_Loaded],
        context: TokenizedContext,
        query_ids: Sequence[int],
        lead_in: int,
        prefilter: Prefilter | None = None,
    ) -> torch.Tensor:
        """``(L,)`` pooled token scores over all shards, as `ILRe.scores_for_ids` computes them
        for one context; tokens of deleted documents are not part of the context at all. The
        prior's scores are exact whether or not this pass is prefiltered."""
        cfg = self.engine.config
        masks = self._token_masks(shards, context)
        heads = torch.cat(
            self._head_scores(shards, masks.shards, query_ids, lead_in, prefilter), dim=1
        )
        if cfg.prior_query is not None:
            prior = self._prior_scores(shards, masks.shards)
            if masks.present is None:
                heads = remove_prior(heads, prior)
            else:
                present = masks.present
                heads[:, present] = remove_prior(heads[:, present], prior[:, present])
        pooled = pool_scores(
            heads,
            cfg.kernel_sizes,
            segments=masks.doc_ids,
            allocation=cfg.kernel_allocation,
            head_weights=cfg.head_weights,
        )
        return pooled / pooled.sum().clamp_min(1e-30)

    def _load(self, shard: _Shard) -> _Loaded:
        if shard.name not in self._loaded:
            record, extra = persistence.read(self.directory / shard.name, self.engine, mapped=True)
            ids = list(range(shard.first_document, shard.first_document + shard.documents))
            counted = (len(record.documents), len(extra.get("metadata", ())))
            if counted != (shard.documents, shard.documents):
                raise EncodedContextError(
                    f"{self.directory / shard.name} does not match {MANIFEST}"
                )
            self._loaded[shard.name] = _Loaded(
                keys=self._resident(record.keys),
                tokens=TokenizedContext(documents=record.documents, **record.tokens),
                document_ids=np.asarray(ids, dtype=np.int64),
                metadata=extra["metadata"],
                budget_counts=extra.get("budget_counts", {}),
            )
        return self._loaded[shard.name]

    def _resident(self, keys: torch.Tensor) -> torch.Tensor:
        """A shard's keys on a GPU engine's device while they take under half of its free
        memory (each recall then reads them there, not from the host); memory-mapped on the
        host otherwise."""
        device = self.engine.device
        if device.type != "cuda":
            return keys
        free, _ = torch.cuda.mem_get_info(device)
        if keys.numel() * keys.element_size() * 2 > free:
            return keys
        return keys.to(device)

    def _context(
        self, shards: Sequence[_Loaded]
    ) -> tuple[TokenizedContext, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """All shards' tokens as one context whose documents are indexed by store id (deleted
        documents' tokens belong to none), which store ids are live, the selection's cache of
        its units and a `Hybrid`'s cache of its passages' embeddings; kept until the store
        changes."""
        key = self._state
        if self._combined is None or self._combined[0] != key:
            self._combined = (key, *self._combine(shards), {}, {})
        return self._combined[1:]

    def _combine(self, shards: Sequence[_Loaded]) -> tuple[TokenizedContext, np.ndarray]:
        documents: list[str] = [""] * self._manifest["next_document"]
        live = np.zeros(len(documents), dtype=bool)
        doc_ids = []
        for loaded in shards:
            local = loaded.tokens.doc_ids
            global_ids = np.where(local >= 0, loaded.document_ids[np.maximum(local, 0)], -1)
            for index, text in zip(loaded.document_ids, loaded.tokens.documents, strict=True):
                live[index] = index not in self.deleted
                documents[index] = text if live[index] else ""
            global_ids[(global_ids >= 0) & ~live[np.maximum(global_ids, 0)]] = -1
            doc_ids.append(global_ids.astype(np.int32))
        parts = [s.tokens for s in shards]
        starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
        context = TokenizedContext(
            documents=tuple(documents),
            input_ids=np.concatenate([p.input_ids for p in parts]),
            doc_ids=np.concatenate(doc_ids),
            offsets=np.concatenate([p.offsets for p in parts]),
            word_ids=np.concatenate(
                [p.word_ids + start for p, start in zip(parts, starts, strict=True)]
            ),
        )
        return context, live

    def _input_tokens(self, shards: Sequence[_Loaded], live: np.ndarray) -> int:
        counter = self.engine.counter
        total = 0
        for loaded in shards:
            counts = loaded.budget_counts.get(counter.name)
            if counts is None:
                counts = [counter.count(text) for text in loaded.tokens.documents]
                loaded.budget_counts[counter.name] = counts
            total += sum(c for c, i in zip(counts, loaded.document_ids, strict=True) if live[i])
        return total

    def _head_scores(
        self,
        shards: Sequence[_Loaded],
        masks: Sequence[tuple[torch.Tensor, torch.Tensor]],
        query_ids: Sequence[int],
        lead_in: int,
        prefilter: Prefilter | None = None,
    ) -> list[torch.Tensor]:
        """Per shard, ``(query_heads, L_shard)`` attention of each head to each token over the
        whole store (one softmax over every live key, or over `prefilter`'s candidates), the
        tokens of no live document zeroed."""
        engine = self.engine
        sink = sink_token_id(engine.tokenizer)
        ids = ([sink] if sink is not None else []) + list(query_ids)
        lead_in += 1 if sink is not None else 0
        position = self._manifest["query_position"] - (1 if sink is not None else 0)
        queries, scaling = engine.standalone_query_states(ids, position)
        queries = queries[:, min(lead_in, len(ids) - 1) :]
        keys = [s.keys for s in shards]
        if prefilter is not None:
            index = self._key_index(keys, masks, prefilter)
            found = index.candidates(queries, prefilter)
            return candidate_attention(queries, keys, masks, scaling, found, prefilter.tail_sample)
        return _store_attention(queries, keys, masks, scaling, engine.config.score_block)

    def _key_index(
        self,
        keys: Sequence[torch.Tensor],
        masks: Sequence[tuple[torch.Tensor, torch.Tensor]],
        prefilter: Prefilter,
    ) -> KeyIndex:
        """The index of the keys that can score (no sink, no deleted document's), built for
        `prefilter`'s lists and storage and kept until the store changes."""
        key = (self._state, prefilter.lists, prefilter.float16)
        if self._index is None or self._index[0] != key:
            self._index = None  # free the old index before building the next
            self._index = (key, KeyIndex(keys, [scoring for _, scoring in masks], prefilter))
        return self._index[1]

    def _token_masks(self, shards: Sequence[_Loaded], context: TokenizedContext) -> _Masks:
        """Which tokens take part in recall, per shard and in all, on the engine's device;
        kept until the store changes (every pass of every recall reads them)."""
        key = self._state
        if self._masks is None or self._masks[0] != key:
            per_shard = [self._live_tokens(loaded) for loaded in shards]
            present = torch.cat([in_softmax for in_softmax, _ in per_shard])
            doc_ids = torch.from_numpy(context.doc_ids).to(self.engine.device)
            masks = _Masks(per_shard, None if bool(present.all()) else present, doc_ids)
            self._masks = (key, masks)
        return self._masks[1]

    def _live_tokens(self, loaded: _Loaded) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens in the softmax, tokens that can score): a live document's sink takes part
        in the softmax but never scores; a deleted document takes part in nothing."""
        local = loaded.tokens.doc_ids.astype(np.int64)
        past = np.iinfo(np.int64).max
        # A token of no document (a sink) belongs to the document it opens, else to the one
        # it follows.
        following = np.minimum.accumulate(np.where(local >= 0, local, past)[::-1])[::-1]
        preceding = np.maximum.accumulate(np.where(local >= 0, local, -1))
        owner = loaded.document_ids[np.where(following != past, following, preceding)]
        deleted = np.isin(owner, np.fromiter(self.deleted, dtype=np.int64))
        device = self.engine.device
        return (
            torch.from_numpy(~deleted).to(device),
            torch.from_numpy((local >= 0) & ~deleted).to(device),
        )

    def _prior_scores(
        self, shards: Sequence[_Loaded], masks: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """``(query_heads, L)``: the prior question's head scores over the store, cached until
        the store changes."""
        key = self._state
        if self._prior is None or self._prior[0] != key:
            ids, lead_in = self.engine.query_ids(self.engine.config.prior_query)
            self._prior = (key, torch.cat(self._head_scores(shards, masks, ids, lead_in), dim=1))
        return self._prior[1]


def _store_attention(
    queries: torch.Tensor,
    shard_keys: Sequence[torch.Tensor],
    masks: Sequence[tuple[torch.Tensor, torch.Tensor]],
    scaling: float,
    block: int,
) -> list[torch.Tensor]:
    """`recall.attention_scores` over the keys of many shards as one context: per shard,
    ``(query_heads, L_shard)`` float32 attention averaged over query tokens, with the keys
    outside `masks[i][0]` left out of the softmax and the tokens outside `masks[i][1]` zeroed.
    Keys go to the queries' device one block at a time."""
    query_heads, query_len, head_dim = queries.shape
    kv_heads = shard_keys[0].shape[0]
    grouped = queries.reshape(kv_heads, query_heads // kv_heads * query_len, head_dim)
    blocks = [
        (index, start)
        for index, keys in enumerate(shard_keys)
        for start in range(0, keys.shape[1], block)
    ]

    # Most shards hold no deleted document: their blocks need no mask.
    hiding = [not bool(in_softmax.all()) for in_softmax, _ in masks]

    def logit_blocks() -> Iterator[torch.Tensor]:
        for index, start in blocks:
            part = shard_keys[index][:, start : start + block].to(grouped.device, grouped.dtype)
            logits = grouped_logits(grouped, part, scaling)
            if hiding[index]:
                visible = masks[index][0][start : start + block]
                logits.masked_fill_(~visible[:, None], -torch.inf)
            yield logits

    scores = [torch.zeros(query_heads, keys.shape[1], device=grouped.device) for keys in shard_keys]
    for (index, start), probabilities in zip(blocks, blockwise_softmax(logit_blocks), strict=True):
        width = probabilities.shape[1]
        scores[index][:, start : start + width] = mean_over_queries(probabilities, query_len)
    for index, (_, scoring) in enumerate(masks):
        scores[index][:, ~scoring] = 0.0
    return scores


def write_shard(
    directory: str | os.PathLike[str],
    engine: ILRe,
    documents: str | Sequence[str],
    metadata: Sequence[Mapping[str, Any]] | None = None,
    *,
    progress: bool | None = None,
    tokenized: Sequence[TokenizedContext] | None = None,
    budget_counts: Mapping[str, Sequence[int]] | None = None,
) -> str:
    """Encode `documents`, each its own stream, into a shard of the store in `directory`, not
    yet part of it: its name, for `CorpusStore.commit`. Needs no lock and no manifest, so any
    number of writers can run at once. A writer that dies leaves a ``pending-*`` directory
    that no recall reads.

    The host work before the encoding can be done elsewhere beforehand (`encode_corpus`
    does it on other Ray workers, ahead of the GPU): `tokenized`, each document's
    ``tokenize_each(engine.tokenizer, documents)`` context, in order; `budget_counts`, each
    document's length in reader tokens under a counter's name (``{counter.name: [...]}``, as
    `TokenCounter` counts; recall counts again under any other name). Without them both
    are computed here, with `engine.tokenizer` and `engine.counter`."""
    texts = as_documents(documents)
    if metadata is None:
        metadata = [{} for _ in texts]
    if len(metadata) != len(texts):
        raise ILReError(f"{len(texts)} documents but {len(metadata)} metadata entries")
    payload = json.loads(json.dumps([dict(m) for m in metadata], default=str))
    if tokenized is None:
        tokenized = tokenize_each(engine.tokenizer, texts)
    elif len(tokenized) != len(texts):
        raise ILReError(f"{len(texts)} documents but {len(tokenized)} tokenized contexts")
    elif any(t.documents != (text,) for t, text in zip(tokenized, texts, strict=True)):
        raise ILReError("each tokenized context must be its document's alone, in order")
    if budget_counts is None:
        budget_counts = {engine.counter.name: [engine.counter.count(text) for text in texts]}
    elif any(len(counts) != len(texts) for counts in budget_counts.values()):
        raise ILReError(f"budget_counts must hold {len(texts)} counts per counter")
    keys = [row.cpu() for row in engine.document_keys(tokenized, progress=progress)]
    record = persistence.Record(
        documents=tuple(texts),
        tokens=_concatenated(tokenized),
        keys=torch.cat(keys, dim=1),
        kept={},
        layer=engine.layer,
        sink=engine.config.sink,
        window=engine.config.window,
        model_name=engine.name,
        fingerprint=engine.fingerprint,
        tokenizer_name=engine.tokenizer_name,
        tokenizer_sha256=engine.tokenizer_sha256,
        query_position=_query_position(engine),
    )
    name = f"pending-{uuid.uuid4().hex[:12]}"
    counts = {counter: [int(c) for c in values] for counter, values in budget_counts.items()}
    extra = {"metadata": payload, "budget_counts": counts}
    persistence.write(record, Path(directory) / name, extra=extra)
    return name


def _query_position(engine: ILRe) -> int:
    """Where the store's queries begin: where every end-aligned document ends."""
    return engine.plan_segments(1, end_aligned=True)[0].end_position


def _concatenated(parts: Sequence[TokenizedContext]) -> dict[str, np.ndarray]:
    """Token arrays of independently tokenised one-document contexts, one after another: the
    document ids count documents within the shard, word ids keep increasing."""
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
    return {
        "input_ids": np.concatenate([p.input_ids for p in parts]),
        "doc_ids": np.concatenate(
            [np.where(p.doc_ids >= 0, index, -1) for index, p in enumerate(parts)]
        ).astype(np.int32),
        "offsets": np.concatenate([p.offsets for p in parts]),
        "word_ids": np.concatenate(
            [p.word_ids + start for p, start in zip(parts, starts, strict=True)]
        ),
    }


# -- the manifest ---------------------------------------------------------------------------------


def _commit(root: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (the caller holds the directory's lock), then remove
    shards it no longer names (left by a writer that died before committing)."""
    manifest = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["manifest_sha256"] = persistence.manifest_digest(manifest)
    scratch = root / f".{MANIFEST}.{uuid.uuid4().hex[:12]}"
    fileio.write_synced(scratch, json.dumps(manifest, indent=1).encode("utf-8"))
    os.replace(scratch, root / MANIFEST)
    fileio.fsync_directory(root)
    named = {entry["name"] for entry in manifest["shards"]}
    for path in root.iterdir():
        if path.is_dir() and _SHARD.fullmatch(path.name) and path.name not in named:
            shutil.rmtree(path, ignore_errors=True)


_KEYS = {
    "format",
    "format_version",
    "model_name",
    "model_fingerprint",
    "layer",
    "tokenizer_sha256",
    "query_position",
    "next_document",
    "shards",
    "deleted",
    "manifest_sha256",
}


def _read_manifest(root: Path, engine: ILRe) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise EncodedContextError(f"no corpus store at {root} (no {MANIFEST})") from error
    except OSError as error:
        raise EncodedContextError(f"cannot read {path}: {error}") from error
    try:
        manifest = json.loads(raw)
    except ValueError as error:
        raise EncodedContextError(f"{path} is damaged: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EncodedContextError(f"{root} does not hold an ILRe corpus store")
    if manifest.get("format_version") != FORMAT_VERSION or set(manifest) != _KEYS:
        raise EncodedContextError(f"{path} is invalid or of another format version")
    if manifest["manifest_sha256"] != persistence.manifest_digest(manifest):
        raise EncodedContextError(f"{path} is damaged (checksum mismatch)")
    if (
        manifest["model_fingerprint"] != engine.fingerprint
        or manifest["layer"] != engine.layer
        or manifest["tokenizer_sha256"] != engine.tokenizer_sha256
    ):
        raise EncodedContextError(
            f"{root} was encoded by {manifest['model_name']!r:.80} at layer "
            f"{manifest['layer']!r:.10} or with another tokenizer; this engine is "
            f"{engine.name!r} at layer {engine.layer}"
        )
    expected = _query_position(engine)
    if manifest["query_position"] != expected:
        raise EncodedContextError(
            f"{root} places its queries at {manifest['query_position']!r:.20}, this engine at "
            f"{expected} (another max_query_tokens): encode it again"
        )
    for entry in manifest["shards"]:
        if not isinstance(entry, dict) or not _SHARD.fullmatch(str(entry.get("name"))):
            raise EncodedContextError(f"{path} names an invalid shard")
    return manifest
