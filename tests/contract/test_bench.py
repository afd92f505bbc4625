"""The auction benchmark command runs and prints its JSON (figures are not asserted: not a timed
test)."""

from __future__ import annotations

import argparse
import json

import pytest

from ledger.contract.bench import register_bench, run
from ledger.contract.params import RULES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wattmesh bench")
    register_bench(parser.add_subparsers(dest="bench"))
    return parser


def test_bench_auction_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["auction", "--orders", "300", "--repeat", "2", "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["orders"] == 300 and report["repeat"] == 2
    assert sorted(report["rules"]) == sorted(RULES)  # every rule, on the same book
    for figures in report["rules"].values():
        assert figures["trades"] > 0 and 0 < figures["clear_ms"] <= figures["clear_ms_median"]
        assert 0 < figures["efficiency"] <= 1
    assert report["rules"]["uniform"]["efficiency"] == 1
    sealed = report["sealed"]
    assert sealed["reveal_us_per_order"] > 0 and sealed["trades"] > 0


@pytest.mark.parametrize("rule", ["uniform", "pay_as_bid", "mcafee"])
def test_bench_runs_every_rule_and_is_repeatable(rule: str) -> None:
    a = run(200, [rule], seed=3, repeat=1, sealed=False)["rules"][rule]
    b = run(200, [rule], seed=3, repeat=1, sealed=False)["rules"][rule]
    assert a["mcp"] == b["mcp"] and a["traded_wh"] == b["traded_wh"]


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
