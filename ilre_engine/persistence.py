"""The on-disk format of an encoded context (format version 3; versions 1 and 2 are still
read).

A directory holds ``manifest.json`` and the data files it names, all plain file names in
that directory:

- ``tensors-<id>.safetensors``: ``keys`` (the retrieval layer's keys), ``input_ids``,
  ``doc_ids``, ``offsets``, ``word_ids``, and per early layer ``kept.<layer>.sink_keys``,
  ``.sink_values``, ``.recent_keys``, ``.recent_values``;
- ``documents-<id>.json``: the source texts, a JSON list of strings;
- ``<name>-<id>.json`` for each extra JSON payload a caller saves with the context (e.g. a
  corpus's ``metadata``), committed together with it.

The manifest records the format version, the model fingerprint, layer, sink and window, the
tokenizer (its name, for messages, and ``tokenizer_sha256``, a digest of its content: see
`ilre_engine.tokenization.tokenizer_identity`), the shapes, each data file's name, size and
SHA-256, and ``manifest_sha256``, the SHA-256 of the canonical JSON of everything else in it.

This module knows no engine class: it writes and reads a `Record` (plain arrays and tensors)
and checks it against an `Encoder` (what an engine exposes), so the context types build on it
without an import cycle.

Saving writes new data files first and then replaces the manifest with one atomic rename, so
a crash at any point leaves the previous copy loadable; stale data files are removed
afterwards. Concurrent saves to one directory are serialised by an exclusive lock on it
(`fileio.exclusive_directory_lock`): the last writer wins and every save is complete.
Loading takes no lock: when a concurrent save replaces the files it was reading, it reads
the new manifest and starts again.

Loading trusts nothing in the directory: the manifest is size-capped, parsed strictly and
checked against a schema; data files must be plain names inside the directory; shapes,
dtypes and values are checked for consistency with the manifest and the engine. Any
mismatch or damage raises `EncodedContextError`.

This module is longer than the others because loading refuses every crafted input: its
sections (save, load, the manifest's schema, the data files) read top to bottom as one
sequence of checks.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import fileio
from .architectures import ModelDims, layer_keep
from .errors import ConfigError, DirectoryError, EncodedContextError
from .fileio import file_sha256, write_synced
from .identity import EncodingIdentity
from .manifest import (
    CONTEXT_KEYS_V1,
    CONTEXT_KEYS_V2,
    CONTEXT_KEYS_V3,
    CONTEXT_MANIFEST,
    CONTEXT_MANIFEST_MAX_BYTES,
    HEX64,
    confined,
    depth,
    invalid,
    parse_json,
    read_capped,
    regular_file_size,
    require_digest,
    require_int,
    require_keys,
    require_str,
)
from .manifest import commit as manifest_commit

FORMAT = "ilre-encoded-context"
FORMAT_VERSION = 3
MANIFEST = CONTEXT_MANIFEST
MAX_MANIFEST_BYTES = CONTEXT_MANIFEST_MAX_BYTES
"""A manifest larger than this is refused unread."""
MAX_JSON_DEPTH = 6
"""Deeper nesting of lists and objects is refused (a valid manifest nests 3 deep)."""
MAX_JSON_FILE_BYTES = 1 << 32
"""A documents or extra JSON file larger than this is refused unread."""
MAX_TENSOR_HEADER_BYTES = 100 << 20
"""The largest header safetensors itself accepts."""
_KEPT_FIELDS = ("sink_keys", "sink_values", "recent_keys", "recent_values")
_TOKEN_FIELDS = ("input_ids", "doc_ids", "word_ids")
_INT_FIELDS = frozenset({*_TOKEN_FIELDS, "offsets"})
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_INT_DTYPES = frozenset({"I32", "I64"})
_EXTRA_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_DATA_FILE = re.compile(r"(?P<role>[a-z][a-z0-9_]{0,31})-[0-9a-f]{12}\.(?P<ext>safetensors|json)")
_RESERVED_ROLES = ("tensors", "documents")
_LOAD_ATTEMPTS = 8
"""How many times a load starts again when a concurrent save replaced what it was reading."""


class Encoder(Protocol):
    """What a load checks a saved context against: the engine that will recall from it
    (`ilre_engine.ILRe` is one)."""

    @property
    def identity(self) -> EncodingIdentity: ...
    @property
    def model(self) -> Any: ...
    @property
    def device(self) -> torch.device: ...


@dataclass(frozen=True)
class Record:
    """An encoded context as this format stores it: plain arrays and tensors plus what
    identifies the model, layer and tokenizer that made them (`EncodedContext` converts).

    Attributes:
        tokens: ``input_ids``, ``doc_ids``, ``offsets``, ``word_ids`` (as in `TokenizedContext`).
        keys: ``(kv_heads, L, head_dim)`` keys at the retrieval layer.
        kept: per early layer, its ``(sink_size, keep)`` and its four ``(kv_heads, n,
            head_dim)`` tensors ``sink_keys``, ``sink_values``, ``recent_keys``,
            ``recent_values``.
        identity: the model, layer, tokenizer, sink and window that made it.
        query_position: where a query's positions begin (`EncodedContext.query_position`).
    """

    documents: tuple[str, ...]
    tokens: dict[str, np.ndarray]
    keys: torch.Tensor
    kept: dict[int, tuple[tuple[int, int], dict[str, torch.Tensor]]]
    identity: EncodingIdentity
    query_position: int


def _write_synced(path: Path, data: bytes) -> None:
    """`write_synced`, looked up at call time (tests replace it to kill a writer midway)."""
    write_synced(path, data)


# -- save -------------------------------------------------------------------------------------


def write(
    record: Record, directory: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write `record` to `directory` (created if needed), replacing any earlier copy atomically.

    Args:
        extra: JSON payloads saved and committed with the context, by name (lowercase letters,
            digits and ``_``; not ``tensors`` or ``documents``); `read` returns them.

    Concurrent saves to one directory are serialised: the last one wins, each is complete.
    """
    payloads = _encode_extras({} if extra is None else extra)
    root = make_directory(directory)
    tensors = _tensors_of(record)
    with fileio.exclusive_directory_lock(root):
        previous_roles = _roles_in_manifest(root)
        tag = uuid.uuid4().hex[:12]
        tensor_file = root / f"tensors-{tag}.safetensors"
        save_file(tensors, str(tensor_file))
        fileio.fsync_file(tensor_file)
        files = {"tensors": tensor_file}
        documents = json.dumps(list(record.documents), ensure_ascii=False).encode("utf-8")
        files["documents"] = root / f"documents-{tag}.json"
        _write_synced(files["documents"], documents)
        for name, data in payloads.items():
            files[name] = root / f"{name}-{tag}.json"
            _write_synced(files[name], data)
        manifest_commit(root, MANIFEST, _manifest_for(record, tensors, files))
        _remove_stale(root, {p.name for p in files.values()}, previous_roles | set(files))
    return root


