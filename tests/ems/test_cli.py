import json

import pytest

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
