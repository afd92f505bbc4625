import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ems.greedy import baseline, greedy
from gateway.ems.milp import solve, solve_shedding
from gateway.ems.problem import Job, PlanError, check, evaluate

from .helpers import on_slots, tiny


def test_run_goes_to_the_cheapest_contiguous_slots():
    job = Job("wash", power_w=4000, window=tuple(range(8)), slots=2)
    inp = tiny([job], retail=[50, 40, 30, 20, 25, 60, 10, 90])
    sol = solve(inp)
    # pairs: (3,4) = 20+25 = 45 is the cheapest adjacent pair; 6 alone is cheaper but lonely
    assert on_slots(sol.schedule["wash"]) == [3, 4]
    assert check(inp, sol.schedule) == []


def test_pv_surplus_pulls_the_load():
    job = Job("pump", power_w=2000, window=tuple(range(6)), slots=2)
    inp = tiny([job], retail=[30_000] * 6, pv_wh=[0, 0, 0, 500, 500, 0], feed_in=10_000)
    sol = solve(inp)
    assert on_slots(sol.schedule["pump"]) == [3, 4]
    metrics = evaluate(inp, sol.schedule)
    assert metrics.self_consumption == 1.0 and metrics.export_wh == 0


def test_limit_keeps_two_jobs_apart():
    a = Job("a", power_w=4000, window=tuple(range(4)), slots=2)
    b = Job("b", power_w=4000, window=tuple(range(4)), slots=2)
    inp = tiny([a, b], retail=[1, 2, 3, 4], limit_wh=1000)  # 1000 Wh/slot = 4 kW
    sol = solve(inp)
    assert sorted(on_slots(sol.schedule["a"]) + on_slots(sol.schedule["b"])) == [0, 1, 2, 3]
    assert check(inp, sol.schedule) == []


def test_storage_respects_minimum_on_and_off():
    ev = Job("ev", power_w=4000, window=tuple(range(8)), slots=4, storage=True,
             min_on=2, min_off=2)
    # cheap slots 0, 2, 4, 6 alternate: singletons are forbidden, so runs of two are needed
    inp = tiny([ev], retail=[1, 100, 1, 100, 1, 100, 1, 100])
    sol = solve(inp)
    assert check(inp, sol.schedule) == []
    on = on_slots(sol.schedule["ev"])
    assert len(on) == 4
    best = _brute(inp)
    assert evaluate(inp, sol.schedule).cost_utok == best


def test_a_charge_already_begun_is_kept_on():
    # the EV has been charging for one slot and must stay on two more, though those are dear
    ev = Job("ev", power_w=4000, window=tuple(range(6)), slots=3, storage=True,
             min_on=3, min_off=1, forced_on=2)
    inp = tiny([ev], retail=[100, 100, 1, 1, 1, 100])
    sol = solve(inp)
    assert on_slots(sol.schedule["ev"])[:2] == [0, 1]
    assert check(inp, sol.schedule) == []
    stopped = np.zeros(6, dtype=bool)
    stopped[2:5] = True  # cheaper, but drops the running charge
    assert any("running charge" in s for s in check(inp, {"ev": stopped}))


def test_committed_sale_pulls_load_away_and_purchase_pulls_it_in():
    job = Job("heater", power_w=2000, window=tuple(range(4)), slots=1)
    inp = tiny([job], retail=[50_000] * 4, pv_wh=[500] * 4)
    sold = inp.sold_mwh.copy()
    sold[:] = 500_000
    sold[2] = 0
    from dataclasses import replace
    sol = solve(replace(inp, sold_mwh=sold))
    assert on_slots(sol.schedule["heater"]) == [2]  # the only hour whose PV is not sold
    bought = inp.bought_mwh.copy()
    bought[1] = 500_000
    sol = solve(replace(inp, pv_mwh=inp.pv_mwh * 0, bought_mwh=bought))
    assert on_slots(sol.schedule["heater"]) == [1]  # energy already paid for


