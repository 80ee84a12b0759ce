"""Streaming chunked prefill up to the retrieval layer (steps 2 and 3 of the method).

The model's own forward runs, chunk by chunk, with one thing swapped: its attention function.
`stream_attention` is registered with transformers' `AttentionInterface` and receives each
layer's query, key and value states *after* the layer's own projections, norms and rotary
embedding. Below the retrieval layer it attends to a bounded set of kept keys (an attention
sink of the first tokens plus a window of recent ones, or the layer's own sliding window) and
then evicts; at the retrieval layer it stores the keys of every token and stops the forward
by raising `RetrievalLayerReached`, so nothing above the key projection of that layer runs.
In a context pass the retrieval layer stops even earlier: `skip_to_keys` hooks its attention
module so that it computes the keys alone (`Adapter.key_states`), not the query and value
projections that recall never reads for context tokens.

All per-call state lives in a `StreamState` passed through the forward's keyword arguments,
never in the modules, so one model serves many threads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AttentionInterface

from . import compiled
from .architectures import Adapter, layer_keep
from .context import KeptKV

ATTENTION_NAME = "ilre_stream"
STATE_KWARG = "ilre_stream"
KEYS_ONLY = "ilre_keys_only"
"""Attribute set on the attention modules that `skip_to_keys` hooked (so it hooks once)."""


class RetrievalLayerReached(Exception):
    """Stops the forward inside the retrieval layer: what comes after its keys is not needed."""


class StreamObserver(Protocol):
    """Receives what the stream computes at early layers on its way to `l_R`.

    Pass one to `ILRe.encode_tokens` or `ILRe.query_states`: the layers it names in
    `layers` report their keys (context pass) or query states (query pass), exactly what an
    engine whose retrieval layer were that layer would store. Layer calibration reads every
    candidate layer in one pass this way.
    """

    layers: frozenset[int]

    def on_keys(self, layer: int, start: int, keys: torch.Tensor) -> None:
        """``(kv_heads, n, head_dim)`` keys of the context positions ``[start, start + n)``."""

    def on_queries(self, layer: int, queries: torch.Tensor) -> None:
        """``(query_heads, Tq, head_dim)`` query states of a query pass."""


@dataclass
class StreamState:
    """What one pass of chunks (the context, or a query after it) reads and writes.

    Args:
        retrieval_layer: index of `l_R`.
        sink: first tokens every global early layer keeps.
        window: recent tokens every global early layer keeps.
        kept: per early layer, what it keeps; filled by the context pass, read by a query pass.
        keys: ``(streams, kv_heads, n, head_dim)`` buffer for the keys at `l_R` of the
            positions ``[key_offset, key_offset + n)`` (context pass only).
        update: the context pass evicts and stores; a query pass only reads.
        chunk: length of the context pass's full chunks; only those take a compiled layer's
            fused attention (`ilre_engine.compiled`), so it compiles for one shape.
        observer: reports early layers' keys or query states (`StreamObserver`).
        row_positions: ``(streams, 1)``, the position of each stream's first token, for
            streams placed elsewhere than at 0 (a `CorpusStore`'s documents end where the
            query begins) and for a batch of documents read side by side (`stream_batch`).
            `start` then counts tokens from the streams' first (their sink: the attention
            sink is a stream's own first tokens), and each row's positions are those counts
            shifted by its own; distances, and so masks, are the same in every row.
    """

    retrieval_layer: int
    sink: int
    window: int
    kept: dict[int, KeptKV] = field(default_factory=dict)
    keys: torch.Tensor | None = None
    update: bool = True
    start: int = 0
    length: int = 0
    key_offset: int = 0
    chunk: int = 0
    queries: torch.Tensor | None = None
    scaling: float | None = None
    masks: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)
    observer: StreamObserver | None = None
    row_positions: torch.Tensor | None = None

    def visibility(self, kept: KeptKV) -> torch.Tensor:
        """``(length, kept + length)`` boolean mask of the current chunk over what `kept` holds
        and the chunk itself: causal, within `kept.keep` tokens, or in the sink. Layers with the
        same layout share one mask per chunk."""
        sink_len, recent_len = kept.sink_keys.shape[2], kept.recent_keys.shape[2]
        layout = (self.start, self.length, sink_len, recent_len, kept.keep, kept.sink_size)
        mask = self.masks.get(layout)
        if mask is None:
            if self.masks and next(iter(self.masks))[:2] != layout[:2]:
                self.masks.clear()  # a new chunk
            device = kept.sink_keys.device
            key_positions = torch.cat(
                (
                    torch.arange(sink_len, device=device),
                    torch.arange(self.start - recent_len, self.start + self.length, device=device),
                )
            )
            query_positions = torch.arange(self.start, self.start + self.length, device=device)
            distance = query_positions[:, None] - key_positions[None, :]
            in_sink = (key_positions < kept.sink_size)[None, :]
            mask = (distance >= 0) & ((distance < kept.keep) | in_sink)
            self.masks[layout] = mask
        return mask


# Compiled decoder layers (`ilre_engine.compiled`) call this eagerly: it reads and mutates
# Python state and raises to stop the forward, which a compiled graph cannot hold.
@torch.compiler.disable
def stream_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention for one chunk of a streaming pass (a transformers attention function)."""
    state: StreamState | None = kwargs.get(STATE_KWARG)
    if state is None:
        raise RuntimeError(
            f"attention implementation {ATTENTION_NAME!r} only runs inside ILRe's streaming prefill"
        )
    if kwargs.get("softcap") is not None:
        raise RuntimeError("attention logit soft-capping is not supported by the streaming prefill")
    layer = module.layer_idx
    if layer == state.retrieval_layer:
        if state.update:  # a model that `skip_to_keys` did not hook
            _store_keys(state, key)
        else:
            state.queries = query[0]
        state.scaling = scaling
        raise RetrievalLayerReached
    observer = state.observer
    if observer is not None and layer in observer.layers:  # one stream: no batch
        if state.update:
            observer.on_keys(layer, state.start, key[0])
        else:
            observer.on_queries(layer, query[0])

    kept = state.kept.get(layer)
    if kept is None:
        kept = KeptKV.empty(key, *layer_keep(sliding_window, state.sink, state.window))
    keys = torch.cat((kept.sink_keys, kept.recent_keys, key), dim=2)
    values = torch.cat((kept.sink_values, kept.recent_values, value), dim=2)
    if state.update:
        state.kept[layer] = _evict(kept, key, value, keys, values, state.start, state.length)

    if query.device.type == "cuda" and _fused_chunk(module, state, kept):
        output = compiled.sink_window_attention(
            query, keys, values, kept.sink_size, kept.keep, scaling
        )
        return output.transpose(1, 2).contiguous(), None
    visible = state.visibility(kept)
    if query.device.type == "cuda":
        # SDPA's masked CUDA kernels take no grouped heads (enable_gqa would fall back to the
        # math kernel, which materialises every score): repeat the few key heads instead.
        group = query.shape[1] // keys.shape[1]
        if group > 1:
            keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
        # Backends are left to SDPA: choosing one (sdpa_kernel) flips process-wide flags,
        # which races between threads and leaks into the user's other models.
        output = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=visible, scale=scaling
        )
    else:
        output = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=visible, scale=scaling, enable_gqa=True
        )
    return output.transpose(1, 2).contiguous(), None


