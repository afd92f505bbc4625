"""Board data against the ADC it feeds: every CT board keeps its signals, over its whole range,
inside the ESP32 ADC's usable window (hal_host.ADC_MIN_MV..ADC_MAX_MV), and its calibration
agrees with its burden. A board that lets a large current out of the window reads it low."""

from __future__ import annotations

import math

import pytest

from firmware import hal_host
from tests.firmware import nodeutil

CT_BOARDS = [p.stem for p in sorted(nodeutil.BOARDS.glob("*.json"))
             if any(m["type"] == "ct" for m in nodeutil.board(p.stem)["meters"])]
# What a board must leave free at each end of the window: the 3.3 V rail's tolerance moves the
# bias divider's output by up to ~3 %, and currents are not pure sines (crest factor over 1.414).
RAIL_TOL = 0.03
CREST = 1.6
MAINS_MAX_V = 253  # 230 V + 10 % (EN 50160)


def _fits(bias_mv: float, peak_mv: float) -> bool:
    lo = bias_mv * (1 - RAIL_TOL) - peak_mv
    hi = bias_mv * (1 + RAIL_TOL) + peak_mv
    return lo > hal_host.ADC_MIN_MV and hi < hal_host.ADC_MAX_MV


def test_there_is_a_ct_board() -> None:
    assert "esp32_devkitc_ct" in CT_BOARDS


@pytest.mark.parametrize("name", CT_BOARDS)
def test_ct_range_stays_inside_the_adc_window(name: str) -> None:
    for m in nodeutil.board(name)["meters"]:
        if m["type"] != "ct":
            continue
        peak_mv = m["range_a"] / m["ical"] * 1000 * CREST
        assert _fits(m["bias_mv"], peak_mv), (name, m["channel"], m["bias_mv"], peak_mv)
        if "v_pin" in m:
            v_peak_mv = MAINS_MAX_V / m["vcal"] * 1000 * math.sqrt(2)
            assert _fits(m["v_bias_mv"], v_peak_mv), (name, m["channel"], v_peak_mv)


@pytest.mark.parametrize("name", CT_BOARDS)
def test_ct_calibration_follows_the_burden(name: str) -> None:
    for m in nodeutil.board(name)["meters"]:
        if m["type"] == "ct" and m.get("part") == "SCT-013-000":
            # 100 A : 50 mA, 2000 turns, current output: A per V at the ADC is 2000 / burden
            assert m["ical"] == pytest.approx(2000 / m["burden_ohm"], rel=1e-4), (name, m)
