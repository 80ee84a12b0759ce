"""What the LangChain and LlamaIndex faces share: engines, per-document results and their
scores, a corpus, the description of each setting, and the checks of the settings (the
engine's own, `ilre_engine.budget`).

The faces themselves live in the partner packages (``langchain_ilre``,
``llama_index.postprocessor.ilre``, ``llama_index.retrievers.ilre``), which depend on this
distribution. Nothing here imports LangChain or LlamaIndex; each face converts its own
document type to text plus metadata and back. Nothing here imports the engine at module
level either (it loads torch and transformers): engine classes are imported where they are
first needed, so that importing a face costs only the framework's own import.
"""

from __future__ import annotations

import copy
import inspect
import json
import numbers
import os
import textwrap
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ilre_engine import errors
from ilre_engine.budget import TokenCounter, check_count, check_ratio

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
    "ILRe's score of a document is its share of the recall: its best span's recall score over "
    "the sum of the best span scores of every document the recall kept. It lies in (0, 1], the "
    "documents of one call sum to 1, and it does not shrink as the context grows, so the "
    "scores of one list compare and sort. Each span keeps its own recall score (the question's "
    "attention at the retrieval layer, over a neutral question's, max-pooled, averaged over "
    "heads, normalised to sum 1 over the whole context), which compares only within one recall."
)

UPSTREAM_SCORE_KEY = "retrieval_score"
"""Metadata entry that keeps the score a document arrived with where ILRe's score replaced it
(the name LlamaIndex rerankers' ``keep_retrieval_score`` writes)."""

ENGINE_SETTINGS = ("model", "layer", "device", "config", "budget_tokenizer")
"""The settings that name a shared engine (see `shared_engine`)."""

FIELDS = {
    "engine": "A loaded ilre_engine.ILRe; when given, the engine settings (model, layer, "
    "device, config, budget_tokenizer) must be left unset.",
    "model": "The engine's model when no engine is given: None for the embedded Gemma 3 270M, "
    "a Hugging Face id, a local directory or a .gguf file.",
    "layer": "The retrieval layer; None takes the model's known or default one.",
    "device": "The engine's device, e.g. 'cuda'; None takes CUDA when available.",
    "config": "The engine's tuning knobs: an ilre_engine.ILReConfig or a mapping of its fields.",
    "budget_tokenizer": "The reader LLM's tokenizer, in which budgets are counted: a tiktoken "
    "encoding name, a tiktoken.Encoding, a Hugging Face tokenizer, or a callable from text to "
    "a token count or to a list of tokens (such as LlamaIndex's Settings.tokenizer); None "
    "counts in cl100k_base.",
    "budget_tokens": "The output budget in reader tokens, an integer >= 1, shared by all the "
    "documents of a call. Give exactly one budget.",
    "ratio": "The output budget as a fraction of all the input tokens of a call, in (0, 1]. "
    "Give exactly one budget.",
    "top_n": "At most this many documents come back: those of the highest score, chosen after "
    "the budget, in input order. None returns every document that keeps something.",
    "similarity_top_k": "At most this many nodes come back: the most relevant, chosen after "
    "the budget. None returns every document that keeps something.",
    "k": "The number of results, as in other retrievers: a budget of k * tokens_per_k reader "
    "tokens, and at most k documents (the most relevant, chosen after the budget). Give "
    "exactly one budget.",
    "tokens_per_k": "Budget tokens per result asked for by k.",
    "store": "A directory: keep the corpus in an ilre_engine.CorpusStore there (opened, or "
    "created), each document encoded on its own, with no limit but the disk. None keeps the "
    "corpus in memory as one encoded context.",
}
"""The one description of each setting of the faces: pydantic fields take it as their
``description``, docstrings as their ``Args`` section (`documented`)."""


