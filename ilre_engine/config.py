"""`ILReConfig`: the tuning knobs of the streaming prefill and of recall."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ILReConfig:
    """Tuning knobs of the streaming prefill and of recall.

    Attributes:
        chunk_size: context tokens per forward step. Memory per early layer is bounded by
            ``sink + window + chunk_size`` keys and values.
        sink: first tokens every global-attention early layer keeps (the attention sink).
        window: most recent tokens every global-attention early layer keeps. Sliding-window
            layers keep their own window instead. ``window >= L`` evicts nothing.
        kernel_sizes: odd max-pooling kernel sizes (see `kernel_allocation`).
        query_template: how the query is phrased after the context; ``{query}`` is replaced.
        score_block: keys per block when scoring (bounds the memory of the softmax).
        max_tokens: the longest context, in model tokens, an encode accepts (documents
            added by `ILRe.extend` count with the earlier ones); None takes the model's
            ``max_position_embeddings``, past which its positions were never trained.
        kernel_allocation: ``"average"`` pools every head with every kernel and averages;
            ``"heads"`` deals the kernel sizes round-robin over the query heads (the paper's
            allocation). One kernel makes them the same.
        prior_query: a question that asks for nothing in particular. Tokens that every
            question attends to (contractions, sentence starts) score high under it too, so
            each token's score under the real question is divided by its score under this
            one (both normalised to sum 1, plus ``1/L``); None scores without the prior.
        granularity: the units a selection is made of: ``"sentence"``, ``"clause"`` or
            ``"word"`` (`ilre_engine.selection`). A unit that does not fit what is left of the
            budget gives way to its finer units; a word is never cut.
    """

    chunk_size: int = 1024
    sink: int = 128
    window: int = 2048
    kernel_sizes: tuple[int, ...] = (1, 5, 9, 17)
    query_template: str = "\n\nQuestion: {query}"
    score_block: int = 65536
    max_tokens: int | None = None
    kernel_allocation: str = "average"
    prior_query: str | None = "What is this text about?"
    granularity: str = "sentence"

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
        if self.kernel_allocation not in ("heads", "average"):
            raise ValueError(
                f"kernel_allocation must be 'heads' or 'average', got {self.kernel_allocation!r}"
            )
        if self.granularity not in ("word", "clause", "sentence"):
            raise ValueError(
                f"granularity must be 'word', 'clause' or 'sentence', got {self.granularity!r}"
            )
        if self.prior_query is not None and not str(self.prior_query).strip():
            raise ValueError("prior_query must be a question or None")
