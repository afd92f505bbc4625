"""The frame verifier against the firmware's own encoder: authentic, forged, replayed, hostile."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import frame
from gateway.verify import FrameVerifier

KEY = bytes(range(32))
READING = {
    "channel": 0,
    "uptime_s": 1,
    "voltage_dv": 2300,
    "current_ma": 1000,
    "power_dw": 2300,
    "apparent_dva": 2300,
    "pf_milli": 1000,
    "relays": 0,
    "flags": 0,
    "import_mwh": 5,
    "export_mwh": 0,
}


def reading(seq: int, node: int = 7, key: bytes = KEY) -> bytes:
    return frame.encode(key, frame.T_READING, node, seq, frame.pack_reading(READING))


def test_accepts_authentic_and_matches_firmware_decode() -> None:
    v = FrameVerifier({7: KEY})
    raw = reading(1)
    got = v.verify(raw)
    assert got is not None
    assert (got.ftype, got.node_id, got.seq, got.payload) == frame.decode(KEY, raw)
    assert v.counts()["accepted"] == 1


def test_forward_only_with_window() -> None:
    v = FrameVerifier({7: KEY}, window=4)
    assert v.verify(reading(10))
    assert v.verify(reading(10)) is None  # exact replay
    assert v.verify(reading(8))  # late but inside the window, unseen
    assert v.verify(reading(8)) is None
    assert v.verify(reading(6)) is None  # outside the window
    assert v.verify(reading(11))
    assert v.counts()["dropped_replay"] == 3


def test_window_survives_restart() -> None:
    v = FrameVerifier({7: KEY})
    assert v.verify(reading(100))
    w = FrameVerifier({7: KEY})
    w.restore(v.snapshot())
    assert w.verify(reading(100)) is None
    assert w.verify(reading(101))


def test_wrong_key_and_unknown_node_are_counted() -> None:
    v = FrameVerifier({7: KEY})
    assert v.verify(reading(1, key=bytes(32))) is None
    assert v.verify(reading(1, node=8)) is None
    c = v.counts()
    assert (c["dropped_tag"], c["dropped_unknown_node"], c["accepted"]) == (1, 1, 0)


def test_vectors_from_the_firmware() -> None:
    import json
    from pathlib import Path

    doc = json.loads((Path(frame.__file__).parent / "frame_vectors.json").read_text())
    for vec in doc["valid"]:
        v = FrameVerifier({vec["node_id"]: bytes.fromhex(vec["key"])})
        got = v.verify(bytes.fromhex(vec["frame"]))
        if frame.DIRECTION[vec["type"]] == frame.UP:
            assert got is not None and got.seq == vec["seq"], vec["name"]
        else:  # the gateway's own commands are never taken as telemetry
            assert got is None and v.counts()["dropped_direction"] == 1, vec["name"]


def test_a_replayed_command_cannot_move_a_nodes_window() -> None:
    """Issue 19, finding 1: a COMMAND captured on the broker, sent back as telemetry, moved the
    node's high-water mark to the command's sequence number; every later reading was dropped."""
    v = FrameVerifier({7: KEY})
    command = frame.encode(KEY, frame.T_COMMAND, 7, 1_000_000, frame.pack_command(0, frame.A_ON))
    assert v.verify(reading(1)) is not None
    assert v.verify(command) is None
    assert v.counts()["dropped_direction"] == 1
    assert all(v.verify(reading(seq)) is not None for seq in range(2, 20))
    # an ACK and a reading are windows of their own: neither shadows the other
    ack = frame.encode(KEY, frame.T_ACK, 7, 500, frame.pack_ack(1, 0, frame.S_OK, 1))
    assert v.verify(ack) is not None and v.verify(reading(20)) is not None
    assert v.verify(ack) is None  # the ACK again: a replay


MANY = FrameVerifier({n: KEY for n in range(0, 300)})


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_garbage_never_raises_and_is_never_accepted(raw: bytes) -> None:
    before = sum(MANY.dropped.values())
    assert MANY.verify(raw) is None
    assert sum(MANY.dropped.values()) == before + 1


@settings(max_examples=200)
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 65), st.integers(0, 255))
def test_any_single_bit_flip_is_rejected(seq: int, byte: int, bit: int) -> None:
    raw = bytearray(reading(seq))
    raw[byte % len(raw)] ^= 1 << (bit % 8)
    v = FrameVerifier({7: KEY})
    assert v.verify(bytes(raw)) is None


@settings(max_examples=100)
@given(st.lists(st.integers(0, 200), max_size=60))
def test_each_sequence_number_accepted_at_most_once(seqs: list[int]) -> None:
    v = FrameVerifier({7: KEY}, window=16)
    accepted = [s for s in seqs if v.verify(reading(s)) is not None]
    assert len(accepted) == len(set(accepted))
    highest = -1
    for s in accepted:  # anything accepted is new or inside the window below the highest
        assert s > highest - 16
        highest = max(highest, s)
