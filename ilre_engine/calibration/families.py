"""Every retrieval task family: `ALL_FAMILIES` merges `tasks.TASK_FAMILIES` (the published
families, whose seeds and outputs back the benchmark's numbers),
`hard_tasks.HARD_FAMILIES` and `spread_tasks.SPREAD_FAMILIES` (answers spread over the
text: list fragments, the two ends of a paragraph, a two-hop link among look-alikes).

Imports run one way: `hard_tasks` imports helpers from `tasks`, `spread_tasks` from both,
this module imports all three, and none of them imports this one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .hard_tasks import HARD_FAMILIES
from .spread_tasks import SPREAD_FAMILIES
from .tasks import TASK_FAMILIES, RetrievalTask

ALL_FAMILIES: dict[str, Callable[[str, float, random.Random], RetrievalTask]] = {
    **TASK_FAMILIES,
    **HARD_FAMILIES,
    **SPREAD_FAMILIES,
}
"""Task generators by family name, each called as ``(haystack_text, depth, rng)``."""
