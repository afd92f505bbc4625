"""The demo's simulated world and the helpers that drive the emulators from it."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ems.timegrid import SLOT_MS, SLOTS_PER_DAY
from hardware.emulators.profiles import EnergyCounters
from tools.demo.edge import slot_profile
from tools.demo.vmnode import channel_curve
from tools.demo.world import build_community, fixed_mwh, habit_schedule, pv_mwh, sun_factor

DAY = dt.date(2026, 6, 21)


def test_same_seed_same_community_other_seed_other_one() -> None:
    a, b, c = build_community(8, 3), build_community(8, 3), build_community(8, 4)
    key = [(h.role, h.pv_w, [x.name for x in h.appliances], h.habit_start) for h in a]
    assert key == [(h.role, h.pv_w, [x.name for x in h.appliances], h.habit_start) for h in b]
    assert key != [(h.role, h.pv_w, [x.name for x in h.appliances], h.habit_start) for h in c]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 30), seed=st.integers(0, 2**32 - 1))
def test_every_community_mixes_consumers_and_prosumers(n: int, seed: int) -> None:
    homes = build_community(n, seed)
    roles = {h.role for h in homes}
    assert roles == {"consumer", "prosumer"}
    assert all((h.pv_w > 0) == (h.role == "prosumer") for h in homes)
    assert all(h.flexible for h in homes)  # every home has something the EMS can move
    assert len({h.id_grid for h in homes}) == n


def test_sun_is_down_at_night_and_up_at_noon() -> None:
    assert sun_factor(DAY, 0) == 0.0  # 00:00-00:15 UTC in Lisbon
    noon = max(range(SLOTS_PER_DAY), key=lambda s: sun_factor(DAY, s))
    assert 12 * 4 <= noon <= 14 * 4  # solar noon in Lisbon is about 13:36 local, 12:36 UTC
    winter = max(sun_factor(dt.date(2026, 12, 21), s) for s in range(SLOTS_PER_DAY))
    assert winter < sun_factor(DAY, noon)


def test_pv_and_habits_fit_the_day() -> None:
    for h in build_community(6, 1):
        pv = pv_mwh(h, DAY)
        assert len(pv) == SLOTS_PER_DAY and min(pv) >= 0
        assert (sum(pv) > 0) == (h.pv_w > 0)
        assert min(fixed_mwh(h)) > 0  # the fridge and standby never stop
        for name, slots in habit_schedule(h).items():
            a = next(x for x in h.appliances if x.name == name)
            assert set(slots) <= set(a.window_positions())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 900), st.integers(0, 900)), min_size=4, max_size=8))
def test_meter_profile_integrates_to_the_slot_energies(slots: list[tuple[int, int]]) -> None:
    imp = [i if i >= e else 0 for i, e in slots]
    exp = [e if e > i else 0 for i, e in slots]
    t0 = 1_782_000_000_000 - 1_782_000_000_000 % SLOT_MS
    counters = EnergyCounters(slot_profile(imp, exp, t0, SLOT_MS))
    counters.at(t0)
    for k in range(len(slots)):
        before = (counters.import_mwh, counters.export_mwh)
        counters.at(t0 + (k + 1) * SLOT_MS)
        got_imp = counters.import_mwh - before[0]
        got_exp = counters.export_mwh - before[1]
        assert abs(got_imp - imp[k] * 1000) <= 100 and abs(got_exp - exp[k] * 1000) <= 100


def test_channel_curve_steps_only_on_changes() -> None:
    curve = channel_curve([0, 0, 2300, 2300, 0], 900)
    assert curve == [[0, 0.0, 1.0], [1800, 10.0, 1.0], [3600, 0.0, 1.0]]
    assert channel_curve([], 900) == [[0, 0.0, 1.0]]
    assert channel_curve([2300, 0], 900, 300) == [[0, 0.0, 1.0], [300, 10.0, 1.0],
                                                  [1200, 0.0, 1.0]]
