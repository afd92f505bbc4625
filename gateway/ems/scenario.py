"""One household's day as the CLI and the benchmark plan it: synthetic history up to the day,
forecasts of its load and PV from that history, the appliances, the tariff and any requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

from gateway.ems.appliances import Appliance
from gateway.ems.forecast import MIN_HISTORY, Model, forecast
from gateway.ems.plan import DEFAULT_LIMIT_W, Community, DrRequest, day_input
from gateway.ems.problem import IntArray, PlanInput
from gateway.ems.synthetic import Kind, household_profile
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import SLOTS_PER_DAY

HISTORY_DAYS = 42


@dataclass(frozen=True, slots=True, eq=False)
class DayScenario:
    day: date
    base_wh: IntArray  # forecast load of the household besides the planned appliances
    pv_wh: IntArray  # forecast PV
    actual_base_wh: IntArray
    actual_pv_wh: IntArray


def household_day(day: date, *, kind: Kind = "prosumer", seed: int = 1,
                  model: Model | None = "ridge") -> DayScenario:
    """Forecast ``day`` from ``HISTORY_DAYS`` days of synthetic history (``model`` None: use the
    actual values, a perfect forecast)."""
    days = max(HISTORY_DAYS, MIN_HISTORY // SLOTS_PER_DAY + 14)
    prof = household_profile(kind, seed, day - timedelta(days=days), days + 1)
    cut = days * SLOTS_PER_DAY
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if model is None:
        base, pv = prof.load_wh[cut:], prof.pv_wh[cut:]
    else:
        base = forecast(prof.load_wh[:cut], start, SLOTS_PER_DAY, model)
        pv = forecast(prof.pv_wh[:cut], start, SLOTS_PER_DAY, model)
    return DayScenario(day=day, base_wh=np.asarray(base, dtype=np.int64),
                       pv_wh=np.asarray(pv, dtype=np.int64),
                       actual_base_wh=prof.load_wh[cut:], actual_pv_wh=prof.pv_wh[cut:])


def scenario_input(appliances: Sequence[Appliance], scen: DayScenario, tariff: Tariff, *,
                   limit_w: int = DEFAULT_LIMIT_W, requests: Sequence[DrRequest] = (),
                   community: Community | None = None) -> PlanInput:
    return day_input(appliances, scen.base_wh, scen.pv_wh, tariff, scen.day, limit_w=limit_w,
                     requests=requests, community=community)
