"""``wattmesh bench ems``: MILP solve time for Table 8 over 96 slots, and savings against the
uncontrolled baseline and the greedy heuristic. Prints JSON."""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from typing import Any

from gateway.ems.appliances import REPAIRS, table8
from gateway.ems.milp import native_stdout_to_stderr, solve
from gateway.ems.plan import compare
from gateway.ems.scenario import household_day, scenario_input
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
