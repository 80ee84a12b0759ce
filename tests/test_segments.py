"""Contexts past the model's window are read in segments, and every segment computes what the
model's own forward computes at the positions it is given (`ilre_engine.segments`)."""

from __future__ import annotations

import copy
import dataclasses
import weakref

import numpy as np
import pytest
import torch
from transformers import AutoModel

from ilre_engine import ContextTooLongError, ILRe, ILReConfig, ILReError
from ilre_engine.segments import plan_segments
from ilre_engine.streaming import ATTENTION_NAME
from ilre_engine.testing.reference import relative_error, segment_states
from tests.tiny_models import (
    build_models,
    random_context,
    tiny_configs,
    tiny_engine,
    worded_config,
)

FAMILIES = sorted(tiny_configs())
LAYER = 3
POSITIONS = 96  # the tiny models' window, for these tests
SINK, WINDOW, QUERY = 4, 16, 8
LENGTH = 300


@pytest.fixture(scope="module", params=FAMILIES)
def models(request):
    full, trunk = build_models(copy.deepcopy(tiny_configs()[request.param]), LAYER)
    trunk.config.max_position_embeddings = POSITIONS
    return request.param, full, trunk


def _engine(trunk) -> ILRe:
    return tiny_engine(
        trunk, LAYER, chunk_size=16, sink=SINK, window=WINDOW, max_query_tokens=QUERY
    )


@pytest.mark.parametrize("length", [1, 87, 88, 89, 155, 156, 157, 300, 1001])
def test_segments_own_every_token_once_and_end_where_the_query_begins(length):
    end, sink, warmup = 88, 4, 16
    plan = plan_segments(length, end, sink, warmup)
    owned = np.concatenate([np.arange(s.own_start, s.end) for s in plan])
    assert np.array_equal(owned, np.arange(length))
    if length <= end:
        assert plan == plan[:1] and plan[0].position == 0 and plan[0].end == length
        return
    assert plan[0].read_start == plan[0].position == 0 and plan[0].end == end
    for segment in plan[1:]:
        assert segment.read_start == segment.own_start - warmup
        assert segment.position >= sink  # after the sink's positions
        assert segment.position + segment.end - segment.read_start == end


def test_a_long_context_is_refused_only_by_the_guard_or_memory(models):
    _, _, trunk = models
    encoded = _engine(trunk).encode_tokens(random_context(LENGTH))
    assert encoded.keys.shape[1] == LENGTH
    assert encoded.query_position + QUERY <= POSITIONS
    guarded = tiny_engine(trunk, LAYER, max_query_tokens=QUERY, max_tokens=LENGTH - 1)
    with pytest.raises(ContextTooLongError, match="over the limit"):
        guarded.encode_tokens(random_context(LENGTH))


def test_each_segment_equals_the_models_own_forward_at_its_positions(models):
    name, full, trunk = models
    engine = _engine(trunk)
    context = random_context(LENGTH, seed=2)
    ids = torch.as_tensor(context.input_ids)
    plan = engine.plan_segments(LENGTH)
    assert len(plan) == 5
    sink = 0 if name == "mistral-sliding" else SINK  # layers that all slide keep no sink
    encoded = engine.encode_tokens(context)
    for segment in plan:
        prefix = sink if segment.read_start else 0
        positions = torch.cat(
            [
                torch.arange(prefix),
                torch.arange(
                    segment.position, segment.position + len(ids[segment.read_start : segment.end])
                ),
            ]
        )
        sequence = torch.cat([ids[:prefix], ids[segment.read_start : segment.end]])
        keys, _ = segment_states(
            full, sequence, positions, LAYER, sink=sink, window=WINDOW, prefix=prefix
        )
        own = keys[:, prefix + segment.own_start - segment.read_start :]
        assert relative_error(encoded.keys[:, segment.own_start : segment.end], own) < 1e-4

    # The query continues the last segment, at positions that end inside the window.
    query = np.arange(10, 10 + QUERY)
    queries, _ = engine.query_states(encoded, query)
    last = plan[-1]
    positions = torch.cat(
        [
            torch.arange(sink),
            torch.arange(last.position, encoded.query_position),
            torch.arange(encoded.query_position, encoded.query_position + QUERY),
        ]
    )
    sequence = torch.cat([ids[:sink], ids[last.read_start : last.end], torch.as_tensor(query)])
    _, expected = segment_states(
        full, sequence, positions, LAYER, sink=sink, window=WINDOW, prefix=sink
    )
    assert relative_error(queries, expected[:, -QUERY:]) < 1e-4


