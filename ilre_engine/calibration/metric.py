"""The measure of calibration: answer recall, the share of answers all of whose words rank
within the top ``budget x L`` tokens by a recall's scores (a word enters a selection with its
best-scoring token, as the engine grows tokens to whole words)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..context import TokenizedContext
from ..errors import ILReError


def answer_recall(
    tokens: TokenizedContext,
    answer_words: Sequence[np.ndarray],
    scores: torch.Tensor,
    budgets: Sequence[float],
) -> list[float]:
    """At each budget (a share of the selectable tokens), the share of answers all of whose
    words (`answer_words_of`) rank within it by `scores` ``(L,)``."""
    # The tokens of the answers' words: a word is kept when any of its tokens is selected.
    members = np.flatnonzero(np.isin(tokens.word_ids, np.concatenate(answer_words)))
    member_words = tokens.word_ids[members]
    scores = scores.clone()
    scores[torch.from_numpy(tokens.doc_ids).to(scores.device) < 0] = -math.inf
    members_on_device = torch.from_numpy(members).to(scores.device)
    # A token's rank: how many tokens score strictly higher. A word enters the selection
    # with its best token; an answer once its last word has entered.
    ranks = (scores[None, :] > scores[members_on_device][:, None]).sum(1).cpu().numpy()
    word_rank = {w: ranks[member_words == w].min() for w in np.unique(member_words)}
    answer_ranks = np.array([max(word_rank[w] for w in words) for words in answer_words])
    selectable = int((tokens.doc_ids >= 0).sum())
    return [
        float(np.mean(answer_ranks < max(1, math.floor(budget * selectable)))) for budget in budgets
    ]


def answer_words_of(
    tokens: TokenizedContext, answer_spans: Sequence[tuple[int, int]]
) -> list[np.ndarray]:
    """Per answer, the ids of the words whose tokens overlap its characters (one document)."""
    words = []
    for start, end in answer_spans:
        inside = (
            (tokens.doc_ids == 0) & (tokens.offsets[:, 0] < end) & (tokens.offsets[:, 1] > start)
        )
        if not inside.any():
            raise ILReError(f"no token covers the answer at characters {start}..{end}")
        words.append(np.unique(tokens.word_ids[inside]))
    return words
