"""Each home's day plan from the EMS (``gateway.ems``): forecast, then the MILP schedule of its
flexible appliances against tariff, forecast PV and the grid operator's demand-response request,
next to the habit (what happens without an EMS).

Forecasts: each home has ``HISTORY_DAYS`` of metered history before the demo day (the world's
past days, ``world.past_day``: their own sky, noise and habits). The EMS forecaster
(``gateway.ems.forecast``, ridge on lags and calendar terms) predicts the demo day's fixed load
and PV from it; the plan is made from the forecast, and the trading agent sizes each hour's offer
or bid from the forecast net energy. The real metered day is the world's demo day, so it differs
from the plan, and settlement's shortfall and excess rules act on the difference.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from gateway.ems.forecast import ForecastError, Model, forecast
from gateway.ems.milp import solve
from gateway.ems.plan import DrRequest, day_input
from gateway.ems.problem import PlanError
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import SLOTS_PER_DAY, SLOTS_PER_HOUR
from tools.demo.economics import Tariffs
from tools.demo.world import Home, fixed_mwh, habit_schedule, load_mwh, past_day, pv_mwh

LIMITS_W = (6900, 10350, 13800)  # contracted power tried in turn if a home's plan is infeasible
HISTORY_DAYS = 28  # two weeks of lags plus two weeks to train the ridge model on
FORECAST_MODEL: Model = "ridge"
# Above a home's forecast fixed load where that alone exceeds the demand-response request.
DR_MARGIN_W = 200
DR_RELAX_W = (0, 1000, 2500)  # looser limits tried in turn where a home cannot meet the request


@dataclass(frozen=True)
class DemandResponse:
    """The operator's request for the day: import at most ``max_w`` per home from ``start_h``
    to ``end_h`` (hours of the day, UTC; ``--dr``)."""

    start_h: int
    end_h: int
    max_w: int

    def slots(self) -> range:
        return range(self.start_h * SLOTS_PER_HOUR, self.end_h * SLOTS_PER_HOUR)

    def request(self, date: dt.date, max_w: int) -> DrRequest:
        day = dt.datetime.combine(date, dt.time(0))
        return DrRequest(start=day + dt.timedelta(hours=self.start_h),
                         end=day + dt.timedelta(hours=self.end_h), max_w=max_w)

    def home_limit_w(self, forecast_fixed_mwh: list[int]) -> int:
        """The home's limit: the request, or its forecast fixed load plus a margin where the
        EMS cannot go lower (it moves only flexible appliances)."""
        peak = max(forecast_fixed_mwh[s] for s in self.slots()) * 4 // 1000  # mWh/slot -> W
        return max(self.max_w, math.ceil((peak + DR_MARGIN_W) / 100) * 100)


@dataclass
class HomePlan:
    home: Home
    habit: dict[str, list[int]]
    schedule: dict[str, list[int]]
    pv_mwh: list[int]  # the real day (the world)
    load_before_mwh: list[int]
    load_after_mwh: list[int]
    solve_s: float
    note: str = ""
    forecast_fixed_mwh: list[int] = field(default_factory=list)  # what the EMS planned with
    forecast_pv_mwh: list[int] = field(default_factory=list)
    fixed_mwh: list[int] = field(default_factory=list)  # the real fixed load
    dr_limit_w: int | None = None  # the home's demand-response limit, None if not honoured

    def planned_load_mwh(self) -> list[int]:
        load = list(self.forecast_fixed_mwh)
        power = {a.name: a.power_w for a in self.home.appliances}
        for name, slots in self.schedule.items():
            for s in slots:
                load[s] += power[name] * 1000 // SLOTS_PER_HOUR
        return load

    def net_wh(self, hour: int) -> int:
        """Planned net import (+) or export (-) in the hour of the day, Wh, from the forecast."""
        lo = hour * SLOTS_PER_HOUR
        load = self.planned_load_mwh()
        total = sum(load[lo:lo + SLOTS_PER_HOUR]) - sum(
            self.forecast_pv_mwh[lo:lo + SLOTS_PER_HOUR])
        return int(total / 1000)


def ems_tariff(t: Tariffs) -> Tariff:
    return Tariff(feed_in=t.feed_in, retail_peak=t.retail_peak, retail_offpeak=t.retail_offpeak,
                  peak_start_h=t.peak_hours[0], peak_end_h=t.peak_hours[1])


def home_forecast(home: Home, date: dt.date, seed: int,
                  model: Model = FORECAST_MODEL) -> tuple[list[int], list[int]]:
    """The demo day's fixed load and PV (mWh per slot) forecast by the EMS from the home's
    history. The forecaster works in Wh per slot, as the gateway's intervals are."""
    fixed: list[int] = []
    pv: list[int] = []
    for back in range(HISTORY_DAYS, 0, -1):
        f, p = past_day(home, seed, date - dt.timedelta(days=back))
        fixed += [x // 1000 for x in f]
        pv += [x // 1000 for x in p]
    start = dt.datetime.combine(date, dt.time(0))
    try:
        f_wh = [int(x) for x in forecast(fixed, start, SLOTS_PER_DAY, model)]
        p_wh = ([int(x) for x in forecast(pv, start, SLOTS_PER_DAY, model)] if home.pv_w
                else [0] * SLOTS_PER_DAY)
    except ForecastError:  # cannot happen with HISTORY_DAYS of clean history; stay planning
        f_wh, p_wh = fixed[-SLOTS_PER_DAY:], pv[-SLOTS_PER_DAY:]
    return [x * 1000 for x in f_wh], [x * 1000 for x in p_wh]


def plan_home(home: Home, date: dt.date, tariffs: Tariffs, seed: int = 0,
              dr: DemandResponse | None = None) -> HomePlan:
    pv = pv_mwh(home, date)
    base = fixed_mwh(home)
    f_base, f_pv = home_forecast(home, date, seed)
    habit = habit_schedule(home)
    schedule = habit
    solve_s = 0.0
    note = "no flexible appliance"
    dr_limit = dr.home_limit_w(f_base) if dr is not None else None
    honoured: int | None = None
    if home.flexible:
        note = "EMS plan infeasible at every contracted power: habit kept"
        # The DR limit first; where the home's appliances cannot fit under it (a window that
        # lies inside the request), a looser one, and only then no limit at all.
        levels = [dr_limit + extra for extra in DR_RELAX_W] if dr_limit is not None else []
        attempts = [(limit, req) for req in [*levels, None] for limit in LIMITS_W]
        for limit, req_w in attempts:
            try:
                reqs = [dr.request(date, req_w)] if dr is not None and req_w is not None else []
                inp = day_input(home.flexible, [b // 1000 for b in f_base],
                                [p // 1000 for p in f_pv], ems_tariff(tariffs), date,
                                limit_w=limit, requests=reqs)
                sol = solve(inp, time_limit_s=10.0)
            except PlanError:
                continue
            schedule = {name: [int(i) for i, on in enumerate(vec) if on]
                        for name, vec in sol.schedule.items()}
            solve_s = sol.solve_s
            honoured = req_w
            notes = []
            if limit != LIMITS_W[0]:
                notes.append(f"planned at {limit} W contracted power")
            if dr_limit is not None and req_w is None:
                notes.append("demand-response limit not met by any plan")
            elif dr_limit is not None and req_w != dr_limit:
                notes.append(f"demand-response limit {dr_limit} W relaxed to {req_w} W")
            note = "; ".join(notes)
            break
    return HomePlan(
        home=home, habit=habit, schedule=schedule, pv_mwh=pv,
        load_before_mwh=load_mwh(home, habit), load_after_mwh=load_mwh(home, schedule),
        solve_s=solve_s, note=note, forecast_fixed_mwh=f_base, forecast_pv_mwh=f_pv,
        fixed_mwh=base, dr_limit_w=honoured,
    )


def forecast_error(plans: list[HomePlan]) -> dict[str, dict[str, float | int]]:
    """MAE (Wh per 15-minute slot) and nMAE (MAE over the mean actual) of the day's forecasts,
    over every home's slots: fixed load, PV (prosumers, daylight slots) and net load."""
    pairs: dict[str, list[tuple[int, int]]] = {"load": [], "pv": [], "net": []}
    for p in plans:
        for s in range(SLOTS_PER_DAY):
            pairs["load"].append((p.forecast_fixed_mwh[s], p.fixed_mwh[s]))
            if p.home.pv_w and (p.pv_mwh[s] or p.forecast_pv_mwh[s]):
                pairs["pv"].append((p.forecast_pv_mwh[s], p.pv_mwh[s]))
            pairs["net"].append((p.forecast_fixed_mwh[s] - p.forecast_pv_mwh[s],
                                 p.fixed_mwh[s] - p.pv_mwh[s]))
    out: dict[str, dict[str, float | int]] = {}
    for name, xs in pairs.items():
        if not xs:
            continue
        mae = sum(abs(f - a) for f, a in xs) / len(xs) / 1000
        mean = sum(abs(a) for _, a in xs) / len(xs) / 1000
        out[name] = {"mae_wh": round(mae, 2), "nmae": round(mae / mean, 4) if mean else 0.0,
                     "slots": len(xs)}
    return out
