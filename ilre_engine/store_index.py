"""Re-runnable indexing of a corpus store (`CorpusStore.index`): each document indexed under a
caller's id (a source path, say) carries that id and a digest of its content, so indexing
the same sources again encodes only what changed.

A shard written by `CorpusStore.index` saves, beside its metadata, a ``sources`` payload:
per document, ``[id, content_sha256]``. Documents added by `CorpusStore.add` have none and
are never touched by indexing. The semantics are those of LangChain's indexing API: an
unchanged document is skipped, a changed one replaced (the old one deleted, the new one
encoded), and with ``cleanup="full"`` a live document whose id is not indexed again is
deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EncodedContextError, ILReError
from .manifest import HEX64

SOURCES = "sources"
"""The name of the shard payload that holds each document's id and content digest."""
MAX_ID_CHARS = 4096


@dataclass(frozen=True)
class IndexReport:
    """What `CorpusStore.index` did, by document id.

    Attributes:
        added: the ids of documents indexed for the first time.
        updated: the new ids of documents whose content changed (their old ids are deleted).
        skipped: the ids of unchanged documents (not encoded again).
        deleted: the ids deleted because their source was not indexed again
            (``cleanup="full"``).
    """

    added: list[int]
    updated: list[int]
    skipped: list[int]
    deleted: list[int]

    def __str__(self) -> str:
        return (
            f"added {len(self.added)}, updated {len(self.updated)}, "
            f"skipped {len(self.skipped)}, deleted {len(self.deleted)} documents"
        )


@dataclass(frozen=True)
class IndexPlan:
    """What an index run must do against the store's current sources.

    Attributes:
        encode: positions (in the caller's documents) to encode: new and changed ones.
        replaced: for each changed position, the live document id it replaces.
        skipped: the live ids of unchanged documents.
        removed: live ids whose source is gone (empty unless cleanup is "full").
    """

    encode: list[int]
    replaced: dict[int, int]
    skipped: list[int]
    removed: list[int]


def content_sha256(text: str, metadata: Mapping[str, Any]) -> str:
    """SHA-256 of a document's text and the canonical JSON of its stored metadata."""
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    digest.update(canonical.encode("ascii"))
    return digest.hexdigest()


def checked_ids(ids: Any, count: int) -> list[str]:
    """`ids` as a list of `count` distinct, non-empty strings; `ILReError` naming ``ids``."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ILReError(f"ids must be a sequence of strings, got {type(ids).__name__}")
    if len(ids) != count:
        raise ILReError(f"{count} documents but {len(ids)} ids")
    for value in ids:
        if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
            raise ILReError(f"each of ids must be a non-empty string, got {value!r:.80}")
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ILReError(f"ids must be distinct; repeated: {duplicates}")
    return list(ids)


def checked_sources(payload: Any, documents: int, where: Path) -> list[tuple[str, str] | None]:
    """A shard's ``sources`` payload (None: a shard of `CorpusStore.add`) as one entry per
    document; `EncodedContextError` when it is not ``documents`` ``[id, sha256]`` pairs."""
    if payload is None:
        return [None] * documents
    if not isinstance(payload, list) or len(payload) != documents:
        raise EncodedContextError(f"{where}: {SOURCES} must list each of its documents")
    result: list[tuple[str, str] | None] = []
    for entry in payload:
        valid = (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and 0 < len(entry[0]) <= MAX_ID_CHARS
            and isinstance(entry[1], str)
            and HEX64.fullmatch(entry[1]) is not None
        )
        if not valid:
            raise EncodedContextError(f"{where}: invalid {SOURCES} entry {entry!r:.80}")
        result.append((entry[0], entry[1]))
    return result


def plan(
    current: Mapping[str, tuple[int, str]],
    ids: Sequence[str],
    digests: Sequence[str],
    full_cleanup: bool,
) -> IndexPlan:
    """What indexing `ids` with content `digests` must do, given the store's live sources
    `current` (id -> (document id, content digest))."""
    encode, replaced, skipped = [], {}, []
    for position, (source, digest) in enumerate(zip(ids, digests, strict=True)):
        found = current.get(source)
        if found is None:
            encode.append(position)
        elif found[1] == digest:
            skipped.append(found[0])
        else:
            encode.append(position)
            replaced[position] = found[0]
    wanted = set(ids)
    removed = sorted(d for s, (d, _) in current.items() if s not in wanted) if full_cleanup else []
    return IndexPlan(encode, replaced, skipped, removed)
