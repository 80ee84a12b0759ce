"""LangChain face of ILRe: a document compressor and a retriever.

- `ILReCompressor` is a ``BaseDocumentCompressor``: it reads the documents a retriever found as
  one context and keeps, per document, the spans the query attends to most, within one token
  budget. Use it in ``ContextualCompressionRetriever`` or ``DocumentCompressorPipeline``
  (package ``langchain-classic``), or in an LCEL chain through `ILReCompressor.as_runnable`.
  Output keeps the input order.
- `ILReRetriever` is a ``BaseRetriever`` that replaces chunk retrieval: it encodes whole
  documents once (no splitter, no embedding model) and answers each query with their recalled
  spans, most relevant first.

Every output `Document` keeps its source's ``id`` and a deep copy of its metadata, plus:

- ``"ilre"`` (`METADATA_KEY`): ``score`` (ILRe's score of the document: its best span's),
  the kept ``spans`` with character offsets in the source and their scores, the document's
  and the whole recall's token counts, the budget and the ratio;
- ``relevance_score``: the score of whatever ranked the document for this query. The
  compressor keeps a ``relevance_score`` an upstream retriever or reranker set, and sets
  ILRe's score only where there is none; the retriever sets ILRe's score.

ILRe's score of a span is the highest recall score among its tokens: the question's attention
at the retrieval layer (over a neutral question's, max-pooled, averaged over heads), normalised
to sum 1 over the context, so it lies in [0, 1] but is small, and compares only within one
recall.

Budgets are counted in the reader LLM's tokens (the engine's budget tokenizer). Exactly one
budget must be given; a missing, doubled or out-of-range budget raises
`ilre_engine.BudgetError` at construction, on assignment of a budget field (which checks the
value itself; whether exactly one is given is checked again at call time) and at call time for
a budget passed there. Unknown fields are refused.

Nothing is loaded at construction, nor imported: ``torch`` and the engine are imported on
first use. An engine named by its settings (``model``, ``layer``, ``device``, ``config``,
``budget_tokenizer``) is loaded on first use and shared by every component with the same
settings (`ilre_integrations._common.shared_engine`).

Tracing: each compression or recall runs as a child run (``ILReCompressor`` or
``ILReRetriever recall``) of the caller's callbacks, whose outputs carry the token counts, the
budget and the ratio, so LangSmith and other handlers show the step and what it kept.

Longer than the engine's modules because a face carries its framework's conventions
(pydantic fields with descriptions and validation, sync and async paths, callbacks); the
logic lives in the engine and `_common`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManager,
    CallbackManagerForRetrieverRun,
    Callbacks,
)
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, run_in_executor
from pydantic import ConfigDict, Field

from ilre_engine import errors

from ._common import (
    ENGINE_SETTINGS,
    LANGCHAIN_RECORD,
    METADATA_KEY,
    DocumentRecall,
    EncodedCorpus,
    check_budget_tokenizer,
    check_count,
    check_engine,
    check_fields,
    check_one_budget,
    check_ratio,
    per_document,
    require_texts,
    shared_engine,
    split_record,
)

if TYPE_CHECKING:
    from ilre_engine import ILRe, RecallResult

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


_ENGINE_DOC = "A loaded ilre_engine.ILRe; when given, the engine settings must be left unset."
_MODEL_DOC = (
    "The engine's model when no engine is given: None for the embedded Gemma 3 270M, a Hugging "
    "Face id, a local directory or a .gguf file."
)
_LAYER_DOC = "The retrieval layer; None takes the model's known or default one."
_DEVICE_DOC = "The engine's device, e.g. 'cuda'; None takes CUDA when available."
_CONFIG_DOC = "The engine's tuning knobs: an ilre_engine.ILReConfig or a mapping of its fields."
_TOKENIZER_DOC = (
    "The reader LLM's tokenizer, in which budgets are counted: a tiktoken encoding name, a "
    "tiktoken.Encoding, a Hugging Face tokenizer, or a callable from text to a token count or "
    "to a list of tokens (such as LlamaIndex's Settings.tokenizer)."
)
_BUDGET_DOC = "The output budget in reader tokens, > 0."
_RATIO_DOC = "The output budget as a fraction of all input tokens, in (0, 1]."


class CompressionInput(TypedDict):
    """Input of `ILReCompressor.as_runnable`."""

    documents: Sequence[Document]
    query: str


def _engine(engine: ILRe | None, settings: Mapping[str, Any]) -> ILRe:
    if engine is not None:
        return engine
    return shared_engine(**settings)


def _trace_outputs(documents: Sequence[Document], result: RecallResult | None) -> dict[str, Any]:
    """What a traced run reports: the documents and, when anything was read, the counts."""
    outputs: dict[str, Any] = {"documents": list(documents)}
    if result is not None:
        outputs.update(
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            budget_tokens=result.budget_tokens,
            ratio=result.ratio,
        )
    return outputs


def _traced(
    manager: CallbackManager,
    name: str,
    inputs: dict[str, Any],
    work: Callable[[], tuple[list[Document], RecallResult | None]],
) -> list[Document]:
    """Run `work` as a chain run named `name` of `manager`'s handlers."""
    run = manager.on_chain_start(None, inputs, name=name)
    try:
        documents, result = work()
    except BaseException as error:
        run.on_chain_error(error)
        raise
    run.on_chain_end(_trace_outputs(documents, result))
    return documents


