"""The two schedules every plan is compared with: uncontrolled (each appliance at its earliest
start) and a greedy heuristic (largest flexible load first, each at its cheapest feasible place,
storage loads charged in one block)."""

from __future__ import annotations

import numpy as np

from gateway.ems.problem import PlanError, PlanInput, Schedule, earliest, evaluate, fixed_schedule


def baseline(inp: PlanInput) -> Schedule:
    """Every appliance at its earliest start; storage loads charge from the window's start."""
    return {job.name: earliest(inp, job) for job in inp.jobs}


def greedy(inp: PlanInput) -> Schedule:
    schedule = baseline(inp)
    movable = [j for j in inp.jobs if j.movable]
    for job in movable:
        schedule[job.name] = np.zeros(inp.n, dtype=bool)
    movable.sort(key=lambda j: (-j.slots * j.power_w, j.name))
    for job in movable:
        best: tuple[int, int] | None = None
        for pos in range(len(job.window) - job.slots + 1):
            trial = dict(schedule)
            trial[job.name] = fixed_schedule(inp, job, pos)
            if job.forced_on and pos != 0:
                continue
            load = inp.base_mwh - inp.pv_mwh
            for other in inp.jobs:
                load = load + trial[other.name].astype(np.int64) * other.slot_mwh
            if (load > inp.limit_mwh).any():
                continue
            cost = evaluate(inp, trial).cost_utok
            if best is None or cost < best[0]:
                best = (cost, pos)
        if best is None:
            raise PlanError(f"{job.name}: the greedy heuristic finds no place under the limit")
        schedule[job.name] = fixed_schedule(inp, job, best[1])
    return schedule
