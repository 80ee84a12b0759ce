"""The on-disk format of an encoded context (format version 1).

A directory holds ``manifest.json`` and the two data files it names:

- ``tensors-<id>.safetensors``: ``keys`` (the retrieval layer's keys), ``input_ids``,
  ``doc_ids``, ``offsets``, ``word_ids``, and per early layer ``kept.<layer>.sink_keys``,
  ``.sink_values``, ``.recent_keys``, ``.recent_values``;
- ``documents-<id>.json``: the source texts, a JSON list of strings.

The manifest records the format version, the model fingerprint, layer, sink and window,
tokenizer, the shapes, and each data file's SHA-256. Saving writes new data files first
and then replaces the manifest with one atomic rename, so a crash at any point leaves the
previous copy loadable; stale data files are removed afterwards. Loading checks all of it
and refuses a mismatch with `EncodedContextError`.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .context import EncodedContext, KeptKV, TokenizedContext
from .errors import EncodedContextError
from .fileio import file_sha256, write_synced

if TYPE_CHECKING:
    from .engine import ILRe

FORMAT = "ilre-encoded-context"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_KEPT_FIELDS = ("sink_keys", "sink_values", "recent_keys", "recent_values")


def save(encoded: EncodedContext, directory: str | os.PathLike[str]) -> Path:
    """Write `encoded` to `directory` (created if needed), replacing any earlier copy atomically."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    tokens = encoded.tokens
    tensors = {
        "keys": encoded.keys.contiguous(),
        "input_ids": torch.from_numpy(tokens.input_ids),
        "doc_ids": torch.from_numpy(tokens.doc_ids),
        "offsets": torch.from_numpy(tokens.offsets),
        "word_ids": torch.from_numpy(tokens.word_ids),
    }
    for layer, kept in encoded.kept.items():
        for name in _KEPT_FIELDS:
            tensors[f"kept.{layer}.{name}"] = getattr(kept, name)[0].contiguous()
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}
    tensor_file = root / f"tensors-{tag}.safetensors"
    documents_file = root / f"documents-{tag}.json"
    save_file(tensors, str(tensor_file))
    with tensor_file.open("rb+") as handle:
        os.fsync(handle.fileno())
    write_synced(documents_file, json.dumps(list(encoded.documents), ensure_ascii=False).encode())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": encoded.model_name,
        "model_fingerprint": encoded.fingerprint,
        "layer": encoded.layer,
        "sink": encoded.sink,
        "window": encoded.window,
        "tokenizer": encoded.tokenizer_name,
        "num_tokens": len(encoded),
        "num_documents": len(encoded.documents),
        "kept": {
            str(layer): {"sink_size": kv.sink_size, "keep": kv.keep}
            for layer, kv in encoded.kept.items()
        },
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "files": {
            "tensors": {"name": tensor_file.name, "sha256": file_sha256(tensor_file)},
            "documents": {"name": documents_file.name, "sha256": file_sha256(documents_file)},
        },
    }
    scratch = root / f".{MANIFEST}.{tag}"
    write_synced(scratch, json.dumps(manifest, indent=1).encode())
    os.replace(scratch, root / MANIFEST)
    keep = {tensor_file.name, documents_file.name, MANIFEST}
    for stale in root.iterdir():
        if stale.name not in keep and stale.name.startswith(
            ("tensors-", "documents-", f".{MANIFEST}")
        ):
            stale.unlink(missing_ok=True)
    return root


def load(directory: str | os.PathLike[str], engine: ILRe) -> EncodedContext:
    """Read an encoded context saved by `save`, refusing anything that does not match `engine`."""
    root = Path(directory)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise EncodedContextError(f"no encoded context at {root} (no {MANIFEST})") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EncodedContextError(f"{root / MANIFEST} is damaged: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EncodedContextError(f"{root} does not hold an ILRe encoded context")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EncodedContextError(
            f"{root} was saved in format version {version}; this ILRe reads up to "
            f"{FORMAT_VERSION}: upgrade ilre"
        )
    expected = {
        "model_fingerprint": engine.fingerprint,
        "layer": engine.layer,
        "tokenizer": engine.tokenizer_name,
    }
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise EncodedContextError(
                f"{root} was encoded with {key} {manifest.get(key)!r}, this engine has {value!r} "
                f"(model {manifest.get('model_name')!r} vs {engine.name!r}): encode it again"
            )
    files = manifest["files"]
    paths = {}
    for role in ("tensors", "documents"):
        path = root / files[role]["name"]
        if not path.is_file():
            raise EncodedContextError(f"{root} is incomplete: {path.name} is missing")
        if file_sha256(path) != files[role]["sha256"]:
            raise EncodedContextError(f"{path} is damaged (checksum mismatch)")
        paths[role] = path
    device, dtype = engine.device, engine.model.dtype
    try:
        documents = json.loads(paths["documents"].read_text(encoding="utf-8"))
        # The file is memory-mapped and each tensor goes straight to the engine's device, one
        # at a time: a large corpus is never held twice.
        with safe_open(str(paths["tensors"]), framework="pt", device=str(device)) as handle:
            names = set(handle.keys())
            for name, shape in manifest["shapes"].items():
                if name not in names or list(handle.get_slice(name).get_shape()) != shape:
                    raise EncodedContextError(
                        f"{root}: tensor {name!r} is missing or has the wrong shape"
                    )
            tensors = {name: handle.get_tensor(name) for name in manifest["shapes"]}
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise EncodedContextError(f"{root} is damaged: {error}") from error
    if (
        len(documents) != manifest["num_documents"]
        or tensors["keys"].shape[1] != manifest["num_tokens"]
    ):
        raise EncodedContextError(f"{root}: documents or tokens do not match the manifest")

    kept = {}
    for layer, info in manifest["kept"].items():
        parts = {n: tensors[f"kept.{layer}.{n}"].to(device, dtype)[None] for n in _KEPT_FIELDS}
        kept[int(layer)] = KeptKV(info["sink_size"], info["keep"], **parts)
    tokens = TokenizedContext(
        documents=tuple(documents),
        input_ids=tensors["input_ids"].cpu().numpy().astype(np.int64),
        doc_ids=tensors["doc_ids"].cpu().numpy().astype(np.int32),
        offsets=tensors["offsets"].cpu().numpy().astype(np.int64),
        word_ids=tensors["word_ids"].cpu().numpy().astype(np.int64),
    )
    return EncodedContext(
        tokens=tokens,
        keys=tensors["keys"].to(device, dtype),
        kept=kept,
        layer=manifest["layer"],
        model_name=engine.name,
        sink=manifest["sink"],
        window=manifest["window"],
        fingerprint=engine.fingerprint,
        tokenizer_name=engine.tokenizer_name,
    )
