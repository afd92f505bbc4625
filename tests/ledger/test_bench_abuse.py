"""``wattmesh bench ledger-abuse`` drives a real cluster unloaded and under abuse and prints one
JSON object; its arguments are checked."""

from __future__ import annotations

import json

import pytest

from tests.ledger.cluster_harness import run_bench
from tools.ledger_abuse_bench import register_bench

pytestmark = pytest.mark.timeout(240)


def bench(argv: list[str]) -> int:
    return run_bench(register_bench, ["ledger-abuse", *argv])


def test_a_small_abuse_run_reports_both_runs_memory_and_what_was_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--seconds", "1", "--scale", "0.02", "--members", "4", "--replica-nofile", "512"]
    assert bench(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for run in ("unloaded", "abused", "unloaded_after"):
        assert report[run]["committed"] > 0, report
    assert report["unreachable_replicas"] == 0
    assert report["attack"]["connections_opened"] + report["attack"]["connections_refused"] == 100
    assert report["attack"]["garbage_bytes"] > 0 and report["attack"]["unknown_txs"] == 200
    assert all(v is not None and v > 0 for v in report["rss_peak_mib"].values())
    assert report["counters"].get("io_rejected_frames", 0) > 0  # the garbage was refused
    assert report["frozen_primary_s"] is None


def test_bad_arguments_are_refused() -> None:
    for argv in (
        ["--scale", "0"],
        ["--scale", "x"],
        ["--scale", "101"],
        ["--seconds", "0.5"],
        ["--members", "1"],
        ["--replica-nofile", "-3"],
    ):
        with pytest.raises(SystemExit):
            bench(argv)
