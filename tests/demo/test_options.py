"""CLI argument validation of ``wattmesh demo``: every bad option is named, nothing starts."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.cli import build_parser, main
from tools.demo.options import OptionError, default_date, parse_options


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["demo", *argv])


def test_defaults_are_the_issue_s() -> None:
    opts = parse_options(_parse([]))
    assert (opts.households, opts.hours, opts.rule, opts.faults, opts.out) == (
        10, 24, "paper", False, None)
    assert (opts.date.month, opts.date.day) == (6, 21)


def test_default_date_is_a_midsummer_already_over() -> None:
    assert default_date(dt.date(2026, 11, 26)) == "2026-06-21"
    assert default_date(dt.date(2026, 6, 21)) == "2025-06-21"
    assert default_date(dt.date(2026, 6, 22)) == "2026-06-21"
    assert default_date(dt.date(2027, 1, 2)) == "2026-06-21"


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--households", "0"], "--households"),
        (["--households", "1"], "--households"),
        (["--households", "ten"], "--households"),
        (["--households", "100000"], "--households"),
        (["--households", "61"], "--households"),
        (["--hours", "0"], "--hours"),
        (["--hours", "-3"], "--hours"),
        (["--hours", "2.5"], "--hours"),
        (["--hours", "100000"], "--hours"),
        (["--seed", "-1"], "--seed"),
        (["--date", "2026-13-01"], "--date"),
        (["--date", "yesterday"], "--date"),
        (["--date", "1900-01-01"], "--date"),
        (["--date", "2099-01-01"], "--date"),
        (["--rule", "vickrey"], "--rule"),
        (["--rule", ""], "--rule"),
        (["--out", ""], "--out"),
        (["--dr", "18-20"], "--dr"),
        (["--dr", "evening"], "--dr"),
        (["--dr", "20-18:1500"], "--dr: the window must end after it starts"),
        (["--dr", "18-25:1500"], "--dr end hour"),
        (["--dr=-1-2:100"], "--dr"),
        (["--dr", "18-20:-5"], "--dr W"),
        (["--dr", "18-20:1.5kW"], "--dr W"),
        (["--dr", ""], "--dr"),
    ],
)
def test_bad_option_is_named(argv: list[str], names: str) -> None:
    with pytest.raises(OptionError, match=names):
        parse_options(_parse(argv))


def test_demand_response_option() -> None:
    assert parse_options(_parse([])).dr == (18, 20, 1500)
    assert parse_options(_parse(["--dr", "0-24:900"])).dr == (0, 24, 900)
    assert parse_options(_parse(["--dr", " 7 - 9 : 0 "])).dr == (7, 9, 0)
    assert parse_options(_parse(["--dr", "none"])).dr is None


def test_out_must_not_be_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OptionError, match="--out"):
        parse_options(_parse(["--out", str(f)]))


def test_command_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--hours", "zero"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattmesh demo: --hours:") and err.count("\n") == 1


@settings(max_examples=60, deadline=None)
@given(households=st.text(max_size=12), hours=st.text(max_size=12), rule=st.text(max_size=12))
def test_hostile_values_raise_option_error_only(households: str, hours: str, rule: str) -> None:
    ns = argparse.Namespace(households=households, hours=hours, rule=rule, seed="7",
                            date="2026-06-21", out=None, faults=False, quiet=False)
    try:
        opts = parse_options(ns)
    except OptionError as exc:
        assert str(exc).startswith("--")
    else:
        assert opts.households >= 2 and opts.hours >= 1 and opts.rule == rule


@settings(max_examples=120, deadline=None)
@given(st.one_of(st.text(max_size=16), st.from_regex(r"-?\d{1,3}\s*-\s*-?\d{1,3}:-?\d{1,7}",
                                                     fullmatch=True)))
def test_hostile_demand_response_raises_option_error_only(dr: str) -> None:
    ns = argparse.Namespace(households="3", hours="2", rule="paper", seed="7",
                            date="2026-06-21", out=None, faults=False, quiet=False, dr=dr)
    try:
        opts = parse_options(ns)
    except OptionError as exc:
        assert str(exc).startswith("--dr")
    else:
        assert opts.dr is None or (0 <= opts.dr[0] < opts.dr[1] <= 24 and opts.dr[2] >= 0)