def make_directory(directory: str | os.PathLike[str]) -> Path:
    """`directory`, created with its parents if needed; `DirectoryError` when it is a file or
    cannot be created."""
    root = Path(directory)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise DirectoryError(f"{root} is a file, not a directory") from error
    except OSError as error:
        raise DirectoryError(f"cannot create the directory {root}: {error.strerror}") from error
    return root


def _encode_extras(extra: Mapping[str, Any]) -> dict[str, bytes]:
    """Each extra payload as UTF-8 JSON, checked before anything is written; `ConfigError`
    naming ``extra`` otherwise."""
    if not isinstance(extra, Mapping):
        raise ConfigError(f"extra must be a mapping of payloads, got {type(extra).__name__}")
    payloads = {}
    for name, value in extra.items():
        if not isinstance(name, str) or not _EXTRA_NAME.fullmatch(name) or name in _RESERVED_ROLES:
            raise ConfigError(f"invalid extra payload name {name!r:.40}")
        try:
            payloads[name] = json.dumps(value, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as error:
            raise ConfigError(f"extra payload {name!r} cannot be saved as JSON: {error}") from error
    return payloads


def _tensors_of(record: Record) -> dict[str, torch.Tensor]:
    tensors = {"keys": record.keys.contiguous()}
    tensors.update({name: torch.from_numpy(array) for name, array in record.tokens.items()})
    for layer, (_, parts) in record.kept.items():
        for name in _KEPT_FIELDS:
            tensors[f"kept.{layer}.{name}"] = parts[name].contiguous()
    return {k: v.detach().cpu() for k, v in tensors.items()}


def _manifest_for(
    record: Record, tensors: Mapping[str, torch.Tensor], files: Mapping[str, Path]
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **record.identity.manifest_fields(),
        "num_tokens": int(record.keys.shape[1]),
        "query_position": record.query_position,
        "num_documents": len(record.documents),
        "kept": {
            str(layer): {"sink_size": sizes[0], "keep": sizes[1]}
            for layer, (sizes, _) in record.kept.items()
        },
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "files": {
            role: {"name": path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}
            for role, path in files.items()
        },
    }


def _roles_in_manifest(root: Path) -> set[str]:
    """The data file roles the current manifest names, so a save can remove their stale
    files; empty when there is no readable manifest."""
    try:
        manifest = parse_json(_read_manifest_bytes(root), root / MANIFEST)
    except EncodedContextError:
        return set()
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return set()
    return {r for r in files if isinstance(r, str) and _EXTRA_NAME.fullmatch(r)}


_SCRATCH = re.compile(r"\.tmp[A-Za-z0-9_]{6}")


def _remove_stale(root: Path, keep: set[str], roles: set[str]) -> None:
    """Remove the data files of earlier (or interrupted) saves, leftover manifest scratch
    files and the scratch file an interrupted tensors write leaves (``.tmp`` and six random
    characters, written by safetensors); files of other roles, and anything else in the
    directory, are left alone. Runs under the writer lock, so no other save's scratch file
    is removed."""
    for stale in root.iterdir():
        if stale.name in keep:
            continue
        match = _DATA_FILE.fullmatch(stale.name)
        scratch = stale.name.startswith(f".{MANIFEST}.") or _SCRATCH.fullmatch(stale.name)
        if (match and match["role"] in roles) or scratch:
            stale.unlink(missing_ok=True)


# -- load -------------------------------------------------------------------------------------


def read(
    directory: str | os.PathLike[str], engine: Encoder, *, mapped: bool = False
) -> tuple[Record, dict[str, Any]]:
    """A record saved by `write`, with its tensors on `engine`'s device, and the extra JSON
    payloads saved with it (by name). Anything that does not match `engine` or is damaged
    raises `EncodedContextError`.

    `mapped`: leave the keys and kept tensors memory-mapped on the CPU, in the saved dtype,
    so a record larger than memory can be read block by block. The tensors file's size is
    checked but not its SHA-256, which would read it whole (`check_files` does).

    Takes no lock: when a concurrent save replaces the manifest while this reads, the read
    starts again from the new manifest (a few times at most)."""
    root = Path(directory)
    for attempt in range(_LOAD_ATTEMPTS):
        raw = _read_manifest_bytes(root)
        try:
            return _load_generation(root, engine, raw, mapped)
        except EncodedContextError:
            if attempt + 1 < _LOAD_ATTEMPTS and _manifest_changed(root, raw):
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _manifest_changed(root: Path, raw: bytes) -> bool:
    try:
        return _read_manifest_bytes(root) != raw
    except EncodedContextError:
        return False


def _read_manifest_bytes(root: Path) -> bytes:
    return read_capped(
        root, MANIFEST, MAX_MANIFEST_BYTES, f"no encoded context at {root} (no {MANIFEST})"
    )


@dataclass(frozen=True)
class _Layout:
    """What a validated manifest promises: the data files and every tensor's shape."""

    version: int
    num_tokens: int
    query_position: int
    num_documents: int
    sink: int
    window: int
    layer: int
    kept: dict[int, tuple[int, int]]
    shapes: dict[str, tuple[int, ...]]
    files: dict[str, tuple[Path, int | None, str]]


def check_files(directory: str | os.PathLike[str], engine: Encoder) -> None:
    """Every check of `read`, the SHA-256 of every data file included, without loading."""
    root = Path(directory)
    layout = _validate_manifest(
        parse_json(_read_manifest_bytes(root), root / MANIFEST), root, engine
    )
    for role, (path, size, digest) in layout.files.items():
        _check_file(root, path, size, digest, _size_bounds(layout, role))


def read_extra(directory: str | os.PathLike[str], engine: Encoder, name: str) -> Any:
    """The extra JSON payload `name` saved in `directory` (None when there is none), after
    every check of the manifest and of that file (size, SHA-256); no other file is read."""
    root = Path(directory)
    layout = _validate_manifest(
        parse_json(_read_manifest_bytes(root), root / MANIFEST), root, engine
    )
    if name in _RESERVED_ROLES or name not in layout.files:
        return None
    path, size, digest = layout.files[name]
    _check_file(root, path, size, digest, _size_bounds(layout, name))
    return _read_json_file(path, constants=True)


def _load_generation(
    root: Path, engine: Encoder, raw: bytes, mapped: bool = False
) -> tuple[Record, dict]:
    manifest = parse_json(raw, root / MANIFEST)
    layout = _validate_manifest(manifest, root, engine)
    for role, (path, size, digest) in layout.files.items():
        hashed = not (mapped and role == "tensors")
        _check_file(root, path, size, digest if hashed else None, _size_bounds(layout, role))
    documents = _read_json_file(layout.files["documents"][0])
    _check_documents(root, documents, layout.num_documents)
    extras = {
        role: _read_json_file(path, constants=True)
        for role, (path, _, _) in layout.files.items()
        if role not in _RESERVED_ROLES
    }
    tensors = _read_tensors(root, layout, engine, mapped)
    _require_finite(root, layout, tensors)
    return _record(root, engine, layout, documents, tensors, mapped), extras


# -- manifest schema ---------------------------------------------------------------------------


def _validate_manifest(manifest: Any, root: Path, engine: Encoder) -> _Layout:
    """Check the manifest's structure, its own checksum and its match with `engine`; the
    layout it promises. Opens no data file."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EncodedContextError(f"{root} does not hold an ILRe encoded context")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise invalid(root / MANIFEST, f"format_version {version!r}")
    if version > FORMAT_VERSION:
        raise EncodedContextError(
            f"{root} was saved in format version {version}; this ILRe reads up to "
            f"{FORMAT_VERSION}: upgrade ilre"
        )
    path = root / MANIFEST
    if depth(manifest, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise invalid(path, "nested too deep")
    keys = {1: CONTEXT_KEYS_V1, 2: CONTEXT_KEYS_V2}.get(version, CONTEXT_KEYS_V3)
    require_keys(path, manifest, "the manifest", keys)
    if version >= 2:
        require_digest(path, manifest)
    identity = EncodingIdentity.from_manifest(manifest, path)
    identity.check(engine.identity, root)
    num_tokens = require_int(path, manifest["num_tokens"], "num_tokens", 1)
    query_at = manifest.get("query_position", num_tokens)  # before version 3: after the context
    query_at = require_int(path, query_at, "query_position", 1)
    layer, sink, window = identity.layer, identity.sink, identity.window
    if sink is None or window is None or identity.tokenizer_name is None:
        raise invalid(path, "sink, window and tokenizer must be recorded")
    kept = _validate_kept(root, manifest["kept"], engine, layer, sink, window, version)
    shapes = _expected_shapes(engine, num_tokens, kept)
    declared = manifest["shapes"]
    require_keys(path, declared, "shapes", set(shapes))
    for name, shape in shapes.items():
        if declared[name] != list(shape):
            raise invalid(path, f"shape of {name!r} is {declared[name]!r:.80}, expected {shape}")
    return _Layout(
        version=version,
        num_tokens=num_tokens,
        query_position=query_at,
        num_documents=require_int(path, manifest["num_documents"], "num_documents", 1),
        sink=sink,
        window=window,
        layer=layer,
        kept=kept,
        shapes=shapes,
        files=_validate_files(root, manifest["files"], version),
    )


def _validate_kept(
    root: Path, kept: Any, engine: Encoder, layer: int, sink: int, window: int, version: int
) -> dict[int, tuple[int, int]]:
    """Every early layer ``0 .. layer - 1`` with the sink size and window the streaming
    prefill gives it (`architectures.layer_keep`) for this model and the saved sink and window;
    from version 3, none at all for a keys-only record."""
    if kept == {} and version >= 3:
        return {}  # keys only (a store's shard): its queries are read on their own
    require_keys(root / MANIFEST, kept, "kept", {str(i) for i in range(layer)})
    windows = ModelDims.from_config(engine.model.config).sliding_windows
    result = {}
    for i in range(layer):
        info = require_keys(root / MANIFEST, kept[str(i)], f"kept.{i}", {"sink_size", "keep"})
        sink_size = require_int(root / MANIFEST, info["sink_size"], f"kept.{i}.sink_size")
        keep = require_int(root / MANIFEST, info["keep"], f"kept.{i}.keep", 1)
        expected = layer_keep(windows[i] if i < len(windows) else None, sink, window)
        if (sink_size, keep) != expected:
            given = (sink_size, keep)
            raise invalid(root / MANIFEST, f"kept.{i} is {given}, the model gives {expected}")
        result[i] = (sink_size, keep)
    return result


def _expected_shapes(
    engine: Encoder, num_tokens: int, kept: Mapping[int, tuple[int, int]]
) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the engine's model and the token count: what streaming
    `num_tokens` tokens leaves (`streaming._evict`)."""
    dims = ModelDims.from_config(engine.model.config)
    heads, head_dim = dims.kv_heads, dims.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "keys": (heads, num_tokens, head_dim),
        **{name: (num_tokens,) for name in _TOKEN_FIELDS},
        "offsets": (num_tokens, 2),
    }
    for layer, (sink_size, keep) in kept.items():
        sink_len = min(sink_size, num_tokens)
        recent_len = max(0, min(keep, num_tokens - sink_size))
        for part, length in (("sink", sink_len), ("recent", recent_len)):
            for kind in ("keys", "values"):
                shapes[f"kept.{layer}.{part}_{kind}"] = (heads, length, head_dim)
    return shapes


