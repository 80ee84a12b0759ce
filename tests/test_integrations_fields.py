"""The budget checks every face runs before pydantic sees a value are the engine's own
(`ilre_engine.budget`): `BudgetError` for every value that is not a valid budget, nothing for
every valid one, and the engine's `resolve_budget` agrees. No model is loaded."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from ilre_engine.budget import TokenCounter, check_count, check_ratio, resolve_budget
from ilre_engine.errors import BudgetError
from ilre_integrations import _common

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


def raises_budget_error(check, *args) -> bool:
    try:
        check(*args)
    except BudgetError:
        return True
    return False


def test_the_faces_check_with_the_engine_s_own_functions():
    assert _common.check_count is check_count
    assert _common.check_ratio is check_ratio


@given(ANYTHING)
def test_a_count_is_an_integer_of_at_least_one(value):
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    assert raises_budget_error(check_count, "k", value) == (not valid and value is not None)
    assert raises_budget_error(lambda v: check_count("k", v, optional=False), value) == (not valid)
    # The engine refuses exactly the budgets in tokens the faces refuse.
    assert raises_budget_error(resolve_budget, 100, value, None) == (not valid)


@given(ANYTHING)
def test_a_ratio_is_a_finite_number_in_the_unit_interval(value):
    valid = value is None or (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= 1
    )
    assert raises_budget_error(check_ratio, value) == (not valid)
    assert raises_budget_error(resolve_budget, 100, None, value) == (not valid or value is None)


def test_a_token_list_or_a_count_both_count():
    assert TokenCounter(str.split).count("three short words") == 3
    assert TokenCounter(len).count("four") == 4


def test_one_scale_per_list():
    """Every input scored (a number): each keeps its own; else every output carries ILRe's
    share, with what it arrived with kept beside it."""
    recalls = [
        _common.DocumentRecall(0, "a", (), 0.7, 1),
        _common.DocumentRecall(2, "b", (), 0.3, 1),
    ]
    assert _common.one_scale([0.9, 0.1, 0.5], recalls) == [(0.9, None), (0.5, None)]
    assert _common.one_scale([0.9, None, 0.5], recalls) == [(0.7, 0.9), (0.3, 0.5)]
    assert _common.one_scale([0.9, 0.1, "high"], recalls) == [(0.7, 0.9), (0.3, "high")]
    assert _common.one_scale([0.9, 0.1, True], recalls) == [(0.7, 0.9), (0.3, True)]


def test_best_first_keeps_ties_in_order_and_caps():
    assert _common.best_first([0.3, 0.9, 0.3, 0.5]) == [1, 3, 0, 2]
    assert _common.best_first([0.3, 0.9, 0.3, 0.5], 2) == [1, 3]
    assert _common.best_first([], 3) == []
