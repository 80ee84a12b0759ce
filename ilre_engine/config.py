"""`ILReConfig`: the tuning knobs of the streaming prefill and of recall."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError


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
            added by `ILRe.extend` count with the earlier ones); None: no limit but the
            device's memory (checked before any work). A context past the model's
            ``max_position_embeddings`` is read in segments whose positions stay inside it
            (`ilre_engine.segments`).
        kernel_allocation: ``"average"`` pools every head with every kernel and averages;
            ``"heads"`` deals the kernel sizes round-robin over the query heads (the paper's
            allocation). One kernel makes them the same.
        prior_query: a question that asks for nothing in particular. Tokens that every
            question attends to (contractions, sentence starts) score high under it too, so
            each token's score under the real question is divided by its score under this
            one (both normalised to sum 1, plus ``1/L``); None scores without the prior.
        max_query_tokens: the longest query, in model tokens with its template, a recall
            accepts (the query pass costs about quadratically in it). A context read in
            segments keeps this many positions of the model's window for the query.
        granularity: the units a selection is made of: ``"passage"`` (a paragraph's
            sentences packed up to 128 model tokens, ranked as chunk retrieval ranks chunks),
            ``"sentence"`` (or a list run), ``"clause"`` or ``"word"``
            (`ilre_engine.selection`). A unit that does not fit what is left of the budget
            gives way to its finer units; a word, a name or a number is never cut.
        recall_passes: how many times a recall scores the context. 1 scores it for the
            question alone. Each further pass asks again with the text the passes so far
            attend to most put before the question (`ilre_engine.scoring.SEED_TOKENS` budget
            tokens per earlier pass, cut to fit ``max_query_tokens``), so a statement that
            names what the question's answer names is found (a chain of assignments, a fact
            split over sentences); the selection ranks by the mean of every pass's scores.
            Each pass costs one more query pass over the context's keys. The default, 2,
            was chosen by measurement (docs/lab-notes.md, "Two recall passes").
        head_weights: one weight per query head of the retrieval layer: each head's pooled
            scores count by its weight in the average over heads (normalised to sum 1);
            None counts every head alike.
        batch_documents: how many documents of a `CorpusStore` are read side by side, each
            its own stream (`Encoder.document_keys`). Each forward step then reads a chunk of
            each, so a corpus of short documents is not bound by the host's per-step work.
            None: `Encoder.batch_documents` chooses by device, 64 on CUDA and 16 elsewhere
            (docs/lab-notes.md, "Documents side by side on the GPU: 64"), and a batch
            takes fewer where the device's free memory holds fewer; a count given here is
            read as given.
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

    max_query_tokens: int = 256
    recall_passes: int = 2
    batch_documents: int | None = None
    head_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in (
            "chunk_size",
            "window",
            "score_block",
            "max_query_tokens",
            "recall_passes",
        ):
            require_int(name, getattr(self, name), low=1)
        require_int("sink", self.sink, low=0)
        for name in ("max_tokens", "batch_documents"):
            if getattr(self, name) is not None:
                require_int(name, getattr(self, name), low=1)
        sizes = _numbers(self, "kernel_sizes", int)
        if sizes is None or any(k < 1 or k % 2 == 0 for k in sizes):
            raise ConfigError(
                f"kernel_sizes must be a tuple of odd ints >= 1, got {self.kernel_sizes!r}"
            )
        _check_template("query_template", self.query_template)
        if self.kernel_allocation not in ("heads", "average"):
            raise ConfigError(
                f"kernel_allocation must be 'heads' or 'average', got {self.kernel_allocation!r}"
            )
        if self.granularity not in ("word", "clause", "sentence", "passage"):
            raise ConfigError(
                "granularity must be 'word', 'clause', 'sentence' or 'passage', "
                f"got {self.granularity!r}"
            )
        if self.head_weights is not None:
            weights = _numbers(self, "head_weights", (int, float))
            if (
                weights is None
                or not all(math.isfinite(w) and w >= 0 for w in weights)
                or not sum(weights) > 0
            ):
                raise ConfigError(
                    f"head_weights must be a tuple of finite weights >= 0, not all 0, or None, "
                    f"got {self.head_weights!r}"
                )
        if self.prior_query is not None and (
            not isinstance(self.prior_query, str) or not self.prior_query.strip()
        ):
            raise ConfigError(f"prior_query must be a question or None, got {self.prior_query!r}")


def _numbers(config: ILReConfig, name: str, kinds: type | tuple[type, ...]) -> tuple | None:
    """`config`'s field `name` as a tuple (a list, from JSON or a mapping of settings, is
    made one in place), or None when it is not a non-empty tuple of `kinds` (bools never
    count as numbers)."""
    value = getattr(config, name)
    if isinstance(value, list):
        value = tuple(value)
        object.__setattr__(config, name, value)
    if (
        not isinstance(value, tuple)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, kinds) for v in value)
    ):
        return None
    return value


def require_int(name: str, value: object, *, low: int) -> None:
    """An int (not a bool, not a float such as nan) of at least `low`, or `ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


def _check_template(name: str, template: object) -> None:
    """A string with ``{query}`` and no other replacement field, or `ConfigError`."""
    if not isinstance(template, str) or "{query}" not in template:
        raise ConfigError(f"{name} must be a string containing '{{query}}', got {template!r}")
    try:
        template.format(query="")
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(
            f"{name} may hold no replacement field but {{query}} (double other braces): "
            f"{template!r} ({error!r})"
        ) from error
