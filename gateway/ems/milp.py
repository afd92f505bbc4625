"""The appliance schedule as a mixed-integer programme, solved by HiGHS (scipy.optimize.milp).

Variables: a start binary per allowed start position of each movable run job (contiguity by
construction); an on binary per window slot of each storage job with start/stop indicators for
minimum on and off times; grid import and export per slot (an import/export binary in slots with
PV, so a slot never imports and exports at once); per hour, the import and export split into
price tranches (already bought, community, grid); and the peak import. The objective is the
energy cost of ``problem.evaluate`` plus a small weight on the peak.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from gateway.ems.problem import (
    IntArray,
    Job,
    PlanError,
    PlanInput,
    Schedule,
    earliest,
)

SCALE = 1e-6  # objective in micro-tokens: mWh x micro-tokens/kWh x 1e-6
SWITCH_COST = 1.0  # micro-tokens per relay start of a storage load: a tie-breaker
MIP_GAP = 1e-4  # stop within 0.01 % of the optimum (a few hundred micro-tokens a day)


@dataclass(frozen=True, slots=True)
class Solution:
    schedule: Schedule
    solve_s: float
    objective: float


class _Model:
    def __init__(self) -> None:
        self.c: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integer: list[int] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.rlo: list[float] = []
        self.rhi: list[float] = []

    def var(self, cost: float, lo: float, hi: float, integer: bool = False) -> int:
        self.c.append(cost)
        self.lo.append(lo)
        self.hi.append(hi)
        self.integer.append(1 if integer else 0)
        return len(self.c) - 1

    def row(self, terms: list[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(self.rlo)
        for col, val in terms:
            self.rows.append(r)
            self.cols.append(col)
            self.vals.append(val)
        self.rlo.append(lo)
        self.rhi.append(hi)


def _check_shapes(inp: PlanInput) -> None:
    for job in inp.jobs:
        if job.slots > len(job.window):
            raise PlanError(f"{job.name}: needs {job.slots} slots but its window has "
                            f"{len(job.window)}")
        if len(set(job.window)) != len(job.window) or any(
                not 0 <= t < inp.n for t in job.window):
            raise PlanError(f"{job.name}: window has repeated or out-of-horizon slots")
        if job.fixed_pos is not None and job.fixed_pos + job.slots > len(job.window):
            raise PlanError(f"{job.name}: fixed start leaves the window")
        if job.forced_on > job.slots:
            raise PlanError(f"{job.name}: {job.forced_on} slots forced on but it needs only "
                            f"{job.slots}")


def _pinned(job: Job, shed: bool) -> bool:
    """Whether the job's load is fixed: not ours, or (unless shedding) ours but not movable."""
    return not job.flexible or not (shed or job.storage or job.movable)


def _pinned_load(inp: PlanInput, *, shed: bool) -> IntArray:
    """Net load of what no plan can move: the rest of the home less PV, and the pinned jobs
    (when shedding, also the forced start of a running charge, which its node holds on)."""
    fixed = inp.base_mwh - inp.pv_mwh
    for job in inp.jobs:
        if _pinned(job, shed):
            fixed = fixed + earliest(inp, job).astype(np.int64) * job.slot_mwh
        elif shed and job.storage and job.forced_on:
            fixed[list(job.window[:job.forced_on])] += job.slot_mwh
    return fixed


