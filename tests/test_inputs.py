"""Every bad input at the engine's public surface is refused with a typed ILRe error."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ilre_engine import ILReConfig
from ilre_engine.errors import (
    ConfigError,
    ContextTooLongError,
    EmptyInputError,
    EncodedContextError,
    ILReError,
    InvalidDocumentError,
)
from ilre_engine.inputs import as_documents, check_query, decode_document
from tests.tiny_models import build_models, random_context, tiny_configs, tiny_engine


@pytest.mark.parametrize("context", [None, 123, 1.5, {"a": "b"}, {"a", "b"}, object()])
def test_contexts_that_are_not_text_are_refused(context):
    with pytest.raises(InvalidDocumentError):
        as_documents(context)


def test_lone_surrogates_are_refused_in_documents_and_queries():
    with pytest.raises(InvalidDocumentError, match="document 1 holds a lone surrogate at"):
        as_documents(["fine", "bad \udcff text"])
    with pytest.raises(InvalidDocumentError, match="the query holds a lone surrogate"):
        check_query("what \ud800?")


def test_a_document_is_named_in_its_refusals():
    """A caller that knows a document's name (the command line: its file's path) gets it in
    the refusal, with the byte offset; empty text is returned, for the caller to judge."""
    latin1 = "Caf\u00e9 au lait".encode("latin-1")
    with pytest.raises(
        InvalidDocumentError, match=r"^docs/latin1\.txt is not valid UTF-8 at byte offset 3$"
    ):
        decode_document(latin1, "docs/latin1.txt")
    with pytest.raises(
        InvalidDocumentError, match=r"^document 1 is not valid UTF-8 at byte offset 3$"
    ):
        as_documents(["fine", latin1])
    with pytest.raises(InvalidDocumentError, match=r"notes\.md is a int, not text"):
        decode_document(7, "notes.md")
    assert decode_document(b" \n", "empty.txt") == " \n"


@pytest.mark.parametrize(
    "settings",
    [
        {"window": math.nan},
        {"sink": math.nan},
        {"sink": -1},
        {"chunk_size": 0},
        {"chunk_size": True},
        {"score_block": 1.5},
        {"max_tokens": 0},
        {"max_query_tokens": 0},
        {"kernel_sizes": (2,)},
        {"kernel_sizes": ()},
        {"kernel_sizes": (True,)},
        {"query_template": "Q{x}: {query}"},
        {"query_template": "no query here"},
        {"query_template": None},
        {"kernel_allocation": "some"},
        {"granularity": "page"},
        {"prior_query": "  "},
        {"recall_passes": 0},
        {"recall_passes": 1.0},
        {"recall_passes": True},
        {"recall_passes": None},
        {"batch_documents": 0},
        {"batch_documents": 2.5},
    ],
)
def test_bad_settings_are_config_errors(settings):
    with pytest.raises(ConfigError) as caught:
        ILReConfig(**settings)
    assert isinstance(caught.value, ILReError) and isinstance(caught.value, ValueError)


def test_kernel_sizes_from_json_lists_become_tuples():
    assert ILReConfig(kernel_sizes=[1, 5]).kernel_sizes == (1, 5)


@pytest.fixture(scope="module")
def tiny():
    _, trunk = build_models(tiny_configs()["llama"], 2)
    return tiny_engine(trunk, 2, chunk_size=16, max_tokens=100, max_query_tokens=8)


@pytest.mark.parametrize("count", [math.nan, -1, "10", None, True, 2.5])
def test_memory_estimates_refuse_what_is_not_a_count(tiny, count):
    with pytest.raises(ConfigError):
        tiny.memory_estimate(count)


def test_recall_refuses_what_is_not_an_encoded_context(tiny):
    for encoded in (None, "text", object()):
        with pytest.raises(EncodedContextError, match="expected an EncodedContext"):
            tiny.recall(encoded, "what?", budget_tokens=5)


def test_a_query_never_reaches_past_the_models_window(tiny):
    encoded = tiny.encode_tokens(random_context(95))
    tiny.query_states(encoded, [1, 2, 3, 4, 5])
    # A context saved with less room for the query than this engine's query takes.
    late = dataclasses.replace(encoded, query_position=tiny.max_positions - 4)
    tiny.query_states(late, [1, 2, 3, 4])  # the last position of the window
    with pytest.raises(ContextTooLongError, match="past the model's window of 4,096"):
        tiny.query_states(late, [1, 2, 3, 4, 5])


def test_empty_queries_are_refused():
    for query in ("", "  ", None, 3):
        with pytest.raises(EmptyInputError):
            check_query(query)


def test_a_query_over_its_limit_is_refused_before_any_work(engine):
    from dataclasses import replace

    from ilre_engine import ILRe

    short = ILRe(
        engine.model,
        engine.tokenizer,
        layer=engine.layer,
        name=engine.name,
        config=replace(engine.config, max_query_tokens=8),
    )
    with pytest.raises(ContextTooLongError, match="over the limit of 8"):
        short.compress("Some text to read.", "word " * 40, budget_tokens=5)
