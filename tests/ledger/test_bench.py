"""``wattmesh bench ledger`` runs a real cluster and prints its figures as one JSON object; with
``--kill-primary-after`` the primary dies mid-run and nothing submitted is lost."""

from __future__ import annotations

import argparse
import json

import pytest

from ledger.bench import register_bench

pytestmark = pytest.mark.timeout(180)


def bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register_bench(parser.add_subparsers())
    args = parser.parse_args(["ledger", *argv])
    return int(args.func(args))


def test_bench_kills_the_primary_and_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--seconds", "3", "--kill-primary-after", "1", "--members", "8", "--clients", "1",
            "--window", "40", "--view-change-ms", "400", "--json"]  # fmt: skip
    assert bench(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"tps", "p50_ms", "p99_ms", "committed", "lost", "view_changes"}
    assert report["committed"] > 0 and report["tps"] > 0
    assert report["lost"] == 0
    assert report["view_changes"] >= 1
    assert report["p50_ms"] <= report["p99_ms"]
    assert report["cores_busy"] is None  # the killed primary's CPU is unknown
    assert report["verify_us"] > 0


def test_bench_reports_how_busy_it_kept_the_machine(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--seconds", "1", "--members", "4", "--clients", "1", "--window", "20", "--json"]
    assert bench(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lost"] == 0 and report["committed"] > 0
    # the CPU figures are the processes' own: something was spent, no more than the machine has
    assert 0 < report["cores_busy"] <= report["cores"] + 0.5
    assert report["verify_us"] > 0
    assert all(v > 0 for v in report["replica_cpu_ms_per_tx"].values())


def test_bench_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench(["--replicas", "5"]) == 2
    assert "3f+1" in capsys.readouterr().err
    for argv in (["--seconds", "0"], ["--seconds", "x"], ["--clients", "-1"]):
        with pytest.raises(SystemExit):
            bench(argv)
