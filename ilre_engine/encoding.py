"""`Encoder`: reading token ids up to the retrieval layer, the encode half of an engine.

One context is one stream, or past the model's window a plan of segments (`segments`) that
share the sink and end where the query begins; a `CorpusStore`'s documents are each their
own stream, end-aligned, read side by side (`streaming.stream_batch`). Every encode is
checked first against `ILReConfig.max_tokens` and the device's memory (`memory`).

An `Encoder` holds no settings of its own: it reads its engine's model, layer and config at
each call, so `ILRe.fp8` and `ILRe.compile` (which change the model in place) and a config
replaced on the engine apply to the next encode. It holds its engine weakly, so that
dropping an engine frees its model at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from . import streaming
from .architectures import ModelDims, layer_keep
from .config import ILReConfig
from .context import EncodedContext, KeptKV, TokenizedContext
from .errors import ConfigError, ContextTooLongError, ILReError
from .identity import EncodingIdentity
from .memory import MemoryEstimate, available_bytes, check_memory, estimate_encode_bytes
from .segments import Segment, plan_segments, query_position
from .streaming import StreamObserver, StreamState

CPU_BATCH_DOCUMENTS = 16
GPU_BATCH_DOCUMENTS = 64
"""Documents read side by side when `ILReConfig.batch_documents` is None
(`Encoder.batch_documents`)."""


class EncodingEngine(Protocol):
    """What an `Encoder` reads of the engine it serves, at each call (`ILRe` is one)."""

    @property
    def model(self) -> torch.nn.Module: ...
    @property
    def layer(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def config(self) -> ILReConfig: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def identity(self) -> EncodingIdentity: ...


class Encoder:
    """Encodes contexts, extends them and reads a store's documents for `engine`
    (`ILRe.encoder`)."""

    def __init__(self, engine: EncodingEngine) -> None:
        # Weakly: the engine holds its encoder, and dropping the engine frees its model at
        # once (benchmarks delete one engine to make room for the next model on a GPU).
        self._engine = weakref.ref(engine)

    @property
    def engine(self) -> EncodingEngine:
        """The engine whose model, layer and settings this encoder reads."""
        engine = self._engine()
        if engine is None:
            raise ILReError("this encoder's engine is gone: keep the ILRe it came from")
        return engine

    @property
    def config(self) -> ILReConfig:
        """The engine's settings as they are now (`ILRe.config`, which a user may replace)."""
        return self.engine.config

    @property
    def batch_documents(self) -> int:
        """How many documents `document_keys` reads side by side: `ILReConfig.batch_documents`,
        or by device when that is None. On an H200 the embedded model's encode is bound by
        host work per step at 16 rows and by the GPU from 32-64 (1.5M tokens: 1.75-2.15 s at
        16, 1.14 s at 32, 1.07 s at 64, 1.04 s at 128); on the CPU, where compute dominates,
        more rows only cost memory."""
        if self.config.batch_documents is not None:
            return self.config.batch_documents
        cuda = self.engine.device.type == "cuda"
        return GPU_BATCH_DOCUMENTS if cuda else CPU_BATCH_DOCUMENTS

    @property
    def max_positions(self) -> int | None:
        """The model's window (`ILRe.max_positions`)."""
        return getattr(self.engine.model.config, "max_position_embeddings", None)

    # -- one context ----------------------------------------------------------------------

    def encode_tokens(
        self,
        tokens: TokenizedContext,
        *,
        progress: bool | None = None,
        observer: StreamObserver | None = None,
        end_aligned: bool = False,
    ) -> EncodedContext:
        """Read `tokens` up to the retrieval layer (`ILRe.encode_tokens`).

        Args:
            progress: show a progress bar; None shows one for long contexts on a terminal.
            observer: receives the keys of the early layers it names on the way to `l_R`
                (`ilre_engine.streaming.StreamObserver`).
            end_aligned: place a context that fits the window so that it ends where the
                query begins past the window, as every segment of a longer one does: the
                documents of a `CorpusStore` are read this way, so that one query pass
                (read on its own, `scoring.QueryStream`) serves them all.
        """
        cfg = self.config
        self._check_capacity(len(tokens))
        plan = self.plan_segments(len(tokens), end_aligned=end_aligned)
        if len(plan) > 1:  # a segment's keys are read into a buffer of their own first
            self._check_capacity(len(tokens), new_tokens=plan[0].end)
        if observer is not None and len(plan) > 1:
            raise ILReError(
                "a StreamObserver reads contexts that fit the model's window in one stream; "
                f"this one ({len(tokens):,} tokens) is read in {len(plan)} segments"
            )
        state = StreamState(self.engine.layer, cfg.sink, cfg.window, observer=observer)
        keys = self._new_keys(len(tokens))
        state = self._stream_segments(tokens.input_ids, plan, keys, state, None, progress)
        return self._encoded(tokens, keys, state, plan)

    @torch.inference_mode()
    def extend(
        self,
        encoded: EncodedContext,
        added: TokenizedContext,
        *,
        progress: bool | None = None,
    ) -> EncodedContext:
        """`encoded` with the tokenised documents `added` after its own (`ILRe.extend`, which
        checks that `encoded` is this engine's and tokenises the documents)."""
        tokens = encoded.tokens.concat(added)
        self._check_capacity(len(tokens), new_tokens=len(added))
        plan = self.plan_segments(len(tokens))
        layer = self.engine.layer
        if len(plan) == 1:
            state = StreamState(layer, encoded.sink, encoded.window, kept=dict(encoded.kept))
            keys = self._new_keys(len(added))
            streaming.stream_keys(
                self.engine.model,
                added.input_ids,
                len(encoded),
                state,
                keys,
                self.config.chunk_size,
                progress,
            )
            return self._encoded(tokens, torch.cat([encoded.keys, keys], dim=1), state, plan)
        reused = self.plan_segments(len(encoded))[-1].own_start
        if reused == 0 or encoded.query_position != plan[0].end:
            return self.encode_tokens(tokens, progress=progress)
        keys = self._new_keys(len(tokens))
        keys[:, :reused] = encoded.keys[:, :reused]
        state = StreamState(layer, encoded.sink, encoded.window)
        remaining = [segment for segment in plan if segment.own_start >= reused]
        sink_parts = {layer: kept.sink_only() for layer, kept in encoded.kept.items()}
        state = self._stream_segments(
            tokens.input_ids, remaining, keys, state, sink_parts, progress
        )
        return self._encoded(tokens, keys, state, plan)

    def plan_segments(self, num_tokens: int, *, end_aligned: bool = False) -> list[Segment]:
        """The segments a context of `num_tokens` model tokens is read in: one when it fits
        the model's window with a query after it, else `ilre_engine.segments`'s plan.
        `end_aligned`: see `encode_tokens`."""
        cfg = self.config
        end = query_position(self.max_positions, cfg.max_query_tokens)
        if end is None:
            if end_aligned:
                raise ConfigError(
                    f"{self.engine.name!r} states no max_position_embeddings: its documents "
                    "cannot be aligned on a shared query position"
                )
            return [Segment(0, 0, num_tokens, 0)]
        if end < 1:
            raise ConfigError(
                f"max_query_tokens ({cfg.max_query_tokens:,}) leaves no position for a context "
                f"in the model's window of {self.max_positions:,}"
            )
        windows = ModelDims.from_config(self.engine.model.config).sliding_windows
        keeps = [layer_keep(windows[i], cfg.sink, cfg.window) for i in range(self.engine.layer)]
        sink = max((sink for sink, _ in keeps), default=0)
        warmup = max((keep for _, keep in keeps), default=0)
        plan = plan_segments(num_tokens, end, sink, warmup)
        if end_aligned and len(plan) == 1:
            return [Segment(0, 0, num_tokens, end - num_tokens)]
        return plan

    def memory_estimate(self, num_tokens: int) -> MemoryEstimate:
        """Bytes on the engine's device to encode `num_tokens` tokens and recall over them
        with a query of up to `ILReConfig.max_query_tokens` (the formula is in
        `ilre_engine.memory`). A count that is not an integer >= 0 raises `ConfigError`."""
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)):
            raise ConfigError(f"num_tokens must be an integer, got {num_tokens!r}")
        if num_tokens < 0:
            raise ConfigError(f"num_tokens must be >= 0, got {num_tokens}")
        cfg = self.config
        model = self.engine.model
        return estimate_encode_bytes(
            model.config,
            self.engine.layer,
            length=num_tokens,
            chunk_size=cfg.chunk_size,
            sink=cfg.sink,
            window=cfg.window,
            score_block=cfg.score_block,
            query_tokens=cfg.max_query_tokens,
            dtype=model.dtype,
        )

    def _check_capacity(self, total_tokens: int, new_tokens: int | None = None) -> None:
        """Refuse, before any work, a context over `max_tokens` or over the device's memory.
        An extend (`new_tokens` of `total_tokens` are new) briefly holds the new keys twice:
        in their own buffer, then in the concatenation with the earlier ones."""
        limit = self.config.max_tokens
        if limit is not None and total_tokens > limit:
            raise ContextTooLongError(
                f"the context is {total_tokens:,} model tokens, over the limit of {limit:,} "
                "(raise it with ILReConfig(max_tokens=...); the default is no limit but memory)"
            )
        estimate = self.memory_estimate(total_tokens)
        if new_tokens is not None:
            new_keys = self.memory_estimate(new_tokens).keys
            estimate = replace(estimate, keys=estimate.keys + new_keys)
        check_memory(estimate, self.engine.device, total_tokens)

    def _encoded(
        self,
        tokens: TokenizedContext,
        keys: torch.Tensor,
        state: StreamState,
        plan: Sequence[Segment],
    ) -> EncodedContext:
        last = plan[-1]
        return EncodedContext(
            tokens=tokens,
            keys=keys,
            kept={layer: kept.compact() for layer, kept in state.kept.items()},
            identity=replace(self.engine.identity, sink=state.sink, window=state.window),
            query_position=last.end_position,
        )

    def _new_keys(self, length: int) -> torch.Tensor:
        """An empty ``(kv_heads, length, head_dim)`` buffer for keys at `l_R`."""
        model = self.engine.model
        dims = ModelDims.from_config(model.config)
        return torch.empty(
            dims.kv_heads, length, dims.head_dim, dtype=model.dtype, device=self.engine.device
        )

    @torch.inference_mode()
    def _stream_segments(
        self,
        input_ids: np.ndarray,
        plan: Sequence[Segment],
        keys: torch.Tensor,
        state: StreamState,
        sink_parts: dict[int, KeptKV] | None,
        progress: bool | None,
    ) -> StreamState:
        """Read each segment of `plan` into `keys` (the whole context's buffer); return the
        last segment's state. `sink_parts`: what every segment after the first starts from;
        None takes it from the first segment, which `state` then reads."""
        bar = tqdm(
            plan,
            desc="ILRe segments",
            unit="segment",
            disable=len(plan) == 1 or (not progress if progress is not None else None),
            leave=False,
        )
        model = self.engine.model
        chunk = self.config.chunk_size
        inner = progress if len(plan) == 1 else False
        for segment in bar:
            ids = input_ids[segment.read_start : segment.end]
            offset = segment.position
            if sink_parts is not None:
                state = StreamState(
                    self.engine.layer, state.sink, state.window, kept=dict(sink_parts)
                )
            else:
                # A new stream: its sink is its own first tokens wherever they are placed, so
                # it counts its tokens from 0 and shifts their positions to where it lies.
                state.row_positions = torch.tensor([[segment.position]], device=self.engine.device)
                offset = 0
            if segment.read_start == segment.own_start:
                view = keys[:, segment.read_start : segment.end]
                streaming.stream_keys(model, ids, offset, state, view, chunk, inner)
            else:
                read = self._new_keys(len(ids))
                streaming.stream_keys(model, ids, offset, state, read, chunk, inner)
                keys[:, segment.own_start : segment.end] = read[
                    :, segment.own_start - segment.read_start :
                ]
            if sink_parts is None:
                sink_parts = {layer: kept.sink_only() for layer, kept in state.kept.items()}
        return state

    # -- a store's documents --------------------------------------------------------------

    @torch.inference_mode()
    def document_keys(
        self, documents: Sequence[TokenizedContext], *, progress: bool | None = None
    ) -> list[torch.Tensor]:
        """Each one-document context's ``(kv_heads, L, head_dim)`` keys at `l_R`, placed to
        end where the query begins: ``encode_tokens(context, end_aligned=True).keys`` for
        each, what a `CorpusStore` keeps.

        Documents that fit the window are read `batch_documents` at a time (fewer where the
        device's memory holds fewer, `_rows_side_by_side`), side by side
        (`streaming.stream_batch`), by length so that a batch's rows end close together;
        longer ones are read in segments, one at a time."""
        keys: list[torch.Tensor | None] = [None] * len(documents)
        plans = [self.plan_segments(len(tokens), end_aligned=True) for tokens in documents]
        single = sorted(
            (i for i, plan in enumerate(plans) if len(plan) == 1),
            key=lambda i: len(documents[i]),
            reverse=True,
        )
        batches, start = [], 0
        while start < len(single):
            rows = self._rows_side_by_side(len(documents[single[start]]))
            batches.append(single[start : start + rows])
            start += rows
        longer = [i for i, plan in enumerate(plans) if len(plan) > 1]
        # tqdm's disable=None hides the bar when stderr is not a terminal.
        quiet = (not progress) if progress is not None else (None if len(documents) > 8 else True)
        with tqdm(
            total=len(documents), desc="ILRe documents", unit="doc", leave=False, disable=quiet
        ) as bar:
            for batch in batches:
                rows = self._read_side_by_side([documents[i] for i in batch], plans, batch)
                for i, row in zip(batch, rows, strict=True):
                    keys[i] = row
                bar.update(len(batch))
            for i in longer:
                keys[i] = self.encode_tokens(documents[i], end_aligned=True).keys
                bar.update(1)
        return keys

    def _rows_side_by_side(self, longest: int) -> int:
        """How many documents of at most `longest` tokens one batch reads side by side:
        `batch_documents`, and when the device chose that (`ILReConfig.batch_documents` is
        None) no more than the device's free memory holds (at least one, which
        `check_memory` then refuses if it does not fit): 64 rows of a large model's long
        documents can overflow a small GPU that holds 16."""
        if self.config.batch_documents is not None:
            return self.config.batch_documents
        available = available_bytes(self.engine.device)
        if available is None:
            return self.batch_documents
        per_row = self._side_by_side_estimate(longest, 1).total
        return max(1, min(self.batch_documents, available // max(per_row, 1)))

    def _side_by_side_estimate(self, longest: int, rows: int) -> MemoryEstimate:
        """What reading `rows` documents of at most `longest` tokens side by side needs: each
        row's keys, early layers and activations (no recall follows)."""
        one = self.memory_estimate(longest)
        return MemoryEstimate(
            keys=one.keys * rows,
            early_layers=one.early_layers * rows,
            activations=one.activations * rows,
            recall=0,
        )

    def _read_side_by_side(
        self,
        documents: Sequence[TokenizedContext],
        plans: Sequence[Sequence[Segment]],
        indices: Sequence[int],
    ) -> list[torch.Tensor]:
        """`document_keys` of one batch (longest first), each in one stream."""
        longest = len(documents[0])
        self._check_capacity(longest)
        rows = len(documents)
        device = self.engine.device
        check_memory(self._side_by_side_estimate(longest, rows), device, longest * rows)
        model = self.engine.model
        dims = ModelDims.from_config(model.config)
        cfg = self.config
        # The last chunk rounded up (fewer shapes), never to positions past the model's.
        width = streaming.batch_width(longest, cfg.chunk_size)
        if self.max_positions is not None:
            width = min(width, longest + self.max_positions - plans[indices[0]][0].end_position)
        keys = torch.empty(
            rows, dims.kv_heads, width, dims.head_dim, dtype=model.dtype, device=device
        )
        streaming.stream_batch(
            model,
            [tokens.input_ids for tokens in documents],
            [plans[i][0].position for i in indices],
            StreamState(self.engine.layer, cfg.sink, cfg.window),
            keys,
            cfg.chunk_size,
        )
        return [keys[row, :, : len(tokens)] for row, tokens in enumerate(documents)]
