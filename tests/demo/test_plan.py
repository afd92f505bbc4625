"""Each home's forecast and plan: learnt from past days (not the demo day's truth), honouring
the demand-response request, and the agent's hourly energy taken from the forecast."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.ems.timegrid import SLOTS_PER_DAY, SLOTS_PER_HOUR
from ledger.contract import default_genesis
from ledger.keys import new_key, public_hex
from tools.demo.economics import Tariffs
from tools.demo.plan import (
    DemandResponse,
    HomePlan,
    forecast_error,
    home_forecast,
    plan_home,
)
from tools.demo.world import build_community, fixed_mwh, past_day, pv_mwh

DAY = dt.date(2026, 6, 21)
TARIFFS = Tariffs.from_params(
    default_genesis(public_hex(new_key()), clearing_rule="paper")["params"]
)
DR = DemandResponse(18, 20, 1500)


@pytest.fixture(scope="module")
def plans() -> list[HomePlan]:
    return [plan_home(h, DAY, TARIFFS, 5, DR) for h in build_community(6, 5)]


def test_past_days_are_seeded_and_differ_from_the_demo_day() -> None:
    home = build_community(4, 2)[1]
    a = past_day(home, 2, DAY - dt.timedelta(days=1))
    assert a == past_day(home, 2, DAY - dt.timedelta(days=1))
    assert a != past_day(home, 2, DAY - dt.timedelta(days=2))
    assert a != past_day(home, 3, DAY - dt.timedelta(days=1))
    assert len(a[0]) == len(a[1]) == SLOTS_PER_DAY and min(a[0]) > 0
    assert (fixed_mwh(home), pv_mwh(home, DAY)) != past_day(home, 2, DAY)


def test_forecast_is_close_but_not_the_truth() -> None:
    for home in build_community(5, 9):
        load, pv = home_forecast(home, DAY, 9)
        assert len(load) == len(pv) == SLOTS_PER_DAY
        assert all(x >= 0 and x % 1000 == 0 for x in load + pv)  # whole Wh, as mWh
        truth = fixed_mwh(home)
        assert load != truth
        mae = sum(abs(f - t) for f, t in zip(load, truth, strict=True)) / SLOTS_PER_DAY
        assert mae < 0.6 * sum(truth) / SLOTS_PER_DAY  # learnt, not noise
        if not home.pv_w:
            assert not any(pv)
        else:
            assert pv[0] == 0 and max(pv) > 0  # no sun at midnight UTC in Lisbon


def test_the_day_s_forecast_error_is_reported(plans: list[HomePlan]) -> None:
    err = forecast_error(plans)
    assert set(err) == {"load", "pv", "net"}
    assert err["load"]["slots"] == err["net"]["slots"] == 6 * SLOTS_PER_DAY
    for e in err.values():
        assert e["mae_wh"] > 0 and 0 < e["nmae"] < 1


def test_agent_sizes_each_hour_from_the_forecast(plans: list[HomePlan]) -> None:
    p = plans[0]
    power = {a.name: a.power_w for a in p.home.appliances}
    for hour in range(24):
        lo, hi = hour * SLOTS_PER_HOUR, (hour + 1) * SLOTS_PER_HOUR
        flex = sum(power[n] * 1000 // SLOTS_PER_HOUR for n, slots in p.schedule.items()
                   for s in slots if lo <= s < hi)
        want = (sum(p.forecast_fixed_mwh[lo:hi]) + flex - sum(p.forecast_pv_mwh[lo:hi]))
        assert p.net_wh(hour) == int(want / 1000)
    real = [int((sum(p.load_after_mwh[h * 4:h * 4 + 4]) - sum(p.pv_mwh[h * 4:h * 4 + 4])) / 1000)
            for h in range(24)]
    assert [p.net_wh(h) for h in range(24)] != real  # the plan is not perfect foresight


def test_plans_honour_the_demand_response_request(plans: list[HomePlan]) -> None:
    met = 0
    for p in plans:
        assert p.dr_limit_w is not None, p.note
        planned = p.planned_load_mwh()
        for s in DR.slots():
            planned_import_w = (planned[s] - p.forecast_pv_mwh[s]) * 4 // 1000
            assert planned_import_w <= p.dr_limit_w, (p.home.id_grid, s)
        met += p.dr_limit_w == DR.home_limit_w(p.forecast_fixed_mwh)
    assert met >= len(plans) // 2  # most homes meet the request itself, not a relaxed one
    before = max(sum(p.load_before_mwh[s] for p in plans) for s in DR.slots())
    after = max(sum(p.load_after_mwh[s] for p in plans) for s in DR.slots())
    assert after < before
    # without the request the same homes plan a higher peak in the window
    free = [plan_home(p.home, DAY, TARIFFS, 5, None) for p in plans]
    assert all(f.dr_limit_w is None for f in free)
    peak_free = max(sum(f.planned_load_mwh()[s] for f in free) for s in DR.slots())
    assert max(sum(p.planned_load_mwh()[s] for p in plans) for s in DR.slots()) <= peak_free


def test_a_home_limit_never_falls_below_its_forecast_fixed_load() -> None:
    flat = [4000 * 1000 // 4] * SLOTS_PER_DAY  # 4 kW all day, mWh per slot
    assert DR.home_limit_w(flat) == 4200
    assert DR.home_limit_w([0] * SLOTS_PER_DAY) == 1500
