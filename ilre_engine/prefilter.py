"""`Prefilter`: an approximate first stage for a corpus store's recall (FAISS).

Exact recall reads every key of the store in every pass, so its cost grows with the corpus.
Attention is a softmax of inner products: the keys that weigh most for a query row are its
keys of largest inner product, which is what an inverted-file (IVF) index finds without
reading them all. `KeyIndex` holds one IVF index per key head over a store's live keys (the
lists are k-means cells of the keys; a query row probes the `Prefilter.nprobe` cells whose
centroids it aligns with most and returns its `Prefilter.k` keys of largest inner product).
`candidate_attention` then computes exact logits for those candidates only, together with
every sink token (a sink takes much of each query's attention without ever scoring) and a
random sample of the other keys, which estimates the rest of the softmax's normaliser.
Every token that is not a candidate scores 0.

FAISS is an optional dependency (``pip install ilre[faiss]``), imported at the first index.
The index lives on the host (faiss-cpu); on a GPU engine the query rows go to the host for
the search and the candidates come back to the device, where the keys are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import require_int
from .errors import ILReError
from .recall import grouped_logits, mean_over_queries
from .results import RecallResult

TRAIN_PER_LIST = 64
"""Training keys per list: k-means needs a few dozen points a centroid (FAISS warns under
39), and training time grows with the sample, so the sample stays this small."""
ADD_BLOCK = 262_144
"""Keys converted to float32 and added at a time, so building needs one block's memory."""
PROGRESS_KEYS = 1_000_000
"""Above this many keys, building shows a progress bar (about a minute a million keys on one
CPU core, most of it training the lists)."""


@dataclass(frozen=True)
class Prefilter:
    """How a store's recall narrows the keys it scores exactly.

    Attributes:
        k: candidate keys per query row (a query head's token); the union over rows, plus
            the sinks, is what the softmax runs over.
        nprobe: lists each query row searches; more finds more of its true top keys, at a
            cost that grows with ``nprobe / lists``.
        lists: the IVF index's lists per key head; None: ``4 * sqrt(keys)`` (bounded so that
            each list trains on enough keys).
        float16: store the index's vectors in float16 (a FAISS scalar quantizer): half the
            memory of float32, the same candidates up to rounding of the inner products.
        tail_sample: keys drawn at random to estimate the softmax mass of the keys that are
            not candidates (`candidate_attention`); 0 leaves that mass out.
    """

    k: int = 1024
    nprobe: int = 32
    lists: int | None = None
    float16: bool = True
    tail_sample: int = 4096

    def __post_init__(self) -> None:
        for name, low in (("k", 1), ("nprobe", 1), ("tail_sample", 0)):
            require_int(f"Prefilter.{name}", getattr(self, name), low=low)
        if self.lists is not None:
            require_int("Prefilter.lists", self.lists, low=1)

    def lists_for(self, keys: int) -> int:
        """The lists of an index over `keys` keys."""
        lists = self.lists if self.lists is not None else round(4 * math.sqrt(keys))
        return max(1, min(lists, keys // TRAIN_PER_LIST))


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ILReError(
            "the approximate prefilter needs FAISS: pip install ilre[faiss] (or faiss-cpu)"
        ) from error
    return faiss


class KeyIndex:
    """One IVF inner-product index per key head over the keys of many shards, taken as one
    sequence: a key's id is its position in that sequence. Only the keys in `indexed` go in
    (a deleted document's keys and the sinks stay out), so they are never candidates."""

    def __init__(
        self,
        shard_keys: Sequence[torch.Tensor],
        indexed: Sequence[torch.Tensor],
        settings: Prefilter,
        *,
        seed: int = 0,
    ) -> None:
        faiss = _faiss()
        kv_heads, _, head_dim = shard_keys[0].shape
        starts = np.cumsum([0] + [keys.shape[1] for keys in shard_keys[:-1]])
        ids = [np.flatnonzero(mask.cpu().numpy()) for mask in indexed]
        total = sum(len(i) for i in ids)
        if not total:
            raise ILReError("the store holds no keys to index")
        self.lists = settings.lists_for(total)
        self.indexes: list[tuple[Any, Any]] = []  # (quantizer, IVF index) per key head
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(total, min(total, TRAIN_PER_LIST * self.lists), replace=False))
        bar = tqdm(
            total=kv_heads * total,
            desc="ILRe prefilter index",
            unit="key",
            unit_scale=True,
            leave=False,
            disable=total <= PROGRESS_KEYS,
        )
        for head in range(kv_heads):
            quantizer = faiss.IndexFlatIP(head_dim)
            if settings.float16:
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer,
                    head_dim,
                    self.lists,
                    faiss.ScalarQuantizer.QT_fp16,
                    faiss.METRIC_INNER_PRODUCT,
                )
            else:
                index = faiss.IndexIVFFlat(
                    quantizer, head_dim, self.lists, faiss.METRIC_INNER_PRODUCT
                )
            bar.set_postfix_str(f"key head {head}: training {self.lists} lists")
            index.train(_rows(shard_keys, ids, head, sample))
            bar.set_postfix_str(f"key head {head}: adding keys")
            for keys, local, start in zip(shard_keys, ids, starts, strict=True):
                for first in range(0, len(local), ADD_BLOCK):
                    part = local[first : first + ADD_BLOCK]
                    rows = _float32(keys[head, torch.from_numpy(part)])
                    index.add_with_ids(rows, part + start)
                    bar.update(len(part))
            self.indexes.append((quantizer, index))
        bar.close()

    @property
    def nbytes(self) -> int:
        """Memory of the indexes' vectors, ids and centroids (what grows with the keys)."""
        total = 0
        for quantizer, index in self.indexes:
            total += index.ntotal * (index.code_size + 8) + quantizer.ntotal * quantizer.d * 4
        return total

    def candidates(self, queries: torch.Tensor, settings: Prefilter) -> list[np.ndarray]:
        """Per key head, the sorted positions of the top `settings.k` keys found in
        `settings.nprobe` lists for each query row of its group (`queries`: ``(query_heads,
        Tq, D)``, query heads grouped as `recall.attention_scores` groups them), merged."""
        faiss = _faiss()
        params = faiss.SearchParametersIVF(nprobe=min(settings.nprobe, self.lists))
        grouped = queries.reshape(len(self.indexes), -1, queries.shape[-1])
        found = []
        for head, (_, index) in enumerate(self.indexes):
            rows = _float32(grouped[head])
            _, positions = index.search(rows, min(settings.k, index.ntotal), params=params)
            found.append(np.unique(positions[positions >= 0]))
        return found


