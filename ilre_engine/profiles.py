"""Calibration profiles: what `ilre calibrate` measured for one model, applied on load.

A profile is a JSON file (format version 1) holding the model's identity (its name and the
SHA-256 of its config's architecture fields), the chosen retrieval layer and pooling
kernels, the streaming defaults it was measured with, the per-layer recall table, the date
and the package version. `ILRe.from_pretrained` looks for a profile whose name and config
hash match the model, first among the user's (``<cache dir>/profiles/*.json``, where
``ilre calibrate`` writes by default), then among those shipped in ``ilre_engine/profiles/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ILReError

FORMAT = "ilre-profile"
FORMAT_VERSION = 1
SHIPPED = Path(__file__).parent / "profiles"

_IDENTITY_FIELDS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "sliding_window",
    "layer_types",
)


def config_sha256(config: Any) -> str:
    """Hash of the architecture fields of a (not truncated) model config."""
    fields = {name: getattr(config, name, None) for name in _IDENTITY_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Profile:
    """The calibrated settings of one model, and the measurements behind them.

    Attributes:
        model_name: the name the model was loaded by (``gemma3-270m`` for the embedded one).
        config_sha256: `config_sha256` of its config.
        layer: the chosen retrieval layer `l_R`.
        kernel_sizes: the chosen pooling kernels.
        sink, window, chunk_size: the streaming settings the recall was measured with.
        recall: ``{layer: {kernels: mean answer recall}}`` over every task, length and
            budget (kernels as ``"1,5,9,17"``, or ``"1,5,9,17@average"`` averaged over heads).
        details: per layer, the chosen kernels' recall by task family, length and budget.
        settings: what was measured (lengths, samples, families, budgets, tolerance, seed).
        created: ISO date and time of the run; ilre_version: the package that made it.
        kernel_allocation: how the chosen kernels pool the heads (`ILReConfig`); ``"heads"``
            in profiles written before it was measured.
        hybrid_weight: the weight of the sentence-embedding prior (`ilre_engine.hybrid`)
            that recalled best at the chosen layer (`calibration.calibrate_hybrid`); 0 where
            the model alone did, and in profiles written before it was measured.
        hybrid_passage_tokens: the prior's passage size (`Hybrid.chunk_tokens`) measured
            with that weight.
        hybrid_recall: the answer recall of each candidate, keyed ``"weight@passage_tokens"``.
    """

    model_name: str
    config_sha256: str
    layer: int
    kernel_sizes: tuple[int, ...]
    sink: int
    window: int
    chunk_size: int
    recall: dict[str, dict[str, float]]
    details: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    ilre_version: str = ""
    seconds: float = 0.0
    kernel_allocation: str = "heads"
    hybrid_weight: float = 0.0
    hybrid_passage_tokens: int = 128
    hybrid_recall: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}
        data["kernel_sizes"] = list(self.kernel_sizes)
        return json.dumps(data, indent=1)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile to `path` atomically."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.tmp")
        scratch.write_text(self.to_json(), encoding="utf-8")
        os.replace(scratch, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Read a profile; anything that is not one raises `ILReError`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ILReError(f"cannot read the profile {path}: {error}") from error
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ILReError(f"{path} is not an ILRe profile")
        if not isinstance(data.get("format_version"), int) or data["format_version"] > 1:
            raise ILReError(
                f"{path} has profile format {data.get('format_version')}; this ILRe reads "
                f"up to {FORMAT_VERSION}: upgrade ilre"
            )
        data = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        try:
            data["kernel_sizes"] = tuple(int(k) for k in data["kernel_sizes"])
            return cls(**data)
        except (KeyError, TypeError, ValueError) as error:
            raise ILReError(f"{path} is a damaged profile: {error}") from error


def user_profile_path(cache: Path, model_name: str) -> Path:
    """Where `ilre calibrate` writes a model's profile by default."""
    return cache / "profiles" / f"{re.sub(r'[^A-Za-z0-9._-]+', '--', model_name)}.json"


def find_profile(model_name: str, config: Any, cache: Path) -> Profile | None:
    """The profile of this model (same name and config hash): the user's before the shipped."""
    digest = config_sha256(config)
    for folder in (cache / "profiles", SHIPPED):
        for path in sorted(folder.glob("*.json")):
            try:
                profile = Profile.load(path)
            except ILReError:
                continue  # a stray or damaged file is no reason to refuse the model
            if profile.model_name == model_name and profile.config_sha256 == digest:
                return profile
    return None
