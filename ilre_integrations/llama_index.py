"""LlamaIndex face of ILRe: a node postprocessor and a retriever.

`ILRePostprocessor` compresses the nodes a retriever found (read together as one context) to
the spans the question attends to most, inside any query or chat engine. `ILReRetriever`
reads whole documents once and recalls budgeted spans for every query, without an
embedding index. Both return one node per source node that kept anything, in source order,
with the source's metadata plus an ``ilre`` entry (spans with character offsets in the
source, token counts) that the LLM and the embedding model never see.

Requires ``llama-index-core`` (``pip install "ilre[llamaindex]"``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import (
    BaseNode,
    ImageNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

from ilre_engine import ILRe, ILReConfig, RecallResult, resolve_budget
from ilre_engine.errors import EmptyInputError, ILReError, InvalidDocumentError

from ._common import (
    METADATA_KEY,
    DocumentRecall,
    EncodedCorpus,
    per_document,
    require_texts,
    shared_engine,
)

__all__ = ["ILRePostprocessor", "ILReRetriever"]

_MEDIA_FIELDS = ("image_resource", "audio_resource", "video_resource")

_NODE_KEY = "llama_index_node"
"""Entry of a corpus document's metadata record that holds what LlamaIndex needs besides the
metadata (node id, type, hash, excluded keys); it never reaches the returned nodes' metadata."""


