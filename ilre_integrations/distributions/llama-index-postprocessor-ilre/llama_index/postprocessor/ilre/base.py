"""`ILRePostprocessor`: LlamaIndex's node postprocessor by ILRe recall."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, NodeRelationship, NodeWithScore, QueryBundle

from ilre_engine.budget import check_budget
from ilre_integrations._common import (
    ENGINE_SETTINGS,
    FIELDS,
    METADATA_KEY,
    UPSTREAM_SCORE_KEY,
    DocumentRecall,
    best_first,
    check_engine_or_settings,
    check_fields,
    documented,
    engine_for,
    given,
    one_scale,
    per_document,
    require_items,
)
from ilre_integrations._llama_index import (
    char_span,
    counts,
    hidden,
    node_id,
    node_texts,
    query_text,
)

if TYPE_CHECKING:
    from ilre_engine import ILRe, RecallResult

__all__ = ["ILRePostprocessor"]

dispatcher = get_dispatcher(__name__)


class ILRePostprocessor(BaseNodePostprocessor):
    """Compress retrieved nodes to the spans the question attends to most (ILRe recall).

    All nodes are read together as one context, so the budget is shared among them and a
    node that keeps nothing is dropped. Each node that keeps something comes back as a deep
    copy whose text is its kept spans joined by `ilre_engine.GAP_MARKER`, with the node's
    metadata and relationships, an ``ilre`` metadata entry hidden from the LLM and embedding
    views (ILRe's ``score``, the spans with character offsets in the input node's text,
    token counts, and ``source_node_id``: the input node's id), and no embedding (it
    described the whole text). Its SOURCE relationship is the input node's own, so
    ``ref_doc_id`` is still the document's (a node without one, such as a `Document`,
    becomes the SOURCE itself); its id is derived from the input node's id and the kept
    spans, so the same input gives the same ids.

    Offsets: a node that kept one span has ``start_char_idx`` / ``end_char_idx`` addressing
    its text in the SOURCE document (``document.text[start:end] == node.text``); a node of
    several spans joined by the gap marker, or whose input offsets do not address its input
    text, has both cleared (None).

    Scores, one scale for the whole list: when every input node arrived with a score (a
    retriever's or an upstream reranker's), each keeps its own; otherwise every node carries
    ILRe's score (its share of the recall, in (0, 1]), and one that arrived with a score
    keeps it in ``metadata["retrieval_score"]`` (hidden from the LLM and embedding views).
    Nodes keep their input order; ``top_n`` keeps the best of them. Input nodes are not
    modified.

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
    engine: Any = Field(default=None, exclude=True, description=FIELDS["engine"])
    model: str | None = Field(default=None, description=FIELDS["model"])
    layer: int | None = Field(default=None, description=FIELDS["layer"])
    device: str | None = Field(default=None, description=FIELDS["device"])
    config: Any = Field(default=None, description=FIELDS["config"])
    budget_tokenizer: Any = Field(default=None, description=FIELDS["budget_tokenizer"])
    budget_tokens: int | None = Field(default=None, description=FIELDS["budget_tokens"])
    ratio: float | None = Field(default=None, description=FIELDS["ratio"])
    top_n: int | None = Field(default=None, description=FIELDS["top_n"])

    @documented("engine", *ENGINE_SETTINGS, "budget_tokens", "ratio", "top_n")
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
        top_n: int | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        """Configure; nothing is loaded until the first nodes arrive."""
        settings = given(
            model=model,
            layer=layer,
            device=device,
            config=config,
            budget_tokenizer=budget_tokenizer,
        )
        # Checked before pydantic's validation, so that these errors reach the caller as
        # ILRe's own (BudgetError, ILReError) rather than wrapped in a ValidationError.
        check_fields(
            {
                "engine": engine,
                "budget_tokenizer": budget_tokenizer,
                "budget_tokens": budget_tokens,
                "ratio": ratio,
                "top_n": top_n,
            }
        )
        check_budget(budget_tokens, ratio)
        check_engine_or_settings(engine, settings)
        super().__init__(
            engine=engine,
            **settings,
            budget_tokens=budget_tokens,
            ratio=ratio,
            top_n=top_n,
            callback_manager=callback_manager or CallbackManager(),
        )

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
        return engine_for(None, {name: getattr(self, name) for name in ENGINE_SETTINGS})

    @dispatcher.span
    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = query_text(query_bundle)
        nodes = require_items(nodes, NodeWithScore, "nodes")
        if not nodes:
            return []
        texts = node_texts([n.node for n in nodes])
        engine = self.get_engine()
        top_n = len(nodes) if self.top_n is None else min(self.top_n, len(nodes))
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=engine.name)
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: engine.name,
                EventPayload.QUERY_STR: query,
                EventPayload.TOP_K: top_n,
            },
        ) as event:
            check_budget(self.budget_tokens, self.ratio)
            result = engine.compress(
                texts, query, budget_tokens=self.budget_tokens, ratio=self.ratio
            )
            recalls = per_document(engine, result, texts)
            scores = one_scale([n.score for n in nodes], recalls)
            output = [
                NodeWithScore(
                    node=_compressed_copy(
                        nodes[recalls[i].index].node, recalls[i], result, texts, scores[i][1]
                    ),
                    score=scores[i][0],
                )
                for i in sorted(best_first([score for score, _ in scores], self.top_n))
            ]
            event.on_end(payload={EventPayload.NODES: output, METADATA_KEY: counts(result)})
        dispatcher.event(ReRankEndEvent(nodes=output))
        return output


def _compressed_copy(
    source: BaseNode,
    recall: DocumentRecall,
    result: RecallResult,
    texts: list[str],
    upstream: float | None,
) -> BaseNode:
    """A copy of `source` holding only the kept spans of its text, with SOURCE still naming
    the document, offsets into that document where one slice holds the text, and an id
    derived from `source`'s and the spans."""
    # The copy is deep so that nothing done to it later reaches the caller's node; the
    # embedding is dropped because it describes the whole text, not the kept spans.
    start, end = char_span(recall.spans, _text_start(source, texts[recall.index]))
    node = source.model_copy(
        deep=True,
        update={
            "id_": node_id(source.node_id, recall.spans),
            "embedding": None,
            "start_char_idx": start,
            "end_char_idx": end,
        },
    )
    node.set_content(recall.text)
    extra = {} if upstream is None else {UPSTREAM_SCORE_KEY: upstream}
    node.metadata = {
        **node.metadata,
        **extra,
        METADATA_KEY: {**recall.ilre_metadata(result), "source_node_id": source.node_id},
    }
    node.excluded_llm_metadata_keys = hidden(node.excluded_llm_metadata_keys, *extra)
    node.excluded_embed_metadata_keys = hidden(node.excluded_embed_metadata_keys, *extra)
    if NodeRelationship.SOURCE not in node.relationships:
        # A node without a SOURCE (a Document, say) is the document its text comes from.
        node.relationships = {
            **node.relationships,
            NodeRelationship.SOURCE: source.as_related_node_info(),
        }
    return node


def _text_start(source: BaseNode, text: str) -> int | None:
    """Where `source`'s `text` starts in the document its copy's SOURCE names: 0 when the
    source is that document itself (it has no SOURCE), its ``start_char_idx`` when its
    offsets span exactly its text, else None (unknown)."""
    if NodeRelationship.SOURCE not in source.relationships:
        return 0
    start, end = source.start_char_idx, source.end_char_idx
    if start is None or end is None or end - start != len(text):
        return None
    return start
