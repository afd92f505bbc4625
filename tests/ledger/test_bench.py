"""``wattmesh bench ledger`` runs a real cluster and prints its figures as one JSON object; with
``--kill-primary-after`` the primary dies mid-run and nothing submitted is lost."""

from __future__ import annotations

import json
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import ed25519
from tests.ledger.cluster_harness import run_bench
from tools.ledger_bench import register_bench, steal_share, summarize

pytestmark = pytest.mark.timeout(180)


def bench(argv: list[str]) -> int:
    return run_bench(register_bench, ["ledger", *argv])


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
    assert report["steal"] is None or 0 <= report["steal"] <= 1
    # the batch check's figure is there exactly when the replicas batch their checks
    assert report["batch_verify"] == (ed25519.native_check() is not None)
    assert (report["batch_verify_us"] is not None) == report["batch_verify"]
    assert all(v > 0 for v in report["replica_cpu_ms_per_tx"].values())


def test_bench_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench(["--replicas", "5"]) == 2
    assert "3f+1" in capsys.readouterr().err
    for argv in (["--seconds", "0"], ["--seconds", "x"], ["--clients", "-1"], ["--repeat", "0"]):
        with pytest.raises(SystemExit):
            bench(argv)


def test_repeated_runs_report_their_median_and_spread(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--seconds", "1", "--members", "4", "--clients", "1", "--window", "20", "--repeat",
            "2", "--json"]  # fmt: skip
    assert bench(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["repeat"] == 2 and len(report["runs"]) == 2
    tps = sorted(run["tps"] for run in report["runs"])
    assert report["tps_min"] == tps[0] and report["tps_max"] == tps[1]
    assert report["tps"] == statistics.median(tps) > 0
    assert report["committed"] == sum(run["committed"] for run in report["runs"]) > 0
    assert report["lost"] == 0 and report["acked_missing"] == 0
    # each run had a cluster of its own: each one's chain starts from nothing
    assert all(run["blocks"] > 0 and run["lost"] == 0 for run in report["runs"])


RUN = st.fixed_dictionaries(
    {
        "tps": st.floats(0, 10_000, allow_nan=False),
        "p50_ms": st.floats(0, 5_000, allow_nan=False),
        "p99_ms": st.floats(0, 5_000, allow_nan=False),
        "committed": st.integers(0, 10**6),
        "lost": st.integers(0, 100),
        "acked_missing": st.integers(0, 100),
        "failed_submits": st.integers(0, 100),
        "view_changes": st.none() | st.integers(0, 5),
        "seconds": st.floats(0.1, 100, allow_nan=False),
        "replicas": st.just(4),
        "clients": st.just(4),
        "window": st.just(200),
        "batch_max": st.just(400),
        "broadcast": st.just(False),
        "cores": st.just(2),
        "batch_verify": st.booleans(),
        "steal": st.none() | st.floats(0, 1, allow_nan=False),
    }
)


@settings(max_examples=200, deadline=None)
@given(runs=st.lists(RUN, min_size=1, max_size=7))
def test_a_summary_hides_no_bad_run(runs: list[dict[str, Any]]) -> None:
    """Whatever the runs, the summary's losses are all of theirs, its p99 the worst of theirs,
    and its tps lies within their spread."""
    out = summarize(runs)
    assert out["tps_min"] <= out["tps"] <= out["tps_max"]
    assert out["tps_min"] == min(r["tps"] for r in runs)
    assert out["p99_ms"] == max(r["p99_ms"] for r in runs)
    for key in ("committed", "lost", "acked_missing", "failed_submits"):
        assert out[key] == sum(r[key] for r in runs)
    views = [r["view_changes"] for r in runs if r["view_changes"] is not None]
    assert out["view_changes"] == (max(views) if views else None)
    stolen = [r["steal"] for r in runs if r["steal"] is not None]
    assert out["steal_max"] == (max(stolen) if stolen else None)
    assert out["runs"] == runs and out["repeat"] == len(runs)


@given(
    steal=st.integers(0, 10**9),
    total=st.integers(0, 10**9),
    more_steal=st.integers(0, 10**6),
    more_other=st.integers(0, 10**6),
)
def test_steal_is_a_share_of_the_ticks_between_two_readings(
    steal: int, total: int, more_steal: int, more_other: int
) -> None:
    before = (steal, steal + total)
    after = (steal + more_steal, steal + total + more_steal + more_other)
    share = steal_share(before, after)
    if more_steal + more_other == 0:
        assert share is None
    else:
        assert share is not None and 0 <= share <= 1
        assert share == round(more_steal / (more_steal + more_other), 3)
    assert steal_share(None, after) is None and steal_share(before, None) is None


def test_bench_on_shaped_links_with_a_crashed_backup(capsys: pytest.CaptureFixture[str]) -> None:
    """Separate hosts (namespaces where they can be made), every replica link shaped, one
    backup crashed before the load: the rest still commit everything, and each live replica's
    bytes per committed transaction are reported (the primary's the most: it sends the
    batches)."""
    argv = ["--seconds", "3", "--members", "8", "--clients", "1", "--window", "40",
            "--link", "10ms,5mbit,1%", "--crash", "1", "--json"]  # fmt: skip
    assert bench(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["committed"] > 0 and report["lost"] == 0 and report["acked_missing"] == 0
    assert report["hosts"] in ("netns", "loopback") and report["crashed"] == 1
    assert report["link"] == "10ms,5000000bit,1%"
    per_replica = report["bytes_per_tx"]
    assert set(per_replica) == {"0", "1", "2"}
    assert per_replica["0"] == max(per_replica.values()) > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--link", "50ms,1mb,1%"],
        ["--link", "fast"],
        ["--link", "50ms,1mbit,1%", "--crash", "-1"],
        ["--link", "50ms,1mbit,1%", "--hosts", "moon"],
    ],
)
def test_bench_refuses_bad_link_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench(argv)
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--crash", "2"],
        ["--hosts", "loopback"],
        ["--min-view-change-ms", "2001"],
        ["--pre-prepare-ids"],  # without --broadcast the backups would hold none of them
    ],
)
def test_bench_refuses_settings_that_do_not_fit(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench(argv) == 2
    assert "wattmesh bench ledger:" in capsys.readouterr().err


def test_bench_kills_the_primary_on_shaped_links_and_loses_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The primary killed under load with every replica link shaped as the issue's thin link
    (50 ms, 1 Mbit/s, 1 % loss): every transaction submitted is committed (the bench checks
    each against a surviving replica's chain), in a later view."""
    argv = ["--seconds", "4", "--kill-primary-after", "1.5", "--members", "8", "--clients", "1",
            "--window", "40", "--view-change-ms", "2000", "--link", "50ms,1mbit,1%",
            "--json"]  # fmt: skip
    assert bench(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["committed"] > 0 and report["failed_submits"] == 0
    assert report["lost"] == 0 and report["acked_missing"] == 0
    assert report["committed"] == report["submitted"]
    assert report["view_changes"] >= 1


def test_bench_with_pre_prepares_by_id_commits_everything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Clients sending every request to every replica, primaries naming batches by id (real
    replica processes): everything committed, and the primary sends less per transaction
    than a backup's share would suggest in full (about 290 bytes per transfer per link)."""
    argv = ["--seconds", "2", "--members", "8", "--clients", "1", "--window", "40",
            "--broadcast", "--pre-prepare-ids", "--link", "10ms,5mbit,0%", "--json"]  # fmt: skip
    assert bench(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["committed"] > 0 and report["lost"] == 0 and report["acked_missing"] == 0
    assert report["pre_prepare_ids"] is True
    assert 0 < report["bytes_per_tx"]["0"] < 3 * 150  # 3 backups, about 70 bytes an id