def documented(*names: str) -> Callable[[Any], Any]:
    """Append an ``Args:`` section of `FIELDS` for `names` to the decorated class's or
    function's docstring."""

    def decorate(target: Any) -> Any:
        doc = inspect.cleandoc(target.__doc__ or "")
        lines = [doc, "", "Args:"]
        for name in names:
            lines += textwrap.wrap(
                f"{name}: {FIELDS[name]}", 88, initial_indent="    ", subsequent_indent="        "
            )
        target.__doc__ = "\n".join(lines) + "\n"
        return target

    return decorate


def check_budget_tokenizer(tokenizer: Any) -> None:
    """Refuse, with `ILReError`, a budget tokenizer the engine cannot count with: the engine's
    own rule (`ilre_engine.TokenCounter`, which is built without loading anything). None is
    the default."""
    if tokenizer is not None:
        TokenCounter(tokenizer)


def check_engine(engine: Any) -> None:
    """Refuse, with `TypeError`, an engine that is not an `ILRe` (None passes)."""
    if engine is None:
        return
    from ilre_engine import ILRe

    if not isinstance(engine, ILRe):
        raise TypeError(f"engine must be an ilre_engine.ILRe, got {type(engine).__name__}")


def given(**settings: Any) -> dict[str, Any]:
    """The settings that are not None (the others keep `shared_engine`'s defaults)."""
    return {name: value for name, value in settings.items() if value is not None}


def check_engine_or_settings(engine: Any, settings: Mapping[str, Any]) -> None:
    """The one rule of every face: an engine or engine settings, not both (an engine carries
    its own model, layer, config and budget tokenizer, so settings beside it would be
    ignored). `settings` are those given, not None (`given`)."""
    if engine is not None and settings:
        raise errors.ILReError(
            f"give an engine or engine settings ({', '.join(ENGINE_SETTINGS)}), not both "
            f"(got engine and {sorted(settings)})"
        )


def engine_for(engine: ILRe | None, settings: Mapping[str, Any]) -> ILRe:
    """`engine`, else the shared engine of the `settings` that are not None (loaded on first
    call); both at once are refused (`check_engine_or_settings`)."""
    settings = given(**settings)
    check_engine_or_settings(engine, settings)
    if engine is not None:
        check_engine(engine)
        return engine
    return shared_engine(**settings)


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
    `ilre_engine.TokenCounter` takes.
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
                model, layer=layer, device=device, config=config, budget_tokenizer=budget_tokenizer
            )
        return _engines[key]


def one_scale(arrived: Sequence[Any], recalls: Sequence[DocumentRecall]) -> list[tuple[Any, Any]]:
    """The score each of `recalls` carries where its framework puts a score, and the score it
    arrived with to keep beside it under `UPSTREAM_SCORE_KEY` (None: nothing to keep).

    `arrived` holds the score each input document arrived with (None where none), indexed
    as `DocumentRecall.index`. One scale for the whole list: when every input arrived with a
    score (a number), each document keeps its own (ILRe compresses after a retriever or
    reranker and does not re-rank); otherwise each carries ILRe's, and keeps what it arrived
    with, if anything, beside it.
    """
    if all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in arrived):
        return [(arrived[r.index], None) for r in recalls]
    return [(r.score, arrived[r.index]) for r in recalls]


