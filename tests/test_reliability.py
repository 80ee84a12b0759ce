"""What a pipeline can count on: typed refusals everywhere, a memory guard, concurrency, a
save that survives a killed writer, invariants under fuzzing, and no network on any path."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.documents import Document
from langchain_ilre import ILReCompressor
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.ilre import ILRePostprocessor

from ilre_engine import (
    GAP_MARKER,
    ContextTooLongError,
    EmptyInputError,
    EncodedContext,
    ILRe,
    ILReConfig,
    ILReError,
    InsufficientMemoryError,
    UnsupportedModelError,
)
from ilre_engine import memory as memory_module
from ilre_integrations._common import METADATA_KEY
from tests.conftest import QUESTION, SAMPLE


@pytest.fixture(scope="module")
def short_engine(engine):
    """The embedded engine's model with a 200-token context limit."""
    return ILRe(
        engine.model,
        engine.tokenizer,
        layer=engine.layer,
        name=engine.name,
        config=ILReConfig(max_tokens=200),
    )


def compress_with_langchain(engine, texts, query, **budget):
    compressor = ILReCompressor(engine=engine, **(budget or {"budget_tokens": 40}))
    return compressor.compress_documents([Document(page_content=t) for t in texts], query)


def compress_with_llama_index(engine, texts, query, **budget):
    postprocessor = ILRePostprocessor(engine=engine, **(budget or {"budget_tokens": 40}))
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in texts]
    return postprocessor.postprocess_nodes(nodes, query_str=query)


def compress_with_engine(engine, texts, query, **budget):
    return engine.compress(texts, query, **(budget or {"budget_tokens": 40}))


FACES = [compress_with_engine, compress_with_langchain, compress_with_llama_index]


# -- 1. typed refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
def test_a_context_over_the_limit_is_refused_naming_the_knob(short_engine, sample, face):
    with pytest.raises(ContextTooLongError, match=r"over the limit of 200 .*max_tokens"):
        face(short_engine, [sample], QUESTION)


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(("texts", "query"), [(["  \n\t "], QUESTION), (["Some text."], " ")])
def test_whitespace_contexts_and_queries_are_refused(engine, face, texts, query):
    with pytest.raises(EmptyInputError):
        face(engine, texts, query)


def test_the_default_limit_is_memory_alone_and_extend_counts_it_all(engine, short_engine):
    # Past the model's window of 32,768 positions a context is read in segments.
    assert engine.max_tokens is None and engine.max_positions == 32768
    encoded = short_engine.encode("word " * 120)
    with pytest.raises(ContextTooLongError, match="over the limit of 200"):
        short_engine.extend(encoded, "word " * 120)


@pytest.mark.parametrize(
    "face", [compress_with_langchain, compress_with_llama_index], ids=["langchain", "llamaindex"]
)
def test_an_unsupported_model_is_refused_on_first_use(tmp_path, face):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path)
    component = (
        ILReCompressor(model=str(tmp_path), budget_tokens=10)
        if face is compress_with_langchain
        else ILRePostprocessor(model=str(tmp_path), budget_tokens=10)
    )
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported"):
        if face is compress_with_langchain:
            component.compress_documents([Document(page_content="text")], "q")
        else:
            component.postprocess_nodes([NodeWithScore(node=TextNode(text="t"))], query_str="q")


def run_cli(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "ilre_engine.cli", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=600,
    )


def test_cli_refuses_each_case_in_one_line():
    cases = [
        (("--query", "q", "--budget", "5", "--max-tokens", "20"), b"word " * 100, "max_tokens"),
        (
            ("--query", "q", "--budget", "5"),
            b"caf\xc3\xa9 \xff",
            "not valid UTF-8 at byte offset 6",
        ),
        (("--query", "  ", "--budget", "5"), b"Some text.", "the query is empty"),
        (("--query", "q", "--budget", "5", "--max-tokens", "0"), b"text", "--max-tokens"),
    ]
    for args, stdin, message in cases:
        done = run_cli("compress", *args, stdin=stdin)
        stderr = done.stderr.decode()
        assert done.returncode == 2, stderr
        assert stderr.startswith("ilre: error: ") and message in stderr, stderr
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


# -- 2. memory guard --------------------------------------------------------------------------


def test_the_memory_estimate_bounds_what_an_encode_holds(engine, sample):
    encoded = engine.encode(sample)
    estimate = engine.memory_estimate(len(encoded))
    assert estimate.keys == encoded.keys.numel() * encoded.keys.element_size()
    assert estimate.keys + estimate.early_layers >= encoded.nbytes()


def test_an_encode_that_would_not_fit_is_refused_before_it_starts(engine, sample, monkeypatch):
    monkeypatch.setattr(memory_module, "available_bytes", lambda device: 10 * 2**20)
    with pytest.raises(InsufficientMemoryError, match=r"needs about .* only 10 MiB") as raised:
        engine.compress(sample, QUESTION, budget_tokens=40)
    assert isinstance(raised.value, MemoryError) and isinstance(raised.value, ILReError)
    monkeypatch.setattr(memory_module, "available_bytes", lambda device: None)
    assert engine.compress(sample, QUESTION, budget_tokens=40).spans


# -- 3. concurrency ---------------------------------------------------------------------------


QUESTIONS = [
    QUESTION,
    "Who is Margaret Elwin?",
    "What did the engineers recommend?",
    "Where is the bar?",
]


