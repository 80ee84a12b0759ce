"""The engine as a user drives it: budgets, results, reuse, refusals, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ilre_engine import (
    GAP_MARKER,
    BudgetError,
    EmptyInputError,
    EncodedContext,
    EncodedContextError,
    ILRe,
    InvalidDocumentError,
    UnsupportedModelError,
)
from ilre_engine.loading import EMBEDDED_MODEL, ModelSource, default_dtype
from tests.conftest import QUESTION, SAMPLE


@pytest.mark.parametrize("native", [True, False])
def test_the_default_dtype_is_bfloat16_for_the_embedded_model_on_a_capable_cpu(monkeypatch, native):
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, check, lambda: native, raising=False)
    embedded = ModelSource("unused", EMBEDDED_MODEL, {})
    other = ModelSource("unused", "org/model", {})
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_dtype(cpu, embedded) == (torch.bfloat16 if native else torch.float32)
    assert default_dtype(cpu, other) == torch.float32
    assert default_dtype(cuda, embedded) == default_dtype(cuda, other) == torch.bfloat16


@pytest.fixture(scope="module")
def encoded(engine, sample):
    return engine.encode(sample)


def test_recall_keeps_the_answer_within_budget(engine, encoded, sample):
    result = engine.recall(encoded, QUESTION, budget_tokens=60)
    assert "twenty-five minutes" in result.text
    assert result.output_tokens <= 60 < result.input_tokens
    assert result.output_tokens == engine.counter.count(result.text)
    assert result.text == GAP_MARKER.join(sample[s.start : s.end] for s in result.spans)
    assert not result.unchanged


def test_ratio_budget(engine, encoded):
    result = engine.recall(encoded, QUESTION, ratio=0.1)
    assert result.budget_tokens == int(0.1 * result.input_tokens)
    assert result.output_tokens <= result.budget_tokens


def test_encoded_context_is_reusable_and_deterministic(engine, encoded):
    first = engine.recall(encoded, QUESTION, budget_tokens=50)
    engine.recall(encoded, "Who is Margaret Elwin?", budget_tokens=50)
    assert engine.recall(encoded, QUESTION, budget_tokens=50) == first
    assert engine.compress(encoded.documents[0], QUESTION, budget_tokens=50) == first


def test_a_budget_over_the_context_returns_it_unchanged(engine, sample):
    result = engine.compress(["Short one.", "Short two."], "anything", budget_tokens=1000)
    assert result.unchanged and result.text == "Short one." + GAP_MARKER + "Short two."
    assert [(s.document, s.start, s.end) for s in result.spans] == [(0, 0, 10), (1, 0, 10)]


def test_documents_are_recalled_as_one_context(engine):
    documents = [
        "The weather in spring is mild and the gardens are in bloom.",
        "The vault combination is 7 3 9 1, known only to the director.",
        "Trains leave the station every twenty minutes on weekdays.",
    ]
    result = engine.compress(documents, "What is the vault combination?", budget_tokens=16)
    assert "7 3 9 1" in result.text
    best = max(result.spans, key=lambda s: s.score)
    assert best.document == 1 and "7 3 9 1" in documents[1][best.start : best.end]


def test_extend_equals_encoding_everything(engine, sample):
    parts = [sample[:1500], sample[1500:3000], sample[3000:]]
    whole = engine.encode(parts)
    grown = engine.extend(engine.encode(parts[:1]), parts[1:])
    assert (whole.tokens.input_ids == grown.tokens.input_ids).all()
    # Chunks fall at other positions, so scores agree to the rounding of the model's dtype
    # (bfloat16 on a CPU that multiplies it natively, `loading.default_dtype`), spans exactly.
    rel = 1e-4 if engine.model.dtype == torch.float32 else 1e-2
    expected = engine.recall(whole, QUESTION, budget_tokens=40)
    actual = engine.recall(grown, QUESTION, budget_tokens=40)
    assert actual.text == expected.text
    assert [(s.document, s.start, s.end) for s in actual.spans] == [
        (s.document, s.start, s.end) for s in expected.spans
    ]
    assert [s.score for s in actual.spans] == pytest.approx(
        [s.score for s in expected.spans], rel=rel
    )


def test_saved_context_loads_back_identical(engine, encoded, tmp_path):
    encoded.save(tmp_path / "ctx")
    loaded = EncodedContext.load(tmp_path / "ctx", engine)
    assert engine.recall(loaded, QUESTION, budget_tokens=40) == engine.recall(
        encoded, QUESTION, budget_tokens=40
    )


def test_a_damaged_save_is_refused(engine, encoded, tmp_path):
    encoded.save(tmp_path / "ctx")
    tensors = next((tmp_path / "ctx").glob("tensors-*.safetensors"))
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(EncodedContextError, match="damaged"):
        EncodedContext.load(tmp_path / "ctx", engine)


@pytest.mark.parametrize(
    ("budget", "ratio"),
    [
        (None, None),
        (10, 0.5),
        (0, None),
        (-3, None),
        (None, 0.0),
        (None, 1.5),
        (None, float("nan")),
        (2.5, None),
    ],
)
def test_bad_budgets_are_refused(engine, encoded, budget, ratio):
    with pytest.raises(BudgetError):
        engine.recall(encoded, QUESTION, budget_tokens=budget, ratio=ratio)


@pytest.mark.parametrize("context", ["", "   \n\t ", [], ["", "  "]])
def test_empty_contexts_are_refused(engine, context):
    with pytest.raises(EmptyInputError):
        engine.compress(context, QUESTION, budget_tokens=10)


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_queries_are_refused(engine, encoded, query):
    with pytest.raises(EmptyInputError):
        engine.recall(encoded, query, budget_tokens=10)


def test_non_text_and_invalid_utf8_are_refused(engine):
    with pytest.raises(InvalidDocumentError, match="document 1 is a dict"):
        engine.compress(["fine", {"not": "text"}], QUESTION, budget_tokens=10)
    with pytest.raises(
        InvalidDocumentError, match="document 0 is not valid UTF-8 at byte offset 3"
    ):
        engine.compress([b"abc\xff\xfe"], QUESTION, budget_tokens=10)


def test_unsupported_models_fail_at_load(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"'gpt2' is not supported.*llama"):
        ILRe.from_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="GGUF file not found"):
        ILRe.from_pretrained(tmp_path / "missing.gguf")


def test_layer_out_of_range_is_refused():
    with pytest.raises(UnsupportedModelError, match="layer 18 is out of range"):
        ILRe.from_pretrained(layer=18)


def run_cli(*args, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "ilre_engine.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
    )


def test_cli_json_output(sample):
    done = run_cli("compress", "--query", QUESTION, "--budget", "60", "--json", str(SAMPLE))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) >= {"text", "spans", "input_tokens", "output_tokens"}
    assert "twenty-five minutes" in result["text"] and result["output_tokens"] <= 60
    for span in result["spans"]:
        assert sample[span["start"] : span["end"]] in result["text"]


def test_cli_reads_stdin_and_refuses_bad_input_in_one_line():
    done = run_cli(
        "compress", "--query", "what?", "--ratio", "0.5", stdin="Alpha beta.\nGamma delta."
    )
    assert done.returncode == 0 and done.stdout.strip()
    for args, stdin, message in [
        (("--budget", "0"), "text", "budget_tokens must be an integer >= 1, got 0"),
        (("--ratio", "2"), "text", "ratio must be in (0, 1]"),
        (("--budget", "5"), "  \n", "standard input is empty"),
        (("--budget", "5", "/no/such/file"), None, "cannot read /no/such/file"),
    ]:
        done = run_cli("compress", "--query", "q", *args, stdin=stdin)
        assert done.returncode == 2
        assert done.stderr.strip() == f"ilre: error: {done.stderr.strip()[len('ilre: error: ') :]}"
        assert message in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_threads_sharing_an_engine_get_the_sequential_results(engine, sample):
    from concurrent.futures import ThreadPoolExecutor

    questions = [
        QUESTION,
        "Who is Margaret Elwin?",
        "What did the engineers recommend?",
        "Where is the bar?",
    ]
    jobs = [(sample[i * 500 :], q) for i, q in enumerate(questions)] * 2
    expected = [engine.compress(text, q, budget_tokens=40) for text, q in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        actual = list(pool.map(lambda job: engine.compress(job[0], job[1], budget_tokens=40), jobs))
    assert [r.text for r in actual] == [r.text for r in expected]
    assert [[(s.document, s.start, s.end) for s in r.spans] for r in actual] == [
        [(s.document, s.start, s.end) for s in r.spans] for r in expected
    ]


def test_the_questions_first_word_votes(engine):
    """The template's lead-in ("\\n\\nQuestion: ") tokenised alone ends in a space that the
    full text merges into the question's first word: that word must count as the query's."""
    ids, lead_in = engine.query_ids("How much longer must they wait?")
    assert engine.tokenizer.decode(ids[lead_in:]).strip().startswith("How much")
    assert "Question" in engine.tokenizer.decode(ids[:lead_in])


@pytest.mark.parametrize("beside", [False, True])
def test_the_text_prepared_beside_the_encode_gives_the_same_recall(
    engine, sample, monkeypatch, beside
):
    """`compress` on an accelerator prepares the text's share of the recall (units, budget
    count, the prior's passage embeddings) in a thread while the device encodes; the
    recall then finds it cached and must be the one the lazy path gives."""
    import threading

    from ilre_engine import engine as engine_module

    documents = [sample, sample[: len(sample) // 2]]
    lazy = engine.encode(documents)
    expected = {
        "budget": engine.recall(lazy, QUESTION, budget_tokens=60),
        "ratio": engine.recall(lazy, QUESTION, ratio=0.1),
    }
    threads: list[str] = []
    prepare_text = type(engine.pipeline).prepare_text

    def spy(pipeline, tokens, cache):
        threads.append(threading.current_thread().name)
        prepare_text(pipeline, tokens, cache)
        assert {"sentence", "clause", "word"} <= set(cache.units) and cache.input_tokens
        assert bool(cache.embeddings) == (engine.hybrid is not None)

    monkeypatch.setattr(type(engine.pipeline), "prepare_text", spy)
    monkeypatch.setattr(engine_module, "_host_free_while_encoding", lambda device: beside)
    got = {
        "budget": engine.compress(documents, QUESTION, budget_tokens=60),
        "ratio": engine.compress(documents, QUESTION, ratio=0.1),
    }
    for name, result in got.items():
        assert result.spans == expected[name].spans and result.text == expected[name].text
    assert threads == (["ilre-text_0"] * 2 if beside else [])
