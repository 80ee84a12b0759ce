"""Positions past the model's window: a long context is read as window-bounded segments.

A model computes attention over the relative distances its training saw, up to its
``max_position_embeddings`` ``P``. A context of ``L`` tokens and a query of up to ``q`` tokens
fit one stream when ``L <= E = P - q``: the context at positions ``[0, L)``, the query right
after it. A longer context is cut into segments, and every distance stays below ``P``:

- segment 0 reads tokens ``[0, E)`` at positions ``[0, E)``, as a short context would; its
  first ``sink`` tokens are the attention sink of every global early layer;
- every later segment re-reads the ``warmup`` tokens before the tokens it owns, so its early
  layers see what a continuous stream would (the sink and the window before each token), and
  it is placed to end at position ``E``, right after the sink's positions ``[0, sink)``: the
  sink's keys and values of segment 0 serve it unchanged;
- every segment's keys at the retrieval layer therefore lie in ``[0, E)`` and the query, at
  ``[E, E + q)``, scores every token of every segment at a distance in ``(0, P)``. Each
  segment ends where the query begins, as if the question followed it.

Segments own fixed ranges (the first ``E`` tokens, then ``E - sink - warmup`` tokens each), so
appending to a context changes only its last segment. Contexts that fit one stream are read
exactly as before: segmentation only starts past ``E``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ContextTooLongError


@dataclass(frozen=True)
class Segment:
    """One stream of a long context.

    Attributes:
        read_start: first token the stream reads (its warm-up included).
        own_start: first token whose retrieval-layer keys this segment provides.
        end: one past its last token.
        position: the position of `read_start`.
    """

    read_start: int
    own_start: int
    end: int
    position: int

    @property
    def end_position(self) -> int:
        """The position after its last token: where a query that follows it begins."""
        return self.position + self.end - self.read_start


def query_position(max_positions: int | None, query_tokens: int) -> int | None:
    """``E``: where the query begins past a segmented context (None: the model states no
    window, and a context of any length is one stream)."""
    if max_positions is None:
        return None
    return max_positions - query_tokens


def plan_segments(length: int, end_position: int, sink: int, warmup: int) -> list[Segment]:
    """The segments of a context of `length` tokens whose query begins at `end_position`
    (``E``); one segment when it fits. `sink`: the tokens every segment shares at positions
    ``[0, sink)``; `warmup`: the tokens a segment re-reads before the ones it owns."""
    if length <= end_position:
        return [Segment(0, 0, length, 0)]
    own = end_position - sink - warmup
    if own < 1:
        raise ContextTooLongError(
            f"the context is {length:,} tokens, past the model's window, and a window of "
            f"{end_position:,} positions before the query is too short to read it in segments "
            f"(the sink ({sink}) and the warm-up ({warmup}) take it all): lower "
            "ILReConfig(max_query_tokens, sink or window)"
        )
    segments = [Segment(0, 0, end_position, 0)]
    for start in range(end_position, length, own):
        end = min(start + own, length)
        read_start = start - warmup
        segments.append(Segment(read_start, start, end, end_position - (end - read_start)))
    return segments
