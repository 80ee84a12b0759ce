"""Optional compilation of the streaming prefill's GPU work (`ILRe.compile()`).

In eager mode every RMSNorm, rotary embedding, activation and residual add is a chain of
small element-wise kernels that each read and write the hidden states (the RMSNorm alone
runs in float32 in five passes). On a GPU that traffic costs about as much as the attention
(docs/lab-notes.md, "Where the time goes"). Two things are compiled:

1. **The decoder layers**, each with `torch.compile` on the module: the model's own code
   runs, nothing is re-implemented, and each chain becomes one fused kernel while the matrix
   products stay the library's (cuBLAS) kernels. The whole model cannot be compiled because
   the streaming attention function reads a Python `StreamState` and raises to stop at the
   retrieval layer; it is excluded (`torch.compiler.disable` in `streaming`), so each layer
   compiles to one graph up to the attention call and one after it. Shapes are compiled
   dynamic, so chunks, the last partial chunk and queries of any length share the graphs
   of a layer kind instead of recompiling for each new length (on torch 2.11 the first
   length compiles static, the second once more with dynamic shapes, and that serves all).
2. **The sink + window attention of full chunks on CUDA**, through FlexAttention with a
   block mask: it skips the key blocks that no query of a block sees (most of a 2048-token
   chunk's keys at window 1024) and reads the grouped key heads as they are,
   where SDPA's masked kernel computes every block and needs the key heads repeated.
   Partial chunks, the first chunks (sink or window not yet full) and queries keep SDPA,
   so the attention kernel compiles once per (sink, window, chunk size), never per length.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

FUSED_ATTENTION = "ilre_fused_attention"
"""Attribute set on the attention modules of compiled layers: `stream_attention` then runs
full chunks through `sink_window_attention`."""


def compile_layers(model: torch.nn.Module, **options: Any) -> None:
    """Compile each decoder layer of `model` (a base model with ``.layers``) in place, and
    switch full chunks on CUDA to the fused sink + window attention.

    The first forward compiles (tens of seconds for a large model; later processes reuse
    inductor's on-disk cache), later ones run the fused kernels. `options` go to
    `torch.compile` (e.g. ``backend="aot_eager"`` to check tracing without code generation).
    """
    layers = getattr(model, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no decoder layers (.layers) to compile")
    for layer in layers:
        layer.compile(**{"dynamic": True, **options})
        setattr(layer.self_attn, FUSED_ATTENTION, True)


def sink_window_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    sink: int,
    window: int,
    scaling: float | None,
) -> torch.Tensor:
    """Attention of a full chunk over ``[sink keys | window recent keys | the chunk]``.

    Query ``i`` of the chunk sees all `sink` keys and the chunk-relative band
    ``(i, i + window]`` of the rest: the `StreamState.visibility` mask once the sink and the
    window are full. `query` is ``(1, heads, C, D)``; `keys` and `values` are
    ``(1, kv_heads, sink + window + C, D)``, grouped heads as they are.
    """
    block_mask = _block_mask(sink, window, query.shape[2], keys.shape[2], query.device)
    return _flex()(query, keys, values, block_mask=block_mask, scale=scaling, enable_gqa=True)


def sink_window_mask_mod(sink: int, window: int):
    """FlexAttention mask function of `sink_window_attention`'s layout."""

    def visible(batch, head, q_index, kv_index):
        band = kv_index - sink
        return (kv_index < sink) | ((band > q_index) & (band <= q_index + window))

    return visible


@functools.lru_cache(maxsize=16)
def _block_mask(sink: int, window: int, length: int, keys: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        sink_window_mask_mod(sink, window), None, None, length, keys, device=device
    )


@functools.cache
def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)
