"""Rolling plans for the running gateway: a linear horizon of slots from now, each appliance's
daily window occurrences cut to it, and what has already happened kept.

Absolute slot numbers count 15-minute slots since the Unix epoch (UTC). An occurrence of an
appliance is its window on one day, keyed ``"<name>@<YYYY-MM-DD>"`` by the day the window opens.
``Progress`` records, per occurrence, how many slots it has run and whether it is on now: a run
already begun is kept to the end (its remaining slots are pinned at the start of the horizon),
a storage load needs only the energy still missing and keeps a running charge on for its minimum
on time. A flexible occurrence whose window reaches past the horizon waits for a later re-plan
(it is "deferred"); one whose remaining window is too short is reported "missed".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np

from gateway.ems.appliances import Appliance
from gateway.ems.plan import Commitment, DrRequest
from gateway.ems.problem import PEAK_WEIGHT, BoolArray, IntArray, Job, PlanError, PlanInput
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import (
    SLOT_MIN,
    SLOT_MS,
    SLOTS_PER_DAY,
    SLOTS_PER_HOUR,
    dt_to_ms,
    listing_id,
    slot_energy_mwh,
)

EPOCH = date(1970, 1, 1)


@dataclass(slots=True)
class Progress:
    ran_slots: int = 0
    run_len: int = 0  # length of the current run (0 when off)
    on: bool = False


@dataclass(slots=True)
class HorizonState:
    progress: dict[str, Progress] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Occurrence:
    key: str
    appliance: Appliance
    start: int  # absolute slot the window opens
    end: int  # absolute slot after it closes


def occurrence_span(a: Appliance, key: str) -> tuple[int, int]:
    """Absolute slots ``[start, end)`` of the window of occurrence ``key`` of ``a``."""
    day = date.fromisoformat(key.split("@", 1)[1])
    start = (day - EPOCH).days * SLOTS_PER_DAY + a.start_slot
    return start, start + a.window_slots


def uncontrolled_on(a: Appliance, first: int, n: int) -> BoolArray:
    """Whether ``a`` is on in absolute slots ``first .. first+n-1`` when it runs from each
    window's start, as it does without an EMS (and as a non-flexible appliance always does)."""
    slots = np.arange(first, first + n, dtype=np.int64)
    on: BoolArray = (slots - a.start_slot) % SLOTS_PER_DAY < a.run_slots
    return on


