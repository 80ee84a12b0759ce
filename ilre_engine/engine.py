"""`ILRe`: encode a context once, recall budgeted spans for any number of queries."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import compiled, persistence, streaming
from .errors import (
    BudgetError,
    ContextTooLongError,
    EncodedContextError,
)
from .inputs import as_documents, check_query
from .loading import ModelSource, ProfileChoice, load_trunk, resolve_model
from .memory import MemoryEstimate, check_memory, estimate_encode_bytes
from .profiles import Profile
from .recall import head_scores, pool_scores, select_within_budget
from .streaming import KeptKV, RetrievalLayerReached, StreamState
from .text import Span, TokenCounter, TokenizedContext, join_spans, tokenize_documents


@dataclass(frozen=True)
class ILReConfig:
    """Tuning knobs of the streaming prefill and of recall.

    Attributes:
        chunk_size: context tokens per forward step. Memory per early layer is bounded by
            ``sink + window + chunk_size`` keys and values.
        sink: first tokens every global-attention early layer keeps (the attention sink).
        window: most recent tokens every global-attention early layer keeps. Sliding-window
            layers keep their own window instead. ``window >= L`` evicts nothing.
        kernel_sizes: odd max-pooling kernel sizes, dealt round-robin over query heads.
        query_template: how the query is phrased after the context; ``{query}`` is replaced.
        score_block: keys per block when scoring (bounds the memory of the softmax).
        max_tokens: the longest context, in model tokens, an encode accepts (documents
            added by `ILRe.extend` count with the earlier ones); None takes the model's
            ``max_position_embeddings``, past which its positions were never trained.
    """

    chunk_size: int = 1024
    sink: int = 128
    window: int = 2048
    kernel_sizes: tuple[int, ...] = (1, 5, 9, 17)
    query_template: str = "\n\nQuestion: {query}"
    score_block: int = 65536
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("chunk_size", "window", "score_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")
        if self.sink < 0:
            raise ValueError(f"sink must be >= 0, got {self.sink}")
        if not self.kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd and >= 1, got {self.kernel_sizes}")
        if "{query}" not in self.query_template:
            raise ValueError("query_template must contain '{query}'")


@dataclass
class EncodedContext:
    """A context read up to the retrieval layer; reusable for any number of queries.

    Attributes:
        tokens: the model tokens and where each came from.
        keys: ``(kv_heads, L, head_dim)`` keys of every token at the retrieval layer.
        kept: per early layer, the sink and window keys and values a query attends to.
        layer: the retrieval layer.
        model_name: the model that encoded it.
    """

    tokens: TokenizedContext
    keys: torch.Tensor
    kept: dict[int, KeptKV]
    layer: int
    model_name: str
    sink: int
    window: int
    fingerprint: str
    tokenizer_name: str
    input_token_counts: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def documents(self) -> tuple[str, ...]:
        return self.tokens.documents

    def __len__(self) -> int:
        return len(self.tokens)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write to `directory` atomically (format: `ilre_engine.persistence`)."""
        return persistence.save(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], engine: ILRe) -> EncodedContext:
        """Read a saved context for `engine`; a different model, layer or tokenizer, a damaged
        file or a newer format raises `EncodedContextError`."""
        return persistence.load(directory, engine)

    def nbytes(self) -> int:
        """Bytes held on the device: keys at the retrieval layer plus the early layers' windows."""
        kept = sum(kv.nbytes() for kv in self.kept.values())
        return self.keys.numel() * self.keys.element_size() + kept


@dataclass(frozen=True)
class RecallResult:
    """What `ILRe.recall` kept.

    Attributes:
        text: the spans' slices in source order, joined by `GAP_MARKER` (`` … ``).
        spans: where each slice comes from: document index, character start and end, score.
        input_tokens: the whole context in the budget tokenizer's tokens.
        output_tokens: `text` in the same tokens; never above the budget.
        budget_tokens: the budget that applied.
        unchanged: True when the budget covered the whole context, which is returned as is.
    """

    text: str
    spans: tuple[Span, ...]
    input_tokens: int
    output_tokens: int
    budget_tokens: int
    unchanged: bool = False

    @property
    def ratio(self) -> float:
        """Output tokens over input tokens."""
        return self.output_tokens / self.input_tokens if self.input_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spans"] = [span.to_dict() for span in self.spans]
        return data


_as_documents = as_documents
_check_query = check_query


