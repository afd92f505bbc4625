import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ems.appliances import table8_path
from tools.cli import main

TABLE8 = str(table8_path())


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_json_reports_cost_peak_savings_and_draws_the_figure(capsys, tmp_path):
    png = tmp_path / "fig8.png"
    code, out, _ = run(capsys, "ems", "plan", "--appliances", TABLE8, "--date", "2026-06-15",
                       "--repair", "widen", "--json", "--plot", str(png))
    assert code == 0
    doc = json.loads(out)
    assert doc["cost_utok"] == doc["metrics"]["plan"]["cost_utok"]
    assert doc["savings"]["vs_baseline_utok"] > 0
    assert doc["savings"]["vs_greedy_utok"] >= 0
    assert doc["peak_w"] <= doc["metrics"]["baseline"]["peak_import_w"]
    assert len(doc["schedule"]) == 14 and len(doc["notes"]) == 2
    ev = next(s for s in doc["schedule"] if s["name"] == "Electric Vehicle")
    assert ev["runs"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plan_with_a_demand_response_request(capsys):
    code, out, _ = run(capsys, "ems", "plan", "--appliances", TABLE8, "--date", "2026-01-20",
                       "--repair", "widen", "--json", "--dr", "02:00-04:00=2500")
    assert code == 0
    doc = json.loads(out)
    assert doc["metrics"]["plan"]["peak_import_w"] <= 6900
    ev = next(s for s in doc["schedule"] if s["name"] == "Electric Vehicle")
    assert ev["runs"] and all(b <= "02:00" or a >= "04:00" for a, b in ev["runs"])
    # one block of charge cannot avoid the request: the greedy heuristic finds no plan
    assert "greedy" not in doc["metrics"]


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        ((), "row 3 (Air Conditioner)"),
        (("--repair", "widen", "--dr", "20:00-19:00=1000"), "ends"),
        (("--repair", "widen", "--dr", "nonsense"), "HH:MM-HH:MM=W"),
        (("--repair", "widen", "--dr", "06:00-11:00=1000"), "cannot move"),
        (("--repair", "widen", "--feed-in", "99000"), "band would be empty"),
        (("--repair", "widen", "--limit-w", "0"), "positive"),
    ],
)
def test_plan_errors_are_clear(capsys, extra, text):
    code, out, err = run(capsys, "ems", "plan", "--appliances", TABLE8, "--date", "2026-06-15",
                         *extra)
    assert code == 2 and out == "" and text in err


def test_bad_arguments_exit_with_usage(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["ems", "plan", "--appliances", TABLE8, "--date", "15/06/2026"])
    assert exc.value.code == 2
    assert "not a date" in capsys.readouterr().err
    missing = tmp_path / "none.json"
    code, _, err = run(capsys, "ems", "plan", "--appliances", str(missing), "--date", "2026-06-15")
    assert code == 2 and "cannot read" in err


def test_backtest_command(capsys):
    code, out, _ = run(capsys, "ems", "backtest", "--days", "45", "--json")
    assert code == 0
    doc = json.loads(out)
    for series in ("load", "pv"):
        assert set(doc[series]) == {"naive", "ridge"}
        assert doc[series]["ridge"]["mae_wh"] > 0
    code, _, err = run(capsys, "ems", "backtest", "--days", "10")
    assert code == 2 and "too short" in err


def test_bench_prints_solve_time_and_savings(capsys):
    code, out, _ = run(capsys, "bench", "ems", "--repeats", "2")
    assert code == 0
    doc = json.loads(out)
    assert doc["appliances"] == 14 and doc["slots"] == 96 and doc["solve_s"] > 0
    assert doc["savings_vs_baseline_utok"] > 0 and doc["savings_vs_greedy_utok"] >= 0


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet="0123456789:-=. x", max_size=20))
def test_any_dr_argument_parses_or_is_refused_clearly(text):
    from datetime import date

    from gateway.ems.ems_cli import parse_dr
    from gateway.ems.problem import PlanError

    try:
        req = parse_dr(text, date(2026, 6, 15))
    except PlanError as exc:
        assert "request" in str(exc) or "W" in str(exc)
        return
    assert req.end > req.start and req.max_w >= 0


@settings(max_examples=12, deadline=None)
@given(start=st.integers(0, 95), length=st.integers(1, 24), max_w=st.integers(0, 8000))
def test_table8_plans_under_any_request_honour_every_constraint(start, length, max_w):
    from datetime import date, datetime, timedelta

    from gateway.ems.appliances import table8
    from gateway.ems.milp import solve
    from gateway.ems.plan import DrRequest, day_input
    from gateway.ems.problem import PlanError, check
    from gateway.ems.tariff import Tariff

    apps, _ = table8("widen")
    day = date(2026, 6, 15)
    t1 = datetime(2026, 6, 15) + timedelta(minutes=15 * start)
    t2 = min(t1 + timedelta(minutes=15 * length), datetime(2026, 6, 16))
    base = [60] * 96
    pv = [0] * 30 + [400] * 40 + [0] * 26
    try:
        inp = day_input(apps, base, pv, Tariff(), day, requests=[DrRequest(t1, t2, max_w)])
        sol = solve(inp)
    except PlanError as exc:
        assert str(exc)
        return
    assert check(inp, sol.schedule) == []