def best_first(scores: Sequence[float], limit: int | None = None) -> list[int]:
    """The positions of the `limit` highest `scores` (all when None), highest first; equal
    scores keep their order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return order if limit is None else order[:limit]


def require_items(items: Any, kind: type | tuple[type, ...], what: str) -> list[Any]:
    """`items` as a list, or `InvalidDocumentError` naming the argument `what`: items that
    are not a list or tuple (a lone string, None), or an item that is not a `kind`."""
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
        raise errors.InvalidDocumentError(
            f"{what} must be a list of {names}, got {type(items).__name__}"
        )
    for index, item in enumerate(items):
        if not isinstance(item, kind):
            raise errors.InvalidDocumentError(
                f"{what}[{index}] is {type(item).__name__}, not a {names}"
            )
    return list(items)


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
    """What one source document kept.

    `score` is ILRe's score of the document, its share of the recall (`SCORE_DOC`)."""

    index: int
    text: str
    spans: tuple[Span, ...]
    score: float
    output_tokens: int
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def ilre_metadata(self, result: RecallResult) -> dict[str, Any]:
        """The `METADATA_KEY` entry: the document's ILRe score (`SCORE_DOC`), its spans with
        character offsets in the text it was read from and their recall scores, and the
        token counts."""
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
    in document order; a document's text is its spans joined by the gap marker, its score
    its share of the recall (`SCORE_DOC`)."""
    from ilre_engine import GAP_MARKER

    grouped: dict[int, list[Span]] = {}
    for span in result.spans:
        grouped.setdefault(span.document, []).append(span)
    best = {index: max(s.score for s in spans) for index, spans in grouped.items()}
    total = sum(best.values())
    recalls = []
    for index, spans in sorted(grouped.items()):
        text = GAP_MARKER.join(documents[s.document][s.start : s.end] for s in spans)
        recalls.append(
            DocumentRecall(
                index=index,
                text=text,
                spans=tuple(spans),
                # Recall scores are positive; a zero total would be a recall of nothing.
                score=best[index] / total if total > 0 else 1 / len(grouped),
                output_tokens=engine.counter.count(text),
            )
        )
    return recalls


class EncodedCorpus(ABC):
    """Documents encoded once for many queries, with their metadata: what a retriever recalls
    from. Documents can be added without re-encoding the earlier ones, and the whole corpus
    saved and loaded (`load` opens either kind from its directory).

    Two kinds: a `ContextCorpus` is one encoded context in memory; a `StoreCorpus` is a
    `CorpusStore`'s documents on disk, each encoded on its own, with no limit but the disk."""

    engine: ILRe

    @staticmethod
    def load(directory: str | os.PathLike[str], engine: ILRe) -> EncodedCorpus:
        """The corpus saved in `directory`: a corpus store's directory (``from_documents(
        store=...)``, ``ilre index``) opens that store, any other reads a `ContextCorpus`
        saved by `save`."""
        from ilre_engine.store import MANIFEST

        root = Path(directory)
        if (root / MANIFEST).exists():
            return StoreCorpus.open_or_create(root, engine)
        return ContextCorpus.read(root, engine)

    @abstractmethod
    def __len__(self) -> int:
        """How many documents the corpus holds."""

    def add(
        self, texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """Encode `texts` after the documents already in the corpus."""
        texts = require_texts(texts)
        metadatas = [dict(m) for m in metadatas] if metadatas is not None else [{} for _ in texts]
        if len(metadatas) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(metadatas)} metadata entries")
        if texts:
            self._append(texts, metadatas)

    @abstractmethod
    def _append(self, texts: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Encode checked, non-empty `texts` with their metadata after the corpus."""

    @abstractmethod
    def recall(
        self, query: str, *, budget_tokens: int | None = None, ratio: float | None = None
    ) -> tuple[RecallResult, list[DocumentRecall]]:
        """Recall over the whole corpus; per document, with its metadata."""

    @abstractmethod
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the corpus to `directory`, for `load`."""


def _nothing_recalled(budget_tokens: int | None) -> tuple[RecallResult, list[DocumentRecall]]:
    """The recall of an empty corpus."""
    from ilre_engine import RecallResult

    return RecallResult("", (), 0, 0, budget_tokens or 0, True), []


class ContextCorpus(EncodedCorpus):
    """A corpus in memory: its documents are one encoded context, which added documents
    extend (`ILRe.extend`), and its metadata a list beside it."""

    def __init__(self, engine: ILRe) -> None:
        self.engine = engine
        self.encoded: EncodedContext | None = None
        self.metadata: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.metadata)

    def _append(self, texts: list[str], metadatas: list[dict[str, Any]]) -> None:
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
            return _nothing_recalled(budget_tokens)
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

        Both go to ``encoded/`` (`EncodedContext.save`, the metadata as its ``metadata``
        payload, values JSON cannot hold written as their ``str``), so a crash at any point
        leaves the previous corpus or the new one, never a mix. Concurrent saves: the last
        one wins, each complete. A ``metadata.json`` of the former two-file layout is removed
        once the new corpus is committed."""
        if self.encoded is None:
            raise errors.EncodedContextError("the corpus is empty: nothing to save")
        with self._lock:
            encoded, metadata = self.encoded, list(self.metadata)
        root = Path(directory)
        payload = json.loads(json.dumps(metadata, ensure_ascii=False, default=str))
        encoded.save(root / "encoded", extra={"metadata": payload})
        (root / _LEGACY_METADATA).unlink(missing_ok=True)
        return root

    @classmethod
    def read(cls, directory: str | os.PathLike[str], engine: ILRe) -> ContextCorpus:
        """Read a corpus saved by `save` (or in the former layout, with its metadata in a
        separate ``metadata.json``); refuses one encoded by a different model, or damaged,
        with `EncodedContextError`."""
        from ilre_engine.context import EncodedContext

        root = Path(directory)
        corpus = cls(engine)
        corpus.encoded, extra = EncodedContext.load_with_extra(root / "encoded", engine)
        metadata = extra["metadata"] if "metadata" in extra else _legacy_metadata(root)
        if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
            raise errors.EncodedContextError(f"{root}: the metadata is not a list of objects")
        if len(metadata) != len(corpus.encoded.documents):
            raise errors.EncodedContextError(f"{root}: metadata does not match the documents")
        corpus.metadata = metadata
        return corpus


class StoreCorpus(EncodedCorpus):
    """A corpus kept in a `CorpusStore`: its documents on disk, each encoded on its own, their
    metadata in the store's shards."""

    def __init__(self, store: CorpusStore) -> None:
        self.store = store
        self.engine = store.engine

    @classmethod
    def open_or_create(cls, directory: str | os.PathLike[str], engine: ILRe) -> StoreCorpus:
        """The corpus store at `directory`, opened, or created when there is none."""
        from ilre_engine.store import MANIFEST, CorpusStore

        root = Path(directory)
        if (root / MANIFEST).exists():
            return cls(CorpusStore.open(root, engine))
        return cls(CorpusStore.create(root, engine))

    def __len__(self) -> int:
        return len(self.store)

    def _append(self, texts: list[str], metadatas: list[dict[str, Any]]) -> None:
        self.store.add(texts, metadatas)

    def recall(
        self, query: str, *, budget_tokens: int | None = None, ratio: float | None = None
    ) -> tuple[RecallResult, list[DocumentRecall]]:
        """Recall over the store's live documents; per document, with its metadata."""
        store = self.store
        if not len(store):
            return _nothing_recalled(budget_tokens)
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
        """The store is already on disk: saving it to its own directory does nothing, to
        another one copies the store there (its own files only, no symlink followed)."""
        root = Path(directory)
        self.store.copy_to(root)
        return root


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
    """Refuse bad values of ILRe's own fields (of every face) with the engine's own checks
    (`BudgetError` for budgets and counts, `ilre_engine.budget`), before pydantic sees them:
    a pydantic validator would wrap them in a ValidationError. Other names pass unchecked."""
    for name, value in values.items():
        if name in ("budget_tokens", "k", "top_n", "similarity_top_k"):
            check_count(name, value)
        elif name == "tokens_per_k":
            check_count(name, value, optional=False)
        elif name == "ratio":
            check_ratio(value)
        elif name == "engine":
            check_engine(value)
        elif name == "budget_tokenizer":
            check_budget_tokenizer(value)