def _store_keys(state: StreamState, key: torch.Tensor) -> None:
    """Write a context chunk's ``(streams, kv_heads, n, head_dim)`` keys at `l_R` into
    `state.keys`."""
    begin = state.start - state.key_offset
    state.keys[:, :, begin : begin + state.length] = key


def skip_to_keys(model: torch.nn.Module, adapter: Adapter) -> None:
    """Hook every attention module of `model` (a base model with ``.layers``) so that, in a
    context pass, the retrieval layer makes only its keys (`adapter.key_states`) and stops
    the forward; query passes and the layers below it run their own forward. Idempotent.

    The hooks act only on forwards that carry a `StreamState`, so the model serves other
    callers unchanged, and one model still serves many threads."""
    hook = functools.partial(_keys_only, adapter)
    for layer in model.layers:
        if not getattr(layer.self_attn, KEYS_ONLY, False):
            layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True)
            setattr(layer.self_attn, KEYS_ONLY, True)


# Compiled decoder layers call this hook eagerly, as they call `stream_attention`.
@torch.compiler.disable
def _keys_only(
    adapter: Adapter, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]
) -> None:
    """`skip_to_keys`'s forward pre-hook."""
    state: StreamState | None = kwargs.get(STATE_KWARG)
    if state is None or not state.update or module.layer_idx != state.retrieval_layer:
        return
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    _store_keys(state, adapter.key_states(module, hidden, kwargs["position_embeddings"]))
    state.scaling = module.scaling
    raise RetrievalLayerReached


