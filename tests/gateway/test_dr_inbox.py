"""The demand-response message decoder: signed requests from registered keys only, errors that
say what is wrong, and any bytes at all only ever a request or a ``DrDecodeError``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dr_inbox import MAX_PAYLOAD, DrDecodeError, decode_request, sign_request

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes_raw().hex()
SIGNERS = {PUB: "dso"}
NOW = int(datetime(2026, 6, 15, 12, tzinfo=UTC).timestamp() * 1000)
BASE = {"id": "r1", "to": "home-1", "role": "dso"}


def signed(**body: Any) -> bytes:
    try:
        return sign_request(KEY, BASE | body)
    except ValueError:  # not encodable (a float): what a forger would send, with any sig
        return json.dumps({"request": BASE | body, "signer": PUB, "sig": "00" * 64}).encode()


def decode(payload: bytes) -> Any:
    return decode_request(payload, "home-1", SIGNERS, NOW)


def test_a_request_with_and_without_an_offset() -> None:
    dr = decode(signed(start="2026-06-15T19:00Z", end="2026-06-15T21:00", max_w=1500))
    req = dr.request
    assert req.start == datetime(2026, 6, 15, 19, tzinfo=UTC)
    assert req.end == datetime(2026, 6, 15, 21, tzinfo=UTC)  # no offset: UTC
    assert req.max_w == 1500 and dr.id == "r1" and dr.role == "dso" and dr.signer == PUB
    lisbon = decode(signed(start="2026-06-15T20:00+01:00", end="2026-06-15T22:00+01:00",
                           max_w=0)).request  # fmt: skip
    assert lisbon.start == req.start and lisbon.max_w == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"start": "2026-06-15T19:00", "end": "2026-06-15T21:00"}, "max_w"),
        ({"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": -1}, "max_w"),
        ({"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": True}, "max_w"),
        ({"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": 1.5}, "max_w"),
        ({"start": "19:00", "end": "2026-06-15T21:00", "max_w": 1}, "start: '19:00'"),
        ({"start": 7, "end": "2026-06-15T21:00", "max_w": 1}, "start: expected"),
        ({"start": "2026-06-15T21:00", "end": "2026-06-15T19:00", "max_w": 1}, "after start"),
        ({"start": "2026-06-15T19:00", "end": "2026-06-30T19:00", "max_w": 1}, "a week"),
        ({"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": 1, "x": 0}, "'x'"),
        ({"start": "0001-01-01T00:00+01:00", "end": "2026-06-15T21:00", "max_w": 1}, "start"),
        ({"start": "2026-06-15T19:00", "end": "9999-12-31T23:59-01:00", "max_w": 1}, "end"),
        ({"start": "2026-06-15T09:00", "end": "2026-06-15T11:00", "max_w": 1}, "already ended"),
        ({"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": 1, "to": "home-2"},
         "request.to"),
        ({"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": 1, "role": "operator"},
         "not registered as operator"),
        ({"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": 1, "role": "king"},
         "request.role"),
        ({"start": "2026-06-15T19:00", "end": "2026-06-15T21:00", "max_w": 1, "id": "a b"},
         "request.id"),
    ],
)
def test_bad_requests_are_named(body: dict[str, Any], message: str) -> None:
    with pytest.raises(DrDecodeError, match=message):
        decode(signed(**body))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "unsigned"),
        (b'{"start": "2026-06-15T19:00Z", "end": "2026-06-16T19:00Z", "max_w": 0}', "unsigned"),
        (b"{" + b" " * MAX_PAYLOAD + b"}", "longer than"),
    ],
)
def test_bad_messages_are_named(payload: bytes, message: str) -> None:
    with pytest.raises(DrDecodeError, match=message):
        decode(payload)


def test_a_tampered_or_stranger_signed_request_is_refused() -> None:
    good = json.loads(signed(start="2026-06-15T19:00Z", end="2026-06-15T21:00Z", max_w=1500))
    good["request"]["max_w"] = 0  # changed after signing
    with pytest.raises(DrDecodeError, match="not a valid signature"):
        decode(json.dumps(good).encode())
    stranger = Ed25519PrivateKey.generate()
    forged = sign_request(stranger, BASE | {"start": "2026-06-15T19:00Z",
                                            "end": "2026-06-15T21:00Z", "max_w": 0})
    with pytest.raises(DrDecodeError, match="not registered"):
        decode(forged)
    # the stranger's key claims the DSO's public key: the signature does not verify
    doc = json.loads(forged)
    doc["signer"] = PUB
    with pytest.raises(DrDecodeError, match="not a valid signature"):
        decode(json.dumps(doc).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_request_or_a_decode_error(payload: bytes) -> None:
    try:
        decode(payload)
    except DrDecodeError:
        pass


values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["start", "end", "max_w", "y", "id", "to", "role"]),
                       values, max_size=7))  # fmt: skip
def test_any_signed_object_is_a_request_or_a_decode_error(doc: dict[str, object]) -> None:
    try:
        dr = decode(signed(**doc))
    except DrDecodeError:
        return
    assert dr.request.start < dr.request.end and dr.request.max_w >= 0 and dr.end_ms > NOW
