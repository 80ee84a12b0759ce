"""Choosing the sentence-embedding prior per model and layer: `calibrate_hybrid`.

The prior (`ilre_engine.hybrid`) finds answers that share meaning but no words with the
question, which a small model's early layer relates poorly; it also pulls the selection away
from the chains and exact matches that the model's own attention follows. How much of it
helps depends on the model and the layer, so it is measured like the layer: an engine's full
recall scores (every pass, its layer and kernels) are mixed with the prior at each candidate
weight and passage size, over tasks of both kinds, and scored by the same answer recall as
`calibrate`. The chosen weight is the smallest of the best: 0 where the model alone recalls
as well.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..engine import ILRe
from ..hybrid import Hybrid
from ..scoring import ContextKeys
from ..tokenization import tokenize_documents
from .families import ALL_FAMILIES
from .metric import answer_recall, answer_words_of
from .tasks import haystack

HYBRID_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
"""Candidate weights of the prior."""

HYBRID_PASSAGE_TOKENS = (32, 64, 128)
"""Candidate passage sizes of the prior (`Hybrid.chunk_tokens`), in model tokens: chunk
retrieval keeps most with chunks of 32-64 tokens at short contexts, more at long ones."""

HYBRID_FAMILIES = (
    "niah_single",
    "niah_multivalue",
    "niah_paraphrase",
    "variable_tracking",
    "paraphrase_fact",
    "essay_qa",
    "prose_qa",
    "two_hop_lookalike",
)
"""Tasks where the prior helps (paraphrased questions over prose) and where it can hurt
(needles among look-alikes, chains the model follows through the text)."""


def calibrate_hybrid(
    engine: ILRe,
    *,
    lengths: Sequence[int] = (4000, 8000),
    samples: int = 2,
    budgets: Sequence[float] = (0.01, 0.02, 0.05),
    seed: int = 0,
    weights: Sequence[float] = HYBRID_WEIGHTS,
    passage_tokens: Sequence[int] = HYBRID_PASSAGE_TOKENS,
    families: Sequence[str] = HYBRID_FAMILIES,
    progress: bool = True,
) -> HybridChoice:
    """The prior's weight and passage size that recall best with `engine` (its model,
    layer, kernels and passes, without a hybrid of its own), averaged over `samples` tasks
    per family and length (depths spread evenly, seeded by `seed`) and over `budgets` (shares
    of the context's tokens), as `layer_search.calibrate` measures layers."""
    plain = dataclasses.replace(engine.pipeline, hybrid=None)
    rng = random.Random(seed)
    jobs = [
        (length, family, (i + 0.5) / samples)
        for length in lengths
        for family in families
        for i in range(samples)
    ]
    texts = {length: haystack(engine.tokenizer, length) for length in lengths}
    recall: dict[tuple[float, int], list[float]] = {
        (weight, size): [] for weight in weights for size in passage_tokens
    }
    for length, family, depth in tqdm(jobs, desc="ILRe hybrid weight", disable=not progress):
        task = ALL_FAMILIES[family](texts[length], depth, rng)
        encoded = engine.encode(task.context, progress=False)
        scores = plain.token_scores(ContextKeys(encoded, engine.config.score_block), task.query)
        tokens = tokenize_documents(engine.tokenizer, [task.context])
        words = answer_words_of(tokens, task.answer_spans)
        cache = encoded.cache
        for size in passage_tokens:
            prior = Hybrid(weight=1.0, chunk_tokens=size).token_prior(
                encoded.tokens,
                task.query,
                cache.units,
                cache.embeddings,
                str(plain.device),
                plain.dtype,
            )
            for weight in weights:
                mixed = torch.from_numpy((1 - weight) * scores + weight * prior)
                recall[weight, size].extend(answer_recall(tokens, words, mixed, budgets))
    means = {key: float(np.mean(values)) for key, values in recall.items()}
    best = max(means.values())
    # The smallest weight of the best, then the largest passages (fewer to embed).
    weight, size = min(
        (key for key, value in means.items() if value >= best), key=lambda k: (k[0], -k[1])
    )
    return HybridChoice(weight, size, {f"{w:g}@{s}": value for (w, s), value in means.items()})


@dataclass(frozen=True)
class HybridChoice:
    """What `calibrate_hybrid` chose, and the answer recall of every candidate (keyed
    ``"weight@passage_tokens"``)."""

    weight: float
    passage_tokens: int
    recall: dict[str, float]