def _validate_files(
    root: Path, files: Any, version: int
) -> dict[str, tuple[Path, int | None, str]]:
    """Each data file's confined path, declared size (None in version 1) and SHA-256."""
    if not isinstance(files, dict) or not set(_RESERVED_ROLES) <= files.keys():
        raise invalid(root / MANIFEST, "files must name the tensors and documents files")
    if version < 2 and files.keys() != set(_RESERVED_ROLES):
        raise invalid(root / MANIFEST, "version 1 has no extra files")
    result = {}
    for role, entry in files.items():
        require_str(root / MANIFEST, role, "a file role", _EXTRA_NAME)
        fields = {"name", "sha256"} | ({"size"} if version >= 2 else set())
        entry = require_keys(root / MANIFEST, entry, f"files.{role}", fields)
        name = entry["name"]
        match = _DATA_FILE.fullmatch(name) if isinstance(name, str) else None
        extension = "safetensors" if role == "tensors" else "json"
        if match is None or match["role"] != role or match["ext"] != extension:
            raise EncodedContextError(
                f"{root}: refusing file name {name!r:.200} for {role} in the manifest (not "
                f"a {role}-<id>.{extension} file of this directory)"
            )
        path = root / MANIFEST
        size = require_int(path, entry["size"], f"files.{role}.size") if version >= 2 else None
        digest = require_str(path, entry["sha256"], f"files.{role}.sha256", HEX64)
        result[role] = (confined(root, name), size, digest)
    return result


