"""LlamaIndex face of ILRe: a node postprocessor and a retriever.

`ILRePostprocessor` compresses the nodes a retriever found (read together as one context) to
the spans the question attends to most, inside any query or chat engine; its nodes keep the
input order and the input scores. `ILReRetriever` reads whole documents once and recalls
budgeted spans for every query, without an embedding index; its nodes come most relevant
first, scored by ILRe. Both return one node per source node that kept anything, with a deep
copy of the source's metadata plus an ``ilre`` entry (ILRe's ``score``, spans with character
offsets in the source, token counts) that the LLM and the embedding model never see, and a
SOURCE relationship to the document the text comes from, so ``ref_doc_id`` names it. Node
ids are derived from the source's id and the kept spans: the same call gives the same ids.

ILRe's score of a span is the highest recall score among its tokens: the question's attention
at the retrieval layer (over a neutral question's, max-pooled, averaged over heads), normalised
to sum 1 over the context, so it lies in [0, 1] but is small, and compares only within one
recall.

Both report to LlamaIndex's instrumentation (spans of ``_postprocess_nodes`` and
``_retrieve``; the postprocessor also ``ReRankStartEvent`` / ``ReRankEndEvent``) and to the
legacy callback manager (a ``RERANKING`` event whose end payload carries, under ``"ilre"``,
the token counts, the budget and the ratio), as LlamaIndex's own rerankers do.

Importing this module does not import torch or the engine; they load on first use.
Requires ``llama-index-core`` (``pip install "ilre[llamaindex]"``).

Longer than the engine's modules because a face carries its framework's conventions
(pydantic fields with descriptions and validation, sync and async paths, instrumentation
spans and events); the logic lives in the engine and `_common`.
"""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
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

from ilre_engine import errors

from ._common import (
    LLAMA_INDEX_RECORD,
    METADATA_KEY,
    DocumentRecall,
    EncodedCorpus,
    check_count,
    check_fields,
    check_one_budget,
    check_ratio,
    per_document,
    require_texts,
    shared_engine,
    split_record,
)

if TYPE_CHECKING:
    from ilre_engine import ILRe, RecallResult, Span

__all__ = ["ILRePostprocessor", "ILReRetriever"]

dispatcher = get_dispatcher(__name__)

_MEDIA_FIELDS = ("image_resource", "audio_resource", "video_resource")

_IDS = uuid.UUID("1b1e0d6a-6c1f-4c55-9d8e-5e2f0c3a7b11")
"""Namespace of the ids of ILRe's nodes (uuid5 of the source's id and the kept spans)."""


