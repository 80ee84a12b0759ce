"""Reference forwards for checking the streaming prefill against the model's own.

`reference_states` runs a model's ordinary full forward with attention functions that only
*observe*: they call transformers' own SDPA attention, record the query and key states the
retrieval layer receives, and (for the eviction reference) replace each global layer's
causal mask with the sink + window mask over the whole sequence. They share no code with
`ilre_engine.streaming`. Tests and `benchmarks/gpu_long_context.py` use them.
"""

from __future__ import annotations

import threading

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

CAUSAL = "ilre_reference_causal"
SINK_WINDOW = "ilre_reference_sink_window"

_local = threading.local()


def _observe(module, query, key, value, attention_mask, **kwargs):
    if module.layer_idx == _local.layer:
        _local.keys, _local.queries = key[0].clone(), query[0].clone()
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _observe_sink_window(module, query, key, value, attention_mask, **kwargs):
    if not kwargs.get("sliding_window"):
        positions = torch.arange(key.shape[2], device=key.device)
        distance = positions[:, None] - positions[None, :]
        in_sink = (positions < _local.sink)[None, :]
        attention_mask = ((distance >= 0) & ((distance < _local.window) | in_sink))[None, None]
    return _observe(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(CAUSAL, _observe)
AttentionInterface.register(SINK_WINDOW, _observe_sink_window)
ALL_MASK_ATTENTION_FUNCTIONS.register(CAUSAL, sdpa_mask)
ALL_MASK_ATTENTION_FUNCTIONS.register(SINK_WINDOW, sdpa_mask)


@torch.inference_mode()
def reference_states(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    layer: int,
    *,
    sink: int | None = None,
    window: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys, queries)`` at `layer` from one full forward of `model` (a base model) over
    `input_ids` (1-D): with plain causal masks, or with `window` given, with the sink + window
    mask on every global-attention layer. Shapes ``(kv_heads, L, D)`` and ``(heads, L, D)``."""
    _local.layer = layer
    implementation = model.config._attn_implementation
    if window is None:
        model.set_attn_implementation(CAUSAL)
    else:
        _local.sink, _local.window = sink or 0, window
        model.set_attn_implementation(SINK_WINDOW)
    try:
        model(input_ids=input_ids[None].to(model.device), use_cache=False)
    finally:
        model.set_attn_implementation(implementation)
    return _local.keys, _local.queries


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖actual − expected‖ / ‖expected‖`` in float64."""
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm())
