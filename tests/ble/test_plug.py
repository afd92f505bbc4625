"""The plug emulator's node behaviour (sans-IO): readings, energy counters, commands."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import frame
from hardware.ble.plug import DW_MS_PER_MWH, PlugCore, constant_load
from hardware.ble.profile import plug_address, plug_name

KEY = bytes(range(32))


def switched_on(core: PlugCore, at_ms: int = 0) -> PlugCore:
    assert core.command(_cmd(core.seq + 10_000, frame.A_ON, node=core.node_id), at_ms)
    assert core.relay_on
    return core


def test_readings_are_genuine_frames_with_forward_sequence_numbers() -> None:
    core = switched_on(PlugCore(7, KEY, constant_load(230.0), start_ms=-5000))
    frames = [core.reading(ms) for ms in (0, 1000, 2000)]
    decoded = [frame.decode(KEY, f) for f in frames]
    assert [d[2] for d in decoded] == [2, 3, 4]  # seq 1 was the ON command's ACK
    assert {(d[0], d[1]) for d in decoded} == {(frame.T_READING, 7)}
    r = frame.unpack_reading(decoded[-1][3])
    assert r["power_dw"] == 2300 and r["voltage_dv"] == 2300 and r["current_ma"] == 1000
    assert r["relays"] == 1 and r["uptime_s"] == 7  # plugged in 5 s before t = 0


@given(
    power_dw=st.integers(-200_000, 200_000),
    steps=st.lists(st.integers(0, 3_600_000), min_size=1, max_size=30),
)
def test_energy_counters_integrate_power_exactly(power_dw: int, steps: list[int]) -> None:
    core = switched_on(PlugCore(1, KEY, lambda _ms: power_dw, start_ms=-5000))
    now = 0
    core.advance(now)
    for dt in steps:
        now += dt
        core.advance(now)
    total = abs(power_dw) * now // DW_MS_PER_MWH  # dW*ms -> whole mWh, nothing lost to rounding
    if power_dw >= 0:
        assert (core.import_mwh, core.export_mwh) == (total, 0)
    else:
        assert (core.import_mwh, core.export_mwh) == (0, total)


def test_one_hour_at_one_kilowatt_is_one_kilowatt_hour() -> None:
    core = switched_on(PlugCore(1, KEY, constant_load(1000.0), start_ms=-5000))
    for ms in range(0, 3_600_001, 5000):
        raw = core.reading(ms)
    assert frame.unpack_reading(frame.decode(KEY, raw)[3])["import_mwh"] == 1_000_000


def _cmd(seq: int, action: int, relay: int = 0, node: int = 1, key: bytes = KEY) -> bytes:
    return frame.encode(key, frame.T_COMMAND, node, seq, frame.pack_command(relay, action))


def test_the_relay_boots_off_and_keeps_the_boards_minimum_off_time() -> None:
    """plug_hlw8012.json: boot_on false, min_off_s 5 (boot counts as a switch); a switch inside
    it is answered S_MIN_TIME and done when it is up, as firmware/relay.py does."""
    core = PlugCore(1, KEY, constant_load(1000.0), start_ms=0)
    assert (core.relay_on, core.min_on_ms, core.min_off_ms) == (False, 0, 5000)
    core.reading(0)
    ack = core.command(_cmd(1, frame.A_ON), 1000)
    assert ack is not None and frame.unpack_ack(frame.decode(KEY, ack)[3]) == (
        1, 0, frame.S_MIN_TIME, 0)
    assert not core.relay_on
    r = frame.unpack_reading(frame.decode(KEY, core.reading(8000))[3])
    assert core.relay_on and r["relays"] == 1 and r["power_dw"] == 10_000
    assert r["import_mwh"] == 1000 * 3000 // 3600  # drawn from 5 s on, not before
    assert [core.relay_at(t) for t in (4999, 5000)] == [False, True]
    assert core.power_at(4999) == 0 and core.power_at(5000) == 10_000
    # off at once (no minimum on time), then on again only after 5 s off
    assert core.command(_cmd(2, frame.A_OFF), 9000) is not None and not core.relay_on
    core.command(_cmd(3, frame.A_ON), 13_999)
    assert not core.relay_on and core.pending
    core.command(_cmd(4, frame.A_OFF), 13_999)  # the deferred switch is called off
    core.advance(20_000)
    assert not core.relay_on and core.pending is None


def test_commands_switch_the_relay_and_are_acked_once() -> None:
    core = PlugCore(1, KEY, constant_load(100.0), start_ms=-5000)
    ack = core.command(_cmd(5, frame.A_OFF), 0)
    assert ack is not None and not core.relay_on
    ftype, node, _seq, payload = frame.decode(KEY, ack)
    assert (ftype, node) == (frame.T_ACK, 1)
    assert frame.unpack_ack(payload) == (5, 0, frame.S_OK, 0)
    assert frame.unpack_reading(frame.decode(KEY, core.reading(1000))[3])["power_dw"] == 0
    seq = core.seq
    # a replay, even of an ON: not executed, not answered, no sequence number burnt
    assert core.command(_cmd(5, frame.A_ON), 0) is None
    assert not core.relay_on and core.seq == seq and core.last_command_seq == 5
    bad_relay = core.command(_cmd(6, frame.A_ON, relay=3), 0)
    assert bad_relay is not None
    assert frame.unpack_ack(frame.decode(KEY, bad_relay)[3])[2] == frame.S_BAD_RELAY
    toggle = core.command(_cmd(7, frame.A_TOGGLE), 0)
    assert toggle is not None and core.relay_on
    # not for this node, wrong key, wrong type: dropped without an answer
    assert core.command(_cmd(8, frame.A_OFF, node=2), 0) is None
    assert core.command(_cmd(8, frame.A_OFF, key=bytes(32)), 0) is None
    assert core.command(core.reading(0), 0) is None
    assert core.relay_on and core.commands_rejected == 4
    assert core.dropped == {"replay": 1, "node": 1, "tag": 1, "direction": 1}


@settings(max_examples=300)
@given(raw=st.binary(max_size=80))
def test_hostile_command_bytes_never_crash_the_node(raw: bytes) -> None:
    core = PlugCore(1, KEY, constant_load(100.0))
    assert core.command(raw, 0) is None  # without the key nothing gets through
    assert not core.relay_on and core.commands_rejected == 1


@given(
    seq=st.integers(1, 2**32 - 1),
    flip=st.integers(0, frame.HEADER_LEN + frame.COMMAND_LEN + frame.TAG_LEN - 1),
    bit=st.integers(0, 7),
)
def test_any_single_bit_flip_of_a_genuine_command_is_rejected(
    seq: int, flip: int, bit: int
) -> None:
    core = PlugCore(1, KEY, constant_load(100.0))
    raw = bytearray(_cmd(seq, frame.A_OFF))
    raw[flip] ^= 1 << bit
    assert core.command(bytes(raw), 0) is None
    assert not core.relay_on


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PlugCore(1, b"short", constant_load(1.0))
    with pytest.raises(ValueError, match="out of range"):
        PlugCore(70000, KEY, constant_load(1.0))
    with pytest.raises(ValueError):
        plug_address(-1)
    assert plug_address(258) == "D0:57:A7:00:01:02" and plug_name(258) == "wattmesh-258"
