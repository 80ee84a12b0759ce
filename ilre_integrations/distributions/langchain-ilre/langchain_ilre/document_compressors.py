"""`ILReCompressor`: LangChain's document compressor by ILRe recall."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from pydantic import ConfigDict, Field

from ilre_engine import errors
from ilre_engine.budget import check_budget
from ilre_integrations._common import (
    ENGINE_SETTINGS,
    FIELDS,
    best_first,
    check_engine_or_settings,
    check_fields,
    documented,
    engine_for,
    given,
    one_scale,
    per_document,
    require_items,
    require_texts,
)
from langchain_ilre._shared import RELEVANCE_KEY, atraced, to_document, traced

if TYPE_CHECKING:
    from ilre_engine import ILRe, RecallResult

__all__ = ["CompressionInput", "ILReCompressor"]


class CompressionInput(TypedDict):
    """Input of `ILReCompressor.as_runnable`."""

    documents: Sequence[Document]
    query: str


@documented("engine", *ENGINE_SETTINGS, "budget_tokens", "ratio", "top_n")
class ILReCompressor(BaseDocumentCompressor):
    """Compresses retrieved documents by in-model token recall, within one token budget.

    The documents are encoded as one context (so spans compete across all of them) and
    recalled for the query; each document that keeps anything comes back as a copy (same
    type, same ``id``) whose ``page_content`` is its kept spans joined by ``" … "`` and whose
    metadata is a deep copy of the original plus ``"ilre"`` (ILRe's ``score``, the spans,
    the token counts) and ``relevance_score``, one scale for the whole list: when every input
    arrived with a ``relevance_score`` each keeps its own, otherwise every document carries
    ILRe's score and keeps the one it arrived with, if any, under ``retrieval_score``.
    Documents that keep nothing are dropped; output is in input order. The kept texts joined
    by ``" … "`` count at most the budget in the budget tokenizer's tokens.

    Each call runs as a chain run named ``ILReCompressor`` of the given ``callbacks`` (in
    ``ContextualCompressionRetriever``: a child of the retriever's run); its outputs carry
    the token counts, the budget and the ratio. ``acompress_documents`` runs the engine in
    the event loop's default executor, so it never blocks the loop.

    Raises:
        BudgetError: at construction, when not exactly one valid budget is given; on
            assignment of an invalid budget or ``top_n``.
        ILReError: an engine and engine settings both given.
        pydantic.ValidationError: an unknown field.
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", validate_assignment=True
    )

    # A live model: left out of serialisation, which keeps the settings an equal engine
    # loads from. Typed Any so that this module does not import the engine (and torch).
    engine: Any = Field(default=None, exclude=True, description=FIELDS["engine"])
    model: str | None = Field(default=None, description=FIELDS["model"])
    layer: int | None = Field(default=None, description=FIELDS["layer"])
    device: str | None = Field(default=None, description=FIELDS["device"])
    config: Any = Field(default=None, description=FIELDS["config"])
    budget_tokenizer: Any = Field(default="cl100k_base", description=FIELDS["budget_tokenizer"])
    budget_tokens: int | None = Field(default=None, description=FIELDS["budget_tokens"])
    ratio: float | None = Field(default=None, description=FIELDS["ratio"])
    top_n: int | None = Field(default=None, description=FIELDS["top_n"])

    def __init__(self, **data: Any) -> None:
        # Checked here rather than in a pydantic validator, which would wrap BudgetError in
        # a ValidationError and break `except ILReError`.
        check_fields(data)
        super().__init__(**data)
        check_budget(self.budget_tokens, self.ratio)
        check_engine_or_settings(
            self.engine, given(**{name: data.get(name) for name in ENGINE_SETTINGS})
        )

    def __setattr__(self, name: str, value: Any) -> None:
        check_fields({name: value})
        super().__setattr__(name, value)

    def get_engine(self) -> ILRe:
        """The given engine, else the shared one for these settings (loaded on first call)."""
        if self.engine is not None:
            return self.engine
        return engine_for(None, {name: getattr(self, name) for name in ENGINE_SETTINGS})

    def _compress(
        self, documents: Sequence[Document], query: str
    ) -> tuple[list[Document], RecallResult | None]:
        if not isinstance(query, str) or not query.strip():
            raise errors.EmptyInputError("the query is empty")  # also with no documents
        texts = require_texts([document.page_content for document in documents])
        if not texts:
            return [], None
        engine = self.get_engine()
        result = engine.compress(texts, query, budget_tokens=self.budget_tokens, ratio=self.ratio)
        recalls = per_document(engine, result, texts)
        scores = one_scale([d.metadata.get(RELEVANCE_KEY) for d in documents], recalls)
        kept = sorted(best_first([score for score, _ in scores], self.top_n))
        compressed = [
            to_document(documents[recalls[i].index], recalls[i], result, *scores[i]) for i in kept
        ]
        return compressed, result

    def _run_inputs(self, documents: Sequence[Document], query: str) -> dict[str, Any]:
        return {
            "query": query,
            "documents": list(documents),
            "budget_tokens": self.budget_tokens,
            "ratio": self.ratio,
            "top_n": self.top_n,
        }

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> list[Document]:
        """Keep the spans of `documents` that `query` attends to most, per document.

        Runs as a chain run named ``ILReCompressor`` of `callbacks`.

        Raises:
            InvalidDocumentError: a ``page_content`` is not a string.
            EmptyInputError: the query is empty, or every document is only whitespace.
        """
        documents = require_items(documents, Document, "documents")
        return traced(
            CallbackManager.configure(inheritable_callbacks=callbacks),
            type(self).__name__,
            self._run_inputs(documents, query),
            lambda: self._compress(documents, query),
        )

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> list[Document]:
        """`compress_documents` with the engine in the default executor; the run is reported
        to `callbacks` from the event loop, as async handlers expect."""
        documents = require_items(documents, Document, "documents")
        return await atraced(
            AsyncCallbackManager.configure(inheritable_callbacks=callbacks),
            type(self).__name__,
            self._run_inputs(documents, query),
            lambda: self._compress(documents, query),
        )

    def as_runnable(self) -> Runnable[CompressionInput, list[Document]]:
        """This compressor as an LCEL runnable from ``{"documents": [...], "query": "..."}``
        to the compressed documents; ``ainvoke`` runs the engine in a worker thread, and the
        compression is traced as a child of the runnable's run.

        Example::

            chain = (
                {"documents": retriever, "query": RunnablePassthrough()}
                | compressor.as_runnable()
                | format_docs
                | prompt
                | llm
            )
        """

        def compress(inputs: CompressionInput, config: RunnableConfig) -> list[Document]:
            documents, query = _runnable_input(inputs)
            return self.compress_documents(documents, query, callbacks=config.get("callbacks"))

        async def acompress(inputs: CompressionInput, config: RunnableConfig) -> list[Document]:
            documents, query = _runnable_input(inputs)
            return list(
                await self.acompress_documents(documents, query, callbacks=config.get("callbacks"))
            )

        return RunnableLambda(compress, afunc=acompress, name=type(self).__name__)


def _runnable_input(inputs: Any) -> tuple[Sequence[Document], str]:
    """The documents and query of an `ILReCompressor.as_runnable` input, or a typed error."""
    if not isinstance(inputs, Mapping) or "documents" not in inputs:
        raise errors.InvalidDocumentError(
            "ILReCompressor.as_runnable takes {'documents': [...], 'query': '...'}, got "
            f"{type(inputs).__name__} {sorted(inputs) if isinstance(inputs, Mapping) else ''}"
        )
    if not isinstance(inputs.get("query"), str) or not inputs["query"].strip():
        raise errors.EmptyInputError("ILReCompressor.as_runnable got no 'query'")
    return inputs["documents"], inputs["query"]
