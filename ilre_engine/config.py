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
