"""Tiny randomly initialised models of every supported family, and reference forwards.

The references are `ilre_engine.reference`: the model's own full forward, observed.
"""

from __future__ import annotations

import copy
import string

import numpy as np
import torch
from transformers import (
    AutoModel,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from ilre_engine import ILRe
from ilre_engine.architectures import adapter_for
from ilre_engine.context import TokenizedContext
from ilre_engine.streaming import ATTENTION_NAME
from ilre_engine.testing import reference

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
            layer_types=[
                "sliding_attention",
                "full_attention",
                "sliding_attention",
                "full_attention",
            ],
        ),
    }


def build_models(config, layer: int, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(full reference model, trunk for the engine) sharing the same random weights."""
    torch.manual_seed(seed)
    full = AutoModel.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
    trunk_config = copy.deepcopy(config)
    adapter_for(trunk_config).truncate(trunk_config, layer + 1)
    trunk = AutoModel.from_config(
        trunk_config, attn_implementation=ATTENTION_NAME, dtype=torch.float32
    )
    missing, _ = trunk.load_state_dict(full.state_dict(), strict=False)
    assert not missing, missing
    return full, trunk.eval()


def tiny_engine(trunk: torch.nn.Module, layer: int, **config) -> ILRe:
    from ilre_engine import ILReConfig

    # No tokenizer: the neutral-question prior has no text to read, so it is off.
    config = {"prior_query": None, **config}
    return ILRe(trunk, tokenizer=None, layer=layer, name="tiny", config=ILReConfig(**config))


def char_tokenizer():
    """A fast tokenizer of one token per printable ASCII character (ids below 102, so it
    fits the tiny models' vocabulary), with a beginning-of-sequence token: engines over tiny
    models can then read text queries."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1}
    vocab.update({ch: i + 2 for i, ch in enumerate(sorted(set(string.printable)))})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", unk_token="<unk>")


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


def reference_states(full, ids: np.ndarray, layer: int, sink=None, window=None):
    return reference.reference_states(full, torch.as_tensor(ids), layer, sink=sink, window=window)


relative_error = reference.relative_error


def worded_config(tokenizer) -> Gemma3TextConfig:
    """A tiny Gemma 3 over a real tokenizer's vocabulary (the embedded model's, in the tests),
    with a window of 160 positions, so that a few sentences already reach past it; layer 1
    is its global retrieval layer, layer 0 slides over 24 tokens."""
    return Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=160,
        sliding_window=24,
        layer_types=["sliding_attention", "full_attention"],
    )
