"""`ILReRetriever`: LangChain's retriever by ILRe recall over whole documents."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from ilre_engine.budget import check_budget, check_count, check_one_budget
from ilre_integrations._common import (
    ENGINE_SETTINGS,
    FIELDS,
    LANGCHAIN_RECORD,
    ContextCorpus,
    EncodedCorpus,
    StoreCorpus,
    best_first,
    check_budget_tokenizer,
    check_engine,
    check_fields,
    documented,
    engine_for,
    require_items,
    require_texts,
)
from langchain_ilre._shared import atraced, to_document, traced

if TYPE_CHECKING:
    from ilre_engine import ILRe, RecallResult

__all__ = ["DEFAULT_TOKENS_PER_K", "ILReRetriever"]

DEFAULT_TOKENS_PER_K = 256
"""Budget tokens per requested result: ``k`` maps to ``budget_tokens = k * tokens_per_k``, so
``k=4`` keeps at most as much text as four 256-token chunks."""


@documented("k", "budget_tokens", "ratio", "tokens_per_k")
class ILReRetriever(BaseRetriever):
    """Retrieval by in-model token recall over whole documents, encoded once.

    Build it with `from_documents` (or `load`); each query is answered from the encoded
    corpus without re-reading it. A result is one `Document` per source document that keeps
    anything, most relevant first: same ``id`` as the source, ``page_content`` the document's
    recalled spans joined by ``" … "``, metadata a deep copy of the source's plus
    ``relevance_score`` (ILRe's score of the document: its share of the recall, in (0, 1])
    and ``"ilre"`` (the score, spans with character offsets, token counts, and
    ``"document"``: the source's index in the corpus).

    Give exactly one budget: ``k`` (at most ``k`` documents, within ``k * tokens_per_k``
    reader tokens), ``budget_tokens`` or ``ratio`` (every document that keeps something).
    ``invoke(query, k=...)`` (or ``budget_tokens=`` / ``ratio=``) replaces the budget for one
    call. ``ainvoke`` runs the engine in a worker thread and reports to async handlers from
    the event loop. Each recall is traced as a child run (``ILReRetriever recall``) of the
    retriever's run, with the token counts, the budget and the ratio as outputs.

    Raises:
        BudgetError: at construction (or call), when not exactly one valid budget is given;
            on assignment of an invalid budget value.
        pydantic.ValidationError: an unknown field.
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", validate_assignment=True
    )

    corpus: EncodedCorpus = Field(
        repr=False, exclude=True, description="The encoded documents and their metadata."
    )
    k: int | None = Field(default=None, description=FIELDS["k"])
    budget_tokens: int | None = Field(default=None, description=FIELDS["budget_tokens"])
    ratio: float | None = Field(default=None, description=FIELDS["ratio"])
    tokens_per_k: int = Field(default=DEFAULT_TOKENS_PER_K, description=FIELDS["tokens_per_k"])

    def __init__(self, **data: Any) -> None:
        # Not a pydantic validator: it would wrap BudgetError in a ValidationError.
        check_fields(data)
        super().__init__(**data)
        self._budget(self.k, self.budget_tokens, self.ratio)

    def __setattr__(self, name: str, value: Any) -> None:
        check_fields({name: value})
        super().__setattr__(name, value)

    @classmethod
    @documented("engine", *ENGINE_SETTINGS, "store")
    def from_documents(
        cls,
        documents: Sequence[Document],
        *,
        engine: ILRe | None = None,
        model: str | None = None,
        layer: int | None = None,
        device: str | None = None,
        config: Any = None,
        budget_tokenizer: Any = None,
        store: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> ILReRetriever:
        """Encode `documents` (each one's id and metadata kept with it) into a new retriever;
        `kwargs` are the retriever's fields: one budget (``k``, ``budget_tokens`` or
        ``ratio``), ``tokens_per_k``, and BaseRetriever's (``tags``, ``metadata``). `load`
        reopens a `store`, as it opens a store built by ``ilre index``."""
        documents = require_items(documents, Document, "documents")
        settings = dict(model=model, layer=layer, device=device, config=config)
        retriever = cls._unloaded(engine, budget_tokenizer, kwargs)
        engine = engine_for(engine, {**settings, "budget_tokenizer": budget_tokenizer})
        retriever.corpus = (
            ContextCorpus(engine) if store is None else StoreCorpus.open_or_create(store, engine)
        )
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
        config: Any = None,
        budget_tokenizer: Any = None,
        **kwargs: Any,
    ) -> ILReRetriever:
        """A retriever over a corpus written by `save`, or over a corpus store's directory
        (``from_documents(store=...)``, ``ilre index``); the engine and the budget are given
        as for `from_documents` (the budget is not saved).

        Raises:
            EncodedContextError: the corpus was encoded by another model, or is damaged.
        """
        settings = dict(model=model, layer=layer, device=device, config=config)
        retriever = cls._unloaded(engine, budget_tokenizer, kwargs)
        engine = engine_for(engine, {**settings, "budget_tokenizer": budget_tokenizer})
        retriever.corpus = EncodedCorpus.load(directory, engine)
        return retriever

    @classmethod
    def _unloaded(cls, engine: Any, budget_tokenizer: Any, fields: dict[str, Any]) -> ILReRetriever:
        """A retriever of `fields` over an empty corpus of no engine: built first, so that a
        bad budget, an unknown field or a bad engine is refused before any engine loads."""
        check_engine(engine)
        check_budget_tokenizer(budget_tokenizer)
        return cls(corpus=ContextCorpus(None), **fields)  # type: ignore[arg-type]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the encoded corpus and its metadata to `directory` (for `load`)."""
        return self.corpus.save(directory)

    def add_documents(self, documents: Sequence[Document]) -> None:
        """Encode `documents` after the corpus; the documents already there are not re-read.
        Each one's metadata is deep-copied, and its id kept beside it."""
        documents = require_items(documents, Document, "documents")
        texts = require_texts([document.page_content for document in documents])
        self.corpus.add(texts, [_corpus_record(document) for document in documents])

    def _budget(
        self, k: Any, budget_tokens: Any, ratio: Any
    ) -> tuple[int | None, float | None, int | None]:
        """``(budget_tokens, ratio, max_results)`` for the engine from the three ways to say
        it, checked by the engine's rules."""
        check_one_budget(k=k, budget_tokens=budget_tokens, ratio=ratio)
        check_count("k", k)
        if k is None:
            check_budget(budget_tokens, ratio)
            return budget_tokens, ratio, None
        return k * self.tokens_per_k, None, k

    def _call(
        self, query: str, k: Any, budget_tokens: Any, ratio: Any
    ) -> tuple[dict[str, Any], Any]:
        """The traced run's inputs and its work: one recall, most relevant first."""
        if k is None and budget_tokens is None and ratio is None:
            k, budget_tokens, ratio = self.k, self.budget_tokens, self.ratio
        budget, fraction, max_results = self._budget(k, budget_tokens, ratio)

        def recall() -> tuple[list[Document], RecallResult]:
            result, recalls = self.corpus.recall(query, budget_tokens=budget, ratio=fraction)
            ranked = [recalls[i] for i in best_first([r.score for r in recalls], max_results)]
            found = [
                to_document(None, r, result, r.score, extra={"document": r.index}) for r in ranked
            ]
            return found, result

        inputs = {"query": query, "k": k, "budget_tokens": budget, "ratio": fraction}
        return inputs, recall

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        budget_tokens: int | None = None,
        ratio: float | None = None,
    ) -> list[Document]:
        inputs, recall = self._call(query, k, budget_tokens, ratio)
        return traced(run_manager.get_child(), f"{type(self).__name__} recall", inputs, recall)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        budget_tokens: int | None = None,
        ratio: float | None = None,
    ) -> list[Document]:
        # The recall runs in a worker thread; its run is reported from the event loop.
        inputs, recall = self._call(query, k, budget_tokens, ratio)
        return await atraced(
            run_manager.get_child(), f"{type(self).__name__} recall", inputs, recall
        )


def _corpus_record(document: Document) -> dict[str, Any]:
    """What the corpus keeps of a document: a deep copy of its metadata and its id."""
    record = copy.deepcopy(document.metadata)
    if document.id is not None:
        record[LANGCHAIN_RECORD] = {"id": document.id}
    return record
