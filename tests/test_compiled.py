"""`ILRe.compile()`: compiled decoder layers compute what the eager ones compute.

The layers are traced with the ``aot_eager`` backend (no code generation, so the test stays
fast on a CPU); the GPU benchmark runs the real one (inductor). What this checks is the part
that can break: the graph break at the streaming attention function, the exception that
stops the forward at the retrieval layer, and one compiled graph serving every chunk and
query length without recompiling for each new stream state. The fused attention of full
chunks runs on CUDA only; here its mask is checked against the stream's own visibility.
"""

from __future__ import annotations

import pytest
import torch

from ilre_engine.compiled import compile_layers, sink_window_mask_mod
from ilre_engine.context import KeptKV
from ilre_engine.streaming import StreamState
from tests.tiny_models import build_models, random_context, tiny_configs, tiny_engine

LAYER = 3


# Gemma 3: sliding and global layers (two compiled variants), q/k norms, the full model.
@pytest.mark.parametrize("family", ["gemma3"])
def test_compiled_layers_match_eager(family):
    _, trunk = build_models(tiny_configs()[family], LAYER)
    context = random_context(203, seed=2)
    engine = tiny_engine(trunk, LAYER, chunk_size=64, sink=4, window=32)
    expected = engine.encode_tokens(context)
    expected_scores = engine.scores_for_ids(expected, [5, 6, 7, 8], 1)

    torch._dynamo.reset()
    compile_layers(trunk, backend="aot_eager")
    first = engine.encode_tokens(context)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    again = engine.encode_tokens(context)  # a new stream state: no new graphs
    scores = engine.scores_for_ids(again, [5, 6, 7, 8], 1)

    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
    for encoded in (first, again):
        torch.testing.assert_close(encoded.keys, expected.keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("sink", "window", "chunk"), [(4, 32, 16), (0, 24, 40), (8, 20, 64)])
def test_fused_attention_mask_is_the_full_window_visibility(sink, window, chunk):
    # What an early layer keeps once its sink and window are full, before a full chunk.
    def kept_keys(n):
        return torch.zeros(1, 1, n, 4)

    kept = KeptKV(
        sink, window, kept_keys(sink), kept_keys(sink), kept_keys(window), kept_keys(window)
    )
    state = StreamState(retrieval_layer=9, sink=sink, window=window)
    state.start, state.length = 5 * window + sink + 3, chunk
    q_index = torch.arange(chunk)[:, None]
    kv_index = torch.arange(sink + window + chunk)[None, :]
    mask = sink_window_mask_mod(sink, window)(0, 0, q_index, kv_index)
    assert torch.equal(mask, state.visibility(kept))
