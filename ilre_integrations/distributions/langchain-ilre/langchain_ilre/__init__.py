"""LangChain integration of ILRe: a document compressor and a retriever.

- `ILReCompressor` (``langchain_ilre.document_compressors``) is a
  ``BaseDocumentCompressor``: it reads the documents a retriever found as one context and
  keeps, per document, the spans the query attends to most, within one token budget. Use it
  in ``ContextualCompressionRetriever`` or ``DocumentCompressorPipeline`` (package
  ``langchain-classic``), or in an LCEL chain through `ILReCompressor.as_runnable`. Output
  keeps the input order.
- `ILReRetriever` (``langchain_ilre.retrievers``) is a ``BaseRetriever`` that replaces chunk
  retrieval: it encodes whole documents once (no splitter, no embedding model) and answers
  each query with their recalled spans, most relevant first.

Every output `Document` keeps its source's ``id`` and a deep copy of its metadata, plus:

- ``"ilre"``: ``score`` (ILRe's score of the document, below), the kept ``spans`` with
  character offsets in the source's ``page_content`` and their recall scores, the document's
  and the whole call's token counts, the budget and the ratio;
- ``relevance_score``: one scale for the whole list. When every input document arrived with
  a ``relevance_score`` (from a retriever or reranker upstream), each keeps its own; otherwise
  every document carries ILRe's score, and one that arrived with a ``relevance_score`` keeps
  it under ``retrieval_score``. The retriever's documents carry ILRe's score.

ILRe's score of a document is its share of the recall: its best span's recall score over the
sum of the best span scores of every document the recall kept. It lies in (0, 1], the
documents of one call sum to 1, and it does not shrink as the context grows.

Budgets are counted in the reader LLM's tokens (the engine's budget tokenizer), with the
engine's own checks (``ilre_engine.budget``): exactly one budget, or `ilre_engine.BudgetError`
at construction, on assignment of a budget field, and at call time. Unknown fields are
refused. Nothing is loaded at construction, nor imported: ``torch`` and the engine are
imported on first use, and an engine named by its settings is loaded then and shared by every
component with the same settings.

Tracing: each compression or recall runs as a child run (``ILReCompressor`` or
``ILReRetriever recall``) of the caller's callbacks, whose outputs carry the token counts,
the budget and the ratio; on the async paths the run is reported from the event loop.
"""

from langchain_ilre.document_compressors import ILReCompressor
from langchain_ilre.retrievers import ILReRetriever

__all__ = ["ILReCompressor", "ILReRetriever"]