def precheck(inp: PlanInput) -> None:
    """Name the first contradiction that no placement can fix, before calling the solver."""
    _check_shapes(inp)
    fixed = _pinned_load(inp, shed=False)
    over = np.nonzero(fixed > inp.limit_mwh)[0]
    if over.size:
        t = int(over[0])
        raise PlanError(
            f"{inp.label(t)}: the loads that cannot move already need "
            f"{int(fixed[t]) // 250} W against a limit of {int(inp.limit_mwh[t]) // 250} W "
            f"({over.size} slots over the limit)")
    slack = inp.limit_mwh - fixed
    for job in inp.jobs:
        if not job.movable:
            continue
        fits = [t for t in job.window if slack[t] >= job.slot_mwh]
        if len(fits) < job.slots:
            raise PlanError(f"{job.name}: only {len(fits)} slots of its window leave room for "
                            f"{job.power_w} W under the limit; it needs {job.slots}")


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """Send what native code prints to stdout to stderr instead. Some HiGHS releases print a
    stray diagnostic line to stdout at random (ERGO-Code/HiGHS issue 2783); a command that
    prints JSON on stdout wraps its solves in this so that the JSON stays clean."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (embedded interpreter): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _arbitrage_groups(inp: PlanInput) -> list[bool]:
    """Per price group: could importing and exporting in the same slot pay? Only then does a
    slot need the binary that forbids it (it never pays when every export price is below every
    import price, the usual case without trades already cleared)."""
    out = []
    for g in range(inp.groups):
        sell = [int(inp.feed_in[g])]
        if inp.sold_mwh[g] > 0:
            sell.append(int(inp.retail[g]))
        if inp.community_sell_mwh[g] > 0:
            sell.append(int(inp.community_price[g]))
        buy = [int(inp.retail[g])]
        if inp.bought_mwh[g] > 0:
            buy.append(0)
        if inp.community_buy_mwh[g] > 0:
            buy.append(int(inp.community_price[g]))
        out.append(max(sell) >= min(buy))
    return out


def solve(inp: PlanInput, *, time_limit_s: float = 30.0) -> Solution:
    """Optimal schedule, or ``PlanError`` naming why there is none."""
    precheck(inp)
    sol, _ = _solve(inp, time_limit_s, shed=False)
    return sol


@dataclass(frozen=True, slots=True)
class Shedding:
    """A plan that meets the limits by serving flexible jobs only in part. ``inp`` is the input
    the schedule is valid for (``problem.check``): jobs cut to what is served (a job served not
    at all is left out, its schedule row all off) and limits raised to what the loads that
    cannot move need where they alone exceed them."""

    solution: Solution
    inp: PlanInput
    served: dict[str, int]  # job -> slots served, for each job not fully served
    notes: list[str]


def solve_shedding(inp: PlanInput, *, time_limit_s: float = 30.0) -> Shedding:
    """The plan for an input ``solve`` finds no plan for because of its limits (a demand-
    response request, the contracted power): flexible jobs run only where the limits leave
    room, as much of each as fits, and the cost of energy decides among such plans. Loads that
    cannot move (and a running charge within its minimum on time) are kept: where they alone
    exceed a limit, the limit is raised to them for those slots, since no control can do more.
    ``PlanError`` only for contradictions of the jobs themselves."""
    _check_shapes(inp)
    fixed = _pinned_load(inp, shed=True)
    limit = np.maximum(inp.limit_mwh, fixed)
    raised = np.nonzero(limit > inp.limit_mwh)[0]
    relaxed = replace(inp, limit_mwh=limit)
    sol, served = _solve(relaxed, time_limit_s, shed=True)
    notes: list[str] = []
    if raised.size:
        t = int(raised[0])
        notes.append(f"{inp.label(t)}: the loads that cannot move need {int(fixed[t]) // 250} W "
                     f"against a limit of {int(inp.limit_mwh[t]) // 250} W ({raised.size} "
                     f"slots); every flexible load is shed there")
    short = {j.name: served[j.name] for j in inp.jobs if served[j.name] < j.slots}
    jobs = []
    for job in inp.jobs:
        got = short.get(job.name, job.slots)
        if got == job.slots:
            jobs.append(job)
            continue
        notes.append(f"{job.name}: shed, {got} of {job.slots} slots fit under the limit")
        if got > 0:  # only storage jobs are served in part; a run job runs whole or not at all
            jobs.append(replace(job, slots=got))
    return Shedding(solution=sol, inp=replace(relaxed, jobs=tuple(jobs)), served=short,
                    notes=notes)


def _shed_cost(inp: PlanInput, job: Job) -> float:
    """Objective cost of one slot of ``job`` not served: more than the whole plan's cost can
    change by serving it, so that a plan sheds only what the limits leave no room for. Its own
    energy at the dearest price is not enough: serving it can push other jobs into dearer slots
    (a 100 Wh load in the one slot a 900 Wh one would have taken), so the bound is every job's
    energy at the dearest price, their peak and their relay starts, plus the job's own share
    (with slots equal, the plan serves the bigger job)."""
    dearest = max(int(inp.retail.max(initial=0)), int(inp.community_price.max(initial=0)),
                  int(inp.feed_in.max(initial=0)))

    def cost(j: Job) -> float:
        return j.slot_mwh * (dearest * SCALE + inp.peak_weight) + SWITCH_COST

    whole = sum(cost(j) * j.slots for j in inp.jobs)
    return 2.0 * (whole + cost(job)) + 1.0


def _solve(inp: PlanInput, time_limit_s: float, *, shed: bool
           ) -> tuple[Solution, dict[str, int]]:
    m = _Model()
    n = inp.n
    coverage: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    const = inp.base_mwh.astype(np.float64) - inp.pv_mwh
    starts: dict[str, list[tuple[int, int]]] = {}  # run job -> (position, var)
    ons: dict[str, list[int]] = {}  # storage job -> on var per window position
    for job in inp.jobs:
        e = float(job.slot_mwh)
        if not job.storage:
            if _pinned(job, shed):
                const = const + earliest(inp, job) * e
                continue
            choices = []
            positions = (range(len(job.window) - job.slots + 1) if job.fixed_pos is None
                         else [job.fixed_pos])
            for p in positions:
                v = m.var(0.0, 0, 1, integer=True)
                choices.append((p, v))
                for t in job.window[p:p + job.slots]:
                    coverage[t].append((v, e))
            skip = [(m.var(_shed_cost(inp, job) * job.slots, 0, 1), 1.0)] if shed else []
            m.row([(v, 1.0) for _, v in choices] + skip, 1, 1)
            starts[job.name] = choices
            continue
        if not job.flexible:
            const = const + earliest(inp, job) * e
            continue
        length = len(job.window)
        u = [m.var(0.0, 1 if p < job.forced_on else 0, 1, integer=True) for p in range(length)]
        ons[job.name] = u
        for p, t in enumerate(job.window):
            coverage[t].append((u[p], e))
        miss = ([(m.var(_shed_cost(inp, job), 0, job.slots - job.forced_on), 1.0)]
                if shed else [])
        m.row([(v, 1.0) for v in u] + miss, job.slots, job.slots)
        # Start and stop indicators with the tight minimum up/down-time inequalities of unit
        # commitment (Rajan and Takriti): u[p] - u[p-1] = y[p] - z[p]; a start in the last
        # min_on positions means on now; a stop in the last min_off positions means off now.
        # Each start costs a little, so that among equally cheap plans the one with fewer relay
        # switchings wins.
        ys: list[int] = []
        zs: list[int] = []
        for p in range(length):
            no_start = (p == 0 and job.forced_on > 0) or p > length - job.min_on
            ys.append(m.var(SWITCH_COST, 0, 0 if no_start else 1))
            zs.append(m.var(0.0, 0, 1))
            prev = [(u[p - 1], -1.0)] if p else []
            if p == 0 and job.forced_on:
                prev = []  # already running: u[-1] = 1, and u[0] = 1 is forced
                m.row([(ys[p], 1.0), (zs[p], -1.0)], 0, 0)
            else:
                m.row([(u[p], 1.0), *prev, (ys[p], -1.0), (zs[p], 1.0)], 0, 0)
            m.row([(ys[q], 1.0) for q in range(max(0, p - job.min_on + 1), p + 1)]
                  + [(u[p], -1.0)], -np.inf, 0)
            m.row([(zs[q], 1.0) for q in range(max(0, p - job.min_off + 1), p + 1)]
                  + [(u[p], 1.0)], -np.inf, 1)
    imp = [m.var(0.0, 0, float(inp.limit_mwh[t])) for t in range(n)]
    exp = [m.var(0.0, 0, float(max(inp.pv_mwh[t], 0))) for t in range(n)]
    arbitrage = _arbitrage_groups(inp)
    for t in range(n):
        m.row([(imp[t], 1.0), (exp[t], -1.0)] + [(v, -e) for v, e in coverage[t]],
              float(const[t]), float(const[t]))
        if inp.pv_mwh[t] > 0 and arbitrage[int(inp.group[t])]:
            w = m.var(0.0, 0, 1, integer=True)
            m.row([(exp[t], 1.0), (w, -float(inp.pv_mwh[t]))], -np.inf, 0)
            m.row([(imp[t], 1.0), (w, float(inp.limit_mwh[t]))], -np.inf,
                  float(inp.limit_mwh[t]))
    for g in range(inp.groups):
        slots = np.nonzero(inp.group == g)[0]
        retail = float(inp.retail[g]) * SCALE
        c = float(inp.community_price[g]) * SCALE
        ib = m.var(0.0, 0, float(inp.bought_mwh[g]))
        ic = m.var(c, 0, float(inp.community_buy_mwh[g]))
        ig = m.var(retail, 0, np.inf)
        m.row([(imp[t], 1.0) for t in slots] + [(ib, -1.0), (ic, -1.0), (ig, -1.0)], 0, 0)
        ed = m.var(-retail, 0, float(inp.sold_mwh[g]))
        ec = m.var(-c, 0, float(inp.community_sell_mwh[g]))
        eg = m.var(-float(inp.feed_in[g]) * SCALE, 0, np.inf)
        m.row([(exp[t], 1.0) for t in slots] + [(ed, -1.0), (ec, -1.0), (eg, -1.0)], 0, 0)
    peak = m.var(inp.peak_weight, 0, np.inf)
    for t in range(n):
        m.row([(peak, 1.0), (imp[t], -1.0)], 0, np.inf)

    a = coo_array((m.vals, (m.rows, m.cols)), shape=(len(m.rlo), len(m.c))).tocsr()
    began = time.perf_counter()
    res = milp(
        c=np.array(m.c),
        integrality=np.array(m.integer),
        bounds=Bounds(np.array(m.lo), np.array(m.hi)),
        constraints=LinearConstraint(a, np.array(m.rlo), np.array(m.rhi)),
        options={"time_limit": time_limit_s, "mip_rel_gap": MIP_GAP},
    )
    solve_s = time.perf_counter() - began
    if res.x is None:
        movable = ", ".join(j.name for j in inp.jobs if j.movable) or "none"
        raise PlanError(f"no schedule meets every limit ({res.message}); movable appliances: "
                        f"{movable}")
    x = res.x
    schedule: Schedule = {}
    for job in inp.jobs:
        if job.name in starts:
            on = np.zeros(n, dtype=bool)
            pos, v = max(starts[job.name], key=lambda pv: x[pv[1]])
            if x[v] > 0.5:  # otherwise shed: the run does not start at all
                on[list(job.window[pos:pos + job.slots])] = True
        elif job.name in ons:
            on = np.zeros(n, dtype=bool)
            for p, v in enumerate(ons[job.name]):
                if x[v] > 0.5:
                    on[job.window[p]] = True
        else:
            on = earliest(inp, job)
        schedule[job.name] = on
    served = {job.name: int(schedule[job.name].sum()) for job in inp.jobs}
    return Solution(schedule=schedule, solve_s=solve_s, objective=float(res.fun)), served


__all__ = ["Job", "PlanError", "Shedding", "Solution", "precheck", "solve", "solve_shedding"]
