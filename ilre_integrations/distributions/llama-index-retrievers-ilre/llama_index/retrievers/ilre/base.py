"""`ILReRetriever`: LlamaIndex's retriever by ILRe recall over whole documents."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import (
    BaseNode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

from ilre_engine.budget import check_budget, check_count, check_ratio
from ilre_integrations._common import (
    ENGINE_SETTINGS,
    LLAMA_INDEX_RECORD,
    METADATA_KEY,
    ContextCorpus,
    DocumentRecall,
    EncodedCorpus,
    StoreCorpus,
    best_first,
    check_fields,
    documented,
    engine_for,
    split_record,
)
from ilre_integrations._llama_index import char_span, hidden, node_id, node_texts, query_text

if TYPE_CHECKING:
    from ilre_engine import ILRe, RecallResult

__all__ = ["ILReRetriever"]

dispatcher = get_dispatcher(__name__)


class ILReRetriever(BaseRetriever):
    """Retrieve budgeted spans of whole documents by ILRe recall, without an embedding index.

    The documents (or any text nodes) are encoded once, up to the retrieval layer; every
    query then recalls the spans it attends to most within the budget, over all documents.
    Each document that keeps something comes back as one `TextNode`: its kept spans joined
    by `ilre_engine.GAP_MARKER`, scored by ILRe (the document's share of the recall, in
    (0, 1]), with a copy of the document's metadata, an ``ilre`` entry (ILRe's score, spans
    with character offsets in the document, token counts) hidden from the LLM and embedding
    views, SOURCE pointing to the document, and an id derived from the document's and the
    kept spans. A node of one span has ``start_char_idx`` / ``end_char_idx`` addressing its
    text in that document; a node of several spans has both cleared (None). Nodes come most
    relevant first, as from other retrievers (and as from the LangChain `ILReRetriever`);
    ``similarity_top_k`` keeps the first of them.

    `insert` and `insert_nodes` encode only the new documents; `persist` and
    `from_persist_dir` save and load the encoded corpus (`corpus`, an `EncodedCorpus`: the
    format the LangChain retriever uses too), refusing a corpus encoded by a different model
    or layer. Assigning an invalid `budget_tokens`, `ratio` or `similarity_top_k` raises
    `BudgetError`.

    Example:
        >>> retriever = ILReRetriever.from_defaults(documents=documents, budget_tokens=1024)
        >>> query_engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
    """

    @documented("engine", *ENGINE_SETTINGS, "budget_tokens", "ratio", "similarity_top_k", "store")
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
        similarity_top_k: int | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        store: str | os.PathLike[str] | None = None,
    ) -> None:
        """Load the engine (unless given) and encode `nodes`: documents or text nodes (more
        can be inserted later). `from_persist_dir` reopens a `store`, as it opens a store
        built by ``ilre index``."""
        # Refuse a bad budget before loading anything.
        check_fields({"engine": engine, "budget_tokenizer": budget_tokenizer})
        check_budget(budget_tokens, ratio)
        self.budget_tokens = budget_tokens
        self.ratio = ratio
        self.similarity_top_k = similarity_top_k
        settings = dict(
            model=model,
            layer=layer,
            device=device,
            config=config,
            budget_tokenizer=budget_tokenizer,
        )
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.engine: ILRe = engine_for(engine, settings)
        self.corpus: EncodedCorpus = (
            ContextCorpus(self.engine)
            if store is None
            else StoreCorpus.open_or_create(store, self.engine)
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
        ``from_defaults`` convention; `kwargs` are the constructor's keyword arguments."""
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

    @property
    def similarity_top_k(self) -> int | None:
        """At most this many nodes per query (None: every document that keeps something)."""
        return self._similarity_top_k

    @similarity_top_k.setter
    def similarity_top_k(self, value: int | None) -> None:
        check_count("similarity_top_k", value)
        self._similarity_top_k = value

    def insert_nodes(self, nodes: Sequence[BaseNode]) -> None:
        """Encode `nodes` after the documents already held (which are not read again)."""
        texts = node_texts(nodes)
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
        directory (``store=``, ``ilre index``); `kwargs` are the constructor's keyword
        arguments (engine or model settings, budget). A corpus encoded by another model or
        layer raises `EncodedContextError`."""
        retriever = cls(**kwargs)
        retriever.corpus = EncodedCorpus.load(persist_dir, retriever.engine)
        return retriever

    @dispatcher.span
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_text(query_bundle)
        check_budget(self.budget_tokens, self.ratio)
        result, recalls = self.corpus.recall(
            query, budget_tokens=self.budget_tokens, ratio=self.ratio
        )
        ranked = best_first([r.score for r in recalls], self.similarity_top_k)
        return [
            NodeWithScore(node=_span_node(recalls[i], result), score=recalls[i].score)
            for i in ranked
        ]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # BaseRetriever's default calls _retrieve on the event loop; recall is seconds of
        # model work, so it runs in a worker thread instead.
        return await asyncio.to_thread(self._retrieve, query_bundle)


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
    start, end = char_span(recall.spans, 0)
    return TextNode(
        id_=node_id(source_id or f"document-{recall.index}", recall.spans),
        text=recall.text,
        start_char_idx=start,
        end_char_idx=end,
        metadata={**metadata, METADATA_KEY: recall.ilre_metadata(result)},
        excluded_llm_metadata_keys=hidden(identity.get("excluded_llm_metadata_keys", [])),
        excluded_embed_metadata_keys=hidden(identity.get("excluded_embed_metadata_keys", [])),
        relationships=relationships,
    )
