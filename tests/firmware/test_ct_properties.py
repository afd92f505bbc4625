"""CT metering properties under CPython (ct.py and hal_host.py are in the common subset): random
loads, harmonics with random phases, mains frequency drift, DC bias and noise, on the shipped
board's calibration and bias, through the emulated ADC's usable window."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import ct, hal_host
from tests.firmware import nodeutil

_CT = nodeutil.board("esp32_devkitc_ct")["meters"][0]
RANGE_A, ICAL, VCAL = float(_CT["range_a"]), float(_CT["ical"]), float(_CT["vcal"])
BIAS, V_BIAS = int(_CT["bias_mv"]), int(_CT["v_bias_mv"])
NOISE = 3


@settings(max_examples=40, deadline=None)
@given(
    frac=st.floats(min_value=0.05, max_value=1.0),
    hz=st.floats(min_value=47.5, max_value=62.5),
    phi=st.floats(min_value=0.0, max_value=math.pi),
    h3=st.floats(min_value=0.0, max_value=0.15),
    h5=st.floats(min_value=0.0, max_value=0.08),
    p3=st.floats(min_value=0.0, max_value=2 * math.pi),
    p5=st.floats(min_value=0.0, max_value=2 * math.pi),
    bias=st.integers(min_value=BIAS - 40, max_value=BIAS + 40),  # the 3.3 V rail's tolerance
    with_v=st.booleans(),
)
def test_irms_power_pf_within_one_percent(
    frac: float, hz: float, phi: float, h3: float, h5: float, p3: float, p5: float, bias: int,
    with_v: bool,
) -> None:
    norm = math.sqrt((1 + h3 * h3 + h5 * h5) / 2)
    amp = frac * RANGE_A / ICAL * 1000 / norm
    # the board's range is meant to fit the window; this only guards the property's premise
    room = min(bias - hal_host.ADC_MIN_MV, hal_host.ADC_MAX_MV - bias) - NOISE - 1
    assert amp * (1 + h3 + h5) <= room
    hal_host.reset()
    hal_host.adc_read_us[0] = 40
    i_parts = [(amp, 1, -phi), (amp * h3, 3, p3 - 3 * phi), (amp * h5, 5, p5 - 5 * phi)]
    hal_host.signals[36] = hal_host.Signal(bias, hz, i_parts, NOISE, 7)
    vamp = 230 / VCAL * 1000 * math.sqrt(2)
    hal_host.signals[39] = hal_host.Signal(V_BIAS, hz, [(vamp, 1, 0.0)], NOISE, 11)
    adc_v = hal_host.Adc(39) if with_v else None
    clamp = ct.Clamp(hal_host, hal_host.Adc(36), adc_v, ICAL, VCAL, 0.0, 2000, 50, 10)
    irms = ICAL * amp * norm / 1000
    vrms = 230.0
    power = vrms * ICAL * amp / 1000 / math.sqrt(2) * math.cos(phi)
    for _ in range(2):
        r = clamp.measure()
        assert not r.clipped
        assert abs(r.irms - irms) <= 0.01 * irms
        if not with_v:  # current only: whole cycles found on the current's own crossings
            assert r.vrms == 0.0 and r.cycles >= 9
            continue
        assert abs(r.vrms - vrms) <= 0.01 * vrms
        assert abs(r.power - power) <= 0.01 * r.apparent
        assert abs(r.pf - power / (vrms * irms)) <= 0.01
        assert r.cycles >= 9
