"""What the LangChain and LlamaIndex faces share: engines, per-document results, a corpus,
and the checks of their settings.

Nothing here imports LangChain or LlamaIndex; each face converts its own document type to
text plus metadata and back. Nothing here imports the engine at module level either (it loads
torch and transformers): engine classes are imported where they are first needed, so that
importing a face costs only the framework's own import.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ilre_engine import errors

if TYPE_CHECKING:
    from ilre_engine import EncodedContext, ILRe, RecallResult, Span
    from ilre_engine.store import CorpusStore

METADATA_KEY = "ilre"
"""Metadata entry that carries the spans, the score and the token counts of a compressed
document."""

LANGCHAIN_RECORD = "langchain_document"
"""Entry of a corpus document's metadata record that holds what the LangChain face needs besides
the metadata (the document's id); it never reaches the returned documents' metadata."""

LLAMA_INDEX_RECORD = "llama_index_node"
"""Entry of a corpus document's metadata record that holds what the LlamaIndex face needs
besides the metadata (node id, type, hash, excluded keys); never returned as metadata."""

SCORE_DOC = (
    "ILRe's score of a span is the highest recall score among its tokens: the question's "
    "attention at the retrieval layer (over a neutral question's, max-pooled, averaged over "
    "heads), normalised to sum 1 over the context, so it lies in [0, 1] but is small, and "
    "compares only within one recall."
)

ENGINE_SETTINGS = ("model", "layer", "device", "config", "budget_tokenizer")
"""The settings that name a shared engine (see `shared_engine`)."""


def budget_error(message: str) -> Exception:
    """An `ilre_engine.errors.BudgetError` (a `ValueError`) with `message`."""
    return errors.BudgetError(message)


def check_count(name: str, value: Any, *, optional: bool = True) -> None:
    """Refuse, with `BudgetError`, a `value` that is not an integer >= 1 (bools included)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise budget_error(f"{name} must be an integer >= 1, got {value!r}")


def check_ratio(value: Any) -> None:
    """Refuse, with `BudgetError`, a ratio that is not a number in (0, 1]."""
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not 0.0 < value <= 1.0
    ):
        raise budget_error(f"ratio must be in (0, 1], got {value!r}")


def check_one_budget(**budgets: Any) -> None:
    """Refuse, with `BudgetError`, anything but exactly one budget among `budgets`."""
    if sum(value is not None for value in budgets.values()) != 1:
        raise budget_error(f"give exactly one of {' or '.join(budgets)}")


def check_budget_tokenizer(tokenizer: Any) -> None:
    """Refuse a budget tokenizer the engine cannot count with: it takes a tiktoken encoding
    name or ``tiktoken.Encoding``, a Hugging Face tokenizer, or a callable from text to a
    token count or to a list of tokens (as LlamaIndex's ``Settings.tokenizer``)."""
    if tokenizer is None or isinstance(tokenizer, str) or hasattr(tokenizer, "encode"):
        return
    if not callable(tokenizer):
        raise errors.ILReError(
            f"cannot count tokens with {type(tokenizer).__name__}: give a tiktoken encoding "
            "name, a tiktoken.Encoding, a Hugging Face tokenizer or a callable"
        )


def check_engine(engine: Any) -> None:
    """Refuse, with `TypeError`, an engine that is not an `ILRe` (None passes)."""
    if engine is None:
        return
    from ilre_engine import ILRe

    if not isinstance(engine, ILRe):
        raise TypeError(f"engine must be an ilre_engine.ILRe, got {type(engine).__name__}")


@dataclass(frozen=True)
class TokenCount:
    """A callable from text to a token count, from one that returns the tokens themselves
    (LlamaIndex's ``Settings.tokenizer``) or their count."""

    tokenizer: Callable[[str], Any]

    def __call__(self, text: str) -> int:
        tokens = self.tokenizer(text)
        return tokens if isinstance(tokens, numbers.Integral) else len(tokens)

    @property
    def __name__(self) -> str:  # the engine names its counter after the callable
        return getattr(self.tokenizer, "__name__", type(self.tokenizer).__name__)


def _budget_counter(tokenizer: Any) -> Any:
    """What the engine's `TokenCounter` takes for `tokenizer`."""
    if isinstance(tokenizer, str) or hasattr(tokenizer, "encode"):
        return tokenizer
    return TokenCount(tokenizer)


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        # The engine keeps the tokenizer, so its id is not reused while the key is in use.
        return ("id", id(value))
    return value


