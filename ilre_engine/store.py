"""`CorpusStore`: a corpus of any size on disk, recalled with one query pass over all of it.

Every document is its own stream (`Encoder.encode_tokens(..., end_aligned=True)`): it ends at
the position where the query begins, or is read in window-bounded segments that all end
there (`ilre_engine.segments`). So documents encode independently, a corpus has no length
limit, and one query pass serves every document: the query is read on its own after the
sink token (`_StoreKeys.query_stream`), and every key of every document lies at a
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

Recall is the engine's own pipeline (`ilre_engine.scoring`), the store a source of keys for
it like one encoded context: exact, the softmax of each query head runs over every key of
every live document (`recall.sharded_attention`), then the prior, pooling within documents,
further recall passes (`ILReConfig.recall_passes`, each over the whole store) and budgeted
selection of whole units. Opt-in, a
`Prefilter` narrows each pass's softmax to the candidates of an index of the keys
(`ilre_engine.prefilter`, FAISS), for stores where reading every key is too slow. An
engine with a `Hybrid` mixes in its sentence-embedding prior, as for one context: the
store's passages are embedded at its first recall and kept in memory until it changes.

Longer than most modules because it owns a durable format of its own (the manifest, its
commits, pending shards) besides recall over many shards; the shards themselves are
`persistence`'s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from . import fileio, persistence, store_index
from .budget import TokenCounter
from .context import RecallCache, TokenizedContext
from .engine import ILRe
from .errors import (
    ConfigError,
    DirectoryError,
    EmptyInputError,
    EncodedContextError,
    ILReError,
    UnknownDocumentError,
)
from .inputs import as_documents
from .prefilter import KeyIndex, Prefilter, candidate_attention
from .recall import sharded_attention
from .results import RecallResult
from .scoring import QueryStream
from .store_index import SOURCES, IndexReport, content_sha256
from .store_manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    commit_manifest,
    new_manifest,
    read_manifest,
    shard_directory,
)
from .tokenization import sink_token_id, tokenize_each

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "CorpusStore", "IndexReport", "write_shard"]
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

    Its manifest's SHA-256 reveals damage, not editing (docs/FORMAT.md): to know a store
    copied from elsewhere is the one its writer made, create it with a `key` (bytes kept
    secret) and open it with the same key, which every change then needs.
    """

    def __init__(
        self, directory: Path, engine: ILRe, manifest: dict[str, Any], key: bytes | None = None
    ) -> None:
        self.directory = directory
        self.engine = engine
        self._key = key
        self._manifest = manifest
        self._loaded: dict[str, _Loaded] = {}
        self._sources: dict[str, list[tuple[str, str] | None]] = {}
        self._cache: _StateCache | None = None

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], engine: ILRe, *, key: bytes | None = None
    ) -> CorpusStore:
        """An empty store in `directory` (created if needed); refuses one that holds a store
        (`DirectoryError`, also when `directory` is a file or cannot be created).

        `key`: sign every commit of the manifest with an HMAC-SHA256 under it (covering each
        shard's manifest, which names its files by SHA-256), so `open` with the key can tell
        the store is its writer's."""
        _require_engine(engine)
        key = _checked_key(key)
        root = persistence.make_directory(directory)
        with fileio.exclusive_directory_lock(root):
            if os.path.lexists(root / MANIFEST):
                raise DirectoryError(f"{root} already holds a corpus store: open it instead")
            manifest = new_manifest(engine.identity, _query_position(engine))
            commit_manifest(root, manifest, key)
        return cls(root, engine, manifest, key)

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], engine: ILRe, *, key: bytes | None = None
    ) -> CorpusStore:
        """The store in `directory`; `EncodedContextError` when it is missing, damaged, or
        was encoded by another model, layer or tokenizer, and with `key` (as given to
        `create`) when its manifest was not signed with that key, or was changed since. Run
        `check` once on a store copied from elsewhere: it reads every data file whole."""
        _require_engine(engine)
        key = _checked_key(key)
        root = Path(directory)
        return cls(root, engine, _read_manifest(root, engine, key), key)

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
        """A live document's text and metadata; `UnknownDocumentError` (a `KeyError`) for
        an id the store does not hold live."""
        document_id = _document_id(document_id, "document_id")
        for shard in self._shards:
            index = document_id - shard.first_document
            if 0 <= index < shard.documents and document_id not in self.deleted:
                loaded = self._load(shard)
                return loaded.tokens.documents[index], loaded.metadata[index]
        raise UnknownDocumentError(f"no live document {document_id} in {self.directory}")

    def source_ids(self) -> dict[str, int]:
        """The caller's id of each live document indexed by `index`, and its document id."""
        return {source: found[0] for source, found in self._live_sources(self._manifest).items()}

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

    def index(
        self,
        documents: str | Sequence[str],
        metadata: Sequence[Mapping[str, Any]] | None = None,
        *,
        ids: Sequence[str],
        cleanup: Literal["full"] | None = None,
        progress: bool | None = None,
    ) -> IndexReport:
        """Bring the store up to date with `documents`, each under its caller's id in `ids`
        (a source path, say; distinct strings), in one atomic commit under the store's lock
        (held while the new documents encode: other writers to the store wait).

        A document whose id the store holds with the same text and metadata is skipped (not
        encoded); one whose content changed is replaced (its old id deleted, the new content
        encoded); a new id is added. With ``cleanup="full"``, every live document indexed
        under an id not in `ids` is deleted; documents of `add` (no id) are never touched.
        Re-indexing unchanged documents encodes nothing and commits nothing.

        `metadata` and `progress` are as for `add`. Returns what was done, by document id
        (`IndexReport`; ``str()`` of it is a one-line summary)."""
        texts = as_documents(documents)
        payload = _metadata_payload(metadata, len(texts))
        sources = store_index.checked_ids(ids, len(texts))
        if cleanup not in (None, "full"):
            raise ConfigError(f'cleanup must be None or "full", got {cleanup!r:.40}')
        digests = [content_sha256(t, m) for t, m in zip(texts, payload, strict=True)]
        with fileio.exclusive_directory_lock(self.directory):
            manifest = _read_manifest(self.directory, self.engine, self._key)
            work = store_index.plan(
                self._live_sources(manifest), sources, digests, cleanup == "full"
            )
            new_ids: list[int] = []
            if work.encode:
                pending = write_shard(
                    self.directory,
                    self.engine,
                    [texts[i] for i in work.encode],
                    [payload[i] for i in work.encode],
                    progress=progress,
                    sources=[(sources[i], digests[i]) for i in work.encode],
                )
                new_ids = self._take_pending(manifest, [pending])[0]
            gone = set(work.replaced.values()) | set(work.removed)
            manifest["deleted"] = sorted(set(manifest["deleted"]) | gone)
            if work.encode or gone:
                commit_manifest(self.directory, manifest, self._key)
            self._manifest = manifest
        new_id = dict(zip(work.encode, new_ids, strict=True))
        return IndexReport(
            added=[new_id[p] for p in work.encode if p not in work.replaced],
            updated=[new_id[p] for p in work.encode if p in work.replaced],
            skipped=work.skipped,
            deleted=work.removed,
        )

    def commit(self, pending: Sequence[str]) -> list[list[int]]:
        """Make shards written by `write_shard` (their pending names) part of the store in one
        atomic commit, in order; each one's document ids. Writers elsewhere (other processes,
        a Ray cluster on a shared file system) write shards, one process commits them."""
        if isinstance(pending, str) or not isinstance(pending, Sequence):
            raise ConfigError("pending must be a list of the names write_shard returned")
        with fileio.exclusive_directory_lock(self.directory):
            manifest = _read_manifest(self.directory, self.engine, self._key)
            ids = self._take_pending(manifest, pending)
            commit_manifest(self.directory, manifest, self._key)
            self._manifest = manifest
        return ids

    def _take_pending(self, manifest: dict[str, Any], pending: Sequence[str]) -> list[list[int]]:
        """Move pending shards into the store and list them in `manifest` (not yet committed;
        the caller holds the lock); each one's document ids."""
        ids = []
        for name in pending:
            if not isinstance(name, str) or not _PENDING.fullmatch(name):
                raise ILReError(f"{name!r:.80} is not a pending shard of write_shard")
            source = shard_directory(self.directory, name)
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
        return ids

    def discard_pending(self) -> list[str]:
        """Remove the shards written but never committed (a writer died, or its commit was
        abandoned); their names. Call it when no writer is running. A symlink of a pending
        name is removed, never followed."""
        with fileio.exclusive_directory_lock(self.directory):
            names = sorted(p.name for p in self.directory.iterdir() if _PENDING.fullmatch(p.name))
            for name in names:
                path = self.directory / name
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    shutil.rmtree(path)
                else:
                    path.unlink()
        return names

    def delete(self, document_ids: Iterable[int]) -> None:
        """Delete documents: the committed manifest lists them, their shards stay as they are
        and recall reads past them. An id the store does not hold live, or a value that is no
        document id, raises `UnknownDocumentError` (a `KeyError`) and deletes nothing."""
        if isinstance(document_ids, (str, bytes)) or not isinstance(document_ids, Iterable):
            raise UnknownDocumentError(
                f"document_ids must be a list of document ids, got {type(document_ids).__name__}"
            )
        wanted = {_document_id(value, "document_ids") for value in document_ids}
        with fileio.exclusive_directory_lock(self.directory):
            manifest = _read_manifest(self.directory, self.engine, self._key)
            gone = set(manifest["deleted"])
            missing = sorted(i for i in wanted if not 0 <= i < manifest["next_document"])
            missing += sorted(wanted & gone)
            if missing:
                raise UnknownDocumentError(f"no live documents {missing[:10]} in {self.directory}")
            manifest["deleted"] = sorted(gone | wanted)
            commit_manifest(self.directory, manifest, self._key)
            self._manifest = manifest

    def check(self) -> None:
        """Every check of loading, each data file's SHA-256 included (recall maps the keys
        without reading them whole): `EncodedContextError` on any damage."""
        for shard in self._shards:
            persistence.check_files(shard_directory(self.directory, shard.name), self.engine)
            self._load(shard)
            self._shard_sources(shard.name, shard.documents)

    def copy_to(self, directory: str | os.PathLike[str]) -> CorpusStore:
        """A copy of this store in `directory` (created if needed; a store there is replaced
        by one atomic commit), opened with the same engine. Only the shards the manifest
        names are copied, and of them only regular files: no symlink is followed or copied."""
        target = persistence.make_directory(directory)
        if target.resolve() == self.directory.resolve():
            return self
        with (
            fileio.exclusive_directory_lock(self.directory),
            fileio.exclusive_directory_lock(target),
        ):
            manifest = _read_manifest(self.directory, self.engine, self._key)
            for entry in manifest["shards"]:
                _copy_shard(shard_directory(self.directory, entry["name"]), target)
            commit_manifest(target, manifest, self._key)
        return CorpusStore.open(target, self.engine, key=self._key)

    def _live_sources(self, manifest: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
        """Each live indexed document's id -> (document id, content digest)."""
        deleted = set(manifest["deleted"])
        found: dict[str, tuple[int, str]] = {}
        for entry in manifest["shards"]:
            sources = self._shard_sources(entry["name"], entry["documents"])
            for offset, source in enumerate(sources):
                document_id = entry["first_document"] + offset
                if source is None or document_id in deleted:
                    continue
                if source[0] in found:
                    raise EncodedContextError(
                        f"{self.directory}: two live documents are indexed as {source[0]!r:.80}"
                    )
                found[source[0]] = (document_id, source[1])
        return found

    def _shard_sources(self, name: str, documents: int) -> list[tuple[str, str] | None]:
        """A shard's ``sources`` payload, checked, read once (shards never change)."""
        if name not in self._sources:
            path = shard_directory(self.directory, name)
            payload = persistence.read_extra(path, self.engine, SOURCES)
            self._sources[name] = store_index.checked_sources(payload, documents, path)
        return self._sources[name]

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
        the time (docs/lab-notes.md, "Approximate prefilter (FAISS)")."""
        pipeline = self.engine.pipeline
        pipeline.query_ids(query)  # a bad query is refused before any shard is read
        return pipeline.recall(
            self._keys(prefilter), query, budget_tokens=budget_tokens, ratio=ratio
        )

    def token_scores(
        self, query: str, *, prefilter: Prefilter | None = None
    ) -> dict[int, np.ndarray]:
        """Per live document (by store id), the recall score of each of its model tokens for
        `query` (the mean of the passes' pooled scores, each normalised to sum 1 over the
        store); `prefilter` as for `recall`."""
        pipeline = self.engine.pipeline
        first = pipeline.query_ids(query)
        keys = self._keys(prefilter)
        scores = pipeline.token_scores(keys, query, first)
        doc_ids = keys.tokens.doc_ids
        return {int(i): scores[doc_ids == i] for i in np.flatnonzero(keys.cache_state.live)}

    def _keys(self, prefilter: Prefilter | None) -> _StoreKeys:
        """The live documents as one source of keys for the recall pipeline."""
        shards = [self._load(shard) for shard in self._shards]
        if not len(self):
            raise EmptyInputError(f"the store at {self.directory} holds no documents")
        if self._cache is None or self._cache.state != self._state:
            self._cache = None  # free the old caches (a prefilter's index) before the next
            context, live = self._combine(shards)
            masks = self._token_masks(shards, context)
            self._cache = _StateCache(self._state, context, live, masks)
        return _StoreKeys(self, shards, self._cache, prefilter)

    def _load(self, shard: _Shard) -> _Loaded:
        if shard.name not in self._loaded:
            path = shard_directory(self.directory, shard.name)
            record, extra = persistence.read(path, self.engine, mapped=True)
            if (len(record.documents), int(record.keys.shape[1])) != (
                shard.documents,
                shard.tokens,
            ):
                raise EncodedContextError(f"{path} does not match {MANIFEST}")
            metadata, counts = _checked_payloads(path, extra, shard.documents)
            ids = list(range(shard.first_document, shard.first_document + shard.documents))
            self._loaded[shard.name] = _Loaded(
                keys=self._resident(record.keys),
                tokens=TokenizedContext(documents=record.documents, **record.tokens),
                document_ids=np.asarray(ids, dtype=np.int64),
                metadata=metadata,
                budget_counts=counts,
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

    def _combine(self, shards: Sequence[_Loaded]) -> tuple[TokenizedContext, np.ndarray]:
        """All shards' tokens as one context whose documents are indexed by store id (deleted
        documents' tokens belong to none), and which store ids are live."""
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

    def _token_masks(self, shards: Sequence[_Loaded], context: TokenizedContext) -> _Masks:
        """Which tokens take part in recall, per shard and in all, on the engine's device."""
        per_shard = [self._live_tokens(loaded) for loaded in shards]
        present = torch.cat([in_softmax for in_softmax, _ in per_shard])
        doc_ids = torch.from_numpy(context.doc_ids).to(self.engine.device)
        return _Masks(per_shard, None if bool(present.all()) else present, doc_ids)

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


@dataclass
class _StateCache:
    """What recalls keep while the store's shards and deleted documents stay as they are
    (`state`): all shards' tokens as one context, the live store ids, the token masks, the
    recall pipeline's cache, and a prefilter's index by its lists and storage."""

    state: tuple
    context: TokenizedContext
    live: np.ndarray
    masks: _Masks
    recall: RecallCache = field(default_factory=RecallCache)
    index: tuple[tuple, KeyIndex] | None = None


@dataclass(frozen=True)
class _StoreKeys:
    """A store's live documents as one `scoring.KeySource`: a question is read on its own
    after the sink token, at the position every document ends at, and attends to the keys
    of every shard in one softmax (or to a `Prefilter`'s candidates)."""

    store: CorpusStore
    shards: list[_Loaded]
    cache_state: _StateCache
    prefilter: Prefilter | None

    @property
    def tokens(self) -> TokenizedContext:
        return self.cache_state.context

    @property
    def cache(self) -> RecallCache:
        return self.cache_state.recall

    def query_stream(self) -> QueryStream:
        engine = self.store.engine
        sink = sink_token_id(engine.tokenizer)
        return QueryStream(
            self.store._manifest["query_position"],
            engine.config.sink,
            engine.config.window,
            prefix=() if sink is None else (sink,),
        )

    def segments(self) -> torch.Tensor:
        return self.cache_state.masks.doc_ids

    def in_softmax(self) -> torch.Tensor | None:
        return self.cache_state.masks.present

    def attention(self, queries: torch.Tensor, scaling: float, *, exact: bool) -> torch.Tensor:
        keys = [s.keys for s in self.shards]
        masks = self.cache_state.masks.shards
        if self.prefilter is None or exact:
            block = self.store.engine.config.score_block
            return torch.cat(sharded_attention(queries, keys, masks, scaling, block), dim=1)
        found = self._key_index(keys, masks).candidates(queries, self.prefilter)
        tail = self.prefilter.tail_sample
        return torch.cat(candidate_attention(queries, keys, masks, scaling, found, tail), dim=1)

    def input_tokens(self, counter: TokenCounter) -> int:
        return self.store._input_tokens(self.shards, self.cache_state.live)

    def _key_index(
        self, keys: Sequence[torch.Tensor], masks: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> KeyIndex:
        """The index of the keys that can score (no sink, no deleted document's), built for
        the prefilter's lists and storage and kept while the store stays as it is."""
        prefilter, cache = self.prefilter, self.cache_state
        key = (prefilter.lists, prefilter.float16)
        if cache.index is None or cache.index[0] != key:
            cache.index = None  # free the old index before building the next
            cache.index = (key, KeyIndex(keys, [scoring for _, scoring in masks], prefilter))
        return cache.index[1]


def write_shard(
    directory: str | os.PathLike[str],
    engine: ILRe,
    documents: str | Sequence[str],
    metadata: Sequence[Mapping[str, Any]] | None = None,
    *,
    progress: bool | None = None,
    tokenized: Sequence[TokenizedContext] | None = None,
    budget_counts: Mapping[str, Sequence[int]] | None = None,
    sources: Sequence[tuple[str, str]] | None = None,
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
    are computed here, with `engine.tokenizer` and `engine.counter`. `sources`: each
    document's id and content digest, as `CorpusStore.index` records them."""
    if not Path(directory).is_dir():
        raise DirectoryError(f"{directory} is not a directory: create the store first")
    texts = as_documents(documents)
    payload = _metadata_payload(metadata, len(texts))
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
    keys = [row.cpu() for row in engine.encoder.document_keys(tokenized, progress=progress)]
    record = persistence.Record(
        documents=tuple(texts),
        tokens=_concatenated(tokenized),
        keys=torch.cat(keys, dim=1),
        kept={},
        identity=engine.identity,
        query_position=_query_position(engine),
    )
    name = f"pending-{uuid.uuid4().hex[:12]}"
    counts = {counter: [int(c) for c in values] for counter, values in budget_counts.items()}
    extra: dict[str, Any] = {"metadata": payload, "budget_counts": counts}
    if sources is not None:
        extra[SOURCES] = [[source, digest] for source, digest in sources]
    persistence.write(record, Path(directory) / name, extra=extra)
    return name


def _require_engine(engine: Any) -> None:
    if not isinstance(engine, ILRe):
        raise ConfigError(f"engine must be an ILRe, got {type(engine).__name__}")


def _checked_key(key: Any) -> bytes | None:
    if key is not None and (not isinstance(key, (bytes, bytearray)) or not key):
        raise ConfigError(f"key must be non-empty bytes, got {type(key).__name__}")
    return None if key is None else bytes(key)


def _document_id(value: Any, argument: str) -> int:
    """`value` as a document id: an integer (a bool is none)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise UnknownDocumentError(
            f"{argument} must hold integer document ids, got {value!r:.40} ({type(value).__name__})"
        )
    return int(value)


def _metadata_payload(metadata: Any, count: int) -> list[dict[str, Any]]:
    """`metadata` (None, or one mapping per document) as the JSON a shard stores: values JSON
    cannot hold become their ``str``; `ConfigError` naming ``metadata`` otherwise."""
    if metadata is None:
        return [{} for _ in range(count)]
    if isinstance(metadata, (str, bytes, Mapping)) or not isinstance(metadata, Sequence):
        raise ConfigError(
            f"metadata must be a list of mappings, one per document, got {type(metadata).__name__}"
        )
    if len(metadata) != count:
        raise ConfigError(f"{count} documents but {len(metadata)} metadata entries")
    for entry in metadata:
        if not isinstance(entry, Mapping):
            raise ConfigError(f"each metadata entry must be a mapping, got {entry!r:.40}")
    try:
        return json.loads(json.dumps([dict(m) for m in metadata], default=str))
    except (TypeError, ValueError, RecursionError) as error:
        raise ConfigError(f"metadata cannot be stored as JSON: {error}") from error


def _checked_payloads(
    path: Path, extra: Mapping[str, Any], documents: int
) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """A shard's metadata (a mapping per document) and budget counts (per counter name, a
    non-negative count per document), or `EncodedContextError`."""
    metadata = extra.get("metadata")
    if (
        not isinstance(metadata, list)
        or len(metadata) != documents
        or not all(isinstance(m, dict) for m in metadata)
    ):
        raise EncodedContextError(f"{path}: metadata must hold a mapping per document")
    counts = extra.get("budget_counts", {})
    valid = isinstance(counts, dict) and all(
        isinstance(values, list)
        and len(values) == documents
        and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in values)
        for values in counts.values()
    )
    if not valid:
        raise EncodedContextError(f"{path}: budget_counts must hold a count per document")
    return metadata, counts


def _copy_shard(source: Path, target_root: Path) -> None:
    """Copy a shard's regular files (never a symlink) into `target_root` under the same name,
    unless a directory of that name is there already (shard names are never reused)."""
    destination = target_root / source.name
    if os.path.lexists(destination):
        shard_directory(target_root, source.name)  # a symlink there is refused, not trusted
        return
    scratch = target_root / f".copy-{uuid.uuid4().hex[:12]}"
    scratch.mkdir()
    for entry in source.iterdir():
        if stat.S_ISREG(os.lstat(entry).st_mode):
            shutil.copyfile(entry, scratch / entry.name, follow_symlinks=False)
            fileio.fsync_file(scratch / entry.name)
    os.replace(scratch, destination)


def _query_position(engine: ILRe) -> int:
    """Where the store's queries begin: where every end-aligned document ends."""
    return engine.encoder.plan_segments(1, end_aligned=True)[0].end_position


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


def _read_manifest(root: Path, engine: ILRe, key: bytes | None) -> dict[str, Any]:
    """The store's checked manifest (`store_manifest.read_manifest`), each shard it names a
    real directory of the store."""
    manifest = read_manifest(root, engine.identity, _query_position(engine), key)
    for entry in manifest["shards"]:
        shard_directory(root, entry["name"])
    return manifest
