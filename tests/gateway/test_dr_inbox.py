"""The demand-response message decoder: valid requests, errors that say what is wrong, and any
bytes at all only ever a request or a ``DrDecodeError``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dr_inbox import MAX_PAYLOAD, DrDecodeError, decode_request


def test_a_request_with_and_without_an_offset() -> None:
    req = decode_request(
        b'{"start": "2026-06-15T19:00Z", "end": "2026-06-15T21:00", "max_w": 1500}'
    )
    assert req.start == datetime(2026, 6, 15, 19, tzinfo=UTC)
    assert req.end == datetime(2026, 6, 15, 21, tzinfo=UTC)  # no offset: UTC
    assert req.max_w == 1500
    lisbon = decode_request(
        b'{"start": "2026-06-15T20:00+01:00", "end": "2026-06-15T22:00+01:00", "max_w": 0}'
    )
    assert lisbon.start == req.start and lisbon.max_w == 0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "expected"),
        (b'{"start": "2026-06-15T19:00", "end": "2026-06-15T21:00"}', "max_w"),
        (b'{"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": -1}', "max_w"),
        (b'{"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": true}', "max_w"),
        (b'{"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": 1.5}', "max_w"),
        (b'{"start": "19:00", "end": "2026-06-15T21:00", "max_w": 1}', "start: '19:00'"),
        (b'{"start": 7, "end": "2026-06-15T21:00", "max_w": 1}', "start: expected"),
        (b'{"start": "2026-06-15T21:00", "end": "2026-06-15T19:00", "max_w": 1}', "after start"),
        (b'{"start": "2026-06-15T19:00", "end": "2026-06-30T19:00", "max_w": 1}', "a week"),
        (b'{"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": 1, "x": 0}', "'x'"),
        (b"{" + b" " * MAX_PAYLOAD + b"}", "longer than"),
        (b'{"start": "0001-01-01T00:00+01:00", "end": "2026-06-15T21:00", "max_w": 1}', "start"),
        (b'{"start": "2026-06-15T19:00", "end": "9999-12-31T23:59-01:00", "max_w": 1}', "end"),
    ],
)
def test_bad_messages_are_named(payload: bytes, message: str) -> None:
    with pytest.raises(DrDecodeError, match=message):
        decode_request(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_request_or_a_decode_error(payload: bytes) -> None:
    try:
        decode_request(payload)
    except DrDecodeError:
        pass


values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["start", "end", "max_w", "y"]), values, max_size=4))
def test_any_object_is_a_request_or_a_decode_error(doc: dict[str, object]) -> None:
    try:
        req = decode_request(json.dumps(doc).encode())
    except DrDecodeError:
        return
    assert req.start < req.end and req.max_w >= 0
