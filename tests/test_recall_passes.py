"""Multi-pass recall (`ILReConfig.recall_passes`) on a tiny random model with a character
tokenizer: one pass is the single-pass recall exactly; more passes ask again with the best
text so far before the question, within the budget and the query's limits."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from ilre_engine import ILRe, ILReConfig
from ilre_engine.scoring import SEED_TOKENS, RecallPipeline
from ilre_engine.selection import select_within_budget
from ilre_engine.tokenization import cut_to_tokens
from tests.tiny_models import build_models, char_tokenizer, tiny_configs

LAYER = 2
QUESTION = "Which variables hold the value 4417?"
WORDS = ["the", "lantern", "crew", "tide", "rope", "north", "VAR", "KQZ", "=", "4417", "bell"]


@pytest.fixture(scope="module")
def trunk():
    return build_models(tiny_configs()["gemma3"], LAYER)[1]


def engine_for(trunk, **settings) -> ILRe:
    config = ILReConfig(chunk_size=64, sink=4, window=32, prior_query="What is this?", **settings)
    return ILRe(trunk, char_tokenizer(), layer=LAYER, name="tiny", config=config)


@pytest.fixture(scope="module")
def context() -> str:
    rng = random.Random(0)
    sentences = [
        " ".join(rng.choices(WORDS, k=rng.randint(4, 9))).capitalize() + "." for _ in range(40)
    ]
    return " ".join(sentences)


def test_one_pass_is_the_single_pass_recall(trunk, context):
    engine = engine_for(trunk, recall_passes=1)
    encoded = engine.encode(context)
    scores = engine.scores_for_ids(encoded, *engine.query_ids(QUESTION)).cpu().numpy()
    budget = engine.input_tokens(encoded) // 10
    spans, text = select_within_budget(encoded.tokens, scores, budget, engine.counter.count)
    result = engine.recall(encoded, QUESTION, budget_tokens=budget)
    assert np.array_equal(engine.token_scores(encoded, QUESTION), scores)
    assert result.text == text and list(result.spans) == spans


def test_two_passes_average_the_question_and_the_seeded_question(trunk, context):
    one, two = engine_for(trunk, recall_passes=1), engine_for(trunk, recall_passes=2)
    encoded = one.encode(context)
    first = one.token_scores(encoded, QUESTION)
    _, seed = select_within_budget(encoded.tokens, first, SEED_TOKENS, one.counter.count)
    assert seed
    second = one.token_scores(encoded, f"{seed}\n{QUESTION}")
    np.testing.assert_allclose(two.token_scores(encoded, QUESTION), (first + second) / 2)


@pytest.mark.parametrize("passes", [2, 3])
def test_more_passes_keep_the_budget_and_are_deterministic(trunk, context, passes):
    engine = engine_for(trunk, recall_passes=passes)
    encoded = engine.encode(context)
    for budget in (5, 20, 60):
        result = engine.recall(encoded, QUESTION, budget_tokens=budget)
        assert 0 < result.output_tokens <= budget
        assert result.output_tokens == engine.counter.count(result.text)
        again = engine.recall(encoded, QUESTION, budget_tokens=budget)
        assert (again.text, again.spans) == (result.text, result.spans)
    single = engine_for(trunk, recall_passes=1).token_scores(encoded, QUESTION)
    assert not np.allclose(engine.token_scores(encoded, QUESTION), single)


def test_the_seed_is_cut_to_the_query_limits_and_the_question_kept_whole(
    trunk, context, monkeypatch
):
    base = engine_for(trunk, recall_passes=3)
    question_tokens = len(base.query_ids(QUESTION)[0])
    asked: list[list[int]] = []
    query_states = RecallPipeline.query_states

    def spy(pipeline, stream, query_ids, observer=None):
        asked.append(list(query_ids))
        return query_states(pipeline, stream, query_ids, observer=observer)

    monkeypatch.setattr(RecallPipeline, "query_states", spy)

    # Room for five seed tokens: under max_query_tokens, then under the position limit.
    by_query = engine_for(trunk, recall_passes=3, max_query_tokens=question_tokens + 6)
    encoded = by_query.encode(context)
    by_position = engine_for(trunk, recall_passes=3)
    # A context (saved by an engine with less room for queries) near the window's end.
    window = trunk.config.max_position_embeddings
    late = replace(encoded, query_position=window - question_tokens - 6)
    tail = base.tokenizer(f"\n{QUESTION}", add_special_tokens=False)["input_ids"]
    for engine, context_ in ((by_query, encoded), (by_position, late)):
        asked.clear()
        engine.recall(context_, QUESTION, budget_tokens=20)
        follow_ups = [ids for ids in asked if len(ids) > question_tokens]
        assert len(follow_ups) == 2  # passes 2 and 3 each got a seed
        for ids in follow_ups:
            assert len(ids) <= question_tokens + 6
            assert ids[-len(tail) :] == tail

    # No room at all: the recall is the single pass.
    full = replace(base.config, max_query_tokens=question_tokens)
    tight = ILRe(trunk, char_tokenizer(), layer=LAYER, name="tiny", config=full)
    single = engine_for(trunk, recall_passes=1).recall(encoded, QUESTION, budget_tokens=20)
    assert tight.recall(encoded, QUESTION, budget_tokens=20).text == single.text


def test_cut_to_tokens_keeps_whole_tokens_and_always_shortens():
    tokenizer = char_tokenizer()
    assert cut_to_tokens(tokenizer, "abc def", 10) == "abc def"
    assert cut_to_tokens(tokenizer, "abc def", 4) == "abc"  # the trailing space is stripped
    assert cut_to_tokens(tokenizer, "abc def", 0) == ""
