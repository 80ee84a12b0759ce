"""Recall by attention at the retrieval layer (step 4 of the method).

1. `attention_scores`: every query head's softmax attention over the context keys (GQA: a
   key head serves its group of query heads), averaged over the query tokens. The softmax
   runs over blocks of keys in two passes (log-sum-exp, then probabilities), so memory stays
   ``O(heads x L)`` however long the context.
2. `pool_scores`: max-pooling along the sequence, with several kernel sizes allocated across
   heads (`allocate_kernels`), then the mean over heads. A recalled token lifts its
   neighbours within the kernel, so phrases come out whole; small kernels keep precise
   needles, large ones keep their surroundings.

Turning scores into budgeted text is `ilre_engine.selection`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F


def grouped_logits(grouped: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """``(kv_heads, n, G)`` float32 scaled logits of keys ``(kv_heads, n, D)`` against grouped
    queries ``(kv_heads, G, D)``: keys along rows.

    Keys are the rows on purpose: a CPU's bfloat16 kernels (AMX, AVX-512 BF16) are fast only
    with many rows, so a block of 65,536 keys against 60 query rows takes 1.9 ms this way and
    52 ms the other (float32: 23 against 37 ms; measured on the project's CPU). On a GPU both
    ways run alike. The softmax then runs over dimension 1, so nothing is transposed."""
    return torch.matmul(keys, grouped.transpose(1, 2)).float().mul_(scaling)


def mean_over_queries(probabilities: torch.Tensor, query_len: int) -> torch.Tensor:
    """``(query_heads, n)``: `probabilities` ``(kv_heads, n, group * query_len)`` averaged
    over each query head's tokens (grouped as `attention_scores` groups them)."""
    kv_heads, width, grouped = probabilities.shape
    group = grouped // query_len
    per_head = probabilities.view(kv_heads, width, group, query_len).mean(-1)
    return per_head.permute(0, 2, 1).reshape(kv_heads * group, width)


def blockwise_softmax(
    logit_blocks: Callable[[], Iterable[torch.Tensor]],
) -> Iterator[torch.Tensor]:
    """The softmax over dimension 1 of blocks of `grouped_logits` taken together, one block
    at a time: two passes over ``logit_blocks()`` (the log-sum-exp over every block, then
    each block's probabilities), so memory stays one block's however many keys there are."""
    log_norm = None
    for logits in logit_blocks():
        block_norm = torch.logsumexp(logits, dim=1, keepdim=True)
        log_norm = block_norm if log_norm is None else torch.logaddexp(log_norm, block_norm)
    for logits in logit_blocks():
        yield torch.exp(logits - log_norm)


def attention_scores(
    queries: torch.Tensor, keys: torch.Tensor, scaling: float, block: int = 65536
) -> torch.Tensor:
    """``(query_heads, L)`` float32 attention of each query head to each key, averaged over query
    tokens. `queries` is ``(query_heads, Tq, D)``, `keys` ``(kv_heads, L, D)``."""
    query_heads, query_len, head_dim = queries.shape
    kv_heads, length, _ = keys.shape
    grouped = queries.reshape(kv_heads, query_heads // kv_heads * query_len, head_dim)

    def logits(start: int) -> torch.Tensor:
        return grouped_logits(grouped, keys[:, start : start + block], scaling)

    if length <= block:
        return mean_over_queries(torch.softmax(logits(0), dim=1), query_len)
    starts = range(0, length, block)
    scores = torch.empty(query_heads, length, device=keys.device)
    probabilities = blockwise_softmax(lambda: map(logits, starts))
    for start, block_probabilities in zip(starts, probabilities, strict=True):
        width = block_probabilities.shape[1]
        scores[:, start : start + width] = mean_over_queries(block_probabilities, query_len)
    return scores


def head_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    doc_ids: torch.Tensor,
    block: int = 65536,
) -> torch.Tensor:
    """`attention_scores` with the tokens of no document (``doc_ids < 0``) zeroed.

    The beginning-of-sequence token is the attention sink: it takes most of the mass and must
    not spread it to its neighbours through pooling. It stays in the softmax, where it absorbs
    the attention of query tokens that look for nothing in particular.
    """
    scores = attention_scores(queries, keys, scaling, block)
    scores[:, doc_ids < 0] = 0.0
    return scores


def allocate_kernels(num_heads: int, kernel_sizes: Sequence[int]) -> list[int]:
    """Kernel size of each head: sizes are dealt round-robin over heads, so each group of
    heads that shares a key head sees several sizes. With fewer heads than sizes, the
    remaining sizes are not used."""
    if not kernel_sizes:
        raise ValueError("kernel_sizes must not be empty")
    return [int(kernel_sizes[head % len(kernel_sizes)]) for head in range(num_heads)]


def remove_prior(scores: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Per head, `scores` over the `prior` scores of a question that asks for nothing: both
    normalised to sum 1 over the context, the prior smoothed by ``1/L``. What every question
    attends to (contractions, sentence starts) scores about 1; what this question attends to
    more than any question does scores above."""
    length = scores.shape[-1]
    share = scores / scores.sum(-1, keepdim=True).clamp_min(1e-30)
    baseline = prior / prior.sum(-1, keepdim=True).clamp_min(1e-30)
    return share / (baseline + 1.0 / length)


def pool_scores(
    head_scores: torch.Tensor,
    kernel_sizes: Sequence[int],
    segments: torch.Tensor | None = None,
    allocation: str = "heads",
    head_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """``(L,)`` token scores: each head max-pooled with its allocated kernel, then averaged;
    with ``allocation="average"``, every head pooled with every kernel, all averaged. With
    `head_weights` (one per head), the average over heads is weighted by them.

    With `segments` (``(L,)`` ids, e.g. the document of each token), pooling never carries a
    score across a change of segment: the sequence is spread out with zero-score gaps as wide
    as the largest kernel's reach before pooling, and gathered back after.
    """
    count = head_scores.shape[0]
    if head_weights is not None and len(head_weights) != count:
        raise ValueError(f"{len(head_weights)} head weights for {count} heads")
    if allocation == "average" and len(kernel_sizes) > 1:
        head_scores = head_scores.repeat(len(kernel_sizes), 1)
        sizes = [int(size) for size in kernel_sizes for _ in range(count)]
    else:
        sizes = allocate_kernels(count, kernel_sizes)
    reach = max(sizes) // 2
    index = None
    if segments is not None and reach and len(segments) > 1:
        change = torch.zeros_like(segments, dtype=torch.long)
        change[1:] = (segments[1:] != segments[:-1]).long()
        index = torch.arange(len(segments), device=segments.device) + reach * change.cumsum(0)
        spread = head_scores.new_zeros(head_scores.shape[0], int(index[-1]) + 1)
        spread[:, index] = head_scores
        head_scores = spread
    pooled = torch.empty_like(head_scores)
    for size in sorted(set(sizes)):
        heads = [h for h, s in enumerate(sizes) if s == size]
        rows = head_scores[heads]
        if size > 1:
            rows = F.max_pool1d(rows[None], size, stride=1, padding=size // 2)[0]
        pooled[heads] = rows
    if index is not None:
        pooled = pooled[:, index]
    if head_weights is None:
        return pooled.mean(0)
    # Rows are heads, repeated once per kernel with "average": weights repeat alike.
    weights = torch.tensor(head_weights, dtype=pooled.dtype, device=pooled.device)
    weights = weights.repeat(len(pooled) // count)
    return (weights[:, None] * pooled).sum(0) / weights.sum()


def sharded_attention(
    queries: torch.Tensor,
    shard_keys: Sequence[torch.Tensor],
    masks: Sequence[tuple[torch.Tensor, torch.Tensor]],
    scaling: float,
    block: int,
) -> list[torch.Tensor]:
    """`attention_scores` over the keys of many shards as one context: per shard,
    ``(query_heads, L_shard)`` float32 attention averaged over query tokens, with the keys
    outside `masks[i][0]` left out of the softmax and the tokens outside `masks[i][1]` zeroed.
    Keys go to the queries' device one block at a time (a corpus store's shards are
    memory-mapped on the host)."""
    query_heads, query_len, head_dim = queries.shape
    kv_heads = shard_keys[0].shape[0]
    grouped = queries.reshape(kv_heads, query_heads // kv_heads * query_len, head_dim)
    blocks = [
        (index, start)
        for index, keys in enumerate(shard_keys)
        for start in range(0, keys.shape[1], block)
    ]

    # Most shards hold no deleted document: their blocks need no mask.
    hiding = [not bool(in_softmax.all()) for in_softmax, _ in masks]

    def logit_blocks() -> Iterator[torch.Tensor]:
        for index, start in blocks:
            part = shard_keys[index][:, start : start + block].to(grouped.device, grouped.dtype)
            logits = grouped_logits(grouped, part, scaling)
            if hiding[index]:
                visible = masks[index][0][start : start + block]
                logits.masked_fill_(~visible[:, None], -torch.inf)
            yield logits

    scores = [torch.zeros(query_heads, keys.shape[1], device=grouped.device) for keys in shard_keys]
    for (index, start), probabilities in zip(blocks, blockwise_softmax(logit_blocks), strict=True):
        width = probabilities.shape[1]
        scores[index][:, start : start + width] = mean_over_queries(probabilities, query_len)
    for index, (_, scoring) in enumerate(masks):
        scores[index][:, ~scoring] = 0.0
    return scores
