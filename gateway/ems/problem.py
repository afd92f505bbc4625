"""What the scheduler plans: jobs on a slot horizon, the household's other load and PV, limits,
prices and committed trades. Pure data plus the evaluation every planner shares (cost, peak,
self-consumption) and the constraint checker the tests run on every plan.

Energies are integer mWh per 15-minute slot, prices integer micro-tokens per kWh, costs integer
micro-tokens. Prices are per group of slots (the hour of the listing that settles them).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.ems.timegrid import MWH_PER_W_SLOT, slot_energy_mwh

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


# Micro-tokens per mWh of the day's highest slot import: 5 micro-tokens per Wh, a few thousand
# micro-tokens for a kilowatt of peak. Enough to matter beyond the solver's optimality gap, so
# that among plans of (almost) equal cost the flattest wins, as in the paper's Figure 8.
PEAK_WEIGHT = 0.005


class PlanError(ValueError):
    """Inputs that contradict each other or admit no plan; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Job:
    """One run of an appliance to place on the horizon.

    ``window`` lists the horizon slots it may use, in time order. A run job (``storage`` false)
    uses ``slots`` consecutive window positions; a storage job uses any ``slots`` positions in
    runs of at least ``min_on`` separated by gaps of at least ``min_off``. ``fixed_pos`` pins a
    run job's start position (non-flexible appliances, or a run already begun); ``forced_on``
    forces the first positions of a storage job on (a charge already running its minimum time).
    ``flexible`` false: the user's to run, never the plan's to shed (a flexible run pinned by
    ``fixed_pos`` may still be stopped when nothing else meets a limit).
    """

    name: str
    power_w: int
    window: tuple[int, ...]
    slots: int
    storage: bool = False
    flexible: bool = True
    min_on: int = 1
    min_off: int = 1
    fixed_pos: int | None = None
    forced_on: int = 0

    @property
    def slot_mwh(self) -> int:
        return slot_energy_mwh(self.power_w)

    @property
    def movable(self) -> bool:
        return self.flexible and self.fixed_pos is None


@dataclass(frozen=True, slots=True, eq=False)
class PlanInput:
    jobs: tuple[Job, ...]
    base_mwh: IntArray  # other household load per slot (forecast)
    pv_mwh: IntArray  # PV production per slot (forecast)
    limit_mwh: IntArray  # import limit per slot: contracted power and demand-response requests
    group: IntArray  # price group (hour) of each slot
    retail: IntArray  # per group: grid import price
    feed_in: IntArray  # per group: grid export price
    community_price: IntArray  # per group: expected community price
    community_buy_mwh: IntArray  # per group: energy the community is expected to sell us
    community_sell_mwh: IntArray  # per group: energy the community is expected to buy from us
    bought_mwh: IntArray  # per group: already bought in a cleared listing (paid, sunk)
    sold_mwh: IntArray  # per group: already sold in a cleared listing (shortfall costs retail)
    peak_weight: float = PEAK_WEIGHT
    labels: tuple[str, ...] = field(default=())  # optional slot names for messages

    @property
    def n(self) -> int:
        return int(self.base_mwh.shape[0])

    @property
    def groups(self) -> int:
        return int(self.retail.shape[0])

    def label(self, t: int) -> str:
        return self.labels[t] if t < len(self.labels) else f"slot {t}"


Schedule = dict[str, BoolArray]  # job name -> on per horizon slot


@dataclass(frozen=True, slots=True)
class Metrics:
    cost_utok: int
    peak_import_w: int
    peak_load_w: int
    import_wh: int
    export_wh: int
    self_consumption: float  # share of PV used in the home (1.0 when there is no PV)

    def as_dict(self) -> dict[str, int | float]:
        return {
            "cost_utok": self.cost_utok,
            "peak_import_w": self.peak_import_w,
            "peak_load_w": self.peak_load_w,
            "import_wh": self.import_wh,
            "export_wh": self.export_wh,
            "self_consumption": round(self.self_consumption, 4),
        }


def job_load(inp: PlanInput, schedule: Mapping[str, BoolArray]) -> IntArray:
    load = np.zeros(inp.n, dtype=np.int64)
    for job in inp.jobs:
        load += schedule[job.name].astype(np.int64) * job.slot_mwh
    return load


def _fill(amount: int, tranches: Sequence[tuple[int, int | None]]) -> int:
    """Price x energy (mWh x micro-tokens/kWh) of ``amount`` filled into tranches in order."""
    total = 0
    for price, cap in tranches:
        take = amount if cap is None else min(amount, cap)
        total += take * price
        amount -= take
        if amount <= 0:
            break
    return total