def resolve_budget(input_tokens: int, budget_tokens: int | None, ratio: float | None) -> int:
    """The budget in tokens: exactly one of `budget_tokens` (> 0) or `ratio` (in (0, 1]) of
    `input_tokens`; anything else raises `BudgetError`."""
    if (budget_tokens is None) == (ratio is None):
        raise BudgetError("give exactly one of budget_tokens or ratio")
    if budget_tokens is not None:
        if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, (int, np.integer)):
            raise BudgetError(f"budget_tokens must be an integer, got {budget_tokens!r}")
        if budget_tokens <= 0:
            raise BudgetError(f"budget_tokens must be > 0, got {budget_tokens}")
        return int(budget_tokens)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise BudgetError(f"ratio must be in (0, 1], got {ratio!r}")
    return max(1, math.floor(float(ratio) * input_tokens))


def _whole_documents(documents: Sequence[str]) -> tuple[tuple[Span, ...], str]:
    """Every non-empty document as one span, and their text as `RecallResult.text` joins it."""
    spans = tuple(Span(i, 0, len(d), 1.0) for i, d in enumerate(documents) if d)
    return spans, join_spans(documents, spans)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ILRe:
    """Context compression by in-model token recall at one intermediate layer.

    Build one with `ILRe.from_pretrained`; `encode` a context once, then `recall` with any
    number of queries, or `compress` to do both.
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
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.name = name
        self.config = config or ILReConfig()
        self.counter = TokenCounter(budget_tokenizer)
        self.profile = profile

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
        profile: ProfileChoice = None,
        **hub_kwargs: Any,
    ) -> ILRe:
        """Load an engine.

        Args:
            model: None for the embedded Gemma 3 270M (offline), a Hugging Face id, a local
                directory, or a ``.gguf`` file.
            layer: the retrieval layer `l_R`; None takes the profile's, else the paper's
                depth (3 of 32 layers, scaled to the model).
            device: defaults to CUDA when available, else CPU.
            dtype: defaults to bfloat16 on CUDA, float32 elsewhere.
            config: streaming and recall knobs; None takes the profile's kernels and
                streaming settings, else the defaults.
            budget_tokenizer: the reader LLM's tokenizer, in which budgets are counted.
            cache_dir: where converted GGUF models live (default: ``$ILRE_CACHE_DIR`` or the
                user cache directory).
            compile: fuse the decoder layers' element-wise work with `torch.compile` (see
                `compile`): worth it on a GPU for long contexts.
            profile: the calibration profile (`ilre_engine.profiles`): None finds the one
                that matches the model (the user's, then the shipped ones), a `Profile` or
                a path uses that one, False uses none.
            hub_kwargs: passed to transformers' ``from_pretrained`` (revision, token, ...).
        """
        device = torch.device(device) if device is not None else _default_device()
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        source: ModelSource = resolve_model(model, cache_dir, **hub_kwargs)
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
            )
        engine = cls(
            trunk,
            tokenizer,
            layer=layer,
            name=source.name,
            config=config,
            budget_tokenizer=budget_tokenizer,
            profile=applied,
        )
        return engine.compile() if compile else engine

    def compile(self) -> ILRe:
        """Compile the model's decoder layers (`ilre_engine.compiled`) and return this engine.

        On a GPU the norms, rotary embedding, activation and residual adds then run as fused
        kernels (1M tokens, Llama-3.1-8B shape on an H100: see benchmarks/README.md). The
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

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identity of the model's weights and shape up to the retrieval layer: the config's
        architecture fields and the bytes of the embeddings' first rows and of `l_R`'s key
        projection. Encoded contexts carry it, and engines refuse others' contexts."""
        config = self.model.config
        fields = (
            "model_type",
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
            "head_dim",
        )
        digest = hashlib.sha256(json.dumps({f: getattr(config, f, None) for f in fields}).encode())
        embeddings = self.model.get_input_embeddings().weight[:16]
        key_projection = self.model.layers[self.layer].self_attn.k_proj.weight
        for tensor in (embeddings, key_projection):
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:32]

    # -- encode ---------------------------------------------------------------------------

    def encode(
        self, context: str | Sequence[str], *, progress: bool | None = None
    ) -> EncodedContext:
        """Read `context` (a text, or a sequence of documents) up to the retrieval layer.

        Args:
            progress: show a progress bar; None shows one for long contexts on a terminal.
        """
        tokens = tokenize_documents(self.tokenizer, _as_documents(context))
        return self.encode_tokens(tokens, progress=progress)

    def encode_tokens(
        self, tokens: TokenizedContext, *, progress: bool | None = None
    ) -> EncodedContext:
        """`encode` for already tokenised input."""
        cfg = self.config
        self._check_capacity(len(tokens))
        state = StreamState(self.layer, cfg.sink, cfg.window)
        keys = self._stream(tokens.input_ids, 0, state, progress)
        return self._encoded(tokens, keys, state)

    @torch.inference_mode()
    def extend(
        self,
        encoded: EncodedContext,
        documents: str | Sequence[str],
        *,
        progress: bool | None = None,
    ) -> EncodedContext:
        """A new encoded context with `documents` appended after `encoded`'s documents.

        Only the new tokens are read: the stream continues from the early layers' kept keys
        and values, so the result equals encoding all documents at once. `encoded` itself
        is left as it was.
        """
        self._check_compatible(encoded)
        added = tokenize_documents(
            self.tokenizer, _as_documents(documents), first_document=len(encoded.documents)
        )
        self._check_capacity(len(encoded) + len(added), new_tokens=len(added))
        state = StreamState(self.layer, encoded.sink, encoded.window, kept=dict(encoded.kept))
        keys = self._stream(added.input_ids, len(encoded), state, progress)
        return self._encoded(
            encoded.tokens.concat(added), torch.cat([encoded.keys, keys], dim=1), state
        )

    @property
    def max_tokens(self) -> int | None:
        """The longest context an encode accepts (`ILReConfig.max_tokens`, else the model's
        ``max_position_embeddings``; None when neither is known)."""
        return self.config.max_tokens or getattr(self.model.config, "max_position_embeddings", None)

    def memory_estimate(self, num_tokens: int) -> MemoryEstimate:
        """Bytes on the engine's device to encode `num_tokens` tokens and recall over them
        (the formula is in `ilre_engine.memory`)."""
        cfg = self.config
        return estimate_encode_bytes(
            self.model.config,
            self.layer,
            length=num_tokens,
            chunk_size=cfg.chunk_size,
            sink=cfg.sink,
            window=cfg.window,
            score_block=cfg.score_block,
            dtype=self.model.dtype,
        )

    def _check_capacity(self, total_tokens: int, new_tokens: int | None = None) -> None:
        """Refuse, before any work, a context over `max_tokens` or over the device's memory.
        An extend (`new_tokens` of `total_tokens` are new) briefly holds the new keys twice:
        in their own buffer, then in the concatenation with the earlier ones."""
        limit = self.max_tokens
        if limit is not None and total_tokens > limit:
            raise ContextTooLongError(
                f"the context is {total_tokens:,} model tokens, over the limit of {limit:,} "
                "(raise it with ILReConfig(max_tokens=...); the default is the model's "
                "max_position_embeddings)"
            )
        estimate = self.memory_estimate(total_tokens)
        if new_tokens is not None:
            new_keys = self.memory_estimate(new_tokens).keys
            estimate = replace(estimate, keys=estimate.keys + new_keys)
        check_memory(estimate, self.device, total_tokens)

    def _encoded(
        self, tokens: TokenizedContext, keys: torch.Tensor, state: StreamState
    ) -> EncodedContext:
        return EncodedContext(
            tokens=tokens,
            keys=keys,
            kept=state.kept,
            layer=self.layer,
            model_name=self.name,
            sink=state.sink,
            window=state.window,
            fingerprint=self.fingerprint,
            tokenizer_name=self.tokenizer_name,
        )

    @torch.inference_mode()
    def _stream(
        self, input_ids: np.ndarray, offset: int, state: StreamState, progress: bool | None
    ) -> torch.Tensor:
        """Feed `input_ids` (positions from `offset`) in chunks; return their keys at `l_R`."""
        length = len(input_ids)
        config = self.model.config
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        state.keys = torch.empty(
            config.num_key_value_heads, length, head_dim, dtype=self.model.dtype, device=self.device
        )
        ids = torch.from_numpy(input_ids).to(self.device)
        chunk = self.config.chunk_size
        starts = range(0, length, chunk)
        # tqdm's disable=None hides the bar when stderr is not a terminal.
        disable = (not progress) if progress is not None else (None if len(starts) > 8 else True)
        state.key_offset, state.chunk = offset, chunk
        for start in tqdm(starts, desc="ILRe encode", unit="chunk", disable=disable, leave=False):
            state.start, state.length = offset + start, min(chunk, length - start)
            self._forward(ids[start : start + state.length], state)
        return state.keys

    def _check_compatible(self, encoded: EncodedContext) -> None:
        if encoded.fingerprint != self.fingerprint or encoded.layer != self.layer:
            raise EncodedContextError(
                f"this context was encoded by {encoded.model_name!r} at layer {encoded.layer}; "
                f"this engine is {self.name!r} at layer {self.layer}"
            )

    def _forward(self, input_ids: torch.Tensor, state: StreamState) -> None:
        positions = torch.arange(state.start, state.start + state.length, device=input_ids.device)
        try:
            self.model(
                input_ids=input_ids[None],
                position_ids=positions[None],
                use_cache=False,
                **{streaming.STATE_KWARG: state},
            )
        except RetrievalLayerReached:
            return
        raise RuntimeError("the forward finished without reaching the retrieval layer")

    # -- recall ---------------------------------------------------------------------------

    @torch.inference_mode()
    def query_states(
        self, encoded: EncodedContext, query_ids: Sequence[int]
    ) -> tuple[torch.Tensor, float]:
        """``(query_heads, Tq, head_dim)`` query states at the retrieval layer, and the
        attention scaling, for query tokens read as a continuation of the encoded stream."""
        state = StreamState(
            self.layer, encoded.sink, encoded.window, kept=encoded.kept, update=False
        )
        state.start, state.length = len(encoded), len(query_ids)
        self._forward(torch.as_tensor(query_ids, dtype=torch.long, device=self.device), state)
        return state.queries, state.scaling

    def query_ids(self, query: str) -> tuple[list[int], int]:
        """The model tokens of `query` phrased by `query_template`, and how many of them are
        the template's lead-in."""
        _check_query(query)
        prefix = self.config.query_template.split("{query}", 1)[0]
        text = self.config.query_template.format(query=query)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        lead_in = len(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])
        return ids, min(lead_in, len(ids) - 1)

    def token_scores(self, encoded: EncodedContext, query: str) -> np.ndarray:
        """``(L,)`` pooled recall score of every context token for `query`."""
        return self.scores_for_ids(encoded, *self.query_ids(query)).cpu().numpy()

    @torch.inference_mode()
    def scores_for_ids(
        self, encoded: EncodedContext, query_ids: Sequence[int], lead_in: int = 0
    ) -> torch.Tensor:
        """`token_scores` for query token ids, on the device. The first `lead_in` query tokens
        are read but do not vote: the template's lead-in ("Question:") attends to document
        starts whatever is asked, and would spend the budget on them."""
        queries, scaling = self.query_states(encoded, query_ids)
        doc_ids = torch.from_numpy(encoded.tokens.doc_ids).to(self.device)
        heads = head_scores(
            queries[:, min(lead_in, len(query_ids) - 1) :],
            encoded.keys,
            scaling,
            doc_ids,
            self.config.score_block,
        )
        return pool_scores(heads, self.config.kernel_sizes, segments=doc_ids)

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
        self._check_compatible(encoded)
        _check_query(query)
        input_tokens = self.input_tokens(encoded)
        budget = resolve_budget(input_tokens, budget_tokens, ratio)
        if input_tokens <= budget:
            spans, text = _whole_documents(encoded.documents)
            return RecallResult(text, spans, input_tokens, input_tokens, budget, True)
        scores = self.token_scores(encoded, query)
        spans, text = select_within_budget(encoded.tokens, scores, budget, self.counter.count)
        return RecallResult(text, tuple(spans), input_tokens, self.counter.count(text), budget)

    def compress(
        self,
        context: str | Sequence[str],
        query: str,
        *,
        budget_tokens: int | None = None,
        ratio: float | None = None,
    ) -> RecallResult:
        """`encode` then `recall`."""
        # Refuse a bad budget or query before the work.
        resolve_budget(1, budget_tokens, ratio)
        _check_query(query)
        return self.recall(self.encode(context), query, budget_tokens=budget_tokens, ratio=ratio)

    def input_tokens(self, encoded: EncodedContext) -> int:
        """The whole context in budget tokens, documents joined as `RecallResult.text` joins
        spans."""
        counts = encoded.input_token_counts
        if self.counter.name not in counts:
            counts[self.counter.name] = self.counter.count(_whole_documents(encoded.documents)[1])
        return counts[self.counter.name]
