"""``wattmesh ems plan`` and ``wattmesh ems backtest``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from gateway.ems.appliances import REPAIRS, SpecError, load_appliances
from gateway.ems.forecast import ForecastError, backtest
from gateway.ems.milp import native_stdout_to_stderr
from gateway.ems.plan import DEFAULT_LIMIT_W, Comparison, DrRequest, compare
from gateway.ems.problem import PlanError
from gateway.ems.scenario import household_day, scenario_input
from gateway.ems.synthetic import KINDS, household_profile
from gateway.ems.tariff import FEED_IN, RETAIL_OFFPEAK_DEFAULT, RETAIL_PEAK, Tariff, TariffError
from gateway.ems.timegrid import SLOT_MIN, SLOTS_PER_DAY
from ledger.argtypes import int_in


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date YYYY-MM-DD") from exc


_non_negative = int_in(0)


def parse_dr(value: str, day: date) -> DrRequest:
    """``HH:MM-HH:MM=W``: import at most W watts in that span of the planned day."""
    try:
        span, watts = value.split("=")
        first, last = span.split("-")
        start = _clock(first, day)
        end = _clock(last, day)
        max_w = int(watts)
    except ValueError as exc:
        raise PlanError(f"demand-response request {value!r} is not HH:MM-HH:MM=W") from exc
    return DrRequest(start=start, end=end, max_w=max_w)


def _clock(text: str, day: date) -> datetime:
    hh, mm = text.split(":")
    minutes = int(hh) * 60 + int(mm)
    if not 0 <= minutes <= 24 * 60 or int(mm) >= 60:
        raise ValueError(text)
    return datetime(day.year, day.month, day.day) + timedelta(minutes=minutes)


def _runs(on: np.ndarray) -> list[list[str]]:
    out: list[list[str]] = []
    t = 0
    n = on.shape[0]
    while t < n:
        if on[t]:
            s = t
            while t < n and on[t]:
                t += 1
            out.append([_hhmm(s * SLOT_MIN), _hhmm(t * SLOT_MIN)])
        else:
            t += 1
    return out


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def report(result: Comparison, notes: list[str], day: date) -> dict[str, Any]:
    inp = result.inp
    plan = result.metrics["plan"]
    return {
        "date": day.isoformat(),
        "cost_utok": plan["cost_utok"],
        "peak_w": plan["peak_import_w"],
        "savings": result.savings(),
        "metrics": result.metrics,
        "schedule": [
            {"name": job.name, "flexible": job.flexible, "power_w": job.power_w,
             "runs": _runs(result.plan[job.name])}
            for job in inp.jobs
        ],
        "solve_s": round(result.solve_s, 4),
        "notes": notes,
    }


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        apps, notes = load_appliances(args.appliances, args.repair)
        tariff = Tariff(feed_in=args.feed_in, retail_peak=args.retail_peak,
                        retail_offpeak=args.retail_offpeak)
        requests = [parse_dr(v, args.date) for v in args.dr]
        scen = household_day(args.date, kind=args.household, seed=args.seed,
                             model=None if args.forecast == "actual" else args.forecast)
        inp = scenario_input(apps, scen, tariff, limit_w=args.limit_w, requests=requests)
        with native_stdout_to_stderr():
            result = compare(inp)
    except (SpecError, PlanError, TariffError, ForecastError) as exc:
        print(f"wattmesh ems plan: {exc}", file=sys.stderr)
        return 2
    out = report(result, notes, args.date)
    if args.plot:
        from gateway.ems.figure import plot_day

        plot_day(inp, result.plan, args.plot,
                 f"Household load on {args.date} before and after the EMS",
                 peak_hours=(tariff.peak_start_h, tariff.peak_end_h))
        out["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for note in notes:
        print(f"note: {note}")
    for row in out["schedule"]:
        runs = ", ".join(f"{a}-{b}" for a, b in row["runs"])
        flag = "flexible" if row["flexible"] else "fixed"
        print(f"{row['name']:<20} {flag:<8} {row['power_w']:>5} W  {runs}")
    for name, m in result.metrics.items():
        share = float(m["self_consumption"])
        print(f"{name:<8} cost {int(m['cost_utok']) / 1e6:8.3f} tokens  peak "
              f"{int(m['peak_import_w']):>5} W  self-consumption {share:.2f}")
    print("savings: " + ", ".join(f"{k} {v / 1e6:.3f} tokens" for k, v in out["savings"].items()))
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    start = datetime(args.start.year, args.start.month, args.start.day, tzinfo=UTC)
    try:
        prof = household_profile(args.household, args.seed, args.start, args.days)
        out: dict[str, Any] = {"household": args.household, "seed": args.seed,
                               "days": args.days, "horizon_slots": args.horizon}
        for name, series in (("load", prof.load_wh), ("pv", prof.pv_wh)):
            scores = backtest(series, start, horizon=args.horizon)
            out[name] = {m: s.as_dict() for m, s in scores.items()}
    except (ForecastError, ValueError) as exc:
        print(f"wattmesh ems backtest: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2 if args.json else None))
    return 0


def register(subparsers: Any) -> None:
    ems = subparsers.add_parser("ems", help="home energy management: plan appliances, forecasts")
    sub = ems.add_subparsers(dest="ems_command", metavar="ACTION", required=True)
    plan = sub.add_parser("plan", help="schedule flexible appliances for one day")
    plan.add_argument("--appliances", required=True, help="appliance spec (JSON, see table8.json)")
    plan.add_argument("--date", required=True, type=_date, help="day to plan, YYYY-MM-DD (UTC)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--plot", help="draw load before and after the plan into this PNG")
    plan.add_argument("--repair", choices=REPAIRS, default="strict",
                      help="what to do with rows whose working time does not fit their window")
    plan.add_argument("--household", choices=KINDS, default="prosumer",
                      help="synthetic household whose meter history feeds the forecast of the "
                           "rest of the home's load and of its PV")
    plan.add_argument("--seed", type=_non_negative, default=1, help="household seed")
    plan.add_argument("--forecast", choices=("ridge", "naive", "actual"), default="ridge",
                      help="forecast model, or 'actual' for the day's true values")
    plan.add_argument("--limit-w", type=_non_negative, default=DEFAULT_LIMIT_W,
                      help="contracted power in W")
    plan.add_argument("--dr", action="append", default=[], metavar="HH:MM-HH:MM=W",
                      help="demand-response request: import at most W watts in that span")
    plan.add_argument("--feed-in", type=_non_negative, default=FEED_IN)
    plan.add_argument("--retail-peak", type=_non_negative, default=RETAIL_PEAK)
    plan.add_argument("--retail-offpeak", type=_non_negative, default=RETAIL_OFFPEAK_DEFAULT)
    plan.set_defaults(func=cmd_plan)
    bt = sub.add_parser("backtest", help="score the forecasters on a synthetic year")
    bt.add_argument("--json", action="store_true")
    bt.add_argument("--household", choices=KINDS, default="prosumer")
    bt.add_argument("--seed", type=_non_negative, default=1)
    bt.add_argument("--start", type=_date, default=date(2026, 1, 1))
    bt.add_argument("--days", type=_non_negative, default=365)
    bt.add_argument("--horizon", type=_non_negative, default=SLOTS_PER_DAY)
    bt.set_defaults(func=cmd_backtest)
