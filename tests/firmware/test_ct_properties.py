"""CT metering properties under CPython (ct.py and hal_host.py are in the common subset): random
loads, harmonics with random phases, mains frequency drift, DC bias and noise."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import ct, hal_host


@settings(max_examples=40, deadline=None)
@given(
    frac=st.floats(min_value=0.05, max_value=1.0),
    hz=st.floats(min_value=47.5, max_value=62.5),
    phi=st.floats(min_value=0.0, max_value=math.pi),
    h3=st.floats(min_value=0.0, max_value=0.15),
    h5=st.floats(min_value=0.0, max_value=0.08),
    p3=st.floats(min_value=0.0, max_value=2 * math.pi),
    p5=st.floats(min_value=0.0, max_value=2 * math.pi),
    bias=st.integers(min_value=1600, max_value=1700),
    with_v=st.booleans(),
)
def test_irms_power_pf_within_one_percent(
    frac: float, hz: float, phi: float, h3: float, h5: float, p3: float, p5: float, bias: int,
    with_v: bool,
) -> None:
    norm = math.sqrt((1 + h3 * h3 + h5 * h5) / 2)
    amp = frac * 1000 / norm
    if amp * (1 + h3 + h5) > 1590:  # keep the peaks inside the ADC range
        amp = 1590 / (1 + h3 + h5)
    hal_host.reset()
    hal_host.adc_delay_us[0] = 40
    i_parts = [(amp, 1, -phi), (amp * h3, 3, p3 - 3 * phi), (amp * h5, 5, p5 - 5 * phi)]
    hal_host.signals[36] = hal_host.Signal(bias, hz, i_parts, 3, 7)
    hal_host.signals[39] = hal_host.Signal(1650, hz, [(800 * math.sqrt(2), 1, 0.0)], 3, 11)
    adc_v = hal_host.Adc(39) if with_v else None
    clamp = ct.Clamp(hal_host, hal_host.Adc(36), adc_v, 30.0, 287.5, 1.08, 2000, 50, 10)
    irms = 30.0 * amp * norm / 1000
    vrms = 230.0
    power = vrms * 30.0 * amp / 1000 / math.sqrt(2) * math.cos(phi)
    for _ in range(2):
        r = clamp.measure()
        assert abs(r.irms - irms) <= 0.01 * irms
        if not with_v:  # current only: whole cycles found on the current's own crossings
            assert r.vrms == 0.0 and r.cycles >= 9
            continue
        assert abs(r.vrms - vrms) <= 0.01 * vrms
        assert abs(r.power - power) <= 0.01 * r.apparent
        assert abs(r.pf - power / (vrms * irms)) <= 0.01
        assert r.cycles >= 9
