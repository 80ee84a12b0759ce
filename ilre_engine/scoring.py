"""The recall pipeline: from a question to budgeted spans, over any source of keys.

One pipeline serves one encoded context and a whole corpus store alike. What differs between
the two is only where the keys are and how the question is read before them, which a
`KeySource` says; everything that turns attention into a selection is written once here:

1. the query pass: the question's query states at the retrieval layer (`query_states`), read
   as a continuation of a context's stream or on its own after a store's sink;
2. attention of every query head to every key (`KeySource.attention`, `ilre_engine.recall`);
3. the prior: each head's attention over that of a question that asks for nothing
   (`recall.remove_prior`), computed once per source and query template;
4. pooling with several kernels across heads (`recall.pool_scores`), never across documents;
5. further passes, each for the best text so far on a line before the question
   (`ILReConfig.recall_passes`), their scores averaged;
6. an engine's `Hybrid` sentence-embedding prior mixed in;
7. selection of whole units within the budget (`ilre_engine.selection`).

An `ILRe` engine hands out its pipeline (`ILRe.pipeline`); `EncodedContext` is a key source
through `ContextKeys`, a `CorpusStore` through its own view of its shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from . import streaming
from .budget import TokenCounter, resolve_budget
from .config import ILReConfig
from .context import EncodedContext, KeptKV, RecallCache, TokenizedContext
from .errors import ContextTooLongError, ILReError
from .hybrid import Hybrid
from .inputs import check_query
from .recall import head_scores, pool_scores, remove_prior
from .results import RecallResult
from .selection import prepare_units, select_within_budget, whole_documents
from .streaming import StreamObserver, StreamState
from .tokenization import cut_to_tokens

SEED_TOKENS = 16
"""Budget tokens of seed text per earlier pass in a further recall pass
(`ILReConfig.recall_passes`): about one sentence. Measured on variable tracking, a seed of
one sentence found the next link of the chain better than two or four sentences, whose
extra text draws attention of its own."""


@dataclass(frozen=True)
class QueryStream:
    """How a key source's questions are read at the retrieval layer.

    Attributes:
        position: the position of the question's first token.
        sink, window: the early layers' streaming settings.
        kept: the early layers' sink and window of the stream the question continues; None
            reads the question on its own.
        prefix: token ids read right before the question (at the positions before
            `position`) that never vote: a store's sink token.
    """

    position: int
    sink: int
    window: int
    kept: dict[int, KeptKV] | None = None
    prefix: tuple[int, ...] = ()


class KeySource(Protocol):
    """Keys at the retrieval layer that the pipeline scores, with their tokens and caches."""

    @property
    def tokens(self) -> TokenizedContext:
        """The tokens the keys belong to, in key order."""

    @property
    def cache(self) -> RecallCache:
        """What recalls keep for later ones; the source empties it when its keys change."""

    def query_stream(self) -> QueryStream:
        """How a question is read before these keys."""

    def segments(self) -> torch.Tensor:
        """``(L,)`` document of each token on the keys' device: pooling never crosses one."""

    def in_softmax(self) -> torch.Tensor | None:
        """``(L,)`` which tokens take part in recall at all; None: every one."""

    def attention(self, queries: torch.Tensor, scaling: float, *, exact: bool) -> torch.Tensor:
        """``(query_heads, L)`` float32 attention of each head to each token, averaged over
        the rows of `queries` ``(query_heads, Tq, head_dim)``; tokens that cannot be selected
        score 0. `exact`: no approximation (a prior is kept for every later question)."""

    def input_tokens(self, counter: TokenCounter) -> int:
        """The whole source in `counter`'s tokens, as `RecallResult.text` would join it."""


def whole_text_tokens(
    documents: Sequence[str], counter: TokenCounter, counts: dict[str, int]
) -> int:
    """`documents` joined as `RecallResult.text` joins spans, in `counter`'s tokens, kept in
    `counts` by the counter's name (`RecallCache.input_tokens`)."""
    if counter.name not in counts:
        counts[counter.name] = counter.count(whole_documents(documents)[1])
    return counts[counter.name]


@dataclass(frozen=True)
class ContextKeys:
    """An `EncodedContext` as a `KeySource`: its question continues its stream."""

    encoded: EncodedContext
    block: int

    @property
    def tokens(self) -> TokenizedContext:
        return self.encoded.tokens

    @property
    def cache(self) -> RecallCache:
        return self.encoded.cache

    def query_stream(self) -> QueryStream:
        encoded = self.encoded
        return QueryStream(encoded.query_position, encoded.sink, encoded.window, encoded.kept)

    def segments(self) -> torch.Tensor:
        return torch.from_numpy(self.encoded.tokens.doc_ids).to(self.encoded.keys.device)

    def in_softmax(self) -> None:
        return None

    def attention(self, queries: torch.Tensor, scaling: float, *, exact: bool) -> torch.Tensor:
        return head_scores(queries, self.encoded.keys, scaling, self.segments(), self.block)

    def input_tokens(self, counter: TokenCounter) -> int:
        return whole_text_tokens(self.encoded.documents, counter, self.encoded.cache.input_tokens)


