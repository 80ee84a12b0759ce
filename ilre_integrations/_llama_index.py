"""What the two LlamaIndex packages (``llama_index.postprocessor.ilre`` and
``llama_index.retrievers.ilre``) share: node texts, queries, node ids, hidden metadata and
character offsets.

Imported only by those packages, which depend on ``llama-index-core``; the `ilre`
distribution itself does not.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, QueryBundle

from ilre_engine import errors
from ilre_integrations._common import METADATA_KEY, require_items, require_texts

if TYPE_CHECKING:
    from ilre_engine import RecallResult, Span

_MEDIA_FIELDS = ("image_resource", "audio_resource", "video_resource")

_IDS = uuid.UUID("1b1e0d6a-6c1f-4c55-9d8e-5e2f0c3a7b11")
"""Namespace of the ids of ILRe's nodes (uuid5 of the source's id and the kept spans)."""


def query_text(query_bundle: QueryBundle | None) -> str:
    if query_bundle is not None and not isinstance(query_bundle.query_str, str):
        raise errors.ILReError(
            f"query_bundle.query_str must be a string, got {type(query_bundle.query_str).__name__}"
        )
    if query_bundle is None or not query_bundle.query_str.strip():
        raise errors.EmptyInputError(
            "ILRe recalls what a query attends to: pass a non-empty query_str or query_bundle"
        )
    return query_bundle.query_str


def node_texts(nodes: Sequence[BaseNode]) -> list[str]:
    """Each node's text (without metadata); a node that holds only media, or anything that
    is not a node, is refused."""
    nodes = require_items(nodes, BaseNode, "nodes")
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


def hidden(keys: Sequence[str], *added: str) -> list[str]:
    """`keys` plus ILRe's entry and the `added` ones (such as the score a node arrived with,
    `UPSTREAM_SCORE_KEY`), each once: offsets, counts and scores are for programs, not for
    models."""
    return [*keys, *(key for key in dict.fromkeys((METADATA_KEY, *added)) if key not in keys)]


def counts(result: RecallResult) -> dict[str, Any]:
    """The whole recall's token counts, budget and ratio, as traces report them."""
    return {
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "budget_tokens": result.budget_tokens,
        "ratio": result.ratio,
    }


def node_id(source_id: str, spans: Sequence[Span]) -> str:
    """The id of the node holding `spans` of the source `source_id`: the same every time."""
    kept = ",".join(f"{s.start}-{s.end}" for s in spans)
    return str(uuid.uuid5(_IDS, f"{source_id}|{kept}"))


def char_span(spans: Sequence[Span], base: int | None) -> tuple[int | None, int | None]:
    """``(start_char_idx, end_char_idx)`` of a node whose text is `spans` of a text that
    starts at `base` in the source document: the slice it is when it is one span, and
    ``(None, None)`` when it is several spans joined by the gap marker (no one slice holds
    it) or `base` is unknown."""
    if len(spans) != 1 or base is None:
        return None, None
    return base + spans[0].start, base + spans[0].end
