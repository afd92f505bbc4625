"""The demo's simulated world and the helpers that drive the emulators from it."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ems.timegrid import SLOT_MS, SLOTS_PER_DAY
from hardware.emulators.profiles import EnergyCounters
from tools.demo.checks import (
    billing_expected_wh,
    habit_draws,
    relay_energy_mwh,
    relay_plan_problems,
)
from tools.demo.supply import HomeSupply, RelayLog, relay_draw
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
@given(st.lists(st.tuples(st.integers(0, 900), st.integers(0, 900), st.booleans()), min_size=4,
                max_size=8))
def test_the_billing_meter_follows_what_the_relay_really_did(
        slots: list[tuple[int, int, bool]]) -> None:
    """The billing meter integrates base - PV + the switched appliance as its relay really
    was; the parts checks.py adds up give the same import and export per slot."""
    t0 = 1_782_000_000_000 - 1_782_000_000_000 % SLOT_MS
    base = [b * 1000 for b, _, _ in slots] + [0] * (SLOTS_PER_DAY - len(slots))
    pv = [p * 1000 for _, p, _ in slots] + [0] * (SLOTS_PER_DAY - len(slots))
    relay = RelayLog("PT0001", "Water Heater", 1500, [(t0 + k * SLOT_MS, on)
                                                   for k, (_, _, on) in enumerate(slots)])
    supply = HomeSupply(t0, base, pv, [relay_draw(relay)])
    drawn = relay_energy_mwh(relay, habit_draws(None), t0, len(slots))
    counters = EnergyCounters(supply.power_w)
    counters.at(t0)
    for k in range(len(slots)):
        before = (counters.import_mwh, counters.export_mwh)
        counters.at(t0 + (k + 1) * SLOT_MS)
        net = base[k] - pv[k] + (375_000 if slots[k][2] else 0)  # 1500 W for 15 min if on
        assert abs(counters.import_mwh - before[0] - max(0, net)) <= 100
        assert abs(counters.export_mwh - before[1] - max(0, -net)) <= 100
        assert drawn[k] == (375_000 if slots[k][2] else 0)
    imp, exp = billing_expected_wh(supply, [drawn], len(slots))
    assert abs(imp - counters.import_mwh / 1000) <= 1 and abs(exp - counters.export_mwh / 1000) <= 1


def test_a_relay_that_did_other_than_confirmed_shows_in_the_checks() -> None:
    t0 = 0
    plan_on = {1, 2}
    confirmed = RelayLog("PT0002", "Dish Washer", 1000, [(0, False), (SLOT_MS, True),
                                                       (3 * SLOT_MS, False)])
    assert relay_plan_problems({("PT0002", "Dish Washer"): confirmed},
                               {("PT0002", "Dish Washer"): plan_on}, t0, 4) == []
    stuck = RelayLog("PT0002", "Dish Washer", 1000, [(0, False)])  # no command got through
    assert relay_plan_problems({("PT0002", "Dish Washer"): stuck},
                               {("PT0002", "Dish Washer"): plan_on}, t0, 4) == [
        "PT0002 Dish Washer: confirmed state differs from the plan in 2 slots (first at slot 1)"]
    # a habit-driven appliance draws only in its owner's slots, as far as the relay lets it
    assert relay_energy_mwh(confirmed, habit_draws({2, 3}), t0, 4) == [0, 0, 250_000, 0]
    assert confirmed.on_ms(SLOT_MS // 2, 5 * SLOT_MS) == 2 * SLOT_MS


def test_channel_curve_steps_only_on_changes() -> None:
    curve = channel_curve([0, 0, 2300, 2300, 0], 900)
    assert curve == [[0, 0.0, 1.0], [1800, 10.0, 1.0], [3600, 0.0, 1.0]]
    assert channel_curve([], 900) == [[0, 0.0, 1.0]]
    assert channel_curve([2300, 0], 900, 300) == [[0, 0.0, 1.0], [300, 10.0, 1.0],
                                                  [1200, 0.0, 1.0]]