def _float32(rows: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(rows.detach().to("cpu", torch.float32).numpy())


def _rows(
    shard_keys: Sequence[torch.Tensor], ids: Sequence[np.ndarray], head: int, picks: np.ndarray
) -> np.ndarray:
    """float32 keys of one head at `picks` (sorted indices into the indexed keys of all
    shards, in order)."""
    parts, seen = [], 0
    for keys, local in zip(shard_keys, ids, strict=True):
        mine = picks[(picks >= seen) & (picks < seen + len(local))] - seen
        parts.append(_float32(keys[head, torch.from_numpy(local[mine])]))
        seen += len(local)
    return np.concatenate(parts)


def candidate_attention(
    queries: torch.Tensor,
    shard_keys: Sequence[torch.Tensor],
    masks: Sequence[tuple[torch.Tensor, torch.Tensor]],
    scaling: float,
    candidates: Sequence[np.ndarray],
    tail_sample: int,
) -> list[torch.Tensor]:
    """What `recall.sharded_attention` returns, with each key head's probabilities computed only
    for its `candidates` (`KeyIndex.candidates`: positions in all shards' keys taken as one
    sequence) and every sink (in the softmax, ``masks[i][0]``, but not scoring,
    ``masks[i][1]``); every other token scores 0.

    The softmax's normaliser also counts the keys that are not candidates, estimated from
    `tail_sample` keys drawn at random from all in the softmax: without them, a query row
    that looks for nothing in particular would pour its whole mass onto its few candidates
    and outweigh the rows that find something, which exact recall does not do."""
    query_heads, query_len, head_dim = queries.shape
    kv_heads = shard_keys[0].shape[0]
    group = query_heads // kv_heads
    grouped = queries.reshape(kv_heads, group * query_len, head_dim)
    device = grouped.device
    sizes = [keys.shape[1] for keys in shard_keys]
    starts = np.cumsum([0, *sizes])
    present, sinks = (
        np.concatenate(
            [
                start + np.flatnonzero(mask.cpu().numpy())
                for start, mask in zip(starts, selected, strict=False)
            ]
        )
        for selected in ([p for p, _ in masks], [p & ~s for p, s in masks])
    )
    drawn = np.random.default_rng(0).choice(present, min(tail_sample, len(present)), replace=False)

    def logits_of(head: int, positions: np.ndarray) -> torch.Tensor:
        shard_of = np.searchsorted(starts, positions, side="right") - 1
        keys = torch.cat(
            [
                shard_keys[s][head, torch.from_numpy(positions[shard_of == s] - starts[s])]
                for s in np.unique(shard_of)
            ]
        ).to(device, grouped.dtype)
        return grouped_logits(grouped[head : head + 1], keys[None], scaling)

    flat = torch.zeros(query_heads, int(starts[-1]), device=device)
    for head in range(kv_heads):
        positions = np.union1d(candidates[head], sinks)
        logits = logits_of(head, positions)
        log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
        outside = drawn[~np.isin(drawn, positions)]
        if len(outside):
            tail = torch.logsumexp(logits_of(head, outside), dim=1, keepdim=True)
            log_norm = torch.logaddexp(log_norm, tail + math.log(len(present) / len(drawn)))
        scores = mean_over_queries(torch.exp(logits - log_norm), query_len)
        flat[head * group : (head + 1) * group, torch.from_numpy(positions).to(device)] = scores
    parts = list(torch.split(flat, sizes, dim=1))
    for part, (_, scoring) in zip(parts, masks, strict=True):
        part[:, ~scoring] = 0.0
    return parts


def kept_share(exact: RecallResult, approximate: RecallResult) -> float:
    """The share of the exact recall's text (the characters of its spans) that an approximate
    recall at the same budget keeps too: how much of what exact recall keeps survives the
    prefilter."""
    kept = {(s.document, c) for s in approximate.spans for c in range(s.start, s.end)}
    wanted = [(s.document, c) for s in exact.spans for c in range(s.start, s.end)]
    return sum(c in kept for c in wanted) / max(len(wanted), 1)
