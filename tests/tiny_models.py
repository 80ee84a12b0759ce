"""Tiny randomly initialised models of every supported family, and reference forwards.

A reference forward is the model's own (untruncated) forward with attention functions that
only *observe*: they wrap transformers' SDPA attention, record what the retrieval layer sees,
and (for the eviction reference) replace each global layer's causal mask by the sink + window
mask over the whole sequence. They share no code with the streaming prefill.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from transformers import (
    AttentionInterface,
    AutoModel,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ilre_engine import ILRe
from ilre_engine.architectures import adapter_for
from ilre_engine.streaming import ATTENTION_NAME
from ilre_engine.text import TokenizedContext

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    initializer_range=0.2,
)


def tiny_configs() -> dict[str, object]:
    """One config per family; two exercise sliding-window layers below the retrieval layer."""
    return {
        "llama": LlamaConfig(**COMMON),
        "qwen2": Qwen2Config(**COMMON),
        "qwen3": Qwen3Config(**COMMON, head_dim=16),
        "mistral": MistralConfig(**COMMON, sliding_window=None),
        "mistral-sliding": MistralConfig(**COMMON, sliding_window=24),
        "gemma3": Gemma3TextConfig(
            **COMMON,
            head_dim=16,
            sliding_window=24,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        ),
    }


def build_models(config, layer: int, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(full reference model, trunk for the engine) sharing the same random weights."""
    torch.manual_seed(seed)
    full = AutoModel.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
    trunk_config = copy.deepcopy(config)
    adapter_for(trunk_config).truncate(trunk_config, layer + 1)
    trunk = AutoModel.from_config(trunk_config, attn_implementation=ATTENTION_NAME, dtype=torch.float32)
    missing, _ = trunk.load_state_dict(full.state_dict(), strict=False)
    assert not missing, missing
    return full, trunk.eval()


def tiny_engine(trunk: torch.nn.Module, layer: int, **config) -> ILRe:
    from ilre_engine import ILReConfig

    return ILRe(trunk, tokenizer=None, layer=layer, name="tiny", config=ILReConfig(**config))


def random_context(length: int, vocab: int = 256, seed: int = 0) -> TokenizedContext:
    """A one-document context of random ids (offsets are token-per-character)."""
    ids = np.random.default_rng(seed).integers(0, vocab, size=length)
    return TokenizedContext(
        documents=("x" * length,),
        input_ids=ids.astype(np.int64),
        doc_ids=np.zeros(length, dtype=np.int32),
        offsets=np.stack([np.arange(length), np.arange(1, length + 1)], axis=1),
        word_ids=np.arange(length),
    )


_captured: dict[str, torch.Tensor] = {}
_lambda = {"sink": 0, "window": 0}


def _capture(module, query, key, value, attention_mask, **kwargs):
    if module.layer_idx == _captured["layer"]:
        _captured["keys"] = key[0].clone()
        _captured["queries"] = query[0].clone()
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _capture_lambda(module, query, key, value, attention_mask, **kwargs):
    if not kwargs.get("sliding_window"):
        positions = torch.arange(key.shape[2])
        distance = positions[:, None] - positions[None, :]
        visible = (distance >= 0) & ((distance < _lambda["window"]) | (positions < _lambda["sink"])[None, :])
        attention_mask = visible[None, None]
    return _capture(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("ilre_test_capture", _capture)
AttentionInterface.register("ilre_test_lambda", _capture_lambda)
ALL_MASK_ATTENTION_FUNCTIONS.register("ilre_test_capture", sdpa_mask)
ALL_MASK_ATTENTION_FUNCTIONS.register("ilre_test_lambda", sdpa_mask)


@torch.inference_mode()
def reference_states(
    full: torch.nn.Module, ids: np.ndarray, layer: int, sink: int | None = None, window: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and queries at `layer` from one full forward: plain causal masks, or with `window`
    set, the sink + window mask on every global layer."""
    _captured["layer"] = layer
    if window is None:
        full.set_attn_implementation("ilre_test_capture")
    else:
        _lambda.update(sink=sink, window=window)
        full.set_attn_implementation("ilre_test_lambda")
    try:
        full(input_ids=torch.as_tensor(ids)[None], use_cache=False)
    finally:
        full.set_attn_implementation("sdpa")
    return _captured["keys"], _captured["queries"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())