class ILRePostprocessor(BaseNodePostprocessor):
    """Compress retrieved nodes to the spans the question attends to most (ILRe recall).

    All nodes are read together as one context, so the budget is shared among them and a
    node that keeps nothing is dropped. Each node that keeps something comes back as a deep
    copy whose text is its kept spans joined by `ilre_engine.GAP_MARKER`, with the node's
    metadata and relationships, an ``ilre`` metadata entry hidden from the LLM and embedding
    views (ILRe's ``score``, the spans, token counts, and ``source_node_id``: the input
    node's id), and no embedding (it described the whole text). Its SOURCE relationship is
    the input node's own, so ``ref_doc_id`` is still the document's (a node without one, such
    as a `Document`, becomes the SOURCE itself); its id is derived from the input node's id
    and the kept spans, so the same input gives the same ids. Its score is the input's score
    (a retriever's or an upstream reranker's), or ILRe's where the input has none.
    Nodes keep their input order; input nodes are not modified.

    Give `engine`, or the settings of an engine that is loaded on first use and shared by
    every component with the same settings. Give exactly one of `budget_tokens` or `ratio`;
    assigning an invalid budget later raises `BudgetError` too, and unknown fields are
    refused. The async path (`apostprocess_nodes`) runs the engine in a worker thread, as
    `BaseNodePostprocessor` does for every postprocessor.

    Example:
        >>> postprocessor = ILRePostprocessor(budget_tokens=512)
        >>> engine = index.as_query_engine(
        ...     similarity_top_k=20, node_postprocessors=[postprocessor]
        ... )
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", validate_assignment=True
    )

    # The engine is a live model: it is left out of `to_dict` / `to_json`, which keep the
    # settings an equal engine is loaded from. Engine types are Any so that importing this
    # module does not import the engine (and torch).
    engine: Any = Field(
        default=None,
        exclude=True,
        description="A loaded ilre_engine.ILRe; None loads the shared one for the settings.",
    )
    model: str | None = Field(
        default=None,
        description="None for the embedded Gemma 3 270M, a Hugging Face id, a local directory "
        "or a .gguf file.",
    )
    layer: int | None = Field(default=None, description="The retrieval layer; None: the model's.")
    device: str | None = Field(default=None, description="None takes CUDA when available.")
    config: Any = Field(
        default=None,
        description="Streaming and recall knobs: an ilre_engine.ILReConfig or a mapping of its "
        "fields.",
    )
    budget_tokenizer: Any = Field(
        default=None,
        description="The reader LLM's tokenizer, in which budgets are counted: a tiktoken "
        "encoding name, a tiktoken.Encoding, a Hugging Face tokenizer, or a callable from text "
        "to tokens or to a count (such as Settings.tokenizer); None: cl100k_base.",
    )
    budget_tokens: int | None = Field(
        default=None, description="Tokens kept over all the nodes of a query, > 0."
    )
    ratio: float | None = Field(
        default=None, description="Fraction of the nodes' tokens kept, in (0, 1]."
    )

    def __init__(
        self,
        *,
        engine: ILRe | None = None,
        model: str | None = None,
        layer: int | None = None,
        device: str | None = None,
        config: Any = None,
        budget_tokenizer: Any = None,
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
            budget_tokenizer: the reader LLM's tokenizer, in which budgets are counted: a
                tiktoken encoding name, a ``tiktoken.Encoding``, a Hugging Face tokenizer,
                or a callable from text to tokens or to a count (such as
                ``Settings.tokenizer``); None: cl100k_base.
            budget_tokens: tokens kept over all the nodes of a query; or give `ratio`.
            ratio: fraction of the nodes' tokens kept, in (0, 1].
        """
        # Checked before pydantic's validation, so that these errors reach the caller as
        # ILRe's own (BudgetError, ILReError) rather than wrapped in a ValidationError.
        check_fields(
            {
                "engine": engine,
                "budget_tokenizer": budget_tokenizer,
                "budget_tokens": budget_tokens,
                "ratio": ratio,
            }
        )
        check_one_budget(budget_tokens=budget_tokens, ratio=ratio)
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
        _check_engine_settings(engine, {**self._engine_settings(), **_given(model=model)})

    def __setattr__(self, name: str, value: Any) -> None:
        check_fields({name: value})
        super().__setattr__(name, value)

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

    @dispatcher.span
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
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=len(nodes), model_name=engine.name
            )
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: engine.name,
                EventPayload.QUERY_STR: query,
                EventPayload.TOP_K: len(nodes),
            },
        ) as event:
            check_one_budget(budget_tokens=self.budget_tokens, ratio=self.ratio)
            result = engine.compress(
                texts, query, budget_tokens=self.budget_tokens, ratio=self.ratio
            )
            output = [
                NodeWithScore(
                    node=_compressed_copy(nodes[r.index].node, r, result),
                    score=r.score if nodes[r.index].score is None else nodes[r.index].score,
                )
                for r in per_document(engine, result, texts)
            ]
            event.on_end(payload={EventPayload.NODES: output, METADATA_KEY: _counts(result)})
        dispatcher.event(ReRankEndEvent(nodes=output))
        return output