def _fused_chunk(module: torch.nn.Module, state: StreamState, kept: KeptKV) -> bool:
    """A full context chunk in a compiled layer, once the sink and the window are full: its
    mask is then `compiled.sink_window_attention`'s, wherever the chunk is."""
    recent = kept.recent_keys.shape[2]
    return (
        getattr(module, compiled.FUSED_ATTENTION, False)
        and state.length == state.chunk
        and kept.sink_keys.shape[2] == kept.sink_size
        and recent == kept.keep
        and state.start - recent >= kept.sink_size
    )


def _evict(
    kept: KeptKV,
    key: torch.Tensor,
    value: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    length: int,
) -> KeptKV:
    """What a layer keeps after the chunk ``[start, start + length)``: lengths are host integers,
    so no device synchronisation happens here."""
    seen = start + length
    sink_len = kept.sink_keys.shape[2]
    sink_keys, sink_values = kept.sink_keys, kept.sink_values
    if sink_len < kept.sink_size and start < kept.sink_size:
        # The recent part is empty until the sink is full, so the sink continues in this chunk.
        extra = min(kept.sink_size, seen) - start
        sink_keys = torch.cat((sink_keys, key[:, :, :extra]), dim=2)
        sink_values = torch.cat((sink_values, value[:, :, :extra]), dim=2)
    recent_start = max(kept.sink_size, seen - kept.keep)
    # Views into this chunk's concatenation: it stays alive until the next chunk, which keeps
    # memory at sink + window + chunk per layer without copying the window every chunk.
    # A stream that starts past position 0 (a later segment) has seen only what it kept and
    # this chunk, not every position before `recent_start`.
    tail = min(max(seen - recent_start, 0), kept.recent_keys.shape[2] + length)
    recent_keys = keys[:, :, keys.shape[2] - tail :]
    recent_values = values[:, :, values.shape[2] - tail :]
    return KeptKV(
        kept.sink_size,
        kept.keep,
        sink_keys,
        sink_values,
        recent_keys,
        recent_values,
    )


def run_chunk(model: torch.nn.Module, input_ids: torch.Tensor, state: StreamState) -> None:
    """Run the model's own forward over `input_ids` ``(streams, length)`` at positions
    ``[state.start, +length)`` (shifted by `state.row_positions` where set) until it reaches
    the retrieval layer (where `stream_attention` stops it)."""
    positions = torch.arange(state.start, state.start + state.length, device=input_ids.device)
    positions = positions[None] if state.row_positions is None else state.row_positions + positions
    try:
        model(
            input_ids=input_ids,
            position_ids=positions,
            use_cache=False,
            **{STATE_KWARG: state},
        )
    except RetrievalLayerReached:
        return
    raise RuntimeError("the forward finished without reaching the retrieval layer")


