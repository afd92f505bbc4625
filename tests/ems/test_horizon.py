from datetime import UTC, datetime

import numpy as np

from gateway.ems.appliances import parse_appliances
from gateway.ems.horizon import HorizonState, Progress, advance, build_jobs, horizon_input
from gateway.ems.milp import solve
from gateway.ems.plan import Commitment, DrRequest
from gateway.ems.problem import check
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import SLOT_MS

APPS, _ = parse_appliances({"appliances": [
    {"name": "ev", "flexible": True, "start": "19:00", "end": "06:00", "working_min": 360,
     "power_w": 3650, "storage": True, "energy_wh": 21900, "min_on_min": 30},
    {"name": "pump", "flexible": True, "start": "12:00", "end": "21:00", "working_min": 120,
     "power_w": 2000},
    {"name": "fridge", "flexible": False, "start": "00:00", "end": "24:00", "working_min": 1440,
     "power_w": 125},
]})


def slot(y, mo, d, h, mi=0):
    return int(datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp() * 1000) // SLOT_MS


def names(jobs):
    return {j.name: j for j in jobs}


def test_windows_are_cut_to_the_horizon_and_deferred_when_they_reach_past_it():
    t0 = slot(2026, 6, 15, 12)
    jobs, keys, notes = build_jobs(APPS, t0, 96, HorizonState())
    j = names(jobs)
    assert j["pump@2026-06-15"].window == tuple(range(0, 36))
    assert j["ev@2026-06-15"].window == tuple(range(28, 72))
    assert j["fridge@2026-06-15"].window == tuple(range(0, 48))  # rest of today's fridge
    assert j["fridge@2026-06-16"].window == tuple(range(48, 96))
    assert keys["ev@2026-06-15"] == "ev"
    t1 = slot(2026, 6, 15, 20)
    jobs, _, notes = build_jobs(APPS, t1, 24, HorizonState())  # ends 02:00, before 06:00
    assert "ev@2026-06-15" not in names(jobs)
    assert any("deferred" in n for n in notes)


def test_missed_and_running_jobs():
    t0 = slot(2026, 6, 15, 20)
    jobs, _, notes = build_jobs(APPS, t0, 96, HorizonState())
    assert "pump@2026-06-15" not in names(jobs)
    assert any("pump@2026-06-15: missed" in n for n in notes)
    state = HorizonState(progress={"pump@2026-06-15": Progress(ran_slots=3, run_len=3, on=True)})
    jobs, _, _ = build_jobs(APPS, t0, 96, state)
    pump = names(jobs)["pump@2026-06-15"]
    assert (pump.window, pump.slots, pump.fixed_pos, pump.movable) == ((0, 1, 2, 3, 4), 5, 0,
                                                                      False)
    state = HorizonState(progress={"ev@2026-06-15": Progress(ran_slots=5, run_len=1, on=True)})
    ev = names(build_jobs(APPS, t0, 96, state)[0])["ev@2026-06-15"]
    assert ev.slots == 19 and ev.forced_on == 1


def test_advance_counts_runs_and_retires_finished_occurrences():
    state = HorizonState()
    t = slot(2026, 6, 15, 13)
    for k in range(8):
        advance(state, APPS, t + k, {"pump@2026-06-15": True})
    assert "pump@2026-06-15" in state.done and "pump@2026-06-15" not in state.progress
    advance(state, APPS, slot(2026, 6, 16, 5, 45), {"ev@2026-06-15": False})
    assert "ev@2026-06-15" in state.done  # its window closed


def test_horizon_plan_with_commitments_and_a_request():
    t0 = slot(2026, 6, 15, 12)
    base = np.full(96, 100, dtype=np.int64)
    pv = np.zeros(96, dtype=np.int64)
    pv[:24] = 600  # sunny until 18:00
    req = DrRequest(datetime(2026, 6, 15, 22, tzinfo=UTC), datetime(2026, 6, 16, 2, tzinfo=UTC),
                    1500)
    commitments = {"2026-06-16T03": Commitment("2026-06-16T03", bought_wh=14_600)}
    inp, _keys, _ = horizon_input(APPS, t0, base, pv, Tariff(), HorizonState(), limit_w=6900,
                                 requests=[req], commitments=commitments)
    sol = solve(inp)
    assert check(inp, sol.schedule) == []
    ev = sol.schedule["ev@2026-06-15"]
    assert not ev[40:56].any()  # 22:00 to 02:00 under the request
    assert ev[60:64].all()  # the energy bought for 03:00 is used
    pump = np.nonzero(sol.schedule["pump@2026-06-15"])[0]
    assert pump.max() < 24  # in the sunshine
    assert inp.retail[0] == Tariff().retail_offpeak and inp.retail[1] == Tariff().retail_peak
    assert inp.labels[0] == "2026-06-15 12:00"