class ILRePostprocessor(BaseNodePostprocessor):
    """Compress retrieved nodes to the spans the question attends to most (ILRe recall).

    All nodes are read together as one context, so the budget is shared among them and a
    node that keeps nothing is dropped. Each node that keeps something comes back as a copy
    (new id) whose text is its kept spans joined by `ilre_engine.GAP_MARKER`, whose score is
    its best span's recall score, with the node's metadata and relationships, SOURCE pointing
    to the input node, and an ``ilre`` metadata entry hidden from the LLM and embedding views.
    Nodes keep their input order; input nodes are not modified.

    Give `engine`, or the settings of an engine that is loaded on first use and shared by
    every component with the same settings. Give exactly one of `budget_tokens` or `ratio`.
    The async path (`apostprocess_nodes`) runs the engine in a worker thread, as
    `BaseNodePostprocessor` does for every postprocessor.

    Example:
        >>> postprocessor = ILRePostprocessor(budget_tokens=512)
        >>> engine = index.as_query_engine(
        ...     similarity_top_k=20, node_postprocessors=[postprocessor]
        ... )
    """

    # The engine is a live model: it is left out of `to_dict` / `to_json`, which keep the
    # settings an equal engine is loaded from.
    engine: ILRe | None = Field(exclude=True)
    model: str | None
    layer: int | None
    device: str | None
    config: ILReConfig | None
    budget_tokenizer: str | None
    budget_tokens: int | None
    ratio: float | None

    def __init__(
        self,
        *,
        engine: ILRe | None = None,
        model: str | None = None,
        layer: int | None = None,
        device: str | None = None,
        config: ILReConfig | Mapping[str, Any] | None = None,
        budget_tokenizer: str | None = None,
        budget_tokens: int | None = None,
        ratio: float | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        """Configure; nothing is loaded until the first nodes arrive.

        Args:
            engine: a loaded engine; None loads the shared one for the settings below.
            model: None for the embedded Gemma 3 270M, a Hugging Face id, a local
                directory or a .gguf file.
            layer: the retrieval layer; None takes the model's.
            device: None takes CUDA when available.
            config: streaming and recall knobs: an `ILReConfig` or a mapping of its fields.
            budget_tokenizer: tiktoken encoding in which budgets are counted; None:
                cl100k_base.
            budget_tokens: tokens kept over all the nodes of a query; or give `ratio`.
            ratio: fraction of the nodes' tokens kept, in (0, 1].
        """
        super().__init__(
            engine=engine,
            model=model,
            layer=layer,
            device=device,
            config=config,
            budget_tokenizer=budget_tokenizer,
            budget_tokens=budget_tokens,
            ratio=ratio,
            callback_manager=callback_manager or CallbackManager(),
        )
        # Checked after pydantic's validation, so that these errors reach the caller as
        # ILRe's own (BudgetError, ILReError) rather than wrapped in a ValidationError.
        resolve_budget(1, budget_tokens, ratio)
        _check_engine_settings(engine, {**self._engine_settings(), **_given(model=model)})

    @classmethod
    def class_name(cls) -> str:
        return "ILRePostprocessor"

    def get_engine(self) -> ILRe:
        """The engine given, else the shared one for these settings (loaded on first use)."""
        if self.engine is not None:
            return self.engine
        return shared_engine(self.model, **self._engine_settings())

    def _engine_settings(self) -> dict[str, Any]:
        return _given(
            layer=self.layer,
            device=self.device,
            config=self.config,
            budget_tokenizer=self.budget_tokenizer,
        )

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = _query_text(query_bundle)
        if not nodes:
            return []
        texts = _node_texts([n.node for n in nodes])
        engine = self.get_engine()
        result = engine.compress(texts, query, budget_tokens=self.budget_tokens, ratio=self.ratio)
        return [
            NodeWithScore(node=_compressed_copy(nodes[r.index].node, r, result), score=r.score)
            for r in per_document(engine, result, texts)
        ]


class ILReRetriever(BaseRetriever):
    """Retrieve budgeted spans of whole documents by ILRe recall, without an embedding index.

    The documents (or any text nodes) are encoded once, up to the retrieval layer; every
    query then recalls the spans it attends to most within the budget, over all documents.
    Each document that keeps something comes back as one `TextNode`: its kept spans joined
    by `ilre_engine.GAP_MARKER`, scored by its best span, with the document's metadata, an
    ``ilre`` entry (spans with character offsets in the document, token counts) hidden from
    the LLM and embedding views, and SOURCE pointing to the document. Nodes come in document
    order, so the compressed context reads in the source's order.

    `insert` and `insert_nodes` encode only the new documents; `persist` and
    `from_persist_dir` save and load the encoded corpus (`corpus`, an `EncodedCorpus`: the
    format the LangChain retriever uses too), refusing a corpus encoded by a different model
    or layer.

    Example:
        >>> retriever = ILReRetriever(documents, budget_tokens=1024)
        >>> query_engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
    """

    def __init__(
        self,
        nodes: Sequence[BaseNode] | None = None,
        *,
        engine: ILRe | None = None,
        model: str | None = None,
        layer: int | None = None,
        device: str | None = None,
        config: ILReConfig | None = None,
        budget_tokenizer: str | None = None,
        budget_tokens: int | None = None,
        ratio: float | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        """Load the engine (unless given) and encode `nodes`.

        Args:
            nodes: documents or text nodes to encode now; more can be inserted later.
            engine: a loaded engine; None loads the shared one for the settings below.
            model: None for the embedded Gemma 3 270M, a Hugging Face id, a local
                directory or a .gguf file.
            layer: the retrieval layer; None takes the model's.
            device: None takes CUDA when available.
            config: streaming and recall knobs.
            budget_tokenizer: tiktoken encoding in which budgets are counted; None:
                cl100k_base.
            budget_tokens: tokens kept per query over all documents; or give `ratio`.
            ratio: fraction of the corpus' tokens kept per query, in (0, 1].
        """
        resolve_budget(1, budget_tokens, ratio)  # refuse a bad budget before loading anything
        settings = _given(
            layer=layer, device=device, config=config, budget_tokenizer=budget_tokenizer
        )
        _check_engine_settings(engine, {**settings, **_given(model=model)})
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.engine: ILRe = engine if engine is not None else shared_engine(model, **settings)
        self.corpus = EncodedCorpus(self.engine)
        self.budget_tokens = budget_tokens
        self.ratio = ratio
        if nodes:
            self.insert_nodes(nodes)

    def insert_nodes(self, nodes: Sequence[BaseNode]) -> None:
        """Encode `nodes` after the documents already held (which are not read again)."""
        texts = _node_texts(nodes)
        self.corpus.add(texts, [_corpus_record(node) for node in nodes])

    def insert(self, node: BaseNode) -> None:
        """Encode one document or node after those already held."""
        self.insert_nodes([node])

    def persist(self, persist_dir: str | os.PathLike[str]) -> Path:
        """Save the encoded corpus and its metadata to `persist_dir`."""
        return self.corpus.save(persist_dir)

    @classmethod
    def from_persist_dir(cls, persist_dir: str | os.PathLike[str], **kwargs: Any) -> ILReRetriever:
        """A retriever over the corpus saved in `persist_dir`.

        Args:
            kwargs: the constructor's keyword arguments (engine or model settings, budget);
                a corpus encoded by another model or layer raises `EncodedContextError`.
        """
        retriever = cls(**kwargs)
        retriever.corpus = EncodedCorpus.load(persist_dir, retriever.engine)
        return retriever

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = _query_text(query_bundle)
        result, recalls = self.corpus.recall(
            query, budget_tokens=self.budget_tokens, ratio=self.ratio
        )
        return [NodeWithScore(node=_span_node(r, result), score=r.score) for r in recalls]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # BaseRetriever's default calls _retrieve on the event loop; recall is seconds of
        # model work, so it runs in a worker thread instead.
        return await asyncio.to_thread(self._retrieve, query_bundle)


def _given(**settings: Any) -> dict[str, Any]:
    """The settings that are not None (the others keep `shared_engine`'s defaults)."""
    return {name: value for name, value in settings.items() if value is not None}


def _check_engine_settings(engine: ILRe | None, settings: Mapping[str, Any]) -> None:
    # An engine carries its own model, layer, config and budget tokenizer; settings given
    # beside it would be silently ignored.
    if engine is not None and settings:
        raise ILReError(
            f"give either engine or engine settings, not both (got engine and {sorted(settings)})"
        )


def _query_text(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None or not query_bundle.query_str.strip():
        raise EmptyInputError(
            "ILRe recalls what a query attends to: pass a non-empty query_str or query_bundle"
        )
    return query_bundle.query_str


def _node_texts(nodes: Sequence[BaseNode]) -> list[str]:
    """Each node's text (without metadata); a node that holds only media is refused."""
    contents = []
    for index, node in enumerate(nodes):
        content = node.get_content(metadata_mode=MetadataMode.NONE)
        if not content and _has_media(node):
            raise InvalidDocumentError(
                f"node {index} ({type(node).__name__} {node.node_id}) holds no text, only "
                "media; ILRe compresses text only"
            )
        contents.append(content)
    return require_texts(contents, what="node")


def _has_media(node: BaseNode) -> bool:
    return isinstance(node, ImageNode) or any(
        getattr(node, name, None) is not None for name in _MEDIA_FIELDS
    )


def _hidden(keys: Sequence[str]) -> list[str]:
    """`keys` plus the ``ilre`` entry: offsets and counts are for programs, not for models."""
    return [*keys, METADATA_KEY] if METADATA_KEY not in keys else list(keys)


def _compressed_copy(source: BaseNode, recall: DocumentRecall, result: RecallResult) -> BaseNode:
    """A copy of `source` with a new id, holding only the kept spans of its text."""
    # The copy is deep so that nothing done to it later reaches the caller's node; the
    # embedding is dropped because it describes the whole text, not the kept spans.
    node = source.model_copy(deep=True, update={"id_": str(uuid.uuid4()), "embedding": None})
    node.set_content(recall.text)
    node.metadata = {**node.metadata, METADATA_KEY: recall.ilre_metadata(result)}
    node.excluded_llm_metadata_keys = _hidden(node.excluded_llm_metadata_keys)
    node.excluded_embed_metadata_keys = _hidden(node.excluded_embed_metadata_keys)
    node.relationships = {
        **node.relationships,
        NodeRelationship.SOURCE: source.as_related_node_info(),
    }
    return node


def _corpus_record(node: BaseNode) -> dict[str, Any]:
    """What the corpus keeps of a document: its metadata, and under `_NODE_KEY` its identity."""
    return {
        **node.metadata,
        _NODE_KEY: {
            "node_id": node.node_id,
            "node_type": node.get_type(),
            "hash": node.hash,
            "excluded_llm_metadata_keys": list(node.excluded_llm_metadata_keys),
            "excluded_embed_metadata_keys": list(node.excluded_embed_metadata_keys),
        },
    }


def _span_node(recall: DocumentRecall, result: RecallResult) -> TextNode:
    """The kept spans of one corpus document, as a node pointing to that document."""
    metadata = dict(recall.metadata)
    # A corpus saved by another face has no node record: then there is no SOURCE to name.
    identity = metadata.pop(_NODE_KEY, None) or {}
    relationships = {}
    if "node_id" in identity:
        relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(
            node_id=identity["node_id"],
            node_type=identity.get("node_type"),
            metadata=metadata,
            hash=identity.get("hash"),
        )
    return TextNode(
        text=recall.text,
        metadata={**metadata, METADATA_KEY: recall.ilre_metadata(result)},
        excluded_llm_metadata_keys=_hidden(identity.get("excluded_llm_metadata_keys", [])),
        excluded_embed_metadata_keys=_hidden(identity.get("excluded_embed_metadata_keys", [])),
        relationships=relationships,
    )