@pytest.mark.parametrize("length", [40, 80])
def test_a_document_placed_to_end_at_the_query_keeps_its_own_sink(models, length):
    """A store's document ends where the query begins (``end_aligned``), so it starts at a
    position past 0: its own first tokens are still its attention sink once the window
    evicts what lies between (80 tokens > sink + window + chunk)."""
    name, full, trunk = models
    engine = _engine(trunk)
    context = random_context(length, seed=4)
    (segment,) = engine.encoder.plan_segments(length, end_aligned=True)
    assert segment.position > 0 and segment.end_position == POSITIONS - QUERY
    sink = 0 if name == "mistral-sliding" else SINK
    positions = torch.arange(segment.position, segment.end_position)
    keys, _ = segment_states(
        full,
        torch.as_tensor(context.input_ids),
        positions,
        LAYER,
        sink=sink,
        window=WINDOW,
        prefix=0,
    )
    encoded = engine.encoder.encode_tokens(context, end_aligned=True)
    assert relative_error(encoded.keys, keys) < 1e-4


def test_documents_read_side_by_side_equal_each_read_alone(models):
    """`Encoder.document_keys` reads a store's documents in batches (rows that end leave the
    batch; one longer than the window goes through segments): each document's keys are its
    own stream's."""
    _, _, trunk = models
    engine = tiny_engine(
        trunk,
        LAYER,
        chunk_size=16,
        sink=SINK,
        window=WINDOW,
        max_query_tokens=QUERY,
        batch_documents=3,
    )
    lengths = [40, 1, 88, 17, 300, 16, 63, 33]
    documents = [random_context(n, seed=10 + i) for i, n in enumerate(lengths)]
    batched = engine.encoder.document_keys(documents)
    for tokens, keys in zip(documents, batched, strict=True):
        alone = engine.encoder.encode_tokens(tokens, end_aligned=True).keys
        assert keys.shape == alone.shape
        assert relative_error(keys, alone) < 1e-5


def test_a_batch_reads_its_last_chunk_rounded_up():
    """Whole chunks, then the last rounded up to a multiple of 64 within the chunk, so
    batches of other lengths share shapes; stream_batch refuses buffers of other widths."""
    from ilre_engine.streaming import batch_width, stream_batch

    assert [batch_width(n, 1024) for n in (1, 64, 65, 1000, 1024, 1025, 2000)] == [
        64,
        64,
        128,
        1024,
        1024,
        1088,
        2048,
    ]
    assert [batch_width(n, 16) for n in (1, 16, 17, 40)] == [16, 16, 32, 48]
    assert batch_width(1001, 1000) == 1064  # a chunk that is no multiple of the step
    for width in (39, 49):
        with pytest.raises(ValueError, match="slots"):
            stream_batch(
                None, [np.zeros(40, dtype=np.int64)], [0], None, torch.empty(1, 1, width, 2), 16
            )


def test_documents_side_by_side_default_by_device(models, monkeypatch):
    """None reads 16 documents side by side on the CPU and 64 on CUDA, where 16 leaves the
    encode bound by host work per step; a given count is kept on either."""
    from ilre_engine import engine as engine_module

    _, _, trunk = models
    chosen = tiny_engine(trunk, LAYER, batch_documents=3)
    default = tiny_engine(trunk, LAYER)
    assert default.config.batch_documents is None
    assert (default.encoder.batch_documents, chosen.encoder.batch_documents) == (16, 3)
    monkeypatch.setattr(engine_module.ILRe, "device", property(lambda _: torch.device("cuda")))
    assert (default.encoder.batch_documents, chosen.encoder.batch_documents) == (64, 3)


def test_the_encoder_reads_its_engines_settings_at_each_call(models, monkeypatch):
    """`ILRe.encoder` keeps no copy of the model or the config: a config replaced on the
    engine and a window changed on its model apply to the next encode. It is one object per
    engine, so a wrapper set on its methods (benchmarks/ray_gpu.py times them) stays."""
    _, _, trunk = models
    engine = _engine(trunk)
    encoder = engine.encoder
    assert engine.encoder is encoder and len(encoder.plan_segments(LENGTH)) == 5
    engine.config = dataclasses.replace(engine.config, max_tokens=LENGTH - 1, batch_documents=5)
    assert encoder.batch_documents == 5
    with pytest.raises(ContextTooLongError, match="over the limit of 299"):
        engine.encode_tokens(random_context(LENGTH))
    monkeypatch.setattr(trunk.config, "max_position_embeddings", 4 * POSITIONS)
    assert len(engine.plan_segments(LENGTH)) == 1
    # The encoder holds its engine weakly: dropping the engine frees it (and its model) at
    # once, with no garbage collection.
    dropped = weakref.ref(engine)
    del engine
    assert dropped() is None
    with pytest.raises(ILReError, match="engine is gone"):
        encoder.plan_segments(LENGTH)


