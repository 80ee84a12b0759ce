"""What recall returns: `Span`s of the source documents and the `RecallResult`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Span:
    """A kept piece of one source document: ``documents[document][start:end]``."""

    document: int
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, int | float]:
        return {
            "document": self.document,
            "start": self.start,
            "end": self.end,
            "score": self.score,
        }


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