class ILReRetriever(BaseRetriever):
    """Retrieve budgeted spans of whole documents by ILRe recall, without an embedding index.

    The documents (or any text nodes) are encoded once, up to the retrieval layer; every
    query then recalls the spans it attends to most within the budget, over all documents.
    Each document that keeps something comes back as one `TextNode`: its kept spans joined
    by `ilre_engine.GAP_MARKER`, scored by ILRe (its best span), with a copy of the
    document's metadata, an ``ilre`` entry (ILRe's score, spans with character offsets in the
    document, token counts) hidden from the LLM and embedding views, SOURCE pointing to the
    document, and an id derived from the document's and the kept spans. Nodes come most
    relevant first, as from other retrievers (and as from the LangChain `ILReRetriever`).

    `insert` and `insert_nodes` encode only the new documents; `persist` and
    `from_persist_dir` save and load the encoded corpus (`corpus`, an `EncodedCorpus`: the
    format the LangChain retriever uses too), refusing a corpus encoded by a different model
    or layer. Assigning an invalid `budget_tokens` or `ratio` raises `BudgetError`.

    Example:
        >>> retriever = ILReRetriever.from_defaults(documents=documents, budget_tokens=1024)
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
        config: Any = None,
        budget_tokenizer: Any = None,
        budget_tokens: int | None = None,
        ratio: float | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        store: str | os.PathLike[str] | None = None,
    ) -> None:
        """Load the engine (unless given) and encode `nodes`.

        Args:
            nodes: documents or text nodes to encode now; more can be inserted later.
            engine: a loaded engine; None loads the shared one for the settings below.
            model: None for the embedded Gemma 3 270M, a Hugging Face id, a local
                directory or a .gguf file.
            layer: the retrieval layer; None takes the model's.
            device: None takes CUDA when available.
            config: streaming and recall knobs: an `ILReConfig` or a mapping of its fields.
            budget_tokenizer: the reader LLM's tokenizer (see `ILRePostprocessor`); None:
                cl100k_base.
            budget_tokens: tokens kept per query over all documents; or give `ratio`.
            ratio: fraction of the corpus' tokens kept per query, in (0, 1].
            store: a directory: keep the corpus in an `ilre_engine.CorpusStore` there
                (opened, or created), each document encoded on its own, with no limit but
                the disk; `from_persist_dir` reopens it, as it opens a store built by
                ``ilre index``. None keeps the corpus in memory as one encoded context.
        """
        # Refuse a bad budget before loading anything.
        check_fields({"engine": engine, "budget_tokenizer": budget_tokenizer})
        check_one_budget(budget_tokens=budget_tokens, ratio=ratio)
        self.budget_tokens = budget_tokens
        self.ratio = ratio
        settings = _given(
            layer=layer, device=device, config=config, budget_tokenizer=budget_tokenizer
        )
        _check_engine_settings(engine, {**settings, **_given(model=model)})
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.engine: ILRe = engine if engine is not None else shared_engine(model, **settings)
        self.corpus = (
            EncodedCorpus(self.engine)
            if store is None
            else EncodedCorpus.in_store(store, self.engine)
        )
        if nodes:
            self.insert_nodes(nodes)

    @classmethod
    def from_defaults(
        cls,
        documents: Sequence[BaseNode] | None = None,
        nodes: Sequence[BaseNode] | None = None,
        **kwargs: Any,
    ) -> ILReRetriever:
        """A retriever over `documents` and `nodes` (documents first), in LlamaIndex's
        ``from_defaults`` convention.

        Args:
            documents: documents to encode.
            nodes: text nodes to encode after them.
            kwargs: the constructor's keyword arguments: one budget (``budget_tokens`` or
                ``ratio``), an ``engine`` or engine settings, ``callback_manager``,
                ``verbose``.
        """
        return cls([*(documents or ()), *(nodes or ())], **kwargs)

    @property
    def budget_tokens(self) -> int | None:
        """Tokens kept per query over all documents (None when `ratio` is the budget)."""
        return self._budget_tokens

    @budget_tokens.setter
    def budget_tokens(self, value: int | None) -> None:
        check_count("budget_tokens", value)
        self._budget_tokens = value

    @property
    def ratio(self) -> float | None:
        """Fraction of the corpus' tokens kept per query (None when `budget_tokens` is)."""
        return self._ratio

    @ratio.setter
    def ratio(self, value: float | None) -> None:
        check_ratio(value)
        self._ratio = value

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
        """A retriever over the corpus saved in `persist_dir`, or over a corpus store's
        directory (``store=``, ``ilre index``).

        Args:
            kwargs: the constructor's keyword arguments (engine or model settings, budget);
                a corpus encoded by another model or layer raises `EncodedContextError`.
        """
        retriever = cls(**kwargs)
        retriever.corpus = EncodedCorpus.load(persist_dir, retriever.engine)
        return retriever

    @dispatcher.span
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = _query_text(query_bundle)
        check_one_budget(budget_tokens=self.budget_tokens, ratio=self.ratio)
        result, recalls = self.corpus.recall(
            query, budget_tokens=self.budget_tokens, ratio=self.ratio
        )
        # Most relevant first; `sorted` is stable, so ties stay in corpus order.
        ranked = sorted(recalls, key=lambda r: r.score, reverse=True)
        return [NodeWithScore(node=_span_node(r, result), score=r.score) for r in ranked]

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
        raise errors.ILReError(
            f"give either engine or engine settings, not both (got engine and {sorted(settings)})"
        )


