"""Plug metering chips: recorded frames on the MicroPython VM, hostile input under CPython.

The CSE7766 captures are frames from a Sonoff POW R2 as published with open plug firmwares
(values there: 233.537 V, 1103.207 W, 4.748 A with load; 235.265 V, no power without). The
PZEM-004T frames are the datasheet's examples; CRCs are checked against pymodbus's RTU framer.
The driver modules use only `struct`, so CPython imports the very same files for hypothesis.
"""

from __future__ import annotations

import contextlib
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU

from firmware import cse7766, pzem
from tools import mpvm

WITH_LOAD = bytes.fromhex("555a02e9500003310 03e9e000d304f44f800126 5f1817672".replace(" ", ""))
NO_LOAD = bytes.fromhex("f25a02e95000032b003e9e02d77c4f44f8cfa55de1b32ab4")
BAD_COEF = bytes.fromhex("f55a02e95000032b003e9e02d77c4f44f8cfa55de1b32ab4")
UNCAL = bytes.fromhex("aa5affffffa1a2a3ffffffb1b2b3ffffffc1c2c3d1d2d3af")
BROKEN = bytes.fromhex("555a02e950fefefefefefefe0d30fefef800126 5f1817672".replace(" ", ""))
STREAM = b"\x00\x12\x21" + UNCAL + WITH_LOAD + BROKEN + b"\xde\xf0\x0d" + NO_LOAD + BAD_COEF
STREAM += b"\xff\xfe"

# PZEM-004T v3 datasheet example: 220.0 V, 1.000 A, 220.0 W, 0 Wh, 50.0 Hz, PF 1.00
PZEM_REGS = bytes.fromhex("089803e80000089800000000000001f4006 40000".replace(" ", ""))


def _rtu(pdu: bytes) -> bytes:
    return pdu + FramerRTU.compute_CRC(pdu).to_bytes(2, "big")


PZEM_OK = _rtu(bytes([0x01, 0x04, 0x14]) + PZEM_REGS)
PZEM_EXC = _rtu(bytes([0x01, 0x84, 0x02]))

VM_SCRIPT = """
import cse7766, pzem, hlw8012, hal_host as hal
S = bytes.fromhex(STREAM)
for size in (1, 5, 24, 25, 1000):
    p = cse7766.Parser()
    vals = []
    for k in range(0, len(S), size):
        vals += p.feed(S[k:k + size])
    emit({'cse_chunk': size, 'vals': [list(v) for v in vals], 'errors': p.errors})
emit({'req1': pzem.request(1).hex(), 'reqf8': pzem.request(0xF8).hex()})
emit({'pzem': pzem.parse(1, bytes.fromhex(PZEM_OK))})
for name, data, addr in (('exc', PZEM_EXC, 1), ('trunc', PZEM_OK[:-6], 1), ('addr', PZEM_OK, 2),
                         ('crc', PZEM_OK[:-2] + 'ffff', 1), ('empty', '', 1)):
    try:
        pzem.parse(addr, bytes.fromhex(data))
        emit({'pzem_err': name, 'reason': None})
    except pzem.PzemError as e:
        emit({'pzem_err': name, 'reason': e.args[0]})
# HLW8012: 1103 W, 4.75 A, 233.5 V through the pulse counter; SEL alternates; silence -> 0 W
hal.reset()
m = hlw8012.Hlw8012(hal, 5, 4, 12, 12.53, 0.0159075, 0.429)
hal.pulse_freq[5] = 1103.0 / 12.53
hal.pulse_freq[4] = lambda: 4.75 / 0.0159075 if hal.pins.get(12) == 1 else 233.5 / 0.429
out = []
for k in range(4):
    hal.advance_ms(1000)
    out.append(list(m.measure()))
hal.pulse_freq[5] = 0
for k in range(12):
    hal.advance_ms(1000)
    out.append(list(m.measure()))
emit({'hlw': out})
# Standby loads, sampled as the node does (a window a second): 10 W is 0.8 Hz on CF, 6.3 W one
# edge every 2 s, 2 W one every 6.3 s; most windows hold one edge or none.
for watts in (10.0, 6.265, 2.0):
    hal.reset()
    m = hlw8012.Hlw8012(hal, 5, 4, 12, 12.53, 0.0159075, 0.429)
    hal.pulse_freq[5] = watts / 12.53
    hal.pulse_freq[4] = lambda: (watts / 230) / 0.0159075 if hal.pins.get(12) == 1 else 230 / 0.429
    low = []
    for k in range(40):
        hal.advance_ms(1000)
        low.append(list(m.measure()))
    emit({'hlw_low': watts, 'windows': low})
"""


@pytest.fixture(scope="module")
def vm() -> list:
    consts = {"STREAM": STREAM.hex(), "PZEM_OK": PZEM_OK.hex(), "PZEM_EXC": PZEM_EXC.hex()}
    head = "".join(f"{k} = {v!r}\n" for k, v in consts.items())
    return mpvm.run_job(head + VM_SCRIPT).results


