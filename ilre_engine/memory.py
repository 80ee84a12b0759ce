"""The memory guard: estimate what an encode will hold, refuse before running out.

For a context of ``L`` tokens, with ``e`` bytes per element of the model's dtype, ``h_kv`` key
heads and ``h_q`` query heads of width ``d``, hidden size ``H``, MLP width ``I``, chunk ``C``,
and per early layer ``l < l_R`` a kept span ``keep_l`` (`ilre_engine.architectures.layer_keep`:
``sink + window`` for a global layer, its own window for a sliding one):

- keys at the retrieval layer: ``L * h_kv * d * e`` (the only part that grows with ``L``);
- early layers: ``sum_l 2 * h_kv * d * e * (keep_l + C)`` (kept keys and values, plus the
  chunk they are concatenated with);
- one chunk's activations: ``C * (4 H + (h_q + 2 h_kv) d + 3 I) * e``, plus its attention
  weights ``C * (max_l keep_l + C) * h_q * 4`` (CPU attention with a mask materialises them);
- recall: ``5 * h_q * L * 4`` (scores, the cached prior and the scores over it, pooled copy,
  pooling gaps) plus one block of logits
  ``h_q * T_q * min(block, L) * 4`` for a query of up to ``T_q`` tokens
  (`ILReConfig.max_query_tokens`).

The estimate is compared with what the device can still give: free CUDA memory plus what
torch's caching allocator holds unused; on the CPU, ``MemAvailable`` (capped by a cgroup v2
limit when one applies); on MPS, the recommended maximum less what the driver holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .architectures import ModelDims, layer_keep
from .errors import InsufficientMemoryError

MiB = 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes an encode of a given length needs, by part (see the module docstring)."""

    keys: int
    early_layers: int
    activations: int
    recall: int

    @property
    def total(self) -> int:
        return self.keys + self.early_layers + self.activations + self.recall

    def describe(self) -> str:
        parts = {
            "keys at l_R": self.keys,
            "early-layer windows": self.early_layers,
            "chunk activations": self.activations,
            "recall": self.recall,
        }
        return ", ".join(f"{name} {size / MiB:,.0f} MiB" for name, size in parts.items())


def estimate_encode_bytes(
    model_config: Any,
    layer: int,
    *,
    length: int,
    chunk_size: int,
    sink: int,
    window: int,
    score_block: int,
    dtype: torch.dtype,
    query_tokens: int = 256,
) -> MemoryEstimate:
    """What encoding `length` tokens up to `layer` needs, then one recall over it."""
    element = torch.empty((), dtype=dtype).element_size()
    dims = ModelDims.from_config(model_config)
    query_heads, kv_heads, head_dim = dims.query_heads, dims.kv_heads, dims.head_dim
    hidden, intermediate = dims.hidden, dims.intermediate
    chunk = min(chunk_size, length)
    keeps = [sum(layer_keep(dims.sliding_windows[i], sink, window)) for i in range(layer)]
    keeps = [min(keep, length) for keep in keeps]
    early = sum(2 * kv_heads * head_dim * element * (keep + chunk) for keep in keeps)
    widest = max(keeps, default=0)
    activations = chunk * (4 * hidden + (query_heads + 2 * kv_heads) * head_dim + 3 * intermediate)
    activations = activations * element + chunk * (widest + chunk) * query_heads * 4
    logits_block = query_heads * query_tokens * min(score_block, length) * 4
    recall = 5 * query_heads * length * 4 + logits_block
    return MemoryEstimate(
        keys=length * kv_heads * head_dim * element,
        early_layers=early,
        activations=activations,
        recall=recall,
    )


def available_bytes(device: torch.device) -> int | None:
    """Bytes `device` can still give, or None when that cannot be known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    if device.type == "cpu":
        return _host_available_bytes()
    return None


def _host_available_bytes() -> int | None:
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pages = getattr(os, "sysconf", None)
        if pages is not None and "SC_AVPHYS_PAGES" in os.sysconf_names:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    # In a container the cgroup's limit, not the host's free memory, is what kills us.
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            in_cgroup = int(limit) - current
            available = in_cgroup if available is None else min(available, in_cgroup)
    except (OSError, ValueError):
        pass
    return available


def check_memory(estimate: MemoryEstimate, device: torch.device, length: int) -> None:
    """Raise `InsufficientMemoryError` when `estimate` exceeds what `device` can give."""
    available = available_bytes(device)
    if available is not None and estimate.total > available:
        raise InsufficientMemoryError(
            f"encoding {length:,} tokens needs about {estimate.total / MiB:,.0f} MiB on "
            f"{device} ({estimate.describe()}), but only {available / MiB:,.0f} MiB is "
            "available: shorten the context, split it over several encodes, lower chunk_size "
            "or window, or use a device with more memory"
        )