@dataclass(frozen=True)
class RecallPipeline:
    """Recall with one model's trunk and one set of settings, over any `KeySource`."""

    model: torch.nn.Module
    layer: int
    tokenizer: Any
    config: ILReConfig
    counter: TokenCounter
    hybrid: Hybrid | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The trunk's dtype, which the hybrid's sentence model runs in too."""
        return next(self.model.parameters()).dtype

    @property
    def max_positions(self) -> int | None:
        """The model's window (``max_position_embeddings``); None when it states none."""
        return getattr(self.model.config, "max_position_embeddings", None)

    # -- the question as model tokens ---------------------------------------------------------

    def query_ids(self, query: str) -> tuple[list[int], int]:
        """The model tokens of `query` phrased by `query_template`, and how many of them are
        the template's lead-in: the tokens that lie wholly before the query's first character
        (a token that merges the lead-in's last space into the query's first word is the
        query's)."""
        check_query(query)
        if self.tokenizer is None:
            raise ILReError(
                "this engine has no tokenizer: give one, or pass query token ids to "
                "scores_for_ids with ILReConfig(prior_query=None)"
            )
        ids, lead_in = self._template_ids(query)
        if len(ids) > self.config.max_query_tokens:
            raise ContextTooLongError(
                f"the query is {len(ids):,} model tokens with its template, over the limit of "
                f"{self.config.max_query_tokens:,} (ILReConfig(max_query_tokens=...))"
            )
        return ids, lead_in

    def _template_ids(self, query: str) -> tuple[list[int], int]:
        """`query_ids` unchecked."""
        prefix = self.config.query_template.split("{query}", 1)[0]
        text = self.config.query_template.format(query=query)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        lead_in = sum(1 for _, end in encoded["offset_mapping"] if end <= len(prefix))
        return ids, min(lead_in, len(ids) - 1)

    def follow_up_ids(
        self, seed: str, query: str, query_position: int
    ) -> tuple[list[int], int] | None:
        """`query_ids` of `seed` on a line before `query`, the seed's end cut so that the
        whole query fits `max_query_tokens` and, from `query_position`, the model's window;
        None when no part of the seed fits."""
        limit = self.config.max_query_tokens
        if self.max_positions is not None:
            limit = min(limit, self.max_positions - query_position)
        while seed:
            ids, lead_in = self._template_ids(f"{seed}\n{query}")
            excess = len(ids) - limit
            if excess <= 0:
                return ids, lead_in
            # Tokens may merge across the line break, so cut and count again.
            kept = len(self.tokenizer(seed, add_special_tokens=False)["input_ids"]) - excess
            seed = cut_to_tokens(self.tokenizer, seed, kept)
        return None

    # -- one pass -----------------------------------------------------------------------------

    @torch.inference_mode()
    def query_states(
        self,
        stream: QueryStream,
        query_ids: Sequence[int],
        *,
        observer: StreamObserver | None = None,
    ) -> tuple[torch.Tensor, float]:
        """``(query_heads, Tq, head_dim)`` query states at the retrieval layer of
        `stream.prefix` and `query_ids`, and the attention scaling.

        Args:
            observer: receives the query states of the early layers it names.
        """
        ids = [*stream.prefix, *query_ids]
        start = stream.position - len(stream.prefix)
        limit = self.max_positions
        if limit is not None and start + len(ids) > limit:
            raise ContextTooLongError(
                f"the query ({len(query_ids):,} model tokens) at position {stream.position:,} "
                f"reaches past the model's window of {limit:,} positions "
                "(ILReConfig(max_query_tokens=...) sets the room kept for it)"
            )
        state = StreamState(
            self.layer,
            stream.sink,
            stream.window,
            kept={} if stream.kept is None else stream.kept,
            update=False,
            observer=observer,
        )
        state.start, state.length = start, len(ids)
        tensor = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        streaming.run_chunk(self.model, tensor[None], state)
        return state.queries, state.scaling

    @torch.inference_mode()
    def head_scores(
        self, source: KeySource, query_ids: Sequence[int], lead_in: int = 0, *, exact: bool = False
    ) -> torch.Tensor:
        """``(query_heads, L)`` attention of each head to each token of `source`, averaged
        over the query tokens after the first `lead_in`: the template's lead-in ("Question:")
        is read but does not vote, since it attends to document starts whatever is asked."""
        stream = source.query_stream()
        queries, scaling = self.query_states(stream, query_ids)
        voting = min(lead_in + len(stream.prefix), len(stream.prefix) + len(query_ids) - 1)
        return source.attention(queries[:, voting:], scaling, exact=exact)

    def prior(self, source: KeySource) -> torch.Tensor:
        """The head scores of `prior_query` over `source`, exact, computed once per source and
        template."""
        cfg = self.config
        key = f"{cfg.query_template}|{cfg.prior_query}"
        priors = source.cache.priors
        if key not in priors:
            ids, lead_in = self.query_ids(cfg.prior_query)
            priors[key] = self.head_scores(source, ids, lead_in, exact=True)
        return priors[key]

    @torch.inference_mode()
    def pass_scores(
        self, source: KeySource, query_ids: Sequence[int], lead_in: int = 0
    ) -> torch.Tensor:
        """``(L,)`` scores of one pass, on the device: head scores, over the prior when
        `ILReConfig.prior_query` is set, pooled, normalised to sum 1 over the source (so
        scores lie in [0, 1] and compare within one recall)."""
        cfg = self.config
        heads = self.head_scores(source, query_ids, lead_in)
        if cfg.prior_query is not None:
            prior = self.prior(source)
            present = source.in_softmax()
            if present is None:
                heads = remove_prior(heads, prior)
            else:
                heads[:, present] = remove_prior(heads[:, present], prior[:, present])
        pooled = pool_scores(
            heads,
            cfg.kernel_sizes,
            segments=source.segments(),
            allocation=cfg.kernel_allocation,
            head_weights=cfg.head_weights,
        )
        return pooled / pooled.sum().clamp_min(1e-30)

    # -- every pass, the hybrid, selection ----------------------------------------------------

    def token_scores(
        self, source: KeySource, query: str, first: tuple[Sequence[int], int] | None = None
    ) -> np.ndarray:
        """``(L,)`` recall score of every token of `source` for `query`: the mean of
        `ILReConfig.recall_passes` passes, the first for `query` (`first`: its `query_ids`,
        when already computed), each further one for the best text of the passes so far
        (`SEED_TOKENS` budget tokens per pass) on a line before the question, since a chain
        link or the other half of a split fact shares no word with the question but does
        with what the question finds; mixed with the `hybrid` prior when there is one."""
        cfg = self.config
        passes = [self.pass_scores(source, *(first or self.query_ids(query)))]
        position = source.query_stream().position
        for done in range(1, cfg.recall_passes):
            scores = torch.stack(passes).mean(0).cpu().numpy()
            _, seed = select_within_budget(
                source.tokens,
                scores,
                done * SEED_TOKENS,
                self.counter.count,
                cfg.granularity,
                source.cache.units,
            )
            follow_up = self.follow_up_ids(seed, query, position)
            if follow_up is None:  # the question leaves no room for a seed
                break
            passes.append(self.pass_scores(source, *follow_up))
        scores = torch.stack(passes).mean(0).cpu().numpy()
        if self.hybrid is None:
            return scores
        cache = source.cache
        prior = self.hybrid.token_prior(
            source.tokens, query, cache.units, cache.embeddings, str(self.device), self.dtype
        )
        return self.hybrid.combine(scores, prior)

    def prepare_text(self, tokens: TokenizedContext, cache: RecallCache) -> None:
        """Fill `cache` with what a recall over `tokens` needs of the text alone: the units
        of the selection, the whole text in budget tokens, and the hybrid's passage
        embeddings. None of it needs keys, so `ILRe.compress` runs it on the host while an
        accelerator encodes; a recall that finds it cached does not redo it."""
        prepare_units(tokens, self.config.granularity, cache.units)
        whole_text_tokens(tokens.documents, self.counter, cache.input_tokens)
        if self.hybrid is not None:
            self.hybrid.passage_embeddings(
                tokens, cache.units, cache.embeddings, str(self.device), self.dtype
            )

    def recall(
        self,
        source: KeySource,
        query: str,
        *,
        budget_tokens: int | None = None,
        ratio: float | None = None,
    ) -> RecallResult:
        """Keep the tokens of `source` that `query` attends to most, within a budget: exactly
        one of `budget_tokens` (reader-LLM tokens, counted with `counter`) or `ratio` (a
        fraction of the source's tokens, in (0, 1])."""
        # Tokenised once, before anything else: refuses an empty, invalid or too long query
        # even when the budget covers the whole source.
        first = self.query_ids(query)
        input_tokens = source.input_tokens(self.counter)
        budget = resolve_budget(input_tokens, budget_tokens, ratio)
        if input_tokens <= budget:
            spans, text = whole_documents(source.tokens.documents)
            return RecallResult(text, spans, input_tokens, input_tokens, budget, True)
        scores = self.token_scores(source, query, first)
        spans, text = select_within_budget(
            source.tokens,
            scores,
            budget,
            self.counter.count,
            self.config.granularity,
            source.cache.units,
        )
        return RecallResult(text, tuple(spans), input_tokens, self.counter.count(text), budget)
