"""The auction benchmark command runs and prints its JSON (figures are not asserted: not a timed
test)."""

from __future__ import annotations

import argparse
import json

import pytest

from ledger.contract.bench import register_bench, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wattmesh bench")
    register_bench(parser.add_subparsers(dest="bench"))
    return parser


def test_bench_auction_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["auction", "--orders", "300", "--repeat", "2", "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["orders"] == 300 and report["rule"] == "paper" and report["repeat"] == 2
    assert report["trades"] > 0 and report["clear_ms"] > 0
    assert report["clear_ms"] <= report["clear_ms_median"]


@pytest.mark.parametrize("rule", ["uniform", "pay_as_bid"])
def test_bench_runs_every_rule_and_is_repeatable(rule: str) -> None:
    a, b = run(200, 10, rule, seed=3, repeat=1), run(200, 10, rule, seed=3, repeat=1)
    assert a["rule"] == rule and a["mcp"] == b["mcp"] and a["traded_wh"] == b["traded_wh"]


@pytest.mark.parametrize(
    "argv",
    [
        ["auction", "--orders", "0"],
        ["auction", "--orders", "x"],
        ["auction", "--rule", "dutch"],
        ["auction", "--repeat", "-1"],
    ],
)
def test_bench_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
