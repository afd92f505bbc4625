"""The gateway's calibration core (sans-IO): fit of gain and phase from paired intervals, the
command it produces, and what it refuses."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import frame
from gateway import calibration as cal

LOADS = [(5.0, 1.0), (12.0, 0.8), (20.0, 0.6), (8.0, 0.95), (15.0, 0.7)]


def _pairs(gv: float, gi: float, e_deg: float, loads=LOADS) -> list[cal.Pair]:  # type: ignore[no-untyped-def]
    """What a node with gains off by 1/gv, 1/gi and its current e_deg late reads against truth."""
    out = []
    e = math.radians(e_deg)
    for i, pf in loads:
        phi = math.acos(pf)
        v_node, i_node = 230 / gv, i / gi
        s = v_node * i_node
        out.append(cal.Pair(v_node, s * math.cos(phi + e), s, 230.0, 230 * i * pf))
    return out


@pytest.mark.parametrize(("gv", "gi", "e"), [(0.97, 1.04, 2.0), (1.02, 0.96, -3.0),
                                             (1.0, 1.0, 0.0), (1.1, 0.8, 10.0)])
def test_fit_recovers_gains_and_phase(gv: float, gi: float, e: float) -> None:
    f = cal.fit(_pairs(gv, gi, e))
    assert f.phase_fitted and f.pairs == 5
    assert f.gain_v == pytest.approx(gv, rel=1e-9)
    assert f.gain_i == pytest.approx(gi, rel=1e-9)
    assert f.phase_deg == pytest.approx(e, abs=1e-6)
    new = f.apply(cal.Constants(50.0, 500.0, 1.0))
    assert new == cal.Constants(pytest.approx(50 * gi), pytest.approx(500 * gv),
                                pytest.approx(1.0 + e))


def test_resistive_loads_fit_the_gains_and_leave_the_phase() -> None:
    loads = [(3.0, 1.0), (9.0, 1.0), (14.0, 1.0)]
    f = cal.fit(_pairs(0.98, 1.03, 0.0, loads))
    assert not f.phase_fitted and f.phase_deg == 0.0
    assert f.gain_i == pytest.approx(1.03, rel=1e-9)


@pytest.mark.parametrize(("pairs", "why"), [
    ([], "at least 3"),
    (_pairs(1, 1, 0)[:2], "at least 3"),
    (_pairs(1, 1, 0, [(10.0, 1.0)] * 4), "do not differ"),
    ([*_pairs(1, 1, 0)[:4], cal.Pair(230, 100.0, 3000.0, 230, 3000.0)], "unexplained"),
    ([*_pairs(1, 1, 0)[:3], cal.Pair(0.0, 1.0, 1.0, 230, 1.0)], "voltage"),
    ([*_pairs(1, 1, 0)[:3], cal.Pair(230.0, math.nan, 1.0, 230, 1.0)], "no number"),
])  # fmt: skip
def test_pairs_that_cannot_tell_are_refused(pairs: list[cal.Pair], why: str) -> None:
    with pytest.raises(cal.CalibrationError, match=why):
        cal.fit(pairs)


_num = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(cal.Pair, _num, _num, _num, _num, _num), max_size=8))
def test_hostile_pairs_give_a_fit_or_a_calibration_error(pairs: list[cal.Pair]) -> None:
    try:
        f = cal.fit(pairs)
    except cal.CalibrationError:
        return
    assert all(math.isfinite(x) for x in (f.gain_v, f.gain_i, f.phase_deg, f.residual))


def test_the_command_carries_absolute_constants() -> None:
    payload = cal.command_payload(1, cal.Constants(52.43, 557.75, 2.5))
    assert frame.unpack_calibrate(payload) == (1, frame.M_CONSTANTS, 52_430_000, 557_750_000,
                                               2_500_000)
    ref = cal.reference_payload(0, 230.0, 10.0, -2300.0)
    assert frame.unpack_calibrate(ref) == (0, frame.M_REFERENCE, 230_000, 10_000, -23_000)
    for bad in (cal.Constants(0.0, 1, 0), cal.Constants(math.nan, 1, 0),
                cal.Constants(1, 5000, 0), cal.Constants(1, 1, 1e9)):
        with pytest.raises(cal.CalibrationError):
            cal.command_payload(0, bad)
    with pytest.raises(cal.CalibrationError):
        cal.command_payload(256, cal.Constants(1, 1, 0))
    for v, i, p in ((0, 0, 0), (-1, 0, 0), (math.inf, 0, 0), (0, math.nan, 0), (0, 0, 2e6)):
        with pytest.raises(cal.CalibrationError):
            cal.reference_payload(0, v, i, p)


def test_collector_pairs_steady_readings_only() -> None:
    c = cal.PairCollector(interval_ms=60_000)
    for k in range(18):  # 1 kW, switched to 2 kW at 100 s; at 150 s to 3 kW
        t = k * 10_000
        ref_p = 1000.0 if t < 100_000 else (2000.0 if t < 150_000 else 3000.0)
        c.node(t, 231.0, 0.99 * ref_p, ref_p)
        c.ref(t, 230.0, ref_p)
    # minute 0: steady; minute 1: four readings at 1 kW, two at 2 kW: the 2 kW ones are left out;
    # minute 2: 2 kW then 3 kW, half and half: no steady load, left out whole
    assert c.pairs() == [cal.Pair(231.0, 990.0, 1000.0, 230.0, 1000.0)] * 2
    c.node(190_000, 231.0, 500.0, 500.0)  # minute 3: too few readings
    assert len(c.pairs()) == 2
    with pytest.raises(ValueError):
        cal.PairCollector(interval_ms=0)
