"""Load profiles and the energy counters the emulators derive from them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.emulators.profiles import DAY_MS, EnergyCounters, constant, parse_profile


def test_constant_power_integrates_exactly() -> None:
    c = EnergyCounters(constant(3_600.0))
    c.at(0)
    assert c.at(3_600_000) == (3_600_000, 0)  # 3.6 kW for an hour = 3.6 kWh = 3.6e6 mWh
    e = EnergyCounters(constant(-1_800.0))
    e.at(0)
    assert e.at(1_000_000) == (0, 500_000)


def test_shapes() -> None:
    house, pv = parse_profile("house"), parse_profile("pv")
    assert house(19 * 3_600_000 + 1_800_000) > house(3 * 3_600_000) > 0  # evening peak
    assert pv(12 * 3_600_000) < -3_900 and pv(2 * 3_600_000) == 0  # exports at noon only
    assert parse_profile("constant:42")(123) == 42


@pytest.mark.parametrize("spec", ["solar", "constant:", "constant:abc", ""])
def test_bad_profile_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="profile"):
        parse_profile(spec)


@given(st.sampled_from(["house", "pv", "prosumer"]), st.lists(st.integers(0, DAY_MS), max_size=20))
def test_counters_never_go_backwards(spec: str, times: list[int]) -> None:
    c = EnergyCounters(parse_profile(spec))
    last = (0, 0)
    for t in sorted(times):
        now = c.at(t)
        assert now[0] >= last[0] and now[1] >= last[1]
        last = now
