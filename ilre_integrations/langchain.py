"""LangChain face of ILRe: a document compressor and a retriever.

- `ILReCompressor` is a ``BaseDocumentCompressor``: it reads the documents a retriever found as
  one context and keeps, per document, the spans the query attends to most, within one token
  budget. Use it in ``ContextualCompressionRetriever`` or ``DocumentCompressorPipeline``
  (package ``langchain-classic``), or in an LCEL chain through `ILReCompressor.as_runnable`.
- `ILReRetriever` is a ``BaseRetriever`` that replaces chunk retrieval: it encodes whole
  documents once (no splitter, no embedding model) and answers each query with their recalled
  spans.

Every output `Document` carries the source metadata unchanged plus two keys:
``relevance_score`` (the best score among its spans) and ``"ilre"`` (`METADATA_KEY`: the kept
spans with character offsets in the source, the document's and the whole recall's token
counts, the budget and the ratio).

Budgets are counted in the reader LLM's tokens (the engine's budget tokenizer). Exactly one
budget must be given; a missing, doubled or out-of-range budget raises
`ilre_engine.BudgetError` at construction (and again at call time for a budget passed there).

Nothing is loaded at construction: an engine named by its settings (``model``, ``layer``,
``device``, ``config``, ``budget_tokenizer``) is loaded on first use and shared by every
component with the same settings (`ilre_integrations._common.shared_engine`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
    Callbacks,
)
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, run_in_executor
from pydantic import ConfigDict, Field

from ilre_engine import ILRe, ILReConfig, RecallResult, resolve_budget
from ilre_engine.errors import BudgetError

from ._common import (
    METADATA_KEY,
    DocumentRecall,
    EncodedCorpus,
    per_document,
    require_texts,
    shared_engine,
)

__all__ = [
    "DEFAULT_TOKENS_PER_K",
    "METADATA_KEY",
    "CompressionInput",
    "ILReCompressor",
    "ILReRetriever",
]

DEFAULT_TOKENS_PER_K = 256
"""Budget tokens per requested result: ``k`` maps to ``budget_tokens = k * tokens_per_k``, so
``k=4`` keeps at most as much text as four 256-token chunks."""

RELEVANCE_KEY = "relevance_score"


class CompressionInput(TypedDict):
    """Input of `ILReCompressor.as_runnable`."""

    documents: Sequence[Document]
    query: str


def _engine(
    engine: ILRe | None,
    model: str | None,
    layer: int | None,
    device: str | None,
    config: ILReConfig | None,
    budget_tokenizer: str,
) -> ILRe:
    if engine is not None:
        return engine
    return shared_engine(
        model, layer=layer, device=device, config=config, budget_tokenizer=budget_tokenizer
    )


def _to_document(
    source: Document | None, recall: DocumentRecall, result: RecallResult, extra: dict[str, Any]
) -> Document:
    """A Document of `recall`'s text whose metadata is the source's plus ILRe's keys; built as
    a copy of `source` when there is one, so its type and id survive and it stays untouched."""
    base = source.metadata if source is not None else recall.metadata
    metadata = {
        **base,
        RELEVANCE_KEY: recall.score,
        METADATA_KEY: {**recall.ilre_metadata(result), **extra},
    }
    if source is None:
        return Document(page_content=recall.text, metadata=metadata)
    return source.model_copy(update={"page_content": recall.text, "metadata": metadata})


class ILReCompressor(BaseDocumentCompressor):
    """Compresses retrieved documents by in-model token recall, within one token budget.

    The documents are encoded as one context (so spans compete across all of them) and
    recalled for the query; each document that keeps anything comes back as a copy (same type,
    same ``id``) whose ``page_content`` is its kept spans joined by ``" … "`` and whose metadata
    is the original plus ``relevance_score`` and ``"ilre"``. Documents that keep nothing are
    dropped; output is in input order. The kept texts joined by ``" … "`` count at most the
    budget in the budget tokenizer's tokens.

    ``acompress_documents`` (inherited) runs ``compress_documents`` in the event loop's default
    executor, so the engine never blocks the loop.

    Args:
        engine: a loaded `ILRe`; when given, the engine settings below must be left unset.
        model: the engine's model when ``engine`` is None: None for the embedded Gemma 3 270M,
            a Hugging Face id, a local directory or a ``.gguf`` file.
        layer: the retrieval layer; None takes the model's known or default one.
        device: e.g. ``"cuda"``; None takes CUDA when available.
        config: the engine's tuning knobs, as an `ILReConfig` or a dict of its fields.
        budget_tokenizer: tiktoken encoding name of the reader LLM (pass an ``engine`` built
            with a Hugging Face tokenizer or a callable for other readers).
        budget_tokens: the output budget in reader tokens. Exactly one of this or ``ratio``.
        ratio: the output budget as a fraction of all input tokens, in (0, 1].

    Raises:
        BudgetError: at construction, when not exactly one valid budget is given.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # A live model: left out of serialisation, which keeps the settings an equal engine
    # loads from.
    engine: ILRe | None = Field(default=None, exclude=True)
    model: str | None = None
    layer: int | None = None
    device: str | None = None
    config: ILReConfig | None = None
    budget_tokenizer: str = "cl100k_base"
    budget_tokens: int | None = None
    ratio: float | None = None

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Checked here rather than in a pydantic validator, which would wrap BudgetError in
        # a ValidationError and break `except ILReError`.
        resolve_budget(1, self.budget_tokens, self.ratio)
        settings = {"model", "layer", "device", "config", "budget_tokenizer"}
        if self.engine is not None and settings & self.model_fields_set:
            raise ValueError(
                f"give an engine or engine settings ({', '.join(sorted(settings))}), not both"
            )

    def get_engine(self) -> ILRe:
        """The given engine, else the shared one for these settings (loaded on first call)."""
        return _engine(
            self.engine, self.model, self.layer, self.device, self.config, self.budget_tokenizer
        )

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> list[Document]:
        """Keep the spans of `documents` that `query` attends to most, per document.

        `callbacks` is accepted for the interface; the engine emits no events of its own.

        Raises:
            InvalidDocumentError: a ``page_content`` is not a string.
            EmptyInputError: the query is empty, or every document is only whitespace.
        """
        texts = require_texts([document.page_content for document in documents])
        if not texts:
            return []
        engine = self.get_engine()
        result = engine.compress(texts, query, budget_tokens=self.budget_tokens, ratio=self.ratio)
        return [
            _to_document(documents[recall.index], recall, result, {})
            for recall in per_document(engine, result, texts)
        ]

    def as_runnable(self) -> Runnable[CompressionInput, list[Document]]:
        """This compressor as an LCEL runnable from ``{"documents": [...], "query": "..."}``
        to the compressed documents; ``ainvoke`` runs the engine in a worker thread.

        Example::

            chain = (
                {"documents": retriever, "query": RunnablePassthrough()}
                | compressor.as_runnable()
                | format_docs
                | prompt
                | llm
            )
        """

        def compress(inputs: CompressionInput) -> list[Document]:
            return self.compress_documents(inputs["documents"], inputs["query"])

        async def acompress(inputs: CompressionInput) -> list[Document]:
            return list(await self.acompress_documents(inputs["documents"], inputs["query"]))

        return RunnableLambda(compress, afunc=acompress, name=type(self).__name__)