# -- data files --------------------------------------------------------------------------------


def _size_bounds(layout: _Layout, role: str) -> tuple[int, int]:
    """The sizes a data file can have: the tensors file holds the declared shapes' elements
    (2 to 8 bytes each) plus its header; a JSON file at most `MAX_JSON_FILE_BYTES`."""
    if role != "tensors":
        return 1, MAX_JSON_FILE_BYTES
    floats = sum(math.prod(s) for n, s in layout.shapes.items() if n not in _INT_FIELDS)
    ints = sum(math.prod(s) for n, s in layout.shapes.items() if n in _INT_FIELDS)
    return 2 * floats + 4 * ints, 8 * (floats + ints) + MAX_TENSOR_HEADER_BYTES


def _check_file(
    root: Path, path: Path, size: int | None, digest: str | None, bounds: tuple[int, int]
) -> None:
    """Refuse a missing, irregular, wrongly sized or damaged data file; sizes are checked
    before the file is read."""
    actual = regular_file_size(path)
    if actual is None:
        raise EncodedContextError(f"{root} is incomplete: {path.name} is missing")
    if size is not None and actual != size:
        raise EncodedContextError(f"{path} is damaged (size {actual:,}, expected {size:,})")
    if not bounds[0] <= actual <= bounds[1]:
        raise EncodedContextError(
            f"{path} is damaged: {actual:,} bytes where the manifest implies "
            f"{bounds[0]:,} to {bounds[1]:,}"
        )
    if digest is None:
        return
    try:
        if file_sha256(path) != digest:
            raise EncodedContextError(f"{path} is damaged (checksum mismatch)")
    except FileNotFoundError as error:
        raise EncodedContextError(f"{root} is incomplete: {path.name} is missing") from error
    except OSError as error:
        raise EncodedContextError(f"cannot read {path}: {error}") from error


