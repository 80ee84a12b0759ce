"""Manifests: the JSON file at the top of a saved context (``manifest.json``) or a corpus store
(``store.json``) that names its data and is replaced in one atomic commit.

One reader and one writer serve both formats. Reading trusts nothing: the file must be a
regular file whose resolved path lies directly in its directory, it is read with a size cap
(never blocking on a FIFO), parsed as strict JSON (UTF-8, no duplicate keys, no NaN or
Infinity, bounded nesting) and checked field by field with the schema helpers below; every
failure is an `EncodedContextError` naming the file. Writing seals the manifest with its own
digest (`digest`), writes a synced scratch file and renames it over the old one.

The schemas' key sets of both formats live here, so a field is added in one place.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import fileio
from .errors import EncodedContextError

MAX_COUNT = 1 << 40
"""Bound on any declared count, size, position or dimension: far beyond any real corpus."""
DIGEST_KEY = "manifest_sha256"
KEYED_DIGEST_KEY = "manifest_hmac"
"""The optional keyed digest of a store's manifest (`keyed_digest`)."""
HEX64 = re.compile(r"[0-9a-f]{64}")

CONTEXT_MANIFEST = "manifest.json"
CONTEXT_MANIFEST_MAX_BYTES = 1 << 20
"""A saved context's manifest (`ilre_engine.persistence`): its name, and its size limit."""
CONTEXT_KEYS_V1 = frozenset(
    {
        "format",
        "format_version",
        "model_name",
        "model_fingerprint",
        "layer",
        "sink",
        "window",
        "tokenizer",
        "num_tokens",
        "num_documents",
        "kept",
        "shapes",
        "files",
    }
)
CONTEXT_KEYS_V2 = CONTEXT_KEYS_V1 | {"tokenizer_sha256", DIGEST_KEY}
CONTEXT_KEYS_V3 = CONTEXT_KEYS_V2 | {"query_position"}
"""A saved context's manifest, by format version (`ilre_engine.persistence`)."""

STORE_IDENTITY_KEYS = ("model_name", "model_fingerprint", "layer", "tokenizer_sha256")
"""What a store's manifest records of the engine (`EncodingIdentity.manifest_fields`)."""
STORE_KEYS = frozenset(
    {
        "format",
        "format_version",
        *STORE_IDENTITY_KEYS,
        "query_position",
        "next_document",
        "shards",
        "deleted",
        DIGEST_KEY,
    }
)
STORE_OPTIONAL_KEYS = frozenset({KEYED_DIGEST_KEY})
SHARD_KEYS = frozenset({"name", "first_document", "documents", "tokens"})
"""A corpus store's ``store.json`` and each entry of its ``shards`` (`ilre_engine.store`)."""


# -- reading ---------------------------------------------------------------------------------


def confined(root: Path, name: str) -> Path:
    """``root / name`` when `name` is a plain file name whose resolved path lies directly in
    `root` (a symlink may point only to another entry of `root`); `EncodedContextError`
    before the path is opened otherwise."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise EncodedContextError(f"{root}: refusing file name {name!r:.200} in the manifest")
    path = root / name
    try:
        inside = path.resolve().parent == root.resolve()
    except (OSError, RuntimeError) as error:
        raise EncodedContextError(f"{root}: cannot resolve {name!r}: {error}") from error
    if not inside:
        raise EncodedContextError(f"{root}: {name!r} points outside the directory")
    return path


def regular_file_size(path: Path) -> int | None:
    """The size of `path` when it is a regular file, None when it does not exist."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise EncodedContextError(f"cannot read {path}: {error}") from error
    if not stat.S_ISREG(info.st_mode):
        raise EncodedContextError(f"{path} is not a regular file")
    return info.st_size


