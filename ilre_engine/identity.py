"""What identifies an encoding: the model, its retrieval layer, the tokenizer and the
streaming settings that made a context or a corpus store's keys.

One frozen `EncodingIdentity` is built from an engine (`ILRe.identity`), carried by every
encoded context, written into a manifest by `manifest_fields` and read back and checked by
`from_manifest` and `check`: adding a field touches this module alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EncodedContextError
from .manifest import require_int, require_str

_TOKENIZER_ID = re.compile(r"none|[0-9a-f]{64}")
_ON_DISK = {
    "model_name": "model_name",
    "fingerprint": "model_fingerprint",
    "layer": "layer",
    "tokenizer_name": "tokenizer",
    "tokenizer_sha256": "tokenizer_sha256",
    "sink": "sink",
    "window": "window",
}
"""Each field's key in a manifest (the names of format version 1, kept)."""
ALL_KEYS = tuple(_ON_DISK.values())


@dataclass(frozen=True)
class EncodingIdentity:
    """The model, layer, tokenizer and streaming settings an encoding was made with.

    Attributes:
        model_name: the model's name, for messages only.
        fingerprint: the weights and shape up to the retrieval layer (`ILRe.fingerprint`).
        layer: the retrieval layer.
        tokenizer_name: the tokenizer's name, for messages, and for matching where its
            content digest is not recorded; None where a manifest does not record it.
        tokenizer_sha256: the tokenizer's identity by content
            (`ilre_engine.tokenization.tokenizer_identity`); None where not recorded.
        sink, window: the streaming prefill's sink size and window (None where a manifest
            does not record them: a store's, whose documents are keys alone).
    """

    model_name: str
    fingerprint: str
    layer: int
    tokenizer_name: str | None
    tokenizer_sha256: str | None
    sink: int | None
    window: int | None

    def manifest_fields(self, keys: Iterable[str] = ALL_KEYS) -> dict[str, Any]:
        """The fields a manifest records, under their on-disk keys (`keys`: which of them)."""
        wanted = set(keys)
        return {key: getattr(self, field) for field, key in _ON_DISK.items() if key in wanted}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], path: Path) -> EncodingIdentity:
        """The identity a manifest at `path` records (keys it lacks are None), each value
        checked for its type; `EncodedContextError` otherwise."""
        values = {field: manifest.get(key) for field, key in _ON_DISK.items()}
        require_str(path, values["model_name"], "model_name")
        require_str(path, values["fingerprint"], "model_fingerprint")
        require_int(path, values["layer"], "layer")
        if values["tokenizer_name"] is not None:
            require_str(path, values["tokenizer_name"], "tokenizer")
        if values["tokenizer_sha256"] is not None:
            require_str(path, values["tokenizer_sha256"], "tokenizer_sha256", _TOKENIZER_ID)
        for name, low in (("sink", 0), ("window", 1)):
            if values[name] is not None:
                require_int(path, values[name], name, low)
        return cls(**values)

    def check(self, engine: EncodingIdentity, where: object) -> None:
        """Refuse (`EncodedContextError`) an encoding made by another model, at another layer
        or with another tokenizer than `engine`'s: the tokenizer by content where this
        identity records it, else by name where it records that. Sink and window may differ
        (a context keeps its own). `where`: what was encoded, for the message."""
        mismatch = None
        if self.fingerprint != engine.fingerprint:
            theirs, ours = f"{self.model_name!r:.80}", repr(engine.model_name)
            mismatch = f"another model ({theirs}; this engine has {ours})"
        elif self.layer != engine.layer:
            mismatch = f"layer {self.layer} (this engine reads layer {engine.layer})"
        elif self.tokenizer_sha256 is not None:
            if self.tokenizer_sha256 != engine.tokenizer_sha256:
                mismatch = (
                    f"another tokenizer ({self.tokenizer_name!r:.80}, content "
                    f"{self.tokenizer_sha256[:12]}; this engine has {engine.tokenizer_name!r}, "
                    f"content {(engine.tokenizer_sha256 or 'none')[:12]})"
                )
        elif self.tokenizer_name is not None and self.tokenizer_name != engine.tokenizer_name:
            mismatch = (
                f"tokenizer {self.tokenizer_name!r:.80} (this engine has {engine.tokenizer_name!r})"
            )
        if mismatch:
            raise EncodedContextError(f"{where} was encoded by {mismatch}: encode it again")
