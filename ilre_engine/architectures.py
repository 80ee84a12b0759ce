"""What differs between the model families the engine drives, and the dimensions derived
from a model's config.

The engine runs the model's own modules; per family it only needs to know how to cut the
config after the retrieval layer, which layer to use when neither `layer=` nor a
calibration profile (`ilre_engine.profiles`) gives one, and how a layer's attention module
makes its keys (`Adapter.key_states`: the retrieval layer computes nothing else).
Sliding-window layers (Gemma 3, Mistral, Qwen2 with sliding layers) need no entry here:
transformers hands each layer's window to the attention function, which keeps exactly that
window. `ModelDims` is the one place that reads head counts and widths off a config.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class Adapter:
    """Per-family knowledge: which config fields list one entry per layer, and the name of
    the attention module's norm of each key head (None: the family has none)."""

    model_types: tuple[str, ...]
    per_layer_fields: tuple[str, ...] = field(default=("layer_types",))
    key_norm: str | None = None

    def truncate(self, config: Any, num_layers: int) -> None:
        """Make `config` describe only the first `num_layers` decoder layers."""
        config.num_hidden_layers = num_layers
        for name in self.per_layer_fields:
            value = getattr(config, name, None)
            if isinstance(value, list):
                setattr(config, name, value[:num_layers])

    def default_layer(self, config: Any) -> int:
        """`l_R` when neither `layer=` nor a calibration profile gives one: the paper's depth
        (3 of 32 layers), moved to the first global-attention layer at or after it when the
        model interleaves sliding and global layers (a sliding layer cannot see far keys)."""
        depth = max(1, round(config.num_hidden_layers * 3 / 32))
        sliding = ModelDims.from_config(config).sliding_windows
        global_layers = [i for i, window in enumerate(sliding) if not window and i >= depth]
        return global_layers[0] if global_layers else depth

    def key_states(
        self,
        attention: torch.nn.Module,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``(batch, kv_heads, n, head_dim)``: the keys `attention` (one layer's attention
        module) makes of `hidden_states`, as its own forward does, through its own key
        projection, key norm and its family's rotary embedding, without its query and value
        projections."""
        shape = (*hidden_states.shape[:-1], -1, attention.head_dim)
        keys = attention.k_proj(hidden_states).view(shape).transpose(1, 2)
        if self.key_norm is not None:
            keys = getattr(attention, self.key_norm)(keys)
        cos, sin = position_embeddings
        # Every supported family's modeling module defines apply_rotary_pos_emb(q, k, ...);
        # the keys stand in for the queries it would also rotate.
        rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb
        return rotary(keys, keys, cos, sin)[1]


@dataclass(frozen=True)
class ModelDims:
    """Head counts and widths of a decoder, read off its config once.

    Attributes:
        query_heads, kv_heads: attention heads of queries and of keys and values.
        head_dim: width of one head.
        hidden, intermediate: residual and MLP widths.
        sliding_windows: per decoder layer, its sliding window, or None for global attention.
    """

    query_heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    sliding_windows: tuple[int | None, ...]

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        query_heads = config.num_attention_heads
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        if layer_types:
            windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
        else:  # no per-layer types: a configured window applies to every layer (Mistral)
            windows = (window,) * config.num_hidden_layers
        return cls(
            query_heads=query_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or query_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // query_heads,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            sliding_windows=windows,
        )


def layer_keep(sliding_window: int | None, sink: int, window: int) -> tuple[int, int]:
    """``(sink_size, keep)`` of an early layer: a sliding layer keeps exactly the window it
    was trained with and no sink; a global layer keeps `sink` first and `window` recent
    tokens. The streaming prefill and the memory estimate both follow this rule."""
    if sliding_window:
        return 0, int(sliding_window)
    return sink, window


ADAPTERS: tuple[Adapter, ...] = (
    Adapter(("llama",)),
    Adapter(("mistral",)),
    Adapter(("qwen2",)),
    Adapter(("qwen3",), key_norm="k_norm"),
    Adapter(("gemma3_text",), key_norm="k_norm"),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for(config: Any) -> Adapter:
    """The adapter of `config`'s family, or a clear error naming what is supported."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    hint = ""
    if model_type == "gemma3":
        hint = (
            " (for a multimodal Gemma 3 checkpoint, use a text-only one: model_type 'gemma3_text')"
        )
    raise UnsupportedModelError(
        f"model type {model_type!r} is not supported{hint}; ILRe drives: "
        + ", ".join(SUPPORTED_MODEL_TYPES)
    )