def test_asyncio_tasks_through_both_integrations_get_the_sequential_results(engine, sample):
    parts = [sample[i * 700 : i * 700 + 600] for i in range(4)]
    compressor = ILReCompressor(engine=engine, budget_tokens=30)
    postprocessor = ILRePostprocessor(engine=engine, budget_tokens=30)
    documents = [Document(page_content=p, metadata={"part": i}) for i, p in enumerate(parts)]
    nodes = [
        NodeWithScore(node=TextNode(text=p, metadata={"part": i})) for i, p in enumerate(parts)
    ]

    def langchain_view(output):
        return [(d.page_content, d.metadata["part"]) for d in output]

    def llama_view(output):
        return [(n.node.get_content(), n.node.metadata["part"]) for n in output]

    expected_lc = [langchain_view(compressor.compress_documents(documents, q)) for q in QUESTIONS]
    expected_li = [
        llama_view(postprocessor.postprocess_nodes(nodes, query_str=q)) for q in QUESTIONS
    ]
    assert all(expected_lc) and all(expected_li)  # every question keeps something

    async def all_at_once():
        lc = [compressor.acompress_documents(documents, q) for q in QUESTIONS]
        li = [postprocessor.apostprocess_nodes(nodes, query_str=q) for q in QUESTIONS]
        return await asyncio.gather(*lc, *li)

    outputs = asyncio.run(all_at_once())
    assert [langchain_view(o) for o in outputs[:4]] == expected_lc
    assert [llama_view(o) for o in outputs[4:]] == expected_li


# -- 4. durable encoded context ---------------------------------------------------------------


KILLED_WRITER = """
import os, signal, sys
from ilre_engine import ILRe, persistence
target, where = sys.argv[1], sys.argv[2]
engine = ILRe.from_pretrained()
encoded = engine.encode(["A second text, saved over the first.", "It never lands."])
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if where == "manifest":
    persistence.os.replace = die  # killed just before the manifest is swapped in
else:
    real = persistence._write_synced
    def half(path, data):  # killed halfway through writing the documents file
        path.write_bytes(data[: len(data) // 2])
        die()
    persistence._write_synced = half
encoded.save(target)
"""


@pytest.mark.parametrize("where", ["documents", "manifest"])
def test_a_killed_writer_leaves_the_earlier_copy_intact(engine, sample, tmp_path, where):
    encoded = engine.encode(sample)
    encoded.save(tmp_path / "ctx")
    expected = engine.recall(encoded, QUESTION, budget_tokens=40)
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ctx"), where],
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    loaded = EncodedContext.load(tmp_path / "ctx", engine)
    assert loaded.documents == encoded.documents
    assert engine.recall(loaded, QUESTION, budget_tokens=40) == expected
    encoded.save(tmp_path / "ctx")  # the next save cleans up what the killed one left
    assert len(list((tmp_path / "ctx").iterdir())) == 3


# -- 5. fuzzing -------------------------------------------------------------------------------


texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=300
).filter(str.strip)
metadata = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda k: k not in (METADATA_KEY, "relevance_score")),
    st.one_of(st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=3)),
    max_size=3,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    documents=st.lists(st.tuples(texts, metadata), min_size=1, max_size=4),
    query=texts,
    budget=st.integers(min_value=1, max_value=200),
)
def test_fuzzed_documents_keep_every_invariant(engine, documents, query, budget):
    contents = [text for text, _ in documents]
    result = engine.compress(contents, query, budget_tokens=budget)
    assert result.output_tokens <= budget
    for previous, span in itertools.pairwise(result.spans):
        assert (span.document, span.start) > (previous.document, previous.end)
    for span in result.spans:
        assert 0 <= span.start < span.end <= len(contents[span.document])
    assert result.text == GAP_MARKER.join(
        contents[s.document][s.start : s.end] for s in result.spans
    )

    inputs = [
        Document(id=str(i), page_content=t, metadata=dict(m)) for i, (t, m) in enumerate(documents)
    ]
    before = [d.model_dump() for d in inputs]
    output = ILReCompressor(engine=engine, budget_tokens=budget).compress_documents(inputs, query)
    assert [d.model_dump() for d in inputs] == before
    # Outputs come in input order, each from one input, which keeps its id (inputs may share
    # a text, so the id, not the text, names the source).
    order = [int(document.id) for document in output]
    assert order == sorted(set(order))
    for document in output:
        ilre = document.metadata[METADATA_KEY]
        source = inputs[int(document.id)]
        spans = GAP_MARKER.join(source.page_content[s["start"] : s["end"]] for s in ilre["spans"])
        assert spans == document.page_content
        added = (METADATA_KEY, "relevance_score")
        assert {k: v for k, v in document.metadata.items() if k not in added} == source.metadata
        assert ilre["total_output_tokens"] <= budget


# -- 6. no network ----------------------------------------------------------------------------


NO_NETWORK = """
import socket

def refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline ILRe test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
"""


@pytest.mark.slow
def test_compress_runs_with_networking_disabled_on_a_clean_cache(tmp_path, sample):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(textwrap.dedent(NO_NETWORK))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "TRANSFORMERS_", "ILRE_", "TIKTOKEN_"))
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(guard), env.get("PYTHONPATH", "")]),
        ILRE_CACHE_DIR=str(tmp_path / "ilre-cache"),
        HF_HOME=str(tmp_path / "hf-home"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
    )
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
        capture_output=True,
        env=env,
    )
    assert b"network access attempted" in probe.stderr  # the guard is in force
    done = run_cli("compress", "--query", QUESTION, "--budget", "60", str(SAMPLE), env=env)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert "twenty-five minutes" in done.stdout.decode()
    assert (tmp_path / "ilre-cache" / "models").is_dir()  # converted from scratch, offline