def test_cse7766_recorded_stream_in_any_chunking(vm: list) -> None:
    runs = [r for r in vm if "cse_chunk" in r]
    assert len(runs) == 5
    for r in runs:
        (v1, i1, p1, _), (v2, i2, p2, _) = r["vals"]
        assert (round(v1, 3), round(i1, 3), round(p1, 3)) == (233.537, 4.748, 1103.207)
        assert (round(v2, 3), i2, p2) == (235.265, 0.0, 0.0)
        assert r["errors"] >= 3  # uncalibrated, broken checksum, bad coefficients


def test_pzem_request_and_recorded_responses(vm: list) -> None:
    req = next(r for r in vm if "req1" in r)
    assert req == {"req1": "01040000000a700d", "reqf8": "f8040000000a6464"}
    assert req["req1"] == _rtu(bytes.fromhex("01040000000a")).hex()
    got = next(r["pzem"] for r in vm if "pzem" in r)
    assert got == {
        "voltage": 220.0, "current": 1.0, "power": 220.0, "energy_wh": 0,
        "frequency": 50.0, "pf": 1.0, "alarm": 0,
    }
    errs = {r["pzem_err"]: r["reason"] for r in vm if "pzem_err" in r}
    assert errs == {
        "exc": "exception_2", "trunc": "crc", "addr": "address", "crc": "crc", "empty": "short",
    }


def test_hlw8012_pulses_to_power_current_voltage(vm: list) -> None:
    out = next(r["hlw"] for r in vm if "hlw" in r)
    for v, i, p, _s, _pf in out[2:4]:
        assert abs(p - 1103.0) <= 0.005 * 1103
        assert abs(i - 4.75) <= 0.01 * 4.75
        assert abs(v - 233.5) <= 0.01 * 233.5
    # a short silence is not yet "no load": the reading falls with the time since the last edge
    silent = [p for _v, _i, p, _s, _pf in out[4:]]
    assert 0 < silent[0] <= 12.53
    assert all(b <= a for a, b in itertools.pairwise(silent))
    assert silent[8] > 0  # 9 s
    assert out[-1][2] == 0.0 and out[-1][1] == 0.0  # 12 s: no load


def test_hlw8012_standby_loads_read_and_count_when_sampled_every_second(vm: list) -> None:
    lows = [r for r in vm if "hlw_low" in r]
    assert [r["hlw_low"] for r in lows] == [10.0, 6.265, 2.0]
    for r in lows:
        watts = r["hlw_low"]
        powers = [w[2] for w in r["windows"]]
        # from the second edge on, every window reads the load (within one edge's timing)
        settled = powers[int(2 * 12.53 / watts) + 2 :]
        assert settled and all(p > 0 for p in settled), (watts, powers)
        # energy as the node integrates it (P of each window times 1 s) matches the load's
        energy = sum(settled)
        assert abs(energy - watts * len(settled)) <= 0.1 * watts * len(settled) + 12.53, (
            watts, powers)
        if watts >= 6:
            assert all(abs(p - watts) <= 0.02 * watts for p in settled[-10:]), (watts, powers)
            cur = [w[1] for w in r["windows"]][-10:]
            assert all(abs(i - watts / 230) <= 0.05 * watts / 230 for i in cur), (watts, cur)


# ---- hostile input, CPython, the same modules ------------------------------------------------


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=30))
def test_cse7766_parser_never_raises(data: bytes, chunk: int) -> None:
    p = cse7766.Parser()
    for k in range(0, len(data), chunk):
        for v, i, w, _cf in p.feed(data[k : k + chunk]):
            assert v >= 0 and i >= 0 and w >= 0
    assert len(p.buf) < cse7766.FRAME_LEN


@given(st.integers(min_value=0, max_value=23), st.integers(min_value=0, max_value=7))
def test_cse7766_any_bit_flip_is_rejected(pos: int, bit: int) -> None:
    bad = bytearray(WITH_LOAD)
    bad[pos] ^= 1 << bit
    with pytest.raises(ValueError):
        cse7766.parse(bytes(bad))


@given(st.binary(max_size=64))
def test_pzem_crc_matches_pymodbus(data: bytes) -> None:
    assert pzem.crc16(data) == int.from_bytes(
        FramerRTU.compute_CRC(data).to_bytes(2, "big"), "little"
    )


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_pzem_parse_rejects_garbage_cleanly(data: bytes) -> None:
    with contextlib.suppress(pzem.PzemError):
        r = pzem.parse(1, data)
        assert len(data) == pzem.RESP_LEN and r["voltage"] >= 0


def test_pzem_truncations_all_rejected() -> None:
    for n in range(len(PZEM_OK)):
        with pytest.raises(pzem.PzemError):
            pzem.parse(1, PZEM_OK[:n])
    rnd = random.Random(1)
    for _ in range(200):
        bad = bytearray(PZEM_OK)
        bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
        with pytest.raises(pzem.PzemError):
            pzem.parse(1, bytes(bad))
