"""The streaming prefill computes what the model's own forward computes.

Without eviction (window >= L) the keys at the retrieval layer equal the full forward's; with
eviction they equal a full forward under the sink + window mask. Sliding-window layers keep
their own window in both cases, so they are exact either way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny_models import (
    build_models,
    random_context,
    reference_states,
    relative_error,
    tiny_configs,
    tiny_engine,
)

FAMILIES = sorted(tiny_configs())
LENGTH = 203
LAYER = 3


@pytest.fixture(scope="module", params=FAMILIES)
def models(request):
    config = tiny_configs()[request.param]
    full, trunk = build_models(config, LAYER)
    return request.param, full, trunk


@pytest.mark.parametrize("chunk_size", [1, 16, 50, 64, 203, 512])
def test_keys_equal_full_forward_without_eviction(models, chunk_size):
    _, full, trunk = models
    context = random_context(LENGTH)
    engine = tiny_engine(trunk, LAYER, chunk_size=chunk_size, sink=4, window=LENGTH)
    encoded = engine.encode_tokens(context)
    expected, _ = reference_states(full, context.input_ids, LAYER)
    assert encoded.keys.shape == expected.shape
    assert relative_error(encoded.keys, expected) < 1e-4


@pytest.mark.parametrize(
    ("chunk_size", "sink", "window"), [(16, 4, 32), (37, 8, 20), (64, 0, 50), (7, 16, 9)]
)
def test_keys_equal_sink_window_reference_with_eviction(models, chunk_size, sink, window):
    name, full, trunk = models
    context = random_context(LENGTH, seed=1)
    engine = tiny_engine(trunk, LAYER, chunk_size=chunk_size, sink=sink, window=window)
    encoded = engine.encode_tokens(context)
    expected, _ = reference_states(full, context.input_ids, LAYER, sink=sink, window=window)
    assert relative_error(encoded.keys, expected) < 1e-4
    unmasked, _ = reference_states(full, context.input_ids, LAYER)
    if name == "mistral-sliding":
        # Every layer slides: the sink + window knobs do not apply, the result is exact.
        assert relative_error(encoded.keys, unmasked) < 1e-4
    else:
        # Guard against a reference that ignores the mask: eviction must change something.
        assert relative_error(expected, unmasked) > 1e-3


def test_query_states_continue_the_stream(models):
    _, full, trunk = models
    context = random_context(LENGTH, seed=2)
    query = np.random.default_rng(3).integers(0, 256, size=11)
    engine = tiny_engine(trunk, LAYER, chunk_size=32, sink=4, window=40)
    encoded = engine.encode_tokens(context)
    queries, scaling = engine.query_states(encoded, query.tolist())
    _, expected = reference_states(
        full, np.concatenate([context.input_ids, query]), LAYER, sink=4, window=40
    )
    assert relative_error(queries, expected[:, LENGTH:]) < 1e-4
    assert scaling == pytest.approx(trunk.layers[LAYER].self_attn.scaling)


def test_the_retrieval_layer_of_a_context_pass_projects_only_keys(models):
    """The keys above equal the model's own; a context pass gets them from the key
    projection alone (`streaming.skip_to_keys`), a query pass from the whole attention."""
    _, _, trunk = models
    attention = trunk.layers[LAYER].self_attn
    calls: list[str] = []
    handles = [
        getattr(attention, name).register_forward_hook(lambda *_, name=name: calls.append(name))
        for name in ("q_proj", "k_proj", "v_proj")
    ]
    try:
        engine = tiny_engine(trunk, LAYER, chunk_size=64)
        encoded = engine.encode_tokens(random_context(LENGTH))
        assert calls == ["k_proj"] * 4  # 203 tokens in chunks of 64
        engine.query_states(encoded, [5, 6, 7])
        assert calls[4:] == ["q_proj", "k_proj", "v_proj"]
    finally:
        for handle in handles:
            handle.remove()


def test_early_layers_keep_bounded_memory(models):
    name, _, trunk = models
    sink, window, chunk = 4, 24, 16
    engine = tiny_engine(trunk, LAYER, chunk_size=chunk, sink=sink, window=window)
    encoded = engine.encode_tokens(random_context(LENGTH))
    for layer, kept in encoded.kept.items():
        assert layer < LAYER
        held = kept.sink_keys.shape[2] + kept.recent_keys.shape[2]
        assert held <= sink + window, (name, layer, held)
    assert set(encoded.kept) == set(range(LAYER))


def test_query_does_not_change_the_encoded_state(models):
    _, _, trunk = models
    engine = tiny_engine(trunk, LAYER, chunk_size=32, sink=4, window=40)
    encoded = engine.encode_tokens(random_context(LENGTH))
    before = {layer: kv.recent_keys.clone() for layer, kv in encoded.kept.items()}
    first, _ = engine.query_states(encoded, [1, 2, 3])
    engine.query_states(encoded, [9, 8, 7, 6])
    again, _ = engine.query_states(encoded, [1, 2, 3])
    assert torch.equal(first, again)
    for layer, kv in encoded.kept.items():
        assert torch.equal(kv.recent_keys, before[layer])


def test_kept_windows_own_only_their_elements(models):
    """An encoded context holds what `nbytes` reports: its kept windows are not views that
    keep a whole chunk's buffer alive."""
    _, _, trunk = models
    engine = tiny_engine(trunk, LAYER, chunk_size=32, sink=4, window=24)
    encoded = engine.encode_tokens(random_context(LENGTH))
    for kept in encoded.kept.values():
        for tensor in (kept.sink_keys, kept.sink_values, kept.recent_keys, kept.recent_values):
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    storage = sum(
        t.untyped_storage().nbytes()
        for kept in encoded.kept.values()
        for t in (kept.sink_keys, kept.sink_values, kept.recent_keys, kept.recent_values)
    )
    assert storage + encoded.keys.untyped_storage().nbytes() == encoded.nbytes()