def evaluate(inp: PlanInput, schedule: Mapping[str, BoolArray]) -> Metrics:
    """Cost, peaks and self-consumption of a schedule, with net flows per slot.

    Imports of an hour fill, cheapest first: energy already bought in the community (sunk), the
    expected community offer, then the grid at retail. Exports fill the energy already sold
    (each missing mWh is bought at retail), the expected community demand, then the grid at
    feed-in. The sunk trade payments are left out: they are the same for every plan.
    """
    load = inp.base_mwh + job_load(inp, schedule)
    net = load - inp.pv_mwh
    imp = np.maximum(net, 0)
    exp = np.maximum(-net, 0)
    num = 0
    for g in range(inp.groups):
        mask = inp.group == g
        gi = int(imp[mask].sum())
        ge = int(exp[mask].sum())
        retail, c = int(inp.retail[g]), int(inp.community_price[g])
        num += _fill(gi, [(0, int(inp.bought_mwh[g])), (c, int(inp.community_buy_mwh[g])),
                          (retail, None)])
        sold = int(inp.sold_mwh[g])
        num += sold * retail  # shortfall against the sale, reduced by what is delivered below
        num -= _fill(ge, [(retail, sold), (c, int(inp.community_sell_mwh[g])),
                          (int(inp.feed_in[g]), None)])
    cost = (num + 500_000) // 1_000_000
    pv = int(inp.pv_mwh.sum())
    used = pv - int(exp.sum())
    return Metrics(
        cost_utok=cost,
        peak_import_w=int(imp.max(initial=0)) // MWH_PER_W_SLOT,
        peak_load_w=int(load.max(initial=0)) // MWH_PER_W_SLOT,
        import_wh=int(imp.sum()) // 1000,
        export_wh=int(exp.sum()) // 1000,
        self_consumption=1.0 if pv == 0 else used / pv,
    )


def _runs(on: Sequence[bool]) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    out: list[tuple[int, int]] = []
    start = None
    for i, v in enumerate(on):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i - start))
            start = None
    if start is not None:
        out.append((start, len(on) - start))
    return out


def check(inp: PlanInput, schedule: Mapping[str, BoolArray], *, limits: bool = True) -> list[str]:
    """Every constraint a plan breaks, as sentences (empty when the plan is valid)."""
    bad: list[str] = []
    for job in inp.jobs:
        on = schedule.get(job.name)
        if on is None or on.shape != (inp.n,):
            bad.append(f"{job.name}: missing from the schedule")
            continue
        inside = np.zeros(inp.n, dtype=bool)
        inside[list(job.window)] = True
        if (on & ~inside).any():
            bad.append(f"{job.name}: on outside its window")
        seq = [bool(on[t]) for t in job.window]
        count = sum(seq)
        if count != job.slots:
            bad.append(f"{job.name}: on for {count} slots, needs {job.slots}")
        runs = _runs(seq)
        if not job.storage:
            if len(runs) > 1:
                bad.append(f"{job.name}: run is split into {len(runs)} parts")
            if job.fixed_pos is not None and runs and runs[0][0] != job.fixed_pos:
                bad.append(f"{job.name}: fixed run moved from position {job.fixed_pos}")
        else:
            # a charge already running is the node's to finish first: its relay holds it on
            # for the minimum on time whatever the plan says, so a plan that has it off there
            # would count on energy the home is drawing
            if job.forced_on and not all(seq[:job.forced_on]):
                bad.append(f"{job.name}: running charge not kept on for its first "
                           f"{job.forced_on} slots")
            for k, (start, length) in enumerate(runs):
                first_forced = k == 0 and start == 0 and job.forced_on > 0
                if length < job.min_on and not first_forced:
                    bad.append(f"{job.name}: run of {length} slots, minimum on is {job.min_on}")
                if first_forced and length < job.forced_on:
                    bad.append(f"{job.name}: running charge stopped before its minimum on time")
            for (s0, l0), (s1, _) in itertools.pairwise(runs):
                gap = s1 - (s0 + l0)
                if gap < job.min_off:
                    bad.append(f"{job.name}: off for {gap} slots, minimum off is {job.min_off}")
    if limits:
        load = inp.base_mwh + job_load(inp, {j.name: schedule.get(j.name, np.zeros(inp.n, bool))
                                             for j in inp.jobs})
        over = np.nonzero(load - inp.pv_mwh > inp.limit_mwh)[0]
        for t in over[:5]:
            bad.append(f"{inp.label(int(t))}: import exceeds the limit")
    return bad


def fixed_schedule(inp: PlanInput, job: Job, pos: int) -> BoolArray:
    """On-vector of a contiguous block of ``job.slots`` window positions from ``pos``."""
    on = np.zeros(inp.n, dtype=bool)
    on[list(job.window[pos:pos + job.slots])] = True
    return on


def earliest(inp: PlanInput, job: Job) -> BoolArray:
    """The job at its earliest start (or its fixed start): the uncontrolled placement."""
    return fixed_schedule(inp, job, job.fixed_pos or 0)