def _read_json_file(path: Path, *, constants: bool = False) -> Any:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise EncodedContextError(f"cannot read {path}: {error}") from error
    return parse_json(data, path, constants=constants)


def _check_documents(root: Path, documents: Any, count: int) -> None:
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise EncodedContextError(f"{root}: the documents file is not a list of texts")
    if len(documents) != count:
        raise EncodedContextError(f"{root}: documents or tokens do not match the manifest")


def _read_tensors(
    root: Path, layout: _Layout, engine: Encoder, mapped: bool = False
) -> dict[str, torch.Tensor]:
    """Each tensor, memory-mapped and sent straight to the engine's device one at a time (a
    large corpus is never held twice), after its name, dtype and shape are checked; with
    `mapped`, left memory-mapped on the CPU."""
    path = layout.files["tensors"][0]
    try:
        device = "cpu" if mapped else str(engine.device)
        with safe_open(str(path), framework="pt", device=device) as handle:
            names = set(handle.keys())
            if names != set(layout.shapes):
                raise EncodedContextError(f"{root}: the tensors file holds other tensors")
            for name, shape in layout.shapes.items():
                piece = handle.get_slice(name)
                allowed = _INT_DTYPES if name in _INT_FIELDS else _FLOAT_DTYPES
                if piece.get_dtype() not in allowed or tuple(piece.get_shape()) != shape:
                    raise EncodedContextError(
                        f"{root}: tensor {name!r} has the wrong dtype or shape"
                    )
            if not mapped:
                return {name: handle.get_tensor(name) for name in layout.shapes}
        return _mapped_tensors(path, layout.shapes)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        if isinstance(error, EncodedContextError):
            raise
        raise EncodedContextError(f"{root} is damaged: {error}") from error


