"""The node frame under CPython: the shared test vectors, and hostile input (hypothesis)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import frame

VECTORS = json.loads((Path(frame.__file__).parent / "frame_vectors.json").read_text())


@pytest.mark.parametrize("vec", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_byte_for_byte(vec: dict) -> None:
    key = bytes.fromhex(vec["key"])
    raw = bytes.fromhex(vec["frame"])
    ftype, node_id, seq, payload = frame.decode(key, raw)
    assert (ftype, node_id, seq) == (vec["type"], vec["node_id"], vec["seq"])
    f = vec["fields"]
    if ftype == frame.T_READING:
        assert frame.unpack_reading(payload) == f
        built = frame.pack_reading(f)
    elif ftype == frame.T_COMMAND:
        assert frame.unpack_command(payload) == (f["relay"], f["action"])
        built = frame.pack_command(f["relay"], f["action"])
    elif ftype == frame.T_CALIBRATE:
        want = (f["channel"], f["mode"], f["a"], f["b"], f["c"])
        assert frame.unpack_calibrate(payload) == want
        built = frame.pack_calibrate(*want)
    else:
        assert frame.unpack_ack(payload) == (f["cmd_seq"], f["relay"], f["status"], f["state"])
        built = frame.pack_ack(f["cmd_seq"], f["relay"], f["status"], f["state"])
    assert frame.encode(key, ftype, node_id, seq, built) == raw


@pytest.mark.parametrize("vec", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_are_rejected_with_their_reason(vec: dict) -> None:
    with pytest.raises(frame.FrameError) as err:
        frame.decode(bytes.fromhex(vec["key"]), bytes.fromhex(vec["frame"]), vec.get("direction"))
    assert err.value.args[0] == vec["error"]


@pytest.mark.parametrize("vec", VECTORS["commands"], ids=lambda v: v["name"])
def test_command_vectors_are_taken_or_dropped_with_their_reason(vec: dict) -> None:
    args = (bytes.fromhex(vec["key"]), vec["node_id"], bytes.fromhex(vec["frame"]),
            vec["last_seq"])
    if "error" in vec:
        with pytest.raises(frame.FrameError) as err:
            frame.open_command(*args)
        assert err.value.args[0] == vec["error"]
    else:
        ftype, seq, payload = frame.open_command(*args)
        assert (ftype, seq, payload.hex()) == (vec["type"], vec["seq"], vec["payload"])


@given(key=st.binary(max_size=100), msg=st.binary(max_size=300))
def test_hand_written_hmac_matches_the_standard_library(key: bytes, msg: bytes) -> None:
    assert frame.tag(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()[:16]


@given(data=st.binary(max_size=120))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(frame.FrameError):
        frame.decode(b"k" * 32, data)


@given(
    data=st.binary(min_size=frame.HEADER_LEN + frame.TAG_LEN, max_size=80),
    pos=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_any_single_bit_flip_of_a_valid_frame_is_rejected(data: bytes, pos: int, bit: int) -> None:
    vec = VECTORS["valid"][0]
    key = bytes.fromhex(vec["key"])
    raw = bytearray.fromhex(vec["frame"])
    i = pos % len(raw)
    raw[i] ^= 1 << bit
    with pytest.raises(frame.FrameError):
        frame.decode(key, bytes(raw))


@given(payload=st.binary(max_size=40))
def test_hostile_calibrate_payloads_decode_or_raise_frame_error(payload: bytes) -> None:
    try:
        channel, mode, a, b, c = frame.unpack_calibrate(payload)
    except frame.FrameError:
        return
    assert len(payload) == frame.CALIBRATE_LEN and mode in (frame.M_REFERENCE, frame.M_CONSTANTS)
    assert frame.pack_calibrate(channel, mode, a, b, c)[:2] == payload[:2]


def test_calibrate_modes_outside_the_two_are_refused() -> None:
    with pytest.raises(frame.FrameError, match="bad_mode"):
        frame.unpack_calibrate(bytes([0, 3]) + bytes(14))
    with pytest.raises(frame.FrameError, match="bad_mode"):
        frame.pack_calibrate(0, 0, 1, 1, 1)


@pytest.mark.parametrize("vec", VECTORS["valid"], ids=lambda v: v["name"])
def test_each_type_travels_one_way(vec: dict) -> None:
    key, raw = bytes.fromhex(vec["key"]), bytes.fromhex(vec["frame"])
    way = frame.DIRECTION[vec["type"]]
    assert frame.decode(key, raw, way)[0] == vec["type"]
    with pytest.raises(frame.FrameError, match="direction"):
        frame.decode(key, raw, frame.UP if way == frame.DOWN else frame.DOWN)