def test_fixed_jobs_do_not_move():
    fixed = Job("fridge", power_w=100, window=tuple(range(2, 8)), slots=3, flexible=False,
                fixed_pos=0)
    inp = tiny([fixed], retail=[1, 1, 99, 99, 99, 1, 1, 1])
    sol = solve(inp)
    assert on_slots(sol.schedule["fridge"]) == [2, 3, 4]


def test_contradictions_are_named():
    fixed = Job("oven", power_w=3000, window=(0, 1), slots=2, flexible=False, fixed_pos=0)
    with pytest.raises(PlanError, match="slot 0: the loads that cannot move"):
        solve(tiny([fixed], retail=[1, 1], limit_wh=500))
    big = Job("ev", power_w=7400, window=(0, 1, 2), slots=2)
    with pytest.raises(PlanError, match="ev: only 0 slots"):
        solve(tiny([big], retail=[1, 1, 1], limit_wh=1000))
    long = Job("ac", power_w=100, window=(0, 1), slots=3)
    with pytest.raises(PlanError, match="needs 3 slots but its window has 2"):
        solve(tiny([long], retail=[1, 1]))
    # each job fits alone, together they do not
    a = Job("a", power_w=4000, window=(0, 1), slots=2)
    b = Job("b", power_w=4000, window=(0, 1), slots=1)
    with pytest.raises(PlanError, match="no schedule meets every limit"):
        solve(tiny([a, b], retail=[1, 1], limit_wh=1000))


def test_shedding_serves_what_the_limits_leave_room_for():
    ev = Job("ev", power_w=4000, window=tuple(range(6)), slots=4, storage=True)
    wash = Job("wash", power_w=3000, window=(2, 3), slots=2)
    oven = Job("oven", power_w=3000, window=(5,), slots=1, flexible=False, fixed_pos=0)
    # 1000 Wh a slot is 4 kW: the EV fits in slots 0, 1 and 4 only, the washer nowhere, and
    # the oven alone exceeds the limit of slot 5
    inp = tiny([ev, wash, oven], retail=[9, 1, 1, 1, 1, 1],
               limit_wh=[1000, 1000, 500, 500, 1000, 500])
    with pytest.raises(PlanError):
        solve(inp)
    shed = solve_shedding(inp)
    schedule = shed.solution.schedule
    assert on_slots(schedule["ev"]) == [0, 1, 4]
    assert on_slots(schedule["wash"]) == [] and on_slots(schedule["oven"]) == [5]
    assert shed.served == {"ev": 3, "wash": 0}
    assert check(shed.inp, schedule) == []
    assert [j.name for j in shed.inp.jobs] == ["ev", "oven"]
    assert shed.inp.limit_mwh[5] == 750_000 and (shed.inp.limit_mwh[:5] == inp.limit_mwh[:5]).all()
    assert any("ev: shed, 3 of 4" in n for n in shed.notes)
    assert any("wash: shed, 0 of 2" in n for n in shed.notes)
    assert any(n.startswith("slot 5: the loads that cannot move") for n in shed.notes)


def test_shedding_stops_a_begun_run_of_ours_but_not_the_users_loads():
    pump = Job("pump", power_w=2000, window=(0, 1, 2), slots=3, fixed_pos=0)  # running, relay
    tv = Job("tv", power_w=2000, window=(0, 1, 2), slots=3, flexible=False, fixed_pos=0)
    inp = tiny([pump, tv], retail=[1, 1, 1], limit_wh=600)  # 2.4 kW: room for one of them
    with pytest.raises(PlanError):
        solve(inp)
    shed = solve_shedding(inp)
    assert on_slots(shed.solution.schedule["pump"]) == []
    assert on_slots(shed.solution.schedule["tv"]) == [0, 1, 2]
    assert shed.served == {"pump": 0} and check(shed.inp, shed.solution.schedule) == []


