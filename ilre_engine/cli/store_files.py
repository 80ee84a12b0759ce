"""A corpus store's directory as the command line checks it before any model loads: a path
that is a file, a folder that holds no store, a damaged manifest are refused in a second,
and ``ilre stats`` reads the manifest without a model (`ilre_engine.store_manifest`, which
imports no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ILReError
from ..manifest import parse_json, read_capped
from ..store_manifest import MANIFEST, MAX_MANIFEST_BYTES, validate


def check_store_path(path: Path) -> None:
    """Refuse a store path that cannot become a store: an existing file."""
    if path.exists() and not path.is_dir():
        raise ILReError(f"{path} is not a directory")


def read_store_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the store at `path`, checked against its schema and digest (not
    against a model: that needs one); `ILReError` naming `path` when there is no store."""
    check_store_path(path)
    absent = f"no corpus store at {path}: build one with `ilre index`"
    if not (path / MANIFEST).exists():
        raise ILReError(absent)
    raw = read_capped(path, MANIFEST, MAX_MANIFEST_BYTES, absent)
    return validate(parse_json(raw, path / MANIFEST), path / MANIFEST)


def holds_store(path: Path) -> bool:
    """Whether `path` holds a store (checked as `read_store_manifest` does); False when it
    does not exist or holds none yet."""
    check_store_path(path)
    if not (path / MANIFEST).exists():
        return False
    read_store_manifest(path)
    return True


def live_document_ids(manifest: dict[str, Any]) -> list[int]:
    """The ids of a store's live documents, in order, from its (validated) manifest."""
    deleted = set(manifest["deleted"])
    return [
        i
        for shard in manifest["shards"]
        for i in range(shard["first_document"], shard["first_document"] + shard["documents"])
        if i not in deleted
    ]
