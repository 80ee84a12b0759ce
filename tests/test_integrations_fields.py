"""The budget checks both faces run before pydantic sees a value: `BudgetError` for every
value that is not a valid budget, nothing for every valid one. No model is loaded."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from ilre_engine.errors import BudgetError
from ilre_integrations._common import TokenCount, check_count, check_ratio

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


@given(ANYTHING)
def test_a_count_is_an_integer_of_at_least_one(value):
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    assert raises_budget_error(check_count, "k", value) == (not valid and value is not None)
    assert raises_budget_error(lambda v: check_count("k", v, optional=False), value) == (not valid)


@given(ANYTHING)
def test_a_ratio_is_a_finite_number_in_the_unit_interval(value):
    valid = value is None or (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= 1
    )
    assert raises_budget_error(check_ratio, value) == (not valid)


def test_a_token_list_or_a_count_both_count():
    assert TokenCount(str.split)("three short words") == 3
    assert TokenCount(len)("four") == 4