def test_rows_chosen_by_device_are_as_many_as_memory_holds(models, monkeypatch):
    """With `batch_documents` left to the device, a batch takes no more rows than the free
    memory holds (two here), and each document's keys are still its own stream's; a count
    given in the config is kept (its batch is then checked as a whole)."""
    from ilre_engine import encoding

    _, _, trunk = models
    settings = {"chunk_size": 16, "sink": SINK, "window": WINDOW, "max_query_tokens": QUERY}
    default = tiny_engine(trunk, LAYER, **settings)
    chosen = tiny_engine(trunk, LAYER, batch_documents=3, **settings)
    documents = [random_context(n, seed=20 + i) for i, n in enumerate([40, 33, 30, 17, 9])]
    one = default.memory_estimate(40)
    room = int(2.5 * (one.keys + one.early_layers + one.activations))
    monkeypatch.setattr(encoding, "available_bytes", lambda device: room)
    read = {}
    for engine in (default, chosen):
        sizes = read.setdefault(engine.config.batch_documents, [])
        original = engine.encoder._read_side_by_side

        def spy(batch, plans, indices, original=original, sizes=sizes):
            sizes.append(len(batch))
            return original(batch, plans, indices)

        monkeypatch.setattr(engine.encoder, "_read_side_by_side", spy)
        encoder = engine.encoder
        for tokens, keys in zip(documents, encoder.document_keys(documents), strict=True):
            alone = encoder.encode_tokens(tokens, end_aligned=True).keys
            assert relative_error(keys, alone) < 1e-5
    assert read == {None: [2, 2, 1], 3: [3, 2]}


def test_a_needle_is_scored_alike_in_every_segment(models):
    """Every segment ends where the query begins: two segments that read the same tokens
    score them alike, wherever they lie in the context (pooling aside, at their edges)."""
    _, _, trunk = models
    engine = _engine(trunk)
    context = random_context(LENGTH, seed=3)
    plan = engine.plan_segments(LENGTH)
    ids = context.input_ids.copy()
    window = ids[plan[1].read_start : plan[1].end].copy()
    ids[plan[3].read_start : plan[3].end] = window  # segment 3 reads what segment 1 reads
    scores = engine.scores_for_ids(
        engine.encode_tokens(type(context)(**{**context.__dict__, "input_ids": ids})),
        np.arange(10, 10 + QUERY),
    )
    edge = max(engine.config.kernel_sizes) // 2  # pooling reaches into the neighbours
    one = scores[plan[1].own_start + edge : plan[1].end - edge]
    three = scores[plan[3].own_start + edge : plan[3].end - edge]
    assert torch.allclose(one, three, rtol=1e-4, atol=1e-9)


@pytest.fixture(scope="module")
def worded(tokenizer):
    """A tiny Gemma 3 over the embedded model's tokenizer, with a window of 160 positions."""
    config = worded_config(tokenizer)
    torch.manual_seed(0)
    model = AutoModel.from_config(config, attn_implementation=ATTENTION_NAME).eval()
    settings = ILReConfig(chunk_size=32, max_query_tokens=16, prior_query=None)
    return ILRe(model, tokenizer, layer=1, name="worded", config=settings)


@pytest.mark.parametrize("split", [1, 3, 5])
def test_extend_past_the_window_equals_encoding_at_once(worded, split):
    documents = [
        f"Entry {i}: the keeper of lock {i} logged a delay of {i * 7} minutes." * 2
        for i in range(8)
    ]
    whole = worded.encode(documents)
    assert len(worded.plan_segments(len(whole))) > 2
    extended = worded.extend(worded.encode(documents[:split]), documents[split:])
    assert extended.query_position == whole.query_position
    assert np.array_equal(extended.tokens.input_ids, whole.tokens.input_ids)
    assert torch.allclose(extended.keys, whole.keys, atol=1e-5)
    question = "Which lock logged a delay of 21 minutes?"
    assert worded.recall(extended, question, budget_tokens=20) == worded.recall(
        whole, question, budget_tokens=20
    )