class ILReRetriever(BaseRetriever):
    """Retrieval by in-model token recall over whole documents, encoded once.

    Build it with `from_documents` (or `load`); each query is answered from the encoded
    corpus without re-reading it. A result is one `Document` per source document that keeps
    anything, most relevant first: ``page_content`` is the document's recalled spans joined by
    ``" … "``, metadata the source's plus ``relevance_score`` and ``"ilre"`` (spans with
    character offsets, token counts, and ``"document"``: the source's index in the corpus).

    Budget, exactly one of:
        k: the number of results, as in other retrievers. It maps to a budget of
            ``k * tokens_per_k`` reader tokens (`DEFAULT_TOKENS_PER_K` = 256 by default), and
            at most ``k`` documents come back: the ``k`` best when the recall touched more
            (whose spans then use less than the budget).
        budget_tokens: the output budget in reader tokens; every document that keeps
            something comes back.
        ratio: the output budget as a fraction of the corpus' tokens, in (0, 1].

    ``invoke(query, k=...)`` (or ``budget_tokens=`` / ``ratio=``) replaces the budget for one
    call. ``ainvoke`` runs the engine in a worker thread.

    Raises:
        BudgetError: at construction (or call), when not exactly one valid budget is given.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    corpus: EncodedCorpus = Field(repr=False, exclude=True)
    k: int | None = None
    budget_tokens: int | None = None
    ratio: float | None = None
    tokens_per_k: int = Field(default=DEFAULT_TOKENS_PER_K, gt=0)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Not a pydantic validator: it would wrap BudgetError in a ValidationError.
        self._budget(self.k, self.budget_tokens, self.ratio)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        *,
        engine: ILRe | None = None,
        model: str | None = None,
        layer: int | None = None,
        device: str | None = None,
        config: ILReConfig | None = None,
        budget_tokenizer: str = "cl100k_base",
        **kwargs: Any,
    ) -> ILReRetriever:
        """Encode `documents` into a new retriever.

        Args:
            documents: the corpus; each one's metadata is kept with it.
            engine: a loaded `ILRe`; else the shared engine for ``model``, ``layer``,
                ``device``, ``config`` and ``budget_tokenizer`` (see `ILReCompressor`).
            kwargs: the retriever's fields: one budget (``k``, ``budget_tokens`` or
                ``ratio``), ``tokens_per_k``, and BaseRetriever's (``tags``, ``metadata``).
        """
        engine = _engine(engine, model, layer, device, config, budget_tokenizer)
        # Built before encoding, so a bad budget is refused before the expensive part.
        retriever = cls(corpus=EncodedCorpus(engine), **kwargs)
        retriever.add_documents(documents)
        return retriever

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        engine: ILRe | None = None,
        model: str | None = None,
        layer: int | None = None,
        device: str | None = None,
        config: ILReConfig | None = None,
        budget_tokenizer: str = "cl100k_base",
        **kwargs: Any,
    ) -> ILReRetriever:
        """A retriever over a corpus written by `save`; the budget is not saved, give it in
        `kwargs` as for `from_documents`.

        Raises:
            EncodedContextError: the corpus was encoded by another model, or is damaged.
        """
        engine = _engine(engine, model, layer, device, config, budget_tokenizer)
        return cls(corpus=EncodedCorpus.load(directory, engine), **kwargs)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the encoded corpus and its metadata to `directory` (for `load`)."""
        return self.corpus.save(directory)

    def add_documents(self, documents: Sequence[Document]) -> None:
        """Encode `documents` after the corpus; the documents already there are not re-read."""
        texts = require_texts([document.page_content for document in documents])
        self.corpus.add(texts, [document.metadata for document in documents])

    def _budget(
        self, k: int | None, budget_tokens: int | None, ratio: float | None
    ) -> tuple[int | None, float | None, int | None]:
        """``(budget_tokens, ratio, max_results)`` for the engine from the three ways to say it."""
        if sum(value is not None for value in (k, budget_tokens, ratio)) != 1:
            raise BudgetError("give exactly one of k, budget_tokens or ratio")
        if k is None:
            resolve_budget(1, budget_tokens, ratio)
            return budget_tokens, ratio, None
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise BudgetError(f"k must be an integer >= 1, got {k!r}")
        return k * self.tokens_per_k, None, k

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        budget_tokens: int | None = None,
        ratio: float | None = None,
    ) -> list[Document]:
        if k is None and budget_tokens is None and ratio is None:
            k, budget_tokens, ratio = self.k, self.budget_tokens, self.ratio
        budget, fraction, max_results = self._budget(k, budget_tokens, ratio)
        result, recalls = self.corpus.recall(query, budget_tokens=budget, ratio=fraction)
        ranked = sorted(recalls, key=lambda recall: recall.score, reverse=True)[:max_results]
        return [_to_document(None, recall, result, {"document": recall.index}) for recall in ranked]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        budget_tokens: int | None = None,
        ratio: float | None = None,
    ) -> list[Document]:
        # BaseRetriever's default would also use a thread but drop the per-call budget.
        return await run_in_executor(
            None,
            self._get_relevant_documents,
            query,
            run_manager=run_manager.get_sync(),
            k=k,
            budget_tokens=budget_tokens,
            ratio=ratio,
        )
