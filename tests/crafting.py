"""Tiny saved contexts and the tools to craft hostile variants of them: edit a manifest, swap
a data file's content, and fix every checksum so only the loader's own checks stand between
the crafted files and the engine."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ilre_engine import persistence
from ilre_engine.context import TokenizedContext
from ilre_engine.selection import select_within_budget
from tests.tiny_models import build_models, tiny_configs, tiny_engine

LAYER = 2


def engine_for(family: str = "gemma3", **config):
    """A tiny engine (no tokenizer) with small sink and window, so the kept windows are full."""
    _, trunk = build_models(tiny_configs()[family], LAYER)
    return tiny_engine(trunk, LAYER, chunk_size=16, sink=4, window=8, **config)


def documents_context(texts: list[str], seed: int = 0) -> TokenizedContext:
    """A context of several documents as the tokenizer lays it out: a start token of no
    document, one token per character, a separator token between documents."""
    rng = np.random.default_rng(seed)
    ids, docs, offsets, words = [1], [-1], [(0, 0)], [0]
    for index, text in enumerate(texts):
        if index:
            ids.append(2)
            docs.append(-1)
            offsets.append((0, 0))
            words.append(words[-1] + 1)
        for position in range(len(text)):
            ids.append(int(rng.integers(3, 256)))
            docs.append(index)
            offsets.append((position, position + 1))
            words.append(words[-1] + (1 if text[position] == " " or position == 0 else 0))
    return TokenizedContext(
        documents=tuple(texts),
        input_ids=np.asarray(ids, dtype=np.int64),
        doc_ids=np.asarray(docs, dtype=np.int32),
        offsets=np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
        word_ids=np.asarray(words, dtype=np.int64),
    )


TEXTS_A = ["the first document of A", "and its second one, a little longer than that"]
TEXTS_B = ["B has other words entirely", "so loading B is told apart from A"]


def canonical_digest(manifest: dict[str, Any]) -> str:
    rest = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(directory: Path, manifest: Any, *, seal: bool = True) -> None:
    """Write `manifest`; with `seal`, its ``manifest_sha256`` (where it has one) is fixed."""
    if seal and isinstance(manifest, dict) and "manifest_sha256" in manifest:
        manifest = {**manifest, "manifest_sha256": canonical_digest(manifest)}
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def file_entry(path: Path) -> dict[str, Any]:
    return {
        "name": path.name,
        "size": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def refresh_files(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with each named data file's size and SHA-256 recomputed from its content
    (``size`` only where the manifest records sizes)."""
    files = {}
    for role, entry in manifest["files"].items():
        fresh = file_entry(directory / entry["name"])
        files[role] = {k: fresh[k] for k in entry}
    return {**manifest, "files": files}


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    name = read_manifest(directory)["files"]["tensors"]["name"]
    with safe_open(str(directory / name), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118


def replace_tensors(
    directory: Path, tensors: dict[str, torch.Tensor], *, shapes: bool = True
) -> None:
    """Rewrite the tensors file with `tensors` and fix the manifest's checksums (and, with
    `shapes`, its declared shapes) to match."""
    manifest = read_manifest(directory)
    path = directory / manifest["files"]["tensors"]["name"]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    if shapes:
        manifest["shapes"] = {k: list(v.shape) for k, v in tensors.items()}
    write_manifest(directory, refresh_files(directory, manifest))


def replace_documents(directory: Path, documents: Any) -> None:
    """Rewrite the documents file with `documents` (any JSON) and fix the checksums."""
    manifest = read_manifest(directory)
    path = directory / manifest["files"]["documents"]["name"]
    path.write_text(json.dumps(documents), encoding="utf-8")
    write_manifest(directory, refresh_files(directory, manifest))


def exercise(engine, encoded) -> None:
    """What a recall does with a loaded context, tokenizer-free: score, select, join."""
    scores = engine.scores_for_ids(encoded, [5, 6, 7]).float().cpu().numpy()
    select_within_budget(encoded.tokens, scores, 12, len)


def same_context(left, right) -> bool:
    """Equal documents, tokens, keys, kept windows and settings."""
    tokens = ("input_ids", "doc_ids", "offsets", "word_ids")
    if left.documents != right.documents or (left.sink, left.window) != (right.sink, right.window):
        return False
    if not all(np.array_equal(getattr(left.tokens, n), getattr(right.tokens, n)) for n in tokens):
        return False
    if left.kept.keys() != right.kept.keys() or not torch.equal(left.keys, right.keys):
        return False
    fields = ("sink_keys", "sink_values", "recent_keys", "recent_values")
    for layer, kv in left.kept.items():
        other = right.kept[layer]
        if (kv.sink_size, kv.keep) != (other.sink_size, other.keep):
            return False
        if not all(torch.equal(getattr(kv, f), getattr(other, f)) for f in fields):
            return False
    return True


# -- what a load opens ------------------------------------------------------------------------

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, Path)):
        _opened.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


@contextlib.contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Every path opened while the block runs: Python's opens (seen by an audit hook) and
    the memory-mapped opens of safetensors (which the audit hook does not see)."""
    global _opened
    opened: list[str] = []
    real = persistence.safe_open

    def spy(path, *args, **kwargs):
        opened.append(os.path.abspath(str(path)))
        return real(path, *args, **kwargs)

    persistence.safe_open = spy
    _opened = opened
    try:
        yield opened
    finally:
        _opened = None
        persistence.safe_open = real
