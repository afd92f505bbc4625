"""The one family of strict field readers: any value in, the value or the caller's error out."""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.fields import MAX_INT, Fields


class Bad(ValueError):
    pass


class Coded(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


READ = Fields(Bad)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
ID = re.compile(r"[a-z]{1,8}")


def _readers(obj: Any) -> list[Any]:
    return [
        lambda: READ.obj(obj, "thing"),
        lambda: READ.exact(obj, ("a", "b"), "thing"),
        lambda: READ.integer({"x": obj}, "x"),
        lambda: READ.integer({"x": obj}, "x", -3, 7),
        lambda: READ.nat({"x": obj}, "x", 100),
        lambda: READ.hex_bytes({"x": obj}, "x", 4),
        lambda: READ.listed({"x": obj}, "x", 2),
        lambda: READ.text({"x": obj}, "x", reason="must be an id", pattern=ID, limit=5),
        lambda: READ.choice({"x": obj}, "x", ("on", "off")),
        lambda: READ.typed({"x": obj}, "x", (int, float), lo=0, hi=10),
        lambda: READ.typed({"x": obj}, "x", str, pattern=ID, choices=("ab", "cd")),
    ]


@given(JSON)
def test_hostile_values_raise_only_the_callers_error(value: Any) -> None:
    for read in _readers(value):
        try:
            read()
        except Bad as exc:
            assert str(exc).startswith(("thing: ", "x: "))


@given(st.integers(min_value=-3, max_value=7))
def test_values_in_range_come_back_as_they_are(n: int) -> None:
    assert READ.integer({"x": n}, "x", -3, 7) == n
    assert READ.typed({"x": n}, "x", int, lo=-3, hi=7) == n
    if n >= 0:
        assert READ.nat({"x": n}, "x") == n


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (lambda: READ.nat({"n": True}, "n"), f"n: must be an integer in [0, {MAX_INT}]"),
        (lambda: READ.nat({"n": -1}, "n", 5), "n: must be an integer in [0, 5]"),
        (lambda: READ.nat({}, "n", 5), "n: must be an integer in [0, 5]"),
        (lambda: READ.integer({"n": "1"}, "n"), "n: must be an integer"),
        (lambda: READ.hex_bytes({"d": "AB"}, "d", 1), "d: must be lowercase hex"),
        (lambda: READ.hex_bytes({"d": "zz"}, "d", 1), "d: not hex"),
        (lambda: READ.hex_bytes({"d": "ab"}, "d", 2), "d: must be 4 lowercase hex characters"),
        (lambda: READ.listed({"p": [1, 2, 3]}, "p", 2), "p: must be a list of at most 2 items"),
        (lambda: READ.exact([], ("a",), "msg"), "msg: must be an object"),
        (lambda: READ.exact({"b": 1}, ("a",), "msg"), "msg: fields must be ['a'], got ['b']"),
        (lambda: READ.exact({"b": 1}, ("a",)), "fields must be ['a'], got ['b']"),
        (lambda: READ.choice({"m": "x"}, "m", ("a",)), "m: must be one of ['a']"),
        (lambda: READ.typed({}, "port", int, name="gw.port"), "gw.port: missing (required)"),
        (lambda: READ.typed({"p": True}, "p", int), "p: expected int, got bool"),
        (lambda: READ.typed({"p": 1.5}, "p", (int, float), hi=1), "p: 1.5 is outside [None, 1]"),
        (lambda: READ.typed({"p": float("nan")}, "p", float), "p: nan is not a finite number"),
        (lambda: READ.typed({"p": "c"}, "p", str, choices=("a", "b")), "p: 'c' is not one of a, b"),
        (lambda: READ.typed({"p": "1"}, "p", str, pattern=ID), "p: '1' is not a valid name"),
    ],
)
def test_each_message_names_the_field(read: Any, message: str) -> None:
    with pytest.raises(Bad) as caught:
        read()
    assert str(caught.value) == message


def test_an_error_that_takes_more_than_a_message() -> None:
    body = Fields(partial(Coded, "BAD_BODY"), sep=" ")
    with pytest.raises(Coded) as caught:
        body.integer({"amount": "5"}, "amount")
    assert caught.value.code == "BAD_BODY" and caught.value.message == "amount must be an integer"
    assert str(body.fail("", "whole body")) == "BAD_BODY: whole body"
