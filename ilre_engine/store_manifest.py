"""A corpus store's manifest, ``store.json``: what it holds, read strictly, and its commit.

The manifest records the encoding's identity (model, fingerprint, layer, tokenizer content:
`EncodingIdentity.manifest_fields`), where the store's queries begin, its shards (each one's
directory name, first document id, document and token counts), the deleted document ids,
the next document id and its own SHA-256 (`ilre_engine.manifest.digest`).

Reading refuses (`EncodedContextError`, naming the file) anything a store written by
`CorpusStore` cannot hold: a manifest that is not a regular file inside the directory or is
over `MAX_MANIFEST_BYTES`, unknown or missing keys, a value of the wrong type or out of
range, a shard listed twice, document ids that are not contiguous from 0 in shard order,
deleted ids that are not unique, sorted and held by a shard. A shard's directory must be a
real directory directly inside the store: a symlink is never followed (`shard_directory`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

from .errors import EncodedContextError
from .identity import EncodingIdentity
from .manifest import (
    CONTEXT_MANIFEST,
    CONTEXT_MANIFEST_MAX_BYTES,
    HEX64,
    KEYED_DIGEST_KEY,
    MAX_COUNT,
    SHARD_KEYS,
    STORE_IDENTITY_KEYS,
    STORE_KEYS,
    STORE_OPTIONAL_KEYS,
    commit,
    depth,
    invalid,
    keyed_digest,
    parse_json,
    read_capped,
    require_digest,
    require_int,
    require_keys,
    require_str,
)

FORMAT = "ilre-corpus-store"
FORMAT_VERSION = 1
MANIFEST = "store.json"
MAX_MANIFEST_BYTES = 64 << 20
"""A larger ``store.json`` is refused unread (a store of 64 MiB of shard entries and deleted
ids would hold hundreds of thousands of shards)."""
SHARD_NAME = re.compile(r"shard-[0-9a-f]{12}")
_MAX_DEPTH = 3
"""A valid ``store.json`` nests lists and objects 3 deep (the shards' entries)."""


def new_manifest(identity: EncodingIdentity, query_position: int) -> dict[str, Any]:
    """The manifest of an empty store encoded with `identity`."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **identity.manifest_fields(STORE_IDENTITY_KEYS),
        "query_position": query_position,
        "next_document": 0,
        "shards": [],
        "deleted": [],
    }


def read_manifest(
    root: Path, identity: EncodingIdentity, query_position: int, key: bytes | None = None
) -> dict[str, Any]:
    """The manifest of the store in `root`, checked against its schema, its digest, the
    engine's `identity` and where the engine places a store's queries; with `key`, also its
    keyed digest (`require_authentic`)."""
    path = root / MANIFEST
    absent = f"no corpus store at {root} (no {MANIFEST})"
    raw = read_capped(root, MANIFEST, MAX_MANIFEST_BYTES, absent)
    manifest = validate(parse_json(raw, path), path)
    if key is not None:
        require_authentic(root, manifest, key)
    EncodingIdentity.from_manifest(manifest, path).check(identity, root)
    if manifest["query_position"] != query_position:
        raise EncodedContextError(
            f"{root} places its queries at {manifest['query_position']}, this engine at "
            f"{query_position} (another max_query_tokens): encode it again"
        )
    return manifest


def validate(manifest: Any, path: Path) -> dict[str, Any]:
    """`manifest` when it meets the schema of a store's manifest (identity values are checked
    for their types by `EncodingIdentity.from_manifest`); `EncodedContextError` otherwise."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EncodedContextError(f"{path.parent} does not hold an ILRe corpus store")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise EncodedContextError(
            f"{path} is of format version {version}; this ILRe reads {FORMAT_VERSION}: upgrade ilre"
        )
    if depth(manifest, _MAX_DEPTH) > _MAX_DEPTH:
        raise invalid(path, "nested too deep")
    optional = manifest.keys() & STORE_OPTIONAL_KEYS
    require_keys(path, manifest, "the manifest", STORE_KEYS | optional)
    require_int(path, version, "format_version", FORMAT_VERSION, FORMAT_VERSION)
    require_digest(path, manifest)
    if KEYED_DIGEST_KEY in manifest:
        require_str(path, manifest[KEYED_DIGEST_KEY], KEYED_DIGEST_KEY, HEX64)
    require_int(path, manifest["query_position"], "query_position", 1)
    next_document = require_int(path, manifest["next_document"], "next_document")
    shards = manifest["shards"]
    if not isinstance(shards, list):
        raise invalid(path, "shards must be a list")
    expected_first, names = 0, set()
    for index, entry in enumerate(shards):
        what = f"shards[{index}]"
        require_keys(path, entry, what, SHARD_KEYS)
        name = require_str(path, entry["name"], f"{what}.name", SHARD_NAME)
        if name in names:
            raise invalid(path, f"shard {name} is listed twice")
        names.add(name)
        first = require_int(path, entry["first_document"], f"{what}.first_document")
        if first != expected_first:
            raise invalid(path, f"{what} starts at document {first}, expected {expected_first}")
        expected_first += require_int(path, entry["documents"], f"{what}.documents", 1)
        require_int(path, entry["tokens"], f"{what}.tokens", 1)
    if next_document != expected_first or next_document > MAX_COUNT:
        raise invalid(path, f"next_document is {next_document}, the shards hold {expected_first}")
    deleted = manifest["deleted"]
    if not isinstance(deleted, list):
        raise invalid(path, "deleted must be a list")
    previous = -1
    for value in deleted:
        require_int(path, value, "a deleted document id", previous + 1, next_document - 1)
        previous = value
    return manifest


