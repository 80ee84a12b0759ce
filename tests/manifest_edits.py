"""Hypothesis strategies that edit a valid manifest (a saved context's ``manifest.json`` or a
store's ``store.json``) as a careless or hostile user would: a field of another type or out
of range, a key removed or added, a list element duplicated, dropped or swapped."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 3, 7, 2**31, 2**63, 10**12]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=16),
    st.sampled_from(["shard-0123456789ab", "shard-00000000000e", "../outside", "/etc/passwd"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every node of a JSON value, as the keys and indices that lead to it."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def _near(value: Any) -> st.SearchStrategy:
    """Values a slip of the hand makes of `value`."""
    if isinstance(value, bool):
        return st.sampled_from([not value, 0, 1, None])
    if isinstance(value, int):
        return st.sampled_from([value - 1, value + 1, -value, 2 * value, 0, -1, float(value)])
    if isinstance(value, str):
        return st.sampled_from([value[:-1], value + "0", value.upper(), "", str(len(value))])
    if isinstance(value, list):
        return st.sampled_from([value[:-1], value[::-1], [], [*value, *value]])
    return st.sampled_from([{}, [], None])


@st.composite
def edited(draw, manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with one edit at one of its nodes (the manifest itself is left alone)."""
    result = copy.deepcopy(manifest)
    where = draw(st.sampled_from(paths(result)[1:]))
    parent = result
    for step in where[:-1]:
        parent = parent[step]
    last, node = where[-1], parent[where[-1]]
    action = draw(st.sampled_from(["replace", "near", "delete", "add", "duplicate", "swap"]))
    if action == "replace":
        parent[last] = draw(json_values)
    elif action == "near":
        parent[last] = draw(_near(node))
    elif action == "delete":
        del parent[last]
    elif action == "add" and isinstance(node, dict):
        node[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    elif action == "add" and isinstance(node, list):
        node.insert(draw(st.integers(0, len(node))), draw(json_values))
    elif action == "duplicate" and isinstance(parent, list):
        parent.insert(draw(st.integers(0, len(parent))), copy.deepcopy(node))
    elif action == "swap" and isinstance(parent, list) and len(parent) > 1:
        other = draw(st.integers(0, len(parent) - 1))
        parent[last], parent[other] = parent[other], parent[last]
    else:
        parent[last] = draw(json_values)
    return result