def _query_text(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None or not query_bundle.query_str.strip():
        raise errors.EmptyInputError(
            "ILRe recalls what a query attends to: pass a non-empty query_str or query_bundle"
        )
    return query_bundle.query_str


def _node_texts(nodes: Sequence[BaseNode]) -> list[str]:
    """Each node's text (without metadata); a node that holds only media is refused."""
    contents = []
    for index, node in enumerate(nodes):
        content = node.get_content(metadata_mode=MetadataMode.NONE)
        if not content and _has_media(node):
            raise errors.InvalidDocumentError(
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


def _counts(result: RecallResult) -> dict[str, Any]:
    """The whole recall's token counts, budget and ratio, as traces report them."""
    return {
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "budget_tokens": result.budget_tokens,
        "ratio": result.ratio,
    }


def _node_id(source_id: str, spans: Sequence[Span]) -> str:
    """The id of the node holding `spans` of the source `source_id`: the same every time."""
    kept = ",".join(f"{s.start}-{s.end}" for s in spans)
    return str(uuid.uuid5(_IDS, f"{source_id}|{kept}"))


def _compressed_copy(source: BaseNode, recall: DocumentRecall, result: RecallResult) -> BaseNode:
    """A copy of `source` holding only the kept spans of its text, with SOURCE still naming
    the document and an id derived from `source`'s and the spans."""
    # The copy is deep so that nothing done to it later reaches the caller's node; the
    # embedding is dropped because it describes the whole text, not the kept spans.
    node = source.model_copy(
        deep=True,
        update={"id_": _node_id(source.node_id, recall.spans), "embedding": None},
    )
    node.set_content(recall.text)
    node.metadata = {
        **node.metadata,
        METADATA_KEY: {**recall.ilre_metadata(result), "source_node_id": source.node_id},
    }
    node.excluded_llm_metadata_keys = _hidden(node.excluded_llm_metadata_keys)
    node.excluded_embed_metadata_keys = _hidden(node.excluded_embed_metadata_keys)
    if NodeRelationship.SOURCE not in node.relationships:
        # A node without a SOURCE (a Document, say) is the document its text comes from.
        node.relationships = {
            **node.relationships,
            NodeRelationship.SOURCE: source.as_related_node_info(),
        }
    return node


def _corpus_record(node: BaseNode) -> dict[str, Any]:
    """What the corpus keeps of a document: a copy of its metadata, and under
    `LLAMA_INDEX_RECORD` its identity."""
    return {
        **copy.deepcopy(node.metadata),
        LLAMA_INDEX_RECORD: {
            "node_id": node.node_id,
            "node_type": node.get_type(),
            "hash": node.hash,
            "excluded_llm_metadata_keys": list(node.excluded_llm_metadata_keys),
            "excluded_embed_metadata_keys": list(node.excluded_embed_metadata_keys),
        },
    }


def _span_node(recall: DocumentRecall, result: RecallResult) -> TextNode:
    """The kept spans of one corpus document, as a node pointing to that document."""
    metadata, source_id, identity = split_record(recall.metadata)
    # A corpus saved by the LangChain face names the document by its Document.id, if any;
    # without an id there is no SOURCE to name.
    relationships = {}
    if source_id is not None:
        relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(
            node_id=source_id,
            node_type=identity.get("node_type"),
            metadata=copy.deepcopy(metadata),
            hash=identity.get("hash"),
        )
    return TextNode(
        id_=_node_id(source_id or f"document-{recall.index}", recall.spans),
        text=recall.text,
        metadata={**metadata, METADATA_KEY: recall.ilre_metadata(result)},
        excluded_llm_metadata_keys=_hidden(identity.get("excluded_llm_metadata_keys", [])),
        excluded_embed_metadata_keys=_hidden(identity.get("excluded_embed_metadata_keys", [])),
        relationships=relationships,
    )