_FINITE_FILES: set[tuple[str, int, int, int]] = set()
"""Tensors files already found finite in this process: (SHA-256, inode, size, mtime)."""
_FINITE_BLOCK = 1 << 24
"""Elements checked at once, so a memory-mapped file is read a block at a time."""


def _require_finite(root: Path, layout: _Layout, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse keys or kept windows that hold NaN or infinity: a file crafted with fixed
    checksums would otherwise load and recall garbage. Each tensors file is checked once per
    process, remembered by its declared SHA-256 and its inode, size and modification time."""
    path, _, digest = layout.files["tensors"]
    try:
        info = path.stat()
    except OSError as error:
        raise EncodedContextError(f"cannot read {path}: {error}") from error
    seen = (digest, info.st_ino, info.st_size, info.st_mtime_ns)
    if seen in _FINITE_FILES:
        return
    for name, tensor in tensors.items():
        if name in _INT_FIELDS:
            continue
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), _FINITE_BLOCK):
            if not bool(torch.isfinite(flat[start : start + _FINITE_BLOCK]).all()):
                raise EncodedContextError(
                    f"{root}: tensor {name!r} holds NaN or infinite values (damaged or crafted)"
                )
    _FINITE_FILES.add(seen)


_NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # numpy has no bfloat16: mapped as its bits, viewed by torch
    "I64": np.int64,
    "I32": np.int32,
}


def _mapped_tensors(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Copy-on-write memory maps of a safetensors file's tensors (whose names, dtypes and
    shapes `safe_open` has checked): nothing is read until it is used."""
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if size > MAX_TENSOR_HEADER_BYTES:
            raise EncodedContextError(f"{path} is damaged: a header of {size:,} bytes")
        header = json.loads(handle.read(size))
    tensors = {}
    for name, shape in shapes.items():
        entry = header[name]
        dtype = _NUMPY_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        if end - begin != math.prod(shape) * np.dtype(dtype).itemsize:
            raise EncodedContextError(f"{path} is damaged: tensor {name!r} has the wrong size")
        if math.prod(shape) == 0:
            array = np.zeros(shape, dtype=dtype)
        else:
            array = np.memmap(path, dtype=dtype, mode="c", offset=8 + size + begin, shape=shape)
        tensor = torch.from_numpy(array)
        tensors[name] = tensor.view(torch.bfloat16) if entry["dtype"] == "BF16" else tensor
    return tensors


def _tokens(
    root: Path, documents: list[str], tensors: dict[str, torch.Tensor], engine: Encoder
) -> dict[str, np.ndarray]:
    """The tokens, after checking what recall relies on: token ids in the vocabulary; document
    ids in ``[-1, num_documents)`` and in order; each document token's offsets inside its
    document; word ids non-decreasing, each at most its position. Values are checked before
    any narrowing cast, so what loads is what the file holds."""
    ids, docs, offsets, words = (
        tensors[name].cpu().numpy().astype(np.int64)
        for name in ("input_ids", "doc_ids", "offsets", "word_ids")
    )
    vocab = getattr(engine.model.config, "vocab_size", None) or np.iinfo(np.int64).max
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    in_document = docs >= 0
    checks = (
        (lambda: ids.min() >= 0 and ids.max() < vocab, "token ids outside the vocabulary"),
        (lambda: docs.min() >= -1 and docs.max() < len(documents), "document ids out of range"),
        (lambda: not np.any(np.diff(docs[in_document]) < 0), "document ids out of order"),
        (
            lambda: offsets.min() >= 0 and not np.any(offsets[:, 0] > offsets[:, 1]),
            "negative or reversed offsets",
        ),
        (
            lambda: not np.any(offsets[in_document, 1] > lengths[docs[in_document]]),
            "offsets past the end of their document",
        ),
        (
            lambda: (
                words[0] >= 0
                and not np.any(np.diff(words) < 0)
                and not np.any(words > np.arange(len(words)))
            ),
            "word ids that are not non-decreasing from 0",
        ),
    )
    for check, problem in checks:
        if not check():
            raise EncodedContextError(f"{root}: the tensors file is inconsistent: {problem}")
    return {
        "input_ids": ids,
        "doc_ids": docs.astype(np.int32),
        "offsets": offsets,
        "word_ids": words,
    }


def _record(
    root: Path,
    engine: Encoder,
    layout: _Layout,
    documents: list[str],
    tensors: dict[str, torch.Tensor],
    mapped: bool = False,
) -> Record:
    device, dtype = engine.device, engine.model.dtype

    def placed(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if mapped else tensor.to(device, dtype)

    kept = {
        layer: (sizes, {n: placed(tensors[f"kept.{layer}.{n}"]) for n in _KEPT_FIELDS})
        for layer, sizes in layout.kept.items()
    }
    return Record(
        documents=tuple(documents),
        tokens=_tokens(root, documents, tensors, engine),
        keys=placed(tensors["keys"]),
        kept=kept,
        identity=replace(engine.identity, sink=layout.sink, window=layout.window),
        query_position=layout.query_position,
    )