_engines: dict[tuple[Any, ...], ILRe] = {}
_engines_lock = threading.Lock()


def shared_engine(
    model: str | None = None,
    *,
    layer: int | None = None,
    device: str | None = None,
    config: Any = None,
    budget_tokenizer: Any = "cl100k_base",
) -> ILRe:
    """One engine per distinct setting, loaded on first use and shared by every component.

    `config` is an `ILReConfig` or a mapping of its fields; `budget_tokenizer` anything
    `check_budget_tokenizer` accepts.
    """
    from ilre_engine import ILRe, ILReConfig

    if isinstance(config, Mapping):
        # Lists (kernel_sizes from JSON, say) as tuples, so that equal configs share a key.
        config = ILReConfig(
            **{name: tuple(v) if isinstance(v, list) else v for name, v in config.items()}
        )
    if budget_tokenizer is None:
        budget_tokenizer = "cl100k_base"
    key = (model, layer, device, config, _hashable(budget_tokenizer))
    with _engines_lock:
        if key not in _engines:
            _engines[key] = ILRe.from_pretrained(
                model,
                layer=layer,
                device=device,
                config=config,
                budget_tokenizer=_budget_counter(budget_tokenizer),
            )
        return _engines[key]


def require_texts(contents: Sequence[Any], what: str = "document") -> list[str]:
    """The texts, or `InvalidDocumentError` naming the first item that is not a string."""
    for index, content in enumerate(contents):
        if not isinstance(content, str):
            raise errors.InvalidDocumentError(
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
        """The `METADATA_KEY` entry: the document's ILRe score (its best span's, see
        `SCORE_DOC`), spans with character offsets in the source, token counts."""
        return {
            "score": self.score,
            "spans": [{"start": s.start, "end": s.end, "score": s.score} for s in self.spans],
            "output_tokens": self.output_tokens,
            "input_tokens": result.input_tokens,
            "total_output_tokens": result.output_tokens,
            "budget_tokens": result.budget_tokens,
            "ratio": result.ratio,
        }


def per_document(
    engine: ILRe, result: RecallResult, documents: Sequence[str] | Mapping[int, str]
) -> list[DocumentRecall]:
    """Split a recall over several documents into one entry per document that kept anything,
    in document order; a document's text is its spans joined by the gap marker."""
    from ilre_engine import GAP_MARKER

    grouped: dict[int, list[Span]] = {}
    for span in result.spans:
        grouped.setdefault(span.document, []).append(span)
    recalls = []
    for index, spans in sorted(grouped.items()):
        text = GAP_MARKER.join(documents[s.document][s.start : s.end] for s in spans)
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
    without re-encoding the earlier ones, and the whole corpus saved and loaded.

    In memory, the corpus is one encoded context. Backed by a `CorpusStore` (`in_store`, or
    `load` of a store's directory, e.g. one built by ``ilre index``) it is the store's
    documents on disk, each encoded on its own, with no limit but the disk."""

    def __init__(self, engine: ILRe, store: CorpusStore | None = None) -> None:
        self.engine = engine
        self.store = store
        self.encoded: EncodedContext | None = None
        self.metadata: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @classmethod
    def in_store(cls, directory: str | os.PathLike[str], engine: ILRe) -> EncodedCorpus:
        """A corpus kept in the corpus store at `directory`, opened, or created when there is
        none."""
        from ilre_engine.store import MANIFEST, CorpusStore

        root = Path(directory)
        if (root / MANIFEST).exists():
            return cls(engine, CorpusStore.open(root, engine))
        return cls(engine, CorpusStore.create(root, engine))

    def __len__(self) -> int:
        return len(self.store) if self.store is not None else len(self.metadata)

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
        if self.store is not None:
            self.store.add(texts, metadatas)
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
        if self.store is not None:
            return self._recall_store(query, budget_tokens, ratio)
        encoded = self.encoded
        if encoded is None:
            from ilre_engine import RecallResult

            return RecallResult("", (), 0, 0, budget_tokens or 0, True), []
        result = self.engine.recall(encoded, query, budget_tokens=budget_tokens, ratio=ratio)
        recalls = per_document(self.engine, result, encoded.documents)
        return result, [
            DocumentRecall(
                r.index, r.text, r.spans, r.score, r.output_tokens, self.metadata[r.index]
            )
            for r in recalls
        ]

    def _recall_store(
        self, query: str, budget_tokens: int | None, ratio: float | None
    ) -> tuple[RecallResult, list[DocumentRecall]]:
        store = self.store
        if not len(store):
            from ilre_engine import RecallResult

            return RecallResult("", (), 0, 0, budget_tokens or 0, True), []
        result = store.recall(query, budget_tokens=budget_tokens, ratio=ratio)
        documents = {s.document: store.document(s.document) for s in result.spans}
        texts = {index: text for index, (text, _) in documents.items()}
        return result, [
            DocumentRecall(
                r.index, r.text, r.spans, r.score, r.output_tokens, documents[r.index][1]
            )
            for r in per_document(self.engine, result, texts)
        ]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the encoded context and the metadata to `directory` in one atomic commit.

        A store-backed corpus is already on disk: saving it to its own directory does
        nothing, to another one copies the store there.

        Both go to ``encoded/`` (`EncodedContext.save`, the metadata as its ``metadata``
        payload, values JSON cannot hold written as their ``str``), so a crash at any point
        leaves the previous corpus or the new one, never a mix. Concurrent saves: the last
        one wins, each complete. A ``metadata.json`` of the former two-file layout is removed
        once the new corpus is committed."""
        root = Path(directory)
        if self.store is not None:
            if not root.exists() or not root.samefile(self.store.directory):
                shutil.copytree(self.store.directory, root, dirs_exist_ok=True)
            return root
        if self.encoded is None:
            raise errors.EncodedContextError("the corpus is empty: nothing to save")
        with self._lock:
            encoded, metadata = self.encoded, list(self.metadata)
        payload = json.loads(json.dumps(metadata, ensure_ascii=False, default=str))
        encoded.save(root / "encoded", extra={"metadata": payload})
        (root / _LEGACY_METADATA).unlink(missing_ok=True)
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike[str], engine: ILRe) -> EncodedCorpus:
        """Read a corpus saved by `save` (or in the former layout, with its metadata in a
        separate ``metadata.json``); refuses one encoded by a different model, or damaged,
        with `EncodedContextError`. The directory of a corpus store opens that store."""
        from ilre_engine.context import EncodedContext
        from ilre_engine.errors import EncodedContextError
        from ilre_engine.store import MANIFEST

        root = Path(directory)
        if (root / MANIFEST).exists():
            return cls.in_store(root, engine)
        corpus = cls(engine)
        corpus.encoded, extra = EncodedContext.load_with_extra(root / "encoded", engine)
        metadata = extra["metadata"] if "metadata" in extra else _legacy_metadata(root)
        if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
            raise EncodedContextError(f"{root}: the metadata is not a list of objects")
        if len(metadata) != len(corpus.encoded.documents):
            raise EncodedContextError(f"{root}: metadata does not match the documents")
        corpus.metadata = metadata
        return corpus


def split_record(record: Mapping[str, Any]) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """A corpus metadata record as ``(metadata, source id, LlamaIndex node record)``.

    The metadata is a deep copy without either face's record, so that nothing done to a
    result reaches the corpus; the source id is the document's id as the face that encoded it
    gave it (a LangChain ``Document.id`` or a LlamaIndex node id), or None.
    """
    metadata = copy.deepcopy(dict(record))
    langchain = metadata.pop(LANGCHAIN_RECORD, None) or {}
    llama_index = metadata.pop(LLAMA_INDEX_RECORD, None) or {}
    source_id = llama_index.get("node_id", langchain.get("id"))
    return metadata, source_id, llama_index


_LEGACY_METADATA = "metadata.json"
"""Where the former two-file layout kept a corpus's metadata, next to ``encoded/``."""


def _legacy_metadata(root: Path) -> Any:
    """The metadata of a corpus in the former layout; that layout was not saved atomically,
    so only the count of entries can be checked against the documents."""
    try:
        return json.loads((root / _LEGACY_METADATA).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as error:
        raise errors.EncodedContextError(f"{root}: metadata.json is missing or damaged") from error


def check_fields(values: Mapping[str, Any]) -> None:
    """Refuse bad values of ILRe's own fields (of either face) as ILRe's errors (`BudgetError`
    for budgets) before pydantic sees them: a pydantic validator would wrap them in a
    ValidationError. Other names pass unchecked."""
    for name, value in values.items():
        if name in ("budget_tokens", "k"):
            check_count(name, value)
        elif name == "tokens_per_k":
            check_count(name, value, optional=False)
        elif name == "ratio":
            check_ratio(value)
        elif name == "engine":
            check_engine(value)
        elif name == "budget_tokenizer":
            check_budget_tokenizer(value)
