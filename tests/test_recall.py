"""Recall's attention over blocks of keys equals the plain softmax it stands for."""

from __future__ import annotations

import pytest
import torch

from ilre_engine import ILReConfig
from ilre_engine.errors import ConfigError
from ilre_engine.recall import attention_scores, pool_scores, sharded_attention


def reference(queries: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """Each query head's softmax over every key in float32, averaged over its tokens."""
    group = queries.shape[0] // keys.shape[0]
    expanded = keys.float().repeat_interleave(group, dim=0)
    logits = torch.einsum("htd,hnd->htn", queries.float(), expanded) * scaling
    return torch.softmax(logits, dim=-1).mean(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [7, 64, 1000])  # many blocks, a ragged last one, one block
def test_blockwise_attention_is_the_softmax_over_all_keys(dtype, block):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(8, 5, 16, generator=generator).to(dtype)  # 8 query heads
    keys = torch.randn(2, 300, 16, generator=generator).to(dtype)  # 2 key heads (GQA)
    scores = attention_scores(queries, keys, 0.25, block=block)
    expected = reference(queries, keys, 0.25)
    assert scores.shape == (8, 300) and scores.dtype == torch.float32
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(scores, expected, rtol=tolerance, atol=tolerance / 300)
    assert torch.allclose(scores.sum(-1), torch.ones(8), atol=1e-4)


def test_a_store_of_shards_attends_as_one_context_and_masks_what_it_must():
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(4, 3, 8, generator=generator)
    keys = torch.randn(1, 90, 8, generator=generator)
    shards = [keys[:, :40], keys[:, 40:]]
    everything = [(torch.ones(40, dtype=torch.bool), torch.ones(40, dtype=torch.bool))] * 2
    everything[1] = (torch.ones(50, dtype=torch.bool), torch.ones(50, dtype=torch.bool))
    joined = torch.cat(sharded_attention(queries, shards, everything, 0.5, block=16), dim=1)
    assert torch.allclose(joined, attention_scores(queries, keys, 0.5), rtol=1e-5, atol=1e-7)

    # Keys 10..19 of the first shard leave the softmax; key 5 stays in it but never scores.
    in_softmax = torch.ones(40, dtype=torch.bool)
    in_softmax[10:20] = False
    scoring = in_softmax.clone()
    scoring[5] = False
    masks = [(in_softmax, scoring), everything[1]]
    masked = torch.cat(sharded_attention(queries, shards, masks, 0.5, block=16), dim=1)
    kept = torch.cat([torch.arange(10), torch.arange(20, 90)])
    expected = torch.zeros(4, 90)
    expected[:, kept] = reference(queries, keys[:, kept], 0.5)
    expected[:, 5] = 0.0
    assert torch.allclose(masked, expected, rtol=1e-5, atol=1e-7)


def test_head_weights_weigh_each_heads_pooled_scores():
    """Equal weights are the plain mean; one weight alone is that head's pooled scores;
    a count that is not the heads' is refused."""
    scores = torch.rand(4, 300, generator=torch.Generator().manual_seed(3))
    segments = torch.repeat_interleave(torch.arange(3), 100)
    kernels = (1, 5, 17)
    plain = pool_scores(scores, kernels, segments, allocation="average")
    equal = pool_scores(scores, kernels, segments, "average", head_weights=(2.0, 2.0, 2.0, 2.0))
    assert torch.allclose(plain, equal, rtol=1e-6)
    alone = pool_scores(scores, kernels, segments, "average", head_weights=(0, 1, 0, 0))
    assert torch.allclose(alone, pool_scores(scores[1:2], kernels, segments, "average"))
    with pytest.raises(ValueError, match="3 head weights for 4 heads"):
        pool_scores(scores, kernels, segments, "average", head_weights=(1, 1, 1))


@pytest.mark.parametrize("weights", [(), (1, -1), (0, 0), (float("nan"), 1), (True, 1), "12"])
def test_head_weights_are_checked(weights):
    with pytest.raises(ConfigError, match="head_weights"):
        ILReConfig(head_weights=weights)


def test_an_engine_refuses_head_weights_for_other_heads():
    from tests.tiny_models import build_models, tiny_configs, tiny_engine

    _, trunk = build_models(tiny_configs()["llama"], layer=2)
    assert tiny_engine(trunk, 2, head_weights=(1, 1, 1, 2)).config.head_weights == (1, 1, 1, 2)
    with pytest.raises(ConfigError, match="head_weights has 3 weights; 'tiny' has 4 query heads"):
        tiny_engine(trunk, 2, head_weights=(1, 1, 1))