def occurrences(a: Appliance, t0: int, n: int) -> list[Occurrence]:
    out = []
    for day in range(t0 // SLOTS_PER_DAY - 1, (t0 + n) // SLOTS_PER_DAY + 1):
        start = day * SLOTS_PER_DAY + a.start_slot
        end = start + a.window_slots
        if end <= t0 or start >= t0 + n:
            continue
        key = f"{a.name}@{(EPOCH + timedelta(days=day)).isoformat()}"
        out.append(Occurrence(key, a, start, end))
    return out


def build_jobs(appliances: Sequence[Appliance], t0: int, n: int, state: HorizonState
               ) -> tuple[list[Job], dict[str, str], list[str]]:
    """Jobs on the horizon [t0, t0+n), the occurrence key of each job, and notes."""
    jobs: list[Job] = []
    keys: dict[str, str] = {}
    notes: list[str] = []
    for a in appliances:
        for occ in occurrences(a, t0, n):
            if occ.key in state.done:
                continue
            prog = state.progress.get(occ.key, Progress())
            lo = max(occ.start, t0) - t0
            hi = min(occ.end, t0 + n) - t0
            min_on = a.min_on_min // SLOT_MIN
            min_off = a.min_off_min // SLOT_MIN
            job: Job | None = None
            if not a.flexible:
                # not ours to move: the user runs it from the window's start; we only plan around
                first = occ.start - t0
                cover = [p for p in range(first, first + a.run_slots) if 0 <= p < n]
                if cover:
                    job = Job(occ.key, a.power_w, tuple(cover), len(cover), flexible=False,
                              fixed_pos=0)
            elif not a.storage:
                if prog.ran_slots:
                    remaining = a.run_slots - prog.ran_slots
                    if remaining > 0 and prog.on:
                        # pinned where it runs, yet still ours: a limit no plan can otherwise
                        # meet may stop it (``milp.solve_shedding``)
                        rest = tuple(range(min(remaining, n)))
                        job = Job(occ.key, a.power_w, rest, len(rest), fixed_pos=0)
                    elif remaining > 0:
                        notes.append(f"{occ.key}: run interrupted after {prog.ran_slots} slots")
                elif occ.end > t0 + n:
                    notes.append(f"{occ.key}: deferred (window ends after the horizon)")
                elif hi - lo < a.run_slots:
                    notes.append(f"{occ.key}: missed (only {hi - lo} slots of window left)")
                else:
                    job = Job(occ.key, a.power_w, tuple(range(lo, hi)), a.run_slots)
            else:
                need = a.run_slots - prog.ran_slots
                if need <= 0:
                    continue
                if prog.ran_slots == 0 and not prog.on and occ.end > t0 + n:
                    notes.append(f"{occ.key}: deferred (window ends after the horizon)")
                    continue
                window = tuple(range(lo, hi))
                if need > len(window):
                    notes.append(f"{occ.key}: missed {need - len(window)} slots of charge")
                    need = len(window)
                forced = max(min_on - prog.run_len, 0) if prog.on else 0
                forced = min(forced, need)
                # the last bit of a charge may be shorter than the minimum on time: the relay
                # controller still holds the relay on for its minimum, the load then stops drawing
                min_on = min(min_on, need)
                job = Job(occ.key, a.power_w, window, need, storage=True, min_on=min_on,
                          min_off=min_off, forced_on=forced)
            if job is not None and job.slots > 0:
                jobs.append(job)
                keys[occ.key] = a.name
    return jobs, keys, notes


def advance(state: HorizonState, appliances: Sequence[Appliance], t0: int,
            ran: Mapping[str, bool]) -> None:
    """Record what happened in slot ``t0`` (``ran``: occurrence key -> was on) and retire
    occurrences that are complete or whose window has closed."""
    by_name = {a.name: a for a in appliances}
    for key, on in ran.items():
        prog = state.progress.setdefault(key, Progress())
        if on:
            prog.ran_slots += 1
            prog.run_len = prog.run_len + 1 if prog.on else 1
        else:
            prog.run_len = 0
        prog.on = on
        a = by_name.get(key.split("@", 1)[0])
        if a is not None and prog.ran_slots >= a.run_slots:
            state.done.add(key)
            state.progress.pop(key, None)
    for key in list(state.progress):
        a = by_name.get(key.split("@", 1)[0])
        if a is None:
            state.progress.pop(key)
            continue
        if occurrence_span(a, key)[1] <= t0 + 1:
            state.progress.pop(key)
            state.done.add(key)


def horizon_input(
    appliances: Sequence[Appliance],
    t0: int,
    base_wh: IntArray,
    pv_wh: IntArray,
    tariff: Tariff,
    state: HorizonState,
    *,
    limit_w: int,
    requests: Sequence[DrRequest] = (),
    commitments: Mapping[str, Commitment] | None = None,
    community_price: Mapping[str, int] | None = None,
    peak_weight: float = PEAK_WEIGHT,
) -> tuple[PlanInput, dict[str, str], list[str]]:
    """A plan input over ``len(base_wh)`` slots from absolute slot ``t0``; price groups are the
    delivery hours, named by listing id in the labels."""
    n = int(base_wh.shape[0])
    if pv_wh.shape != (n,):
        raise PlanError("load and PV forecasts differ in length")
    jobs, keys, notes = build_jobs(appliances, t0, n, state)
    t0_dt = datetime.fromtimestamp(t0 * SLOT_MS / 1000, tz=UTC)
    times = [t0_dt + timedelta(minutes=SLOT_MIN * i) for i in range(n)]
    hour0 = t0 // SLOTS_PER_HOUR
    group = np.array([(t0 + i) // SLOTS_PER_HOUR - hour0 for i in range(n)], dtype=np.int64)
    groups = int(group[-1]) + 1
    hours = [t0_dt.replace(minute=0) + timedelta(hours=g) for g in range(groups)]
    ids = [listing_id(h) for h in hours]
    limit = np.full(n, slot_energy_mwh(limit_w), dtype=np.int64)
    for req in requests:
        s = dt_to_ms(req.start if req.start.tzinfo else req.start.replace(tzinfo=UTC))
        e = dt_to_ms(req.end if req.end.tzinfo else req.end.replace(tzinfo=UTC))
        for i in range(n):
            slot_ms = (t0 + i) * SLOT_MS
            if s <= slot_ms < e:
                limit[i] = min(limit[i], slot_energy_mwh(req.max_w))
    commitments = commitments or {}
    prices = community_price or {}
    retail = [tariff.retail(h.hour) for h in hours]
    price = [min(max(prices.get(lid, tariff.community_midpoint(h.hour)), tariff.feed_in), r)
             for lid, h, r in zip(ids, hours, retail, strict=True)]
    zeros = np.zeros(groups, dtype=np.int64)
    inp = PlanInput(
        jobs=tuple(jobs),
        base_mwh=base_wh.astype(np.int64) * 1000,
        pv_mwh=pv_wh.astype(np.int64) * 1000,
        limit_mwh=limit,
        group=group,
        retail=np.array(retail, dtype=np.int64),
        feed_in=np.full(groups, tariff.feed_in, dtype=np.int64),
        community_price=np.array(price, dtype=np.int64),
        community_buy_mwh=zeros.copy(),
        community_sell_mwh=zeros.copy(),
        bought_mwh=np.array([commitments[i].bought_wh * 1000 if i in commitments else 0
                             for i in ids], dtype=np.int64),
        sold_mwh=np.array([commitments[i].sold_wh * 1000 if i in commitments else 0
                           for i in ids], dtype=np.int64),
        peak_weight=peak_weight,
        labels=tuple(t.strftime("%Y-%m-%d %H:%M") for t in times),
    )
    return inp, keys, notes


def group_listing_ids(t0: int, groups: int) -> list[str]:
    first = datetime.fromtimestamp(t0 * SLOT_MS / 1000, tz=UTC).replace(minute=0)
    return [listing_id(first + timedelta(hours=g)) for g in range(groups)]
