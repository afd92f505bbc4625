"""Hypothesis strategies shared by the ledger tests: values inside the canonical encoding."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ledger.encoding import MAX_INT, MIN_INT

ints = st.integers(min_value=MIN_INT, max_value=MAX_INT)  # the encoding's integer range


def json_values(*, text: int = 8, key: int = 4, leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any value the canonical encoding accepts: null, booleans, 64-bit integers, strings,
    lists and objects nested in each other."""
    return st.recursive(
        st.none() | st.booleans() | ints | st.text(max_size=text),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=key), inner, max_size=4)
        ),
        max_leaves=leaves,
    )
