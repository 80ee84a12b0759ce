"""What the LangChain and LlamaIndex faces share: engines, per-document results, a corpus.

Nothing here imports LangChain or LlamaIndex; each face converts its own document type to
text plus metadata and back.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilre_engine import EncodedContext, ILRe, ILReConfig, RecallResult, Span
from ilre_engine.errors import EncodedContextError, InvalidDocumentError
from ilre_engine.persistence import load_with_extra, tokenizer_identity
from ilre_engine.persistence import save as save_encoded
from ilre_engine.selection import join_spans

METADATA_KEY = "ilre"
"""Metadata entry that carries the spans and token counts of a compressed document."""

_engines: dict[tuple[Any, ...], ILRe] = {}
_engines_lock = threading.Lock()


def shared_engine(
    model: str | None = None,
    *,
    layer: int | None = None,
    device: str | None = None,
    config: ILReConfig | None = None,
    budget_tokenizer: str = "cl100k_base",
) -> ILRe:
    """One engine per distinct setting, loaded on first use and shared by every component."""
    key = (model, layer, device, config, budget_tokenizer)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = ILRe.from_pretrained(
                model, layer=layer, device=device, config=config, budget_tokenizer=budget_tokenizer
            )
        return _engines[key]


def require_texts(contents: Sequence[Any], what: str = "document") -> list[str]:
    """The texts, or `InvalidDocumentError` naming the first item that is not a string."""
    for index, content in enumerate(contents):
        if not isinstance(content, str):
            raise InvalidDocumentError(
                f"{what} {index} has {type(content).__name__} content; ILRe compresses text only"
            )
    return list(contents)


@dataclass(frozen=True)
class DocumentRecall:
    """What one source document kept."""

    index: int
    text: str
    spans: tuple[Span, ...]
    score: float
    output_tokens: int
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def ilre_metadata(self, result: RecallResult) -> dict[str, Any]:
        """The `METADATA_KEY` entry: spans with character offsets in the source, token counts."""
        return {
            "spans": [{"start": s.start, "end": s.end, "score": s.score} for s in self.spans],
            "output_tokens": self.output_tokens,
            "input_tokens": result.input_tokens,
            "total_output_tokens": result.output_tokens,
            "budget_tokens": result.budget_tokens,
            "ratio": result.ratio,
        }


def per_document(
    engine: ILRe, result: RecallResult, documents: Sequence[str]
) -> list[DocumentRecall]:
    """Split a recall over several documents into one entry per document that kept anything,
    in document order; a document's text is its spans joined by the gap marker."""
    grouped: dict[int, list[Span]] = {}
    for span in result.spans:
        grouped.setdefault(span.document, []).append(span)
    recalls = []
    for index, spans in sorted(grouped.items()):
        text = join_spans(documents, spans)
        recalls.append(
            DocumentRecall(
                index=index,
                text=text,
                spans=tuple(spans),
                score=max(s.score for s in spans),
                output_tokens=engine.counter.count(text),
            )
        )
    return recalls


class EncodedCorpus:
    """Documents encoded once for many queries, with their metadata; documents can be added
    without re-encoding the earlier ones, and the whole corpus saved and loaded."""

    def __init__(self, engine: ILRe) -> None:
        self.engine = engine
        self.encoded: EncodedContext | None = None
        self.metadata: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.metadata)

    def add(
        self, texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """Encode `texts` after the documents already in the corpus."""
        texts = require_texts(texts)
        metadatas = [dict(m) for m in metadatas] if metadatas is not None else [{} for _ in texts]
        if len(metadatas) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(metadatas)} metadata entries")
        if not texts:
            return
        with self._lock:
            if self.encoded is None:
                self.encoded = self.engine.encode(texts)
            else:
                self.encoded = self.engine.extend(self.encoded, texts)
            self.metadata.extend(metadatas)

    def recall(
        self, query: str, *, budget_tokens: int | None = None, ratio: float | None = None
    ) -> tuple[RecallResult, list[DocumentRecall]]:
        """Recall over the whole corpus; per document, with its metadata."""
        encoded = self.encoded
        if encoded is None:
            return RecallResult("", (), 0, 0, budget_tokens or 0, True), []
        result = self.engine.recall(encoded, query, budget_tokens=budget_tokens, ratio=ratio)
        recalls = per_document(self.engine, result, encoded.documents)
        return result, [
            DocumentRecall(
                r.index, r.text, r.spans, r.score, r.output_tokens, self.metadata[r.index]
            )
            for r in recalls
        ]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the encoded context and the metadata to `directory` in one atomic commit.

        Both go to ``encoded/`` (`ilre_engine.persistence`, the metadata as its ``metadata``
        payload, values JSON cannot hold written as their ``str``), so a crash at any point
        leaves the previous corpus or the new one, never a mix. Concurrent saves: the last
        one wins, each complete. A ``metadata.json`` of the former two-file layout is removed
        once the new corpus is committed."""
        if self.encoded is None:
            raise EncodedContextError("the corpus is empty: nothing to save")
        root = Path(directory)
        with self._lock:
            encoded, metadata = self.encoded, list(self.metadata)
        payload = json.loads(json.dumps(metadata, ensure_ascii=False, default=str))
        save_encoded(
            encoded,
            root / "encoded",
            extra={"metadata": payload},
            tokenizer_sha256=tokenizer_identity(self.engine.tokenizer),
        )
        (root / _LEGACY_METADATA).unlink(missing_ok=True)
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike[str], engine: ILRe) -> EncodedCorpus:
        """Read a corpus saved by `save` (or in the former layout, with its metadata in a
        separate ``metadata.json``); refuses one encoded by a different model, or damaged,
        with `EncodedContextError`."""
        root = Path(directory)
        corpus = cls(engine)
        corpus.encoded, extra = load_with_extra(root / "encoded", engine)
        metadata = extra["metadata"] if "metadata" in extra else _legacy_metadata(root)
        if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
            raise EncodedContextError(f"{root}: the metadata is not a list of objects")
        if len(metadata) != len(corpus.encoded.documents):
            raise EncodedContextError(f"{root}: metadata does not match the documents")
        corpus.metadata = metadata
        return corpus


_LEGACY_METADATA = "metadata.json"
"""Where the former two-file layout kept a corpus's metadata, next to ``encoded/``."""


def _legacy_metadata(root: Path) -> Any:
    """The metadata of a corpus in the former layout; that layout was not saved atomically,
    so only the count of entries can be checked against the documents."""
    try:
        return json.loads((root / _LEGACY_METADATA).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as error:
        raise EncodedContextError(f"{root}: metadata.json is missing or damaged") from error
