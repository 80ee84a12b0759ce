"""Reference forwards for checking the streaming prefill against the model's own.

`reference_states` runs a model's ordinary full forward with attention functions that only
*observe*: they call transformers' own SDPA attention, record the query and key states the
retrieval layer receives, and (for the eviction reference) replace each global layer's
causal mask with the sink + window mask over the whole sequence. They share no code with
`ilre_engine.streaming`. Tests and `benchmarks/gpu_long_context.py` use them.

`segment_states` is the reference for a segment of a context past the model's window
(`ilre_engine.segments`): the sink's tokens, then the segment's, at the positions given, with
every mask built from those positions.
"""

from __future__ import annotations

import threading

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

CAUSAL = "ilre_reference_causal"
SINK_WINDOW = "ilre_reference_sink_window"
SEGMENT = "ilre_reference_segment"

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


def _observe_segment(module, query, key, value, attention_mask, **kwargs):
    positions = _local.positions
    distance = positions[:, None] - positions[None, :]
    index = torch.arange(len(positions), device=key.device)
    in_prefix, in_sink = index < _local.prefix, index < _local.sink
    sliding = kwargs.get("sliding_window")
    if sliding:
        # A sliding layer keeps no sink: a segment's tokens never see the prefix it follows.
        attention_mask = (distance >= 0) & (distance < sliding)
        attention_mask &= ~(in_prefix[None, :] & ~in_prefix[:, None])
    else:
        attention_mask = (distance >= 0) & ((distance < _local.window) | in_sink[None, :])
    return _observe(module, query, key, value, attention_mask[None, None], **kwargs)


AttentionInterface.register(CAUSAL, _observe)
AttentionInterface.register(SEGMENT, _observe_segment)
ALL_MASK_ATTENTION_FUNCTIONS.register(SEGMENT, sdpa_mask)
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


@torch.inference_mode()
def segment_states(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    layer: int,
    *,
    sink: int,
    window: int,
    prefix: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`reference_states` at `positions` (1-D, like `input_ids`): global layers see the first
    `sink` tokens and the `window` tokens before each token, sliding layers their own window,
    all by position, except that the first `prefix` tokens (the sink put before a later
    segment) are hidden from the rest in sliding layers."""
    _local.layer, _local.sink, _local.window, _local.prefix = layer, sink, window, prefix
    _local.positions = positions.to(model.device)
    implementation = model.config._attn_implementation
    model.set_attn_implementation(SEGMENT)
    try:
        model(
            input_ids=input_ids[None].to(model.device),
            position_ids=_local.positions[None],
            use_cache=False,
        )
    finally:
        model.set_attn_implementation(implementation)
    return _local.keys, _local.queries


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖actual − expected‖ / ‖expected‖`` in float64."""
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm())
