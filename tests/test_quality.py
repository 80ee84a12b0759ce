"""Needle-in-a-haystack recall of the embedded model over real prose, at a 5% budget.

The full 20-depth run at 8k and 32k tokens is `benchmarks/niah.py` (results in
benchmarks/README.md); here 8k runs at all 20 depths and 32k at 5, which keeps the suite
within its time budget on two CPU cores (a 32k encode takes about 17 s there).
"""

from __future__ import annotations

import random

import pytest

from ilre_engine.calibration.tasks import haystack, needle_task


@pytest.mark.slow
@pytest.mark.parametrize(("length", "depths", "required"), [(8000, 20, 19), (32000, 5, 5)])
def test_needle_is_recalled_at_five_percent(engine, length, depths, required):
    text = haystack(engine.tokenizer, length)
    rng = random.Random(length)
    missed = []
    for i in range(depths):
        task = needle_task(text, (i + 0.5) / depths, rng)
        result = engine.compress(task.context, task.query, ratio=0.05)
        assert result.output_tokens <= result.budget_tokens
        if not task.recalled(result.text):
            missed.append(round(task.depth, 3))
    assert depths - len(missed) >= required, f"missed at depths {missed}"
