"""Build a plan's inputs from appliances, forecasts, tariff, requests and trades; solve; compare
with the uncontrolled baseline and the greedy heuristic.

``day_input`` plans one day as a repeating daily cycle (a window such as the EV's 19:00 to 06:00
wraps past midnight onto the same day's morning), which is what the paper's Figure 8 shows and
what ``wattmesh ems plan --date`` prints. ``horizon.py`` builds rolling, linear horizons for the
gateway's re-planning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import numpy as np

from gateway.ems.appliances import Appliance
from gateway.ems.greedy import baseline, greedy
from gateway.ems.milp import solve
from gateway.ems.problem import (
    PEAK_WEIGHT,
    IntArray,
    Job,
    PlanError,
    PlanInput,
    Schedule,
    evaluate,
    job_load,
)
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import (
    SLOT_MIN,
    SLOTS_PER_DAY,
    SLOTS_PER_HOUR,
    listing_id,
    slot_energy_mwh,
    slot_times,
)

DEFAULT_LIMIT_W = 6900  # a common contracted power in Portugal (6.9 kVA)


@dataclass(frozen=True, slots=True)
class DrRequest:
    """The grid operator asks the home to import at most ``max_w`` from ``start`` to ``end``."""

    start: datetime
    end: datetime
    max_w: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise PlanError(f"demand-response request ends ({self.end:%H:%M}) before it starts "
                            f"({self.start:%H:%M})")
        if isinstance(self.max_w, bool) or not isinstance(self.max_w, int) or self.max_w < 0:
            raise PlanError("demand-response limit must be a non-negative integer of W")


@dataclass(frozen=True, slots=True)
class Commitment:
    """A cleared listing: energy this home bought or sold for that hour at the clearing price."""

    listing_id: str
    bought_wh: int = 0
    sold_wh: int = 0
    mcp: int = 0


@dataclass(frozen=True, slots=True)
class Community:
    """What the home expects of the community market, per hour of day (24 values) or for every
    hour (one value). ``price`` None means the middle of the tariff band."""

    price: Sequence[int] | None = None
    buy_wh: Sequence[int] = (0,)
    sell_wh: Sequence[int] = (0,)


@dataclass(slots=True)
class Comparison:
    plan: Schedule
    inp: PlanInput
    solve_s: float
    metrics: dict[str, dict[str, int | float]] = field(default_factory=dict)

    def savings(self) -> dict[str, int]:
        cost = {k: int(v["cost_utok"]) for k, v in self.metrics.items()}
        return {f"vs_{k}_utok": cost[k] - cost["plan"] for k in cost if k != "plan"}


def _per_hour(values: Sequence[int], hours: int, what: str) -> list[int]:
    if len(values) == 1:
        return [int(values[0])] * hours
    if len(values) != hours:
        raise PlanError(f"{what}: expected 1 or {hours} hourly values, got {len(values)}")
    return [int(v) for v in values]


def _check_profile(name: str, values: Sequence[int] | IntArray, n: int) -> IntArray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise PlanError(f"{name}: expected {n} slot values, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise PlanError(f"{name}: slot energies must be non-negative integers (Wh)")
    return arr.astype(np.int64) * 1000


def day_jobs(appliances: Sequence[Appliance]) -> tuple[Job, ...]:
    jobs = []
    for a in appliances:
        jobs.append(Job(
            name=a.name, power_w=a.power_w, window=tuple(a.window_positions()),
            slots=a.run_slots, storage=a.storage, flexible=a.flexible,
            min_on=a.min_on_min // SLOT_MIN, min_off=a.min_off_min // SLOT_MIN,
            fixed_pos=None if a.flexible else 0,
        ))
    return tuple(jobs)


def day_input(
    appliances: Sequence[Appliance],
    base_wh: Sequence[int] | IntArray,
    pv_wh: Sequence[int] | IntArray,
    tariff: Tariff,
    day: date,
    *,
    limit_w: int = DEFAULT_LIMIT_W,
    requests: Sequence[DrRequest] = (),
    community: Community | None = None,
    commitments: Sequence[Commitment] = (),
    peak_weight: float = PEAK_WEIGHT,
) -> PlanInput:
    """Inputs of a one-day plan (96 slots from midnight UTC of ``day``)."""
    n = SLOTS_PER_DAY
    if isinstance(limit_w, bool) or not isinstance(limit_w, int) or limit_w <= 0:
        raise PlanError("contracted power limit must be a positive integer of W")
    start = datetime.combine(day, time(0), tzinfo=None)
    times = slot_times(start, n)
    limit = np.full(n, slot_energy_mwh(limit_w), dtype=np.int64)
    for req in requests:
        s = _naive(req.start)
        e = _naive(req.end)
        hit = [i for i, t in enumerate(times) if s <= t < e]
        if not hit:
            raise PlanError(f"demand-response request {s:%Y-%m-%d %H:%M} to {e:%H:%M} lies "
                            f"outside the planned day {day}")
        for i in hit:
            limit[i] = min(limit[i], slot_energy_mwh(req.max_w))
    hours = n // SLOTS_PER_HOUR
    comm = community or Community()
    price = (_per_hour(comm.price, hours, "community price") if comm.price is not None
             else [tariff.community_midpoint(h) for h in range(hours)])
    retail = [tariff.retail(h) for h in range(hours)]
    for h in range(hours):
        if not tariff.feed_in <= price[h] <= retail[h]:
            raise PlanError(f"expected community price {price[h]} at {h:02d}:00 lies outside "
                            f"the band {tariff.feed_in}..{retail[h]}")
    bought = [0] * hours
    sold = [0] * hours
    for c in commitments:
        t = datetime.strptime(c.listing_id, "%Y-%m-%dT%H") if _is_listing(c.listing_id) else None
        if t is None or t.date() != day:
            raise PlanError(f"commitment {c.listing_id!r} is not an hour of {day}")
        if c.bought_wh < 0 or c.sold_wh < 0:
            raise PlanError(f"commitment {c.listing_id}: negative energy")
        bought[t.hour] += c.bought_wh * 1000
        sold[t.hour] += c.sold_wh * 1000
    return PlanInput(
        jobs=day_jobs(appliances),
        base_mwh=_check_profile("base load", base_wh, n),
        pv_mwh=_check_profile("PV", pv_wh, n),
        limit_mwh=limit,
        group=np.arange(n, dtype=np.int64) // SLOTS_PER_HOUR,
        retail=np.array(retail, dtype=np.int64),
        feed_in=np.full(hours, tariff.feed_in, dtype=np.int64),
        community_price=np.array(price, dtype=np.int64),
        community_buy_mwh=np.array(_per_hour(comm.buy_wh, hours, "community buy"),
                                   dtype=np.int64) * 1000,
        community_sell_mwh=np.array(_per_hour(comm.sell_wh, hours, "community sell"),
                                    dtype=np.int64) * 1000,
        bought_mwh=np.array(bought, dtype=np.int64),
        sold_mwh=np.array(sold, dtype=np.int64),
        peak_weight=peak_weight,
        labels=tuple(t.strftime("%Y-%m-%d %H:%M") for t in times),
    )


def _is_listing(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%dT%H")
    except ValueError:
        return False
    return True


def _naive(t: datetime) -> datetime:
    """Plans are in UTC; an aware time is converted, a naive one is taken as UTC."""
    return t if t.tzinfo is None else t.astimezone(UTC).replace(tzinfo=None)


def compare(inp: PlanInput) -> Comparison:
    """Solve the MILP and measure it against the uncontrolled baseline and the greedy heuristic.
    The baseline is measured even where it breaks the limit (that is what happens without an
    EMS); the greedy heuristic is reported as None when it finds no feasible placement."""
    sol = solve(inp)
    out = Comparison(plan=sol.schedule, inp=inp, solve_s=sol.solve_s)
    out.metrics["plan"] = evaluate(inp, sol.schedule).as_dict()
    out.metrics["baseline"] = evaluate(inp, baseline(inp)).as_dict()
    try:
        out.metrics["greedy"] = evaluate(inp, greedy(inp)).as_dict()
    except PlanError:
        pass
    return out


def hourly_net_wh(inp: PlanInput, schedule: Schedule) -> list[int]:
    """Planned net import (+) or export (-) per price group, in Wh: what the agent trades."""
    net = inp.base_mwh + job_load(inp, schedule) - inp.pv_mwh
    out = []
    for g in range(inp.groups):
        total = int(net[inp.group == g].sum())
        out.append(total // 1000 if total >= 0 else -(-total // 1000))  # truncate toward zero
    return out


def listing_ids(day: date) -> list[str]:
    start = datetime.combine(day, time(0))
    return [listing_id(start + timedelta(hours=h)) for h in range(24)]
