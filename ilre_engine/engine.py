"""`ILRe`: encode a context once, recall budgeted spans for any number of queries.

This is the public façade: loading, the documented API (encode, extend, recall, compress)
and the knobs. Each method delegates its steps to the modules that own them: an encode to
`encoding.Encoder` (`ILRe.encoder`), a recall to `scoring.RecallPipeline` (`ILRe.pipeline`)
(docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch

from . import compiled, streaming
from .architectures import ModelDims, adapter_for
from .budget import TokenCounter, resolve_budget
from .config import ILReConfig
from .context import EncodedContext, RecallCache, TokenizedContext
from .encoding import Encoder
from .errors import ConfigError, EncodedContextError, UnsupportedModelError
from .fp8 import quantize_trunk, require_fp8
from .hybrid import Hybrid
from .identity import EncodingIdentity
from .inputs import as_documents
from .loading import (
    ModelSource,
    ProfileChoice,
    default_dtype,
    load_trunk,
    model_fingerprint,
    resolve_model,
)
from .memory import MemoryEstimate
from .profiles import Profile
from .results import RecallResult
from .scoring import ContextKeys, RecallPipeline
from .segments import Segment
from .streaming import StreamObserver
from .tokenization import tokenize_documents, tokenizer_identity


def _host_free_while_encoding(device: torch.device) -> bool:
    """Whether the host's cores idle while `device` encodes: on an accelerator they do; on
    the CPU the encode itself takes them all, so nothing would run alongside."""
    return device.type != "cpu"


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ILRe:
    """Context compression by in-model token recall at one intermediate layer.

    Build one with `ILRe.from_pretrained`; `encode` a context once, then `recall` with any
    number of queries, or `compress` to do both. An engine built on a model of a supported
    family hooks its attention modules (`streaming.skip_to_keys`): the hooks act only inside
    ILRe's own passes.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        layer: int,
        name: str,
        config: ILReConfig | None = None,
        budget_tokenizer: str | Any = "cl100k_base",
        profile: Profile | None = None,
        hybrid: Hybrid | None = None,
    ) -> None:
        if hybrid is not None and not isinstance(hybrid, Hybrid):
            raise ConfigError(f"hybrid must be a Hybrid or None, got {type(hybrid).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.name = name
        self.config = config or ILReConfig()
        weights = self.config.head_weights
        heads = ModelDims.from_config(model.config).query_heads
        if weights is not None and len(weights) != heads:
            raise ConfigError(
                f"head_weights has {len(weights)} weights; {name!r} has {heads} query heads"
            )
        self.counter = TokenCounter(budget_tokenizer)
        self.profile = profile
        self.hybrid = hybrid
        # A model of another family runs its whole retrieval layer's attention projections,
        # whose attention function then stores the keys.
        with contextlib.suppress(UnsupportedModelError):
            streaming.skip_to_keys(model, adapter_for(model.config))

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        layer: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        config: ILReConfig | None = None,
        budget_tokenizer: str | Any = "cl100k_base",
        cache_dir: str | os.PathLike[str] | None = None,
        compile: bool = False,
        fp8: bool | Literal["fast"] = False,
        profile: ProfileChoice = None,
        hybrid: Hybrid | Literal["profile"] | None = "profile",
        **hub_kwargs: Any,
    ) -> ILRe:
        """Load an engine.

        Args:
            model: None for the embedded Gemma 3 270M (offline), a Hugging Face id, a local
                directory, or a ``.gguf`` file.
            layer: the retrieval layer `l_R`; None takes the profile's, else the paper's
                depth (3 of 32 layers, scaled to the model).
            device: defaults to CUDA when available, else CPU.
            dtype: defaults to bfloat16 on CUDA, and on a CPU with native bfloat16 matrix
                products for the embedded model; float32 elsewhere
                (`ilre_engine.loading.default_dtype`).
            config: streaming and recall knobs; None takes the profile's kernels and
                streaming settings, else the defaults.
            budget_tokenizer: the reader LLM's tokenizer, in which budgets are counted.
            cache_dir: where converted GGUF models live (default: ``$ILRE_CACHE_DIR`` or the
                user cache directory).
            compile: fuse the decoder layers' element-wise work with `torch.compile` (see
                `compile`): worth it on a GPU for long contexts.
            fp8: run the projections of the layers below the retrieval layer as FP8 matrix
                products (see `fp8`); needs a bfloat16 model on a GPU of compute capability
                8.9 or newer. ``"fast"`` also turns on the kernels' fast accumulation
                (``fp8(fast_accumulation=True)``).
            profile: the calibration profile (`ilre_engine.profiles`): None finds the one
                that matches the model (the user's, then the shipped ones), a `Profile` or
                a path uses that one, False uses none.
            hybrid: the sentence-embedding prior mixed into the scores of `recall`,
                `compress`, `token_scores` and a `CorpusStore`'s recall
                (`ilre_engine.hybrid.Hybrid`). ``"profile"``, the default, uses the weight
                the model's calibration profile measured (`Profile.hybrid_weight`, with its
                passage size): the
                embedded model's is shipped; a model without a profile, or whose profile
                measured 0, recalls by its attention alone. None recalls by the model's
                attention alone: the paper's method. A `Hybrid` sets the prior yourself.
            hub_kwargs: passed to transformers' ``from_pretrained`` (revision, token, ...).
        """
        device = torch.device(device) if device is not None else _default_device()
        if fp8 not in (False, True, "fast"):
            raise ConfigError(f"fp8 must be False, True or 'fast', got {fp8!r}")
        if fp8:
            require_fp8(device)  # before loading anything
        source: ModelSource = resolve_model(model, cache_dir, **hub_kwargs)
        if dtype is None:
            dtype = default_dtype(device, source)
        trunk, tokenizer, layer, applied = load_trunk(
            source,
            layer,
            profile=profile,
            cache_dir=cache_dir,
            device=device,
            dtype=dtype,
            attn_implementation=streaming.ATTENTION_NAME,
        )
        if config is None and applied is not None:
            config = ILReConfig(
                chunk_size=applied.chunk_size,
                sink=applied.sink,
                window=applied.window,
                kernel_sizes=applied.kernel_sizes,
                kernel_allocation=applied.kernel_allocation,
            )
        if hybrid == "profile":
            weighted = applied is not None and applied.hybrid_weight > 0
            hybrid = (
                Hybrid(weight=applied.hybrid_weight, chunk_tokens=applied.hybrid_passage_tokens)
                if weighted
                else None
            )
        engine = cls(
            trunk,
            tokenizer,
            layer=layer,
            name=source.name,
            config=config,
            budget_tokenizer=budget_tokenizer,
            profile=applied,
            hybrid=hybrid,
        )
        if fp8:
            # Before compiling, so the layers compile once, with FP8 products.
            engine.fp8(fast_accumulation=fp8 == "fast")
        return engine.compile() if compile else engine

    def fp8(self, *, fast_accumulation: bool = False) -> ILRe:
        """Switch the projections of layers ``0..l_R-1`` to FP8 matrix products
        (`ilre_engine.fp8`: e4m3 operands under rowwise scales, weights quantised once) and
        return this engine; the retrieval layer keeps its bf16 projections, so its keys are
        bf16 products of the early layers' output.

        `fast_accumulation` turns on the FP8 kernels' fast accumulation, which promotes the
        running sums to float32 less often: faster on Hopper, with more rounding (both
        measured in benchmarks/README.md); calling again switches it on or off.

        Raises `ConfigError` on the CPU, on a GPU of compute capability below 8.9, or for a
        model that is not bfloat16. Combine with `compile` (either order; called after a
        compiled encode, the layers compile again). Keys move by FP8 rounding, so contexts
        encoded before the switch should be encoded again for like-for-like scores.
        """
        quantize_trunk(self.model, self.layer, fast_accumulation=fast_accumulation)
        return self

    def compile(self) -> ILRe:
        """Compile the model's decoder layers (`ilre_engine.compiled`) and return this engine.

        On a GPU the norms, rotary embedding, activation and residual adds then run as fused
        kernels (speed-ups measured in benchmarks/README.md). The
        first encode pays the compilation (tens of seconds); results equal the eager ones up
        to floating-point rounding.
        """
        compiled.compile_layers(self.model)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", None) or type(self.tokenizer).__name__

    @property
    def tokenizer_sha256(self) -> str:
        """The tokenizer's identity by content (`tokenization.tokenizer_identity`, cached)."""
        return tokenizer_identity(self.tokenizer)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identity of the model's weights and shape up to the retrieval layer
        (`ilre_engine.loading.model_fingerprint`). Encoded contexts carry it, and engines
        refuse others' contexts."""
        return model_fingerprint(self.model, self.layer)

    @property
    def identity(self) -> EncodingIdentity:
        """What a context or store this engine encodes records of it, and what loading one
        checks (`ilre_engine.identity`)."""
        return EncodingIdentity(
            self.name,
            self.fingerprint,
            self.layer,
            self.tokenizer_name,
            self.tokenizer_sha256,
            self.config.sink,
            self.config.window,
        )

    # -- encode ---------------------------------------------------------------------------

    @functools.cached_property
    def encoder(self) -> Encoder:
        """What reads contexts up to the retrieval layer for this engine
        (`ilre_engine.encoding`): `encode`, `extend` and a `CorpusStore`'s documents. It reads
        the engine's model and config at each call, so `fp8`, `compile` and a replaced
        `config` apply to it."""
        return Encoder(self)

    def encode(
        self, context: str | Sequence[str], *, progress: bool | None = None
    ) -> EncodedContext:
        """Read `context` (a text, or a sequence of documents) up to the retrieval layer.

        Args:
            progress: show a progress bar; None shows one for long contexts on a terminal.
        """
        tokens = tokenize_documents(self.tokenizer, as_documents(context))
        return self.encode_tokens(tokens, progress=progress)

    def encode_tokens(
        self,
        tokens: TokenizedContext,
        *,
        progress: bool | None = None,
        observer: StreamObserver | None = None,
    ) -> EncodedContext:
        """`encode` for already tokenised input.

        Args:
            observer: receives the keys of the early layers it names on the way to `l_R`
                (`ilre_engine.streaming.StreamObserver`).
        """
        return self.encoder.encode_tokens(tokens, progress=progress, observer=observer)

    def extend(
        self,
        encoded: EncodedContext,
        documents: str | Sequence[str],
        *,
        progress: bool | None = None,
    ) -> EncodedContext:
        """A new encoded context with `documents` appended after `encoded`'s documents; the
        result equals encoding all documents at once. `encoded` itself is left as it was.

        Within the model's window only the new tokens are read: the stream continues from the
        early layers' kept keys and values. Past it (`ilre_engine.segments`), the last
        segment of `encoded` is read again with the new tokens; a context that outgrows the
        window by this extend is read again whole.
        """
        self._check_compatible(encoded)
        added = tokenize_documents(
            self.tokenizer, as_documents(documents), first_document=len(encoded.documents)
        )
        return self.encoder.extend(encoded, added, progress=progress)

    @property
    def max_tokens(self) -> int | None:
        """The longest context an encode accepts (`ILReConfig.max_tokens`); None: no limit but
        the device's memory. Past the model's window a context is read in segments
        (`ilre_engine.segments`)."""
        return self.config.max_tokens

    @property
    def max_positions(self) -> int | None:
        """The model's window (``max_position_embeddings``): no distance ILRe computes is
        longer. None when the model states none."""
        return self.encoder.max_positions

    def plan_segments(self, num_tokens: int) -> list[Segment]:
        """The segments a context of `num_tokens` model tokens is read in: one when it fits
        the model's window with a query after it, else `ilre_engine.segments`'s plan."""
        return self.encoder.plan_segments(num_tokens)

    def memory_estimate(self, num_tokens: int) -> MemoryEstimate:
        """Bytes on the engine's device to encode `num_tokens` tokens and recall over them
        with a query of up to `ILReConfig.max_query_tokens` (the formula is in
        `ilre_engine.memory`). A count that is not an integer >= 0 raises `ConfigError`."""
        return self.encoder.memory_estimate(num_tokens)

    def _check_compatible(self, encoded: EncodedContext) -> None:
        if not isinstance(encoded, EncodedContext):
            raise EncodedContextError(
                f"expected an EncodedContext (from ILRe.encode), got {type(encoded).__name__}"
            )
        encoded.identity.check(self.identity, "this context")

    # -- recall ---------------------------------------------------------------------------

    @property
    def pipeline(self) -> RecallPipeline:
        """The recall pipeline (`ilre_engine.scoring`) with this engine's model and its
        current settings: what `recall` runs over one context and a `CorpusStore` over its
        documents."""
        return RecallPipeline(
            self.model, self.layer, self.tokenizer, self.config, self.counter, self.hybrid
        )

    def _keys(self, encoded: EncodedContext) -> ContextKeys:
        self._check_compatible(encoded)
        return ContextKeys(encoded, self.config.score_block)

    def query_ids(self, query: str) -> tuple[list[int], int]:
        """The model tokens of `query` phrased by `ILReConfig.query_template`, and how many of
        them are the template's lead-in (`RecallPipeline.query_ids`)."""
        return self.pipeline.query_ids(query)

    def query_states(
        self,
        encoded: EncodedContext,
        query_ids: Sequence[int],
        *,
        observer: StreamObserver | None = None,
    ) -> tuple[torch.Tensor, float]:
        """``(query_heads, Tq, head_dim)`` query states at the retrieval layer, and the
        attention scaling, for query tokens read as a continuation of the encoded stream.

        Args:
            observer: receives the query states of the early layers it names.
        """
        stream = ContextKeys(encoded, self.config.score_block).query_stream()
        return self.pipeline.query_states(stream, query_ids, observer=observer)

    def scores_for_ids(
        self, encoded: EncodedContext, query_ids: Sequence[int], lead_in: int = 0
    ) -> torch.Tensor:
        """One pass's scores for query token ids, on the device: head scores, over the prior
        when `ILReConfig.prior_query` is set, pooled, normalised to sum 1 over the context
        (`RecallPipeline.pass_scores`)."""
        return self.pipeline.pass_scores(self._keys(encoded), query_ids, lead_in)

    def token_scores(self, encoded: EncodedContext, query: str) -> np.ndarray:
        """``(L,)`` recall score of every context token for `query`: the scores `recall`
        selects by, over `ILReConfig.recall_passes` passes (`RecallPipeline.token_scores`)."""
        return self.pipeline.token_scores(self._keys(encoded), query)

    def recall(
        self,
        encoded: EncodedContext,
        query: str,
        *,
        budget_tokens: int | None = None,
        ratio: float | None = None,
    ) -> RecallResult:
        """Keep the context tokens `query` attends to most, within a budget.

        Give exactly one of `budget_tokens` (reader-LLM tokens, counted with the engine's
        budget tokenizer) or `ratio` (a fraction of the context's tokens, in (0, 1]).
        """
        return self.pipeline.recall(
            self._keys(encoded), query, budget_tokens=budget_tokens, ratio=ratio
        )

    def compress(
        self,
        context: str | Sequence[str],
        query: str,
        *,
        budget_tokens: int | None = None,
        ratio: float | None = None,
    ) -> RecallResult:
        """`encode` then `recall`.

        On an accelerator, the text's share of the recall (`RecallPipeline.prepare_text`: the
        selection's units, the budget count, the hybrid's passage embeddings) runs on the host
        while the device encodes."""
        # Refuse a bad budget or query before the work.
        resolve_budget(1, budget_tokens, ratio)
        self.query_ids(query)
        tokens = tokenize_documents(self.tokenizer, as_documents(context))
        if not _host_free_while_encoding(self.device):
            encoded = self.encode_tokens(tokens)
        else:
            cache = RecallCache()
            with ThreadPoolExecutor(1, thread_name_prefix="ilre-text") as pool:
                text_work = pool.submit(self.pipeline.prepare_text, tokens, cache)
                encoded = self.encode_tokens(tokens)
                text_work.result()
            encoded.cache = cache
        return self.recall(encoded, query, budget_tokens=budget_tokens, ratio=ratio)

    def input_tokens(self, encoded: EncodedContext) -> int:
        """The whole context in budget tokens, documents joined as `RecallResult.text` joins
        spans."""
        return ContextKeys(encoded, self.config.score_block).input_tokens(self.counter)
