"""The commands as an installer runs them, as real processes on loopback: `wattmesh emulate
meter` (TCP and RTU on a pty), `wattmesh emulate node` (MQTT), `wattmesh emulate plug` (BLE over
a bumble HCI link), `wattmesh gateway check` and
`wattmesh gateway run`, killed with SIGKILL and restarted, then stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import (
    Broker,
    free_port,
    stop_processes,
    write_gateway_config,
    write_keystore,
)
from tools.cli import main

KEY7 = bytes(range(32))
KEY1 = bytes(range(1, 33))
WATTMESH = [sys.executable, "-m", "tools.cli"]


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, read_line: bool = False) -> tuple[subprocess.Popen[str], str]:
        p = subprocess.Popen(
            [*WATTMESH, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        self.procs.append(p)
        line = p.stdout.readline() if read_line and p.stdout else ""
        return p, line

    def stop_all(self) -> None:
        stop_processes(self.procs)


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    try:
        yield ps
    finally:
        ps.stop_all()


def wait_for(cond, timeout_s: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def meters_seen(db: Path) -> set[str]:
    if not db.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            return {r[0] for r in c.execute("SELECT DISTINCT meter_id FROM readings")}
    except sqlite3.Error:
        return set()


def readings(db: Path, meter: str) -> list[tuple[int, int]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute(
            "SELECT t_ms, import_mwh FROM readings WHERE meter_id = ? ORDER BY rowid", (meter,)
        ).fetchall()


def test_emulators_check_and_daemon_as_processes(
    tmp_path: Path, procs: Procs, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Broker(tmp_path)
    try:
        tcp_port = free_port()
        _, line = procs.start(
            "emulate", "meter", "--model", "sdm630", "--tcp", f"127.0.0.1:{tcp_port}",
            "--unit", "1", "--unit", "2", "--profile", "constant:1500", read_line=True,
        )  # fmt: skip
        assert json.loads(line) == {
            "model": "sdm630",
            "units": [1, 2],
            "tcp": f"127.0.0.1:{tcp_port}",
        }
        _, line = procs.start(
            "emulate", "meter", "--model", "pzem004t", "--serial", "pty", "--unit", "1",
            "--profile", "constant:800", read_line=True,
        )  # fmt: skip
        pty_path = json.loads(line)["serial"]
        assert os.path.exists(pty_path)
        node, _ = procs.start(
            "emulate", "node", "--node-id", "7", "--key", KEY7.hex(),
            "--mqtt", f"127.0.0.1:{broker.port}", "--period", "0.2", "--profile", "constant:600",
        )  # fmt: skip
        _, line = procs.start(
            "emulate", "plug", "--node", f"1:{KEY1.hex()}", "--hci", "tcp-server:127.0.0.1:0",
            "--interval-s", "0.5", "--power-w", "1000", read_line=True,
        )  # fmt: skip
        plug = json.loads(line)
        write_keystore(tmp_path, {"7": {"key": KEY7.hex(), "name": "n7", "transport": "mqtt"},
                                  "1": {"key": KEY1.hex(), "name": "p1", "transport": "ble"}})
        cfg = write_gateway_config(
            tmp_path,
            f"""flush_ms = 100
[mqtt]
port = {broker.port}
[[mqtt.nodes]]
node_id = 7
[ble]
backend = "{plug["backend"]}"
[[ble.nodes]]
node_id = 1
address = "{plug["plugs"]["1"]}"
meter_id = "plug1"
[[modbus.buses]]
name = "tcp"
tcp = "127.0.0.1:{tcp_port}"
poll_s = 0.5
timeout_s = 0.3
backoff_initial_s = 1
meters = [
    {{meter_id = "grid", model = "sdm630", unit = 1}},
    {{meter_id = "pv", model = "sdm630", unit = 2}},
    {{meter_id = "ghost", model = "sdm630", unit = 3}},
]
[[modbus.buses]]
name = "uart"
serial = "{pty_path}"
poll_s = 0.5
timeout_s = 0.3
meters = [{{meter_id = "ev", model = "pzem004t", unit = 1}}]
"""
        )
        # The node publishes its LWT once connected; give it the time a process start takes.
        check = ["gateway", "check", "--config", str(cfg), "--json", "--timeout", "1"]

        def node_online() -> bool:
            assert node.poll() is None, "the node emulator died"
            main(check)
            return '"last will: Online"' in capsys.readouterr().out

        wait_for(node_online, what="node online")
        assert main(check) == 1
        report = {d["device"]: d for d in json.loads(capsys.readouterr().out)["devices"]}
        assert report["modbus tcp/grid"]["ok"] and report["modbus uart/ev"]["ok"]
        assert not report["modbus tcp/ghost"]["ok"]  # the unit nobody answers for
        assert report["mqtt node 7 (wattmesh_7)"]["ok"]
        assert report[f"ble node 1 ({plug['plugs']['1']})"]["ok"], report

        db = tmp_path / "data" / "gateway.db"
        gw, _ = procs.start("gateway", "run", "--config", str(cfg))
        wait_for(
            lambda: {"node7", "plug1", "grid", "pv", "ev"} <= meters_seen(db), what="all meters"
        )
        gw.send_signal(signal.SIGKILL)  # killed mid-interval: no flush, no goodbye
        gw.wait(10)
        before = len(readings(db, "node7"))
        ble_before = len(readings(db, "plug1"))
        gw2, _ = procs.start("gateway", "run", "--config", str(cfg))
        wait_for(lambda: len(readings(db, "node7")) > before + 5, what="readings after restart")
        # the plug process saw the dead gateway's HCI connection close and ended its links, so
        # the plug advertised again and the restarted gateway reconnected to it
        wait_for(lambda: len(readings(db, "plug1")) > ble_before + 3, what="BLE after restart")
        gw2.send_signal(signal.SIGTERM)
        assert gw2.wait(30) == 0
        assert gw2.stderr is not None and "stopped cleanly" in gw2.stderr.read()
        rows = readings(db, "node7")
        assert [t for t, _ in rows] == sorted(t for t, _ in rows)
        assert [e for _, e in rows] == sorted(e for _, e in rows)  # counters only move forward
        assert "ghost" not in meters_seen(db)
    finally:
        broker.stop()


def test_check_names_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[gateway]\nid = "home-1"\n[modbus]\nbusses = []\n')
    assert main(["gateway", "check", "--config", str(cfg)]) == 2
    assert "modbus.busses: unknown key" in capsys.readouterr().err
    assert main(["gateway", "run", "--config", str(tmp_path / "nope.toml")]) == 2


def test_emulate_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulate", "meter", "--model", "sdm120", "--tcp", "nope"]) == 2
    assert (
        main(["emulate", "meter", "--model", "sdm120", "--tcp", "127.0.0.1:1", "--unit", "0"]) == 2
    )
    assert main(["emulate", "node", "--node-id", "7", "--key", "zz"]) == 2
    assert main(["emulate", "node", "--node-id", "70000", "--key", "00" * 32]) == 2
    err = capsys.readouterr().err
    assert "--tcp" in err and "--unit" in err and "key" in err and "--node-id" in err