def _brute(inp):
    """Cheapest valid schedule by enumeration (tiny inputs only)."""
    options = []
    for job in inp.jobs:
        choices = []
        for combo in itertools.combinations(range(len(job.window)), job.slots):
            on = np.zeros(inp.n, dtype=bool)
            on[[job.window[p] for p in combo]] = True
            choices.append(on)
        options.append(choices)
    best = None
    for pick in itertools.product(*options):
        schedule = {j.name: on for j, on in zip(inp.jobs, pick, strict=True)}
        if check(inp, schedule):
            continue
        cost = evaluate(inp, schedule).cost_utok
        best = cost if best is None else min(best, cost)
    return best


@st.composite
def small_problems(draw):
    n = draw(st.integers(3, 7))
    jobs = []
    for k in range(draw(st.integers(1, 2))):
        lo = draw(st.integers(0, n - 1))
        hi = draw(st.integers(lo + 1, n))
        window = tuple(range(lo, hi))
        storage = draw(st.booleans())
        slots = draw(st.integers(1, len(window)))
        jobs.append(Job(
            f"j{k}", power_w=draw(st.sampled_from([400, 1000, 2000, 3600])), window=window,
            slots=slots, storage=storage,
            min_on=draw(st.integers(1, 2)) if storage else 1,
            min_off=draw(st.integers(1, 2)) if storage else 1,
            forced_on=draw(st.integers(0, min(slots, 2))) if storage else 0,
        ))
    retail = draw(st.lists(st.integers(20_000, 100_000), min_size=n, max_size=n))
    pv = draw(st.lists(st.sampled_from([0, 0, 200, 600]), min_size=n, max_size=n))
    base = draw(st.lists(st.integers(0, 300), min_size=n, max_size=n))
    limit = draw(st.sampled_from([700, 1500, 3000]))
    return tiny(jobs, retail, pv_wh=pv, base_wh=base, limit_wh=limit, feed_in=15_000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inp=small_problems())
def test_every_plan_honours_every_constraint_and_is_optimal(inp):
    best = _brute(inp)
    shed = solve_shedding(inp)  # plans whatever the limits, and only sheds when it must
    assert check(shed.inp, shed.solution.schedule) == []
    assert (shed.inp.limit_mwh >= inp.limit_mwh).all()
    try:
        sol = solve(inp)
    except PlanError:
        assert best is None, "the solver gave up on a problem with a valid schedule"
        return
    assert shed.served == {} and shed.inp.jobs == inp.jobs
    assert evaluate(inp, shed.solution.schedule).cost_utok == best
    assert check(inp, sol.schedule) == []
    assert best is not None
    assert evaluate(inp, sol.schedule).cost_utok == best
    try:
        g = greedy(inp)
    except PlanError:
        return
    assert check(inp, g) == []  # the heuristic is feasible, never cheaper than the optimum
    assert evaluate(inp, g).cost_utok >= best
    assert set(baseline(inp)) == {j.name for j in inp.jobs}


def test_native_prints_during_a_solve_go_to_stderr(capfd):
    import os

    from gateway.ems.milp import native_stdout_to_stderr

    with native_stdout_to_stderr():
        os.write(1, b"stray native line\n")
    print("json")
    out, err = capfd.readouterr()
    assert out == "json\n" and "stray native line" in err


def test_shedding_never_drops_a_load_that_fits_when_serving_it_moves_another():
    """Found by the property test: serving j1 (100 Wh in slot 0) pushes j0 (900 Wh a slot) from
    slots 0-1 into 1-2, the dearer one, which cost more than j1's own energy at the dearest
    price; a shed slot must cost more than the whole plan can change."""
    jobs = [
        Job("j0", power_w=3600, window=(0, 1, 2), slots=2),
        Job("j1", power_w=400, window=(0,), slots=1),
    ]
    inp = tiny(jobs, [20_000, 20_000, 25_000], pv_wh=[200] * 3, limit_wh=700, feed_in=15_000)
    solve(inp)  # a plan that serves both exists
    shed = solve_shedding(inp)
    assert shed.served == {}
    assert evaluate(inp, shed.solution.schedule).cost_utok == _brute(inp)
