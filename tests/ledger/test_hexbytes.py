"""The one lowercase-hex parser: exact round trip or a ValueError naming the reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.hexbytes import parse_hex


@given(st.binary(min_size=0, max_size=40))
def test_lowercase_hex_round_trips(raw: bytes) -> None:
    assert parse_hex(raw.hex(), len(raw)) == raw


@given(st.one_of(st.text(max_size=70), st.integers(), st.none(), st.binary(max_size=8)))
def test_anything_else_is_a_value_error_or_exact(value: object) -> None:
    try:
        raw = parse_hex(value, 4)
    except ValueError as exc:
        reasons = ("must be 8 lowercase hex characters", "not hex", "must be lowercase hex")
        assert str(exc) in reasons
        return
    assert isinstance(value, str) and raw.hex() == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [("abc", "must be 4 lowercase hex characters"), ("zzzz", "not hex"), ("ABCD", "lowercase")],
)
def test_reasons(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_hex(value, 2)