def stream_keys(
    model: torch.nn.Module,
    input_ids: np.ndarray,
    offset: int,
    state: StreamState,
    keys: torch.Tensor,
    chunk_size: int,
    progress: bool | None,
) -> torch.Tensor:
    """Feed `input_ids` (positions from `offset`) in chunks of `chunk_size` and fill `keys`
    (``(kv_heads, len(input_ids), head_dim)``) with their keys at `l_R`.

    `progress`: show a bar; None shows one for long inputs when stderr is a terminal.
    """
    length = len(input_ids)
    ids = torch.from_numpy(input_ids).to(keys.device)
    starts = range(0, length, chunk_size)
    # tqdm's disable=None hides the bar when stderr is not a terminal.
    disable = (not progress) if progress is not None else (None if len(starts) > 8 else True)
    state.keys, state.key_offset, state.chunk = keys[None], offset, chunk_size
    for start in tqdm(starts, desc="ILRe encode", unit="chunk", disable=disable, leave=False):
        state.start, state.length = offset + start, min(chunk_size, length - start)
        run_chunk(model, ids[None, start : start + state.length], state)
    return keys


BATCH_LENGTH_STEP = 64
"""A batch's last chunk is read rounded up to a multiple of this many tokens (within the
chunk): its length otherwise follows the batch's longest document, and each new shape costs
a fresh process more (docs/lab-notes.md, "Documents side by side on the GPU: 64")."""


def batch_width(longest: int, chunk_size: int) -> int:
    """How many slots `stream_batch` reads for a batch whose longest document has `longest`
    tokens: whole chunks, then the last one rounded up to a multiple of `BATCH_LENGTH_STEP`
    (never past `chunk_size`). The slots after `longest` are padding that no document's
    token sees."""
    last = (longest - 1) // chunk_size * chunk_size
    step = min(BATCH_LENGTH_STEP, chunk_size)
    return last + min(chunk_size, -(-(longest - last) // step) * step)


def stream_batch(
    model: torch.nn.Module,
    documents: list[np.ndarray],
    positions: list[int],
    state: StreamState,
    keys: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Read `documents` (token ids, longest first), each its own stream starting at its
    `positions` entry, side by side in chunks of `chunk_size`, into `keys`
    ``(len(documents), kv_heads, width, head_dim)``: row ``i``'s first ``len(documents[i])``
    keys are what `stream_keys` gives for that document alone.

    The rows share their slots (token ``t`` of every document is read in the same chunk), so
    one mask serves them all. A row that has ended leaves the batch before the next chunk,
    which is why the longest come first; the ids after a row's end in its last chunk are
    padding that none of its tokens sees (attention is causal), and so are the slots past
    the longest document, up to the width of `keys`: at most `batch_width`, and no more than
    the positions the model has after the longest row's end."""
    lengths = [len(ids) for ids in documents]
    if lengths != sorted(lengths, reverse=True):
        raise ValueError("stream_batch reads documents longest first")
    width = keys.shape[2]
    if not lengths[0] <= width <= batch_width(lengths[0], chunk_size):
        raise ValueError(
            f"stream_batch reads {lengths[0]} to {batch_width(lengths[0], chunk_size)} slots "
            f"for these documents, not {width}"
        )
    padded = np.zeros((len(documents), width), dtype=np.int64)
    for row, ids in enumerate(documents):
        padded[row, : len(ids)] = ids
    ids = torch.from_numpy(padded).to(keys.device)
    row_positions = torch.tensor(positions, device=keys.device)[:, None]
    state.key_offset, state.chunk = 0, chunk_size
    for start in range(0, width, chunk_size):
        rows = sum(length > start for length in lengths)
        state.kept = {layer: kept.first_rows(rows) for layer, kept in state.kept.items()}
        state.keys, state.row_positions = keys[:rows], row_positions[:rows]
        state.start, state.length = start, min(chunk_size, width - start)
        run_chunk(model, ids[:rows, start : start + state.length], state)
    return keys


AttentionInterface.register(ATTENTION_NAME, stream_attention)