def read_capped(root: Path, name: str, limit: int, absent: str) -> bytes:
    """The bytes of the manifest `name` in `root`: confined to `root`, a regular file (checked
    on the open descriptor, which never blocks on a FIFO) of at most `limit` bytes.
    `absent`: the message when there is none."""
    path = confined(root, name)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as error:
        raise EncodedContextError(absent) from error
    except OSError as error:
        raise EncodedContextError(f"cannot read {path}: {error}") from error
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise EncodedContextError(f"{path} is not a regular file")
        if info.st_size > limit:
            raise EncodedContextError(f"{path} is {info.st_size:,} bytes, over {limit:,}")
        try:
            data = handle.read(limit + 1)
        except OSError as error:
            raise EncodedContextError(f"cannot read {path}: {error}") from error
    if len(data) > limit:
        raise EncodedContextError(f"{path} is over {limit:,} bytes")
    return data


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: bytes, path: Path, *, constants: bool = False) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, and no NaN or Infinity unless `constants` (extra
    payloads hold callers' values, which may have them); any failure (including nesting too
    deep for the parser) is an `EncodedContextError`."""
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_unique_object,
            parse_constant=None if constants else _no_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as error:
        raise EncodedContextError(f"{path} is damaged: {type(error).__name__}") from error


def depth(value: Any, limit: int) -> int:
    """Nesting depth of lists and objects, counted no further than `limit` + 1."""
    if limit < 0 or not isinstance(value, (list, dict)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((depth(child, limit - 1) for child in children), default=0)


# -- schema helpers ----------------------------------------------------------------------------


def invalid(path: Path, message: str) -> EncodedContextError:
    """The refusal of a manifest at `path` that breaks its schema."""
    return EncodedContextError(f"{path} is invalid: {message}")


def require_int(path: Path, value: Any, what: str, low: int = 0, high: int = MAX_COUNT) -> int:
    """`value` when it is an integer (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(path, f"{what} must be an integer in [{low}, {high}], got {value!r:.40}")
    return value


def require_str(path: Path, value: Any, what: str, pattern: re.Pattern | None = None) -> str:
    """`value` when it is a string (matching `pattern` in full, if given)."""
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise invalid(path, f"{what} is not a valid string: {value!r:.80}")
    return value


def require_keys(path: Path, value: Any, what: str, required: set[str] | frozenset[str]) -> dict:
    """`value` when it is an object with exactly the keys `required`."""
    if not isinstance(value, dict):
        raise invalid(path, f"{what} must be an object")
    missing, unknown = required - value.keys(), value.keys() - required
    if missing or unknown:
        unexpected = sorted(str(k)[:40] for k in unknown)[:5]
        raise invalid(path, f"{what}: missing {sorted(missing)}, unexpected {unexpected}")
    return value


def require_digest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse a manifest whose ``manifest_sha256`` is not the digest of the rest of it."""
    recorded = require_str(path, manifest[DIGEST_KEY], DIGEST_KEY, HEX64)
    if recorded != digest(manifest):
        raise EncodedContextError(f"{path} is damaged (checksum mismatch)")


# -- writing ---------------------------------------------------------------------------------


def digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII) of a manifest without
    its ``manifest_sha256``: evidence of damage, not of who wrote it (docs/FORMAT.md)."""
    rest = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def keyed_digest(manifest: Mapping[str, Any], key: bytes, bound: bytes = b"") -> str:
    """HMAC-SHA256 under `key` of the canonical JSON of a manifest without its digests, then
    `bound` (what else it vouches for: e.g. the digests of the files it names). Unlike
    `digest`, only a holder of `key` can make one that matches: evidence of who wrote it."""
    rest = {k: v for k, v in manifest.items() if k not in (DIGEST_KEY, KEYED_DIGEST_KEY)}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    mac = hmac.new(key, canonical.encode("ascii"), hashlib.sha256)
    mac.update(b"\0")
    mac.update(bound)
    return mac.hexdigest()


def commit(root: Path, name: str, manifest: Mapping[str, Any]) -> None:
    """Seal `manifest` with its digest and make it `root / name` in one atomic rename, durable
    on return. The caller holds the directory's writer lock and has written every data file
    the manifest names (synced) beforehand."""
    sealed = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    sealed[DIGEST_KEY] = digest(sealed)
    scratch = root / f".{name}.{uuid.uuid4().hex[:12]}"
    fileio.write_synced(scratch, json.dumps(sealed, indent=1).encode("utf-8"))
    os.replace(scratch, root / name)
    fileio.fsync_directory(root)
