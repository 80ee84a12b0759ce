"""Every retrieval task family: `ALL_FAMILIES` merges `tasks.TASK_FAMILIES` (the published
families, whose seeds and outputs back the benchmark's numbers) and
`hard_tasks.HARD_FAMILIES`.

Imports run one way: `hard_tasks` imports helpers from `tasks`, this module imports both,
and neither imports this one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .hard_tasks import HARD_FAMILIES
from .tasks import TASK_FAMILIES, RetrievalTask

ALL_FAMILIES: dict[str, Callable[[str, float, random.Random], RetrievalTask]] = {
    **TASK_FAMILIES,
    **HARD_FAMILIES,
}
"""Task generators by family name, each called as ``(haystack_text, depth, rng)``."""