def _to_document(
    source: Document | None,
    recall: DocumentRecall,
    result: RecallResult,
    extra: dict[str, Any],
) -> Document:
    """A Document of `recall`'s text whose metadata is a deep copy of the source's plus
    ILRe's keys; built as a copy of `source` when there is one (so its type and id survive
    and it stays untouched), else from the corpus record (whose id it restores)."""
    if source is not None:
        metadata = copy.deepcopy(source.metadata)
        metadata.setdefault(RELEVANCE_KEY, recall.score)
    else:
        metadata, source_id, _ = split_record(recall.metadata)
        metadata[RELEVANCE_KEY] = recall.score
    metadata[METADATA_KEY] = {**recall.ilre_metadata(result), **extra}
    if source is None:
        return Document(id=source_id, page_content=recall.text, metadata=metadata)
    return source.model_copy(update={"page_content": recall.text, "metadata": metadata})


class ILReCompressor(BaseDocumentCompressor):
    """Compresses retrieved documents by in-model token recall, within one token budget.

    The documents are encoded as one context (so spans compete across all of them) and
    recalled for the query; each document that keeps anything comes back as a copy (same type,
    same ``id``) whose ``page_content`` is its kept spans joined by ``" … "`` and whose metadata
    is a deep copy of the original plus ``"ilre"`` (with ILRe's ``score``) and, unless an
    upstream retriever or reranker already set one, ``relevance_score``. Documents that keep
    nothing are dropped; output is in input order. The kept texts joined by ``" … "`` count at
    most the budget in the budget tokenizer's tokens.

    Each call runs as a chain run named ``ILReCompressor`` of the given ``callbacks`` (in
    ``ContextualCompressionRetriever``: a child of the retriever's run); its outputs carry the
    token counts, the budget and the ratio. ``acompress_documents`` runs the engine in the
    event loop's default executor, so it never blocks the loop.

    Args:
        engine: a loaded `ILRe`; when given, the engine settings below must be left unset.
        model: the engine's model when ``engine`` is None: None for the embedded Gemma 3 270M,
            a Hugging Face id, a local directory or a ``.gguf`` file.
        layer: the retrieval layer; None takes the model's known or default one.
        device: e.g. ``"cuda"``; None takes CUDA when available.
        config: the engine's tuning knobs, as an `ILReConfig` or a mapping of its fields
            (converted when the engine loads).
        budget_tokenizer: the reader LLM's tokenizer: a tiktoken encoding name, a
            ``tiktoken.Encoding``, a Hugging Face tokenizer, or a callable from text to a
            token count or to a list of tokens (such as LlamaIndex's ``Settings.tokenizer``).
        budget_tokens: the output budget in reader tokens. Exactly one of this or ``ratio``.
        ratio: the output budget as a fraction of all input tokens, in (0, 1].

    Raises:
        BudgetError: at construction, when not exactly one valid budget is given; on
            assignment of an invalid budget value.
        pydantic.ValidationError: an unknown field.
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", validate_assignment=True
    )

    # A live model: left out of serialisation, which keeps the settings an equal engine
    # loads from. Typed Any so that this module does not import the engine (and torch).
    engine: Any = Field(default=None, exclude=True, description=_ENGINE_DOC)
    model: str | None = Field(default=None, description=_MODEL_DOC)
    layer: int | None = Field(default=None, description=_LAYER_DOC)
    device: str | None = Field(default=None, description=_DEVICE_DOC)
    config: Any = Field(default=None, description=_CONFIG_DOC)
    budget_tokenizer: Any = Field(default="cl100k_base", description=_TOKENIZER_DOC)
    budget_tokens: int | None = Field(default=None, description=_BUDGET_DOC)
    ratio: float | None = Field(default=None, description=_RATIO_DOC)

    def __init__(self, **data: Any) -> None:
        # Checked here rather than in a pydantic validator, which would wrap BudgetError in
        # a ValidationError and break `except ILReError`.
        check_fields(data)
        super().__init__(**data)
        check_one_budget(budget_tokens=self.budget_tokens, ratio=self.ratio)
        if self.engine is not None and set(ENGINE_SETTINGS) & self.model_fields_set:
            raise errors.ILReError(
                f"give an engine or engine settings ({', '.join(ENGINE_SETTINGS)}), not both"
            )

    def __setattr__(self, name: str, value: Any) -> None:
        check_fields({name: value})
        super().__setattr__(name, value)

    def get_engine(self) -> ILRe:
        """The given engine, else the shared one for these settings (loaded on first call)."""
        return _engine(self.engine, {name: getattr(self, name) for name in ENGINE_SETTINGS})

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
        compressed = [
            _to_document(documents[recall.index], recall, result, {})
            for recall in per_document(engine, result, texts)
        ]
        return compressed, result

    def _run_inputs(self, documents: Sequence[Document], query: str) -> dict[str, Any]:
        return {
            "query": query,
            "documents": list(documents),
            "budget_tokens": self.budget_tokens,
            "ratio": self.ratio,
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
        manager = CallbackManager.configure(inheritable_callbacks=callbacks)
        return _traced(
            manager,
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
        manager = AsyncCallbackManager.configure(inheritable_callbacks=callbacks)
        run = await manager.on_chain_start(
            None, self._run_inputs(documents, query), name=type(self).__name__
        )
        try:
            compressed, result = await run_in_executor(None, self._compress, documents, query)
        except BaseException as error:
            await run.on_chain_error(error)
            raise
        await run.on_chain_end(_trace_outputs(compressed, result))
        return compressed

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


class ILReRetriever(BaseRetriever):
    """Retrieval by in-model token recall over whole documents, encoded once.

    Build it with `from_documents` (or `load`); each query is answered from the encoded
    corpus without re-reading it. A result is one `Document` per source document that keeps
    anything, most relevant first (by ILRe's score): same ``id`` as the source,
    ``page_content`` the document's recalled spans joined by ``" … "``, metadata a deep copy
    of the source's plus ``relevance_score`` (ILRe's score) and ``"ilre"`` (the score, spans
    with character offsets, token counts, and ``"document"``: the source's index in the
    corpus).

    Budget, exactly one of:
        k: the number of results, as in other retrievers. It maps to a budget of
            ``k * tokens_per_k`` reader tokens (`DEFAULT_TOKENS_PER_K` = 256 by default), and
            at most ``k`` documents come back: the ``k`` best when the recall touched more
            (whose spans then use less than the budget).
        budget_tokens: the output budget in reader tokens; every document that keeps
            something comes back.
        ratio: the output budget as a fraction of the corpus' tokens, in (0, 1].

    ``invoke(query, k=...)`` (or ``budget_tokens=`` / ``ratio=``) replaces the budget for one
    call. ``ainvoke`` runs the engine in a worker thread. Each recall is traced as a child run
    (``ILReRetriever recall``) of the retriever's run, with the token counts, the budget and
    the ratio as outputs.

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
    k: int | None = Field(
        default=None, description="The number of results; maps to k * tokens_per_k tokens."
    )
    budget_tokens: int | None = Field(default=None, description=_BUDGET_DOC)
    ratio: float | None = Field(
        default=None, description="The output budget as a fraction of the corpus' tokens."
    )
    tokens_per_k: int = Field(
        default=DEFAULT_TOKENS_PER_K, description="Budget tokens per result asked for by k."
    )

    def __init__(self, **data: Any) -> None:
        # Not a pydantic validator: it would wrap BudgetError in a ValidationError.
        check_fields(data)
        super().__init__(**data)
        self._budget(self.k, self.budget_tokens, self.ratio)

    def __setattr__(self, name: str, value: Any) -> None:
        check_fields({name: value})
        super().__setattr__(name, value)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        *,
        engine: ILRe | None = None,
        model: str | None = None,
        layer: int | None = None,
        device: str | None = None,
        config: Any = None,
        budget_tokenizer: Any = "cl100k_base",
        store: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> ILReRetriever:
        """Encode `documents` into a new retriever.

        Args:
            documents: the corpus; each one's id and metadata are kept with it.
            engine: a loaded `ILRe`; else the shared engine for ``model``, ``layer``,
                ``device``, ``config`` and ``budget_tokenizer`` (see `ILReCompressor`).
            store: a directory: keep the corpus in a `ilre_engine.CorpusStore` there
                (opened, or created), each document encoded on its own, with no limit but
                the disk; `load` reopens it, as it opens a store built by ``ilre index``.
                None keeps the corpus in memory as one encoded context.
            kwargs: the retriever's fields: one budget (``k``, ``budget_tokens`` or
                ``ratio``), ``tokens_per_k``, and BaseRetriever's (``tags``, ``metadata``).
        """
        retriever = cls._unloaded(engine, budget_tokenizer, kwargs)
        engine = _engine(engine, _settings(model, layer, device, config, budget_tokenizer))
        retriever.corpus = (
            EncodedCorpus(engine) if store is None else EncodedCorpus.in_store(store, engine)
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
        budget_tokenizer: Any = "cl100k_base",
        **kwargs: Any,
    ) -> ILReRetriever:
        """A retriever over a corpus written by `save`, or over a corpus store's directory
        (``from_documents(store=...)``, ``ilre index``); the budget is not saved, give it in
        `kwargs` as for `from_documents`.

        Raises:
            EncodedContextError: the corpus was encoded by another model, or is damaged.
        """
        retriever = cls._unloaded(engine, budget_tokenizer, kwargs)
        engine = _engine(engine, _settings(model, layer, device, config, budget_tokenizer))
        retriever.corpus = EncodedCorpus.load(directory, engine)
        return retriever

    @classmethod
    def _unloaded(cls, engine: Any, budget_tokenizer: Any, fields: dict[str, Any]) -> ILReRetriever:
        """A retriever of `fields` over an empty corpus of no engine: built first, so that a
        bad budget, an unknown field or a bad engine is refused before any engine loads."""
        check_engine(engine)
        check_budget_tokenizer(budget_tokenizer)
        return cls(corpus=EncodedCorpus(None), **fields)  # type: ignore[arg-type]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the encoded corpus and its metadata to `directory` (for `load`)."""
        return self.corpus.save(directory)

    def add_documents(self, documents: Sequence[Document]) -> None:
        """Encode `documents` after the corpus; the documents already there are not re-read.
        Each one's metadata is deep-copied, and its id kept beside it."""
        texts = require_texts([document.page_content for document in documents])
        self.corpus.add(texts, [_corpus_record(document) for document in documents])

    def _budget(
        self, k: Any, budget_tokens: Any, ratio: Any
    ) -> tuple[int | None, float | None, int | None]:
        """``(budget_tokens, ratio, max_results)`` for the engine from the three ways to say it."""
        check_one_budget(k=k, budget_tokens=budget_tokens, ratio=ratio)
        check_count("k", k)
        check_count("budget_tokens", budget_tokens)
        check_ratio(ratio)
        if k is None:
            return budget_tokens, ratio, None
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

        def recall() -> tuple[list[Document], RecallResult]:
            result, recalls = self.corpus.recall(query, budget_tokens=budget, ratio=fraction)
            # Most relevant first; `sorted` is stable, so ties stay in corpus order.
            ranked = sorted(recalls, key=lambda r: r.score, reverse=True)[:max_results]
            found = [_to_document(None, r, result, {"document": r.index}) for r in ranked]
            return found, result

        inputs = {"query": query, "k": k, "budget_tokens": budget, "ratio": fraction}
        return _traced(run_manager.get_child(), f"{type(self).__name__} recall", inputs, recall)

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


def _settings(
    model: str | None, layer: int | None, device: str | None, config: Any, budget_tokenizer: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "layer": layer,
        "device": device,
        "config": config,
        "budget_tokenizer": budget_tokenizer,
    }


def _corpus_record(document: Document) -> dict[str, Any]:
    """What the corpus keeps of a document: a deep copy of its metadata and its id."""
    record = copy.deepcopy(document.metadata)
    if document.id is not None:
        record[LANGCHAIN_RECORD] = {"id": document.id}
    return record