def shard_directory(root: Path, name: str) -> Path:
    """``root / name`` when it is a real directory directly in `root` (not a symlink, which
    is never followed, even to another shard); `EncodedContextError` otherwise."""
    path = root / name
    try:
        info = path.lstat()
    except FileNotFoundError as error:
        raise EncodedContextError(f"{root} is incomplete: {name} is missing") from error
    except OSError as error:
        raise EncodedContextError(f"cannot read {path}: {error.strerror}") from error
    if stat.S_ISLNK(info.st_mode):
        raise EncodedContextError(f"{root}: {name} is a symlink, which a store never follows")
    if not stat.S_ISDIR(info.st_mode):
        raise EncodedContextError(f"{root}: {name} is not a directory")
    return path


def require_authentic(root: Path, manifest: dict[str, Any], key: bytes) -> None:
    """Refuse a store whose manifest has no keyed digest under `key`, or another one: it was
    written without the key, or changed since. The digest covers the manifest and each
    shard's own manifest, which names its data files by SHA-256 (`CorpusStore.check`
    verifies those files whole; recall checks the memory-mapped keys' size only)."""
    recorded = manifest.get(KEYED_DIGEST_KEY)
    if recorded is None:
        raise EncodedContextError(f"{root} is not authenticated: it was not written with a key")
    if not hmac.compare_digest(recorded, keyed_digest(manifest, key, _shard_bound(root, manifest))):
        raise EncodedContextError(
            f"{root} fails authentication: it was changed, or written with another key"
        )


def _shard_bound(root: Path, manifest: dict[str, Any]) -> bytes:
    """What a keyed digest vouches for beyond the manifest: each shard's manifest digest."""
    lines = []
    for entry in manifest["shards"]:
        shard = shard_directory(root, entry["name"])
        absent = f"{root} is incomplete: {shard.name} has no {CONTEXT_MANIFEST}"
        data = read_capped(shard, CONTEXT_MANIFEST, CONTEXT_MANIFEST_MAX_BYTES, absent)
        lines.append(f"{entry['name']} {hashlib.sha256(data).hexdigest()}\n")
    return "".join(lines).encode("ascii")


def commit_manifest(root: Path, manifest: dict[str, Any], key: bytes | None = None) -> None:
    """Commit `manifest` atomically (the caller holds the store's lock), with its keyed
    digest under `key` if given, then remove the shard directories it does not name (left by
    a writer that died before committing); symlinks and anything else are left alone. A
    store that has a keyed digest is never committed without one."""
    if key is None and KEYED_DIGEST_KEY in manifest:
        raise EncodedContextError(f"{root} is authenticated: open it with its key to change it")
    if key is not None:
        bound = _shard_bound(root, manifest)
        manifest = {**manifest, KEYED_DIGEST_KEY: keyed_digest(manifest, key, bound)}
    commit(root, MANIFEST, manifest)
    named = {entry["name"] for entry in manifest["shards"]}
    for path in root.iterdir():
        unnamed = SHARD_NAME.fullmatch(path.name) and path.name not in named
        if unnamed and stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
