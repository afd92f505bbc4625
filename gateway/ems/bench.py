"""``wattmesh bench ems``: MILP solve time for Table 8 over 96 slots, and savings against the
uncontrolled baseline and the greedy heuristic. Prints JSON. The headline figures are a prosumer
(3 kWp) on the bench date with its ridge forecasts; ``cases`` repeats the comparison for a
consumer, a producer (10 kWp) and a prosumer under a demand-response request."""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date, datetime
from typing import Any

from gateway.ems.appliances import REPAIRS, Appliance, table8
from gateway.ems.milp import native_stdout_to_stderr, solve
from gateway.ems.plan import DrRequest, compare
from gateway.ems.scenario import household_day, scenario_input
from gateway.ems.synthetic import Kind
from gateway.ems.tariff import Tariff


def run(day: date, repeats: int, repair: str) -> dict[str, Any]:
    apps, notes = table8(repair)  # type: ignore[arg-type]
    tariff = Tariff()
    scen = household_day(day)
    inp = scenario_input(apps, scen, tariff)
    result = compare(inp)
    times = [result.solve_s] + [solve(inp).solve_s for _ in range(repeats - 1)]
    plan = result.metrics["plan"]
    return {
        "solve_s": round(statistics.median(times), 4),
        "solve_s_max": round(max(times), 4),
        "repeats": repeats,
        "appliances": len(apps),
        "flexible": sum(a.flexible for a in apps),
        "slots": inp.n,
        "date": day.isoformat(),
        "repair": repair,
        "notes": notes,
        "savings_vs_baseline_utok": result.savings()["vs_baseline_utok"],
        "savings_vs_greedy_utok": result.savings().get("vs_greedy_utok"),
        "cost_utok": {k: v["cost_utok"] for k, v in result.metrics.items()},
        "peak_import_w": {k: v["peak_import_w"] for k, v in result.metrics.items()},
        "self_consumption": {k: v["self_consumption"] for k, v in result.metrics.items()},
        "cost_plan_utok": plan["cost_utok"],
        "cases": [_case(apps, day, kind, dr) for kind, dr in CASES],
    }


CASES: tuple[tuple[Kind, tuple[int, int, int] | None], ...] = (
    ("consumer", None),
    ("producer", None),
    ("prosumer", (2, 4, 2500)),  # the operator asks for at most 2.5 kW from 02:00 to 04:00
)


def _case(apps: list[Appliance], day: date, kind: Kind, dr: tuple[int, int, int] | None
          ) -> dict[str, Any]:
    requests = []
    if dr is not None:
        start = datetime(day.year, day.month, day.day, dr[0])
        requests.append(DrRequest(start, start.replace(hour=dr[1]), dr[2]))
    inp = scenario_input(apps, household_day(day, kind=kind), Tariff(), requests=requests)
    result = compare(inp)
    savings = result.savings()
    return {
        "household": kind,
        "request": None if dr is None else f"{dr[0]:02d}:00-{dr[1]:02d}:00<={dr[2]}W",
        "solve_s": round(result.solve_s, 4),
        "savings_vs_baseline_utok": savings["vs_baseline_utok"],
        "savings_vs_greedy_utok": savings.get("vs_greedy_utok"),  # None: greedy found no plan
        "peak_import_w": {k: v["peak_import_w"] for k, v in result.metrics.items()},
        "self_consumption": {k: v["self_consumption"] for k, v in result.metrics.items()},
    }


def cmd_bench(args: argparse.Namespace) -> int:
    with native_stdout_to_stderr():
        out = run(args.date, args.repeats, args.repair)
    print(json.dumps(out, indent=2 if args.json else None))
    return 0


def register_bench(bench_subparsers: Any) -> None:
    p = bench_subparsers.add_parser("ems", help="EMS MILP solve time and savings (Table 8)")
    p.add_argument("--json", action="store_true", help="indented JSON (output is JSON anyway)")
    p.add_argument("--date", type=date.fromisoformat, default=date(2026, 6, 15))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--repair", choices=REPAIRS[1:], default="widen")
    p.set_defaults(func=cmd_bench)
