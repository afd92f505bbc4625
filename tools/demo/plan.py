"""Each home's day plan from the EMS (``gateway.ems``): the MILP schedule of its flexible
appliances against tariff and PV, next to the habit (what happens without an EMS).

The demo plans one day ahead per home, as the paper's Figure 8 shows; the trading agent then
offers or bids each hour's planned surplus or deficit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.ems.milp import solve
from gateway.ems.plan import day_input
from gateway.ems.problem import PlanError
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import SLOTS_PER_HOUR
from tools.demo.economics import Tariffs
from tools.demo.world import Home, fixed_mwh, habit_schedule, load_mwh, pv_mwh

LIMITS_W = (6900, 10350, 13800)  # contracted power tried in turn if a home's plan is infeasible


@dataclass
class HomePlan:
    home: Home
    habit: dict[str, list[int]]
    schedule: dict[str, list[int]]
    pv_mwh: list[int]
    load_before_mwh: list[int]
    load_after_mwh: list[int]
    solve_s: float
    note: str = ""

    def net_wh(self, hour: int) -> int:
        """Planned net import (+) or export (-) in the hour of the day, Wh."""
        lo = hour * SLOTS_PER_HOUR
        total = sum(self.load_after_mwh[lo:lo + SLOTS_PER_HOUR]) - sum(
            self.pv_mwh[lo:lo + SLOTS_PER_HOUR])
        return int(total / 1000)


def ems_tariff(t: Tariffs) -> Tariff:
    return Tariff(feed_in=t.feed_in, retail_peak=t.retail_peak, retail_offpeak=t.retail_offpeak,
                  peak_start_h=t.peak_hours[0], peak_end_h=t.peak_hours[1])


def plan_home(home: Home, date: dt.date, tariffs: Tariffs) -> HomePlan:
    pv = pv_mwh(home, date)
    base = fixed_mwh(home)
    habit = habit_schedule(home)
    schedule = habit
    solve_s = 0.0
    note = "no flexible appliance"
    if home.flexible:
        note = "EMS plan infeasible at every contracted power: habit kept"
        for limit in LIMITS_W:
            try:
                inp = day_input(home.flexible, [b // 1000 for b in base], [p // 1000 for p in pv],
                                ems_tariff(tariffs), date, limit_w=limit)
                sol = solve(inp, time_limit_s=10.0)
            except PlanError:
                continue
            schedule = {name: [int(i) for i, on in enumerate(vec) if on]
                        for name, vec in sol.schedule.items()}
            solve_s = sol.solve_s
            note = "" if limit == LIMITS_W[0] else f"planned at {limit} W contracted power"
            break
    return HomePlan(
        home=home, habit=habit, schedule=schedule, pv_mwh=pv,
        load_before_mwh=load_mwh(home, habit), load_after_mwh=load_mwh(home, schedule),
        solve_s=solve_s, note=note,
    )
