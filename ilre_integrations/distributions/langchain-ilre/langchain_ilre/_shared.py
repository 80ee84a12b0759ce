"""What the compressor and the retriever share: tracing, and the documents they return."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
from langchain_core.documents import Document
from langchain_core.runnables import run_in_executor

from ilre_integrations._common import (
    METADATA_KEY,
    UPSTREAM_SCORE_KEY,
    DocumentRecall,
    split_record,
)

if TYPE_CHECKING:
    from ilre_engine import RecallResult

RELEVANCE_KEY = "relevance_score"
"""Where LangChain's rerankers write a document's score."""

Work = Callable[[], tuple[list[Document], "RecallResult | None"]]


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


def traced(
    manager: CallbackManager, name: str, inputs: dict[str, Any], work: Work
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


async def atraced(
    manager: AsyncCallbackManager, name: str, inputs: dict[str, Any], work: Work
) -> list[Document]:
    """`traced` for the async paths: `work` runs in the event loop's default executor, so it
    never blocks the loop, and the run is reported from the loop, as async handlers expect."""
    run = await manager.on_chain_start(None, inputs, name=name)
    try:
        documents, result = await run_in_executor(None, work)
    except BaseException as error:
        await run.on_chain_error(error)
        raise
    await run.on_chain_end(_trace_outputs(documents, result))
    return documents


def to_document(
    source: Document | None,
    recall: DocumentRecall,
    result: RecallResult,
    score: Any,
    upstream: Any = None,
    extra: dict[str, Any] | None = None,
) -> Document:
    """A Document of `recall`'s text whose metadata is a deep copy of the source's plus
    ``relevance_score`` (`score`), the score it arrived with under `UPSTREAM_SCORE_KEY` where
    `upstream` is not None, and ILRe's entry. Built as a copy of `source` when there is one
    (so its type and id survive and it stays untouched), else from the corpus record (whose
    id it restores)."""
    if source is not None:
        metadata = copy.deepcopy(source.metadata)
    else:
        metadata, source_id, _ = split_record(recall.metadata)
    metadata[RELEVANCE_KEY] = score
    if upstream is not None:
        metadata[UPSTREAM_SCORE_KEY] = upstream
    metadata[METADATA_KEY] = {**recall.ilre_metadata(result), **(extra or {})}
    if source is None:
        return Document(id=source_id, page_content=recall.text, metadata=metadata)
    return source.model_copy(update={"page_content": recall.text, "metadata": metadata})
