"""The ingest benchmark runs the real frame path end to end (checked for correctness here, not
for speed: figures come from `wattmesh bench ingest`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.bench import bench_ingest
from tools.cli import main


def test_bench_ingest_stores_every_frame(tmp_path: Path) -> None:
    r = bench_ingest(50, 5, tmp_path)
    assert r["frames"] == r["accepted"] == r["stored"] == 250
    assert r["frames_per_s"] > 0


def test_bench_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["bench", "ingest", "--json", "--nodes", "20", "--seconds", "2", "--cycles", "2"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["frames_per_s"] > 0 and out["ingest"]["stored"] == 40
    assert out["modbus"]["requests_per_poll"] == out["modbus"]["min_requests_per_poll"] == 5
    assert out["modbus"]["one_request_per_quantity"] == 31


def test_bench_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "ingest", "--nodes", "0"]) == 2
