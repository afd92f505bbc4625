"""What an operator sees (issue 19, finding 7), on real processes: ``gateway check`` refuses
what ``run`` would trip over (a BLE address "nonsense", a key others can read, a data_dir that
is a file) with one named line; the daemon logs a node that restarted its sequence from 1 and a
Modbus TCP meter that vanished, once each, and counts every drop; ``gateway status`` shows the
sources, the last frame per node, the drops and the outbox."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gateway.conftest import (
    Broker,
    free_port,
    gateway_status,
    stop_processes,
    write_keystore,
)
from tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
KEY7 = bytes(range(32))


def _keystore(tmp: Path) -> Path:
    return write_keystore(tmp, {"7": {"key": KEY7.hex(), "name": "n7", "transport": "mqtt"}})


def _config(tmp: Path, extra: str = "", gateway: str = "") -> Path:
    _keystore(tmp)
    cfg = tmp / "gateway.toml"
    cfg.write_text(f'[gateway]\nid = "home-1"\ndata_dir = "data"\nkeystore = "nodes.json"\n'
                   f"flush_ms = 100\n{gateway}{extra}")
    return cfg


def _node7(mqtt_port: int) -> str:
    """The ``[mqtt]`` tables of a gateway with one configured node (7, meter "heat-pump")."""
    return (f"[mqtt]\nport = {mqtt_port}\n[mqtt.discovery]\nenabled = false\n"
            '[[mqtt.nodes]]\nnode_id = 7\nmeter_id = "heat-pump"\n')


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("ble", "ble.nodes[0].address: 'nonsense' is not a BLE address"),
        ("key", "gateway.key_file: "),
        ("keystore", "gateway.keystore: "),
        ("data_dir", "gateway.data_dir: "),
        ("password", "mqtt.password_file: "),
        ("bond_store_json", "ble.bond_store: bond store "),
        ("bond_store_mode", "chmod 600"),
    ],
)
def test_check_refuses_what_run_would_trip_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    extra, gateway = "", ""
    if setup == "ble":
        extra = '[ble]\n[[ble.nodes]]\nnode_id = 9\naddress = "nonsense"\n'
    elif setup == "key":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "gateway.key").write_text("00" * 32)
        (tmp_path / "data" / "gateway.key").chmod(0o644)
    elif setup == "data_dir":
        (tmp_path / "data").write_text("not a folder")
    elif setup.startswith("bond_store"):  # the bumble backend's BLE bonds (issue 19, finding 3)
        (tmp_path / "data").mkdir()
        bonds = tmp_path / "data" / "bonds.json"
        bonds.write_text("{" if setup == "bond_store_json" else "{}")
        bonds.chmod(0o600 if setup == "bond_store_json" else 0o644)
        extra = ('[ble]\nbackend = "bumble:tcp-client:127.0.0.1:9"\nbond_store = "bonds.json"\n'
                 '[[ble.nodes]]\nnode_id = 7\naddress = "D0:57:A7:00:00:07"\n')
    elif setup == "password":
        (tmp_path / "pw").write_text("secret")
        (tmp_path / "pw").chmod(0o640)
        extra = '[mqtt]\nusername = "gw"\npassword_file = "pw"\n'
    cfg = _config(tmp_path, extra, gateway)
    if setup == "keystore":
        (tmp_path / "nodes.json").chmod(0o644)
    for command in ("check", "run"):
        code = main(["gateway", command, "--config", str(cfg)])
        err = capsys.readouterr().err
        assert code == 2, (command, err)
        assert message in err and "Traceback" not in err, (command, err)


def _wait(cond: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_restarted_node_and_a_vanished_meter_are_logged_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Broker(tmp_path)
    port = free_port()
    cfg = _config(tmp_path, _node7(broker.port) + f"""
[[modbus.buses]]
name = "tcp"
tcp = "127.0.0.1:{port}"
poll_s = 0.3
timeout_s = 0.3
backoff_initial_s = 0.3
backoff_max_s = 0.3
meters = [{{meter_id = "grid", model = "sdm120", unit = 1}}]
""")  # fmt: skip
    log = tmp_path / "gateway.log"
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        out = log.open("ab") if args[0] == "gateway" else subprocess.DEVNULL
        p = subprocess.Popen([sys.executable, "-m", "tools.cli", *args], cwd=ROOT,
                             stdout=out, stderr=out)  # fmt: skip
        procs.append(p)
        return p

    node = ["emulate", "node", "--node-id", "7", "--keystore", str(tmp_path / "nodes.json"),
            "--mqtt", f"127.0.0.1:{broker.port}", "--period", "0.1", "--profile", "constant:600"]
    try:
        meter = start("emulate", "meter", "--model", "sdm120", "--tcp", f"127.0.0.1:{port}",
                      "--unit", "1", "--profile", "constant:1500")  # fmt: skip
        first = start(*node)
        gw = start("gateway", "run", "--config", str(cfg))

        def nodes_seen() -> bool:
            assert gw.poll() is None, log.read_text()[-3000:]
            try:
                saved = gateway_status(cfg, capsys)["saved"]
            except AssertionError:
                return False
            # the node's sequence must climb past the replay window (64) first
            return (bool(saved) and "7" in saved["nodes"] and "grid" in saved["meters"]  # type: ignore[index,operator]
                    and saved["frames"]["accepted"] > 100)  # type: ignore[index]

        _wait(nodes_seen, "100 frames of node 7 and readings of the meter")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        start(*node)  # the node again, its sequence from 1 (a wiped flash)
        _wait(lambda: "far behind" in log.read_text(), "the restarted node in the log")
        before = len(log.read_text())
        meter.send_signal(signal.SIGKILL)  # the Modbus TCP meter vanishes
        meter.wait(10)
        _wait(lambda: "grid on bus tcp" in log.read_text()[before:]
              or "bus tcp: cannot connect" in log.read_text()[before:],
              "the vanished meter in the log")
        time.sleep(1.0)  # more refused frames and failed polls: counted, not logged again
        status = gateway_status(cfg, capsys)
        saved = status["saved"]
        assert saved["frames"]["dropped_replay"] > 1  # type: ignore[index]
        assert saved["nodes"]["7"]["transport"] == "mqtt"  # type: ignore[index]
        assert "tcp" in saved["buses"] and "mqtt" in saved["sources"]  # type: ignore[operator]
        assert status["outbox"] == {"pending": 0, "delivered": 0, "rejected": 0}
    finally:
        stop_processes(procs)
        broker.stop()
    text = log.read_text()
    assert text.count("far behind") == 1, text[-3000:]
    after = text[before:]
    vanished = after.count("meter grid on bus tcp:") + after.count("bus tcp: cannot connect")
    assert 1 <= vanished <= 2, after[-3000:]  # the failed read, then the failed connect


def test_a_command_replayed_as_telemetry_does_not_stop_the_nodes_metering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 19, finding 1, on real processes: a COMMAND frame (signed with the node's key, as
    the gateway sends it on ``cmnd/...``) published on ``tele/<node>/FRAME`` with a sequence
    number far ahead used to move the node's high-water mark, and every later reading of the
    node was dropped. Now it is refused as the wrong direction and the readings go on."""
    import asyncio

    import aiomqtt

    from firmware import frame

    broker = Broker(tmp_path)
    cfg = _config(tmp_path, _node7(broker.port))
    log = tmp_path / "gateway.log"
    procs: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "gateway", "run", "--config", str(cfg)],
            cwd=ROOT, stdout=out, stderr=out))  # fmt: skip
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "emulate", "node", "--node-id", "7", "--keystore",
         str(tmp_path / "nodes.json"), "--mqtt", f"127.0.0.1:{broker.port}", "--period", "0.1",
         "--profile", "constant:600"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL))  # fmt: skip

    def accepted() -> int:
        try:
            saved = gateway_status(cfg, capsys)["saved"]
        except AssertionError:
            return 0
        return int(saved["frames"]["accepted"]) if saved else 0  # type: ignore[index]

    async def replay() -> None:
        captured = frame.encode(KEY7, frame.T_COMMAND, 7, 4_000_000_000,
                                frame.pack_command(0, frame.A_ON))  # fmt: skip
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.publish("tele/wattmesh_7/FRAME", captured, qos=1)

    try:
        _wait(lambda: accepted() > 10, "the node's readings")
        asyncio.run(replay())
        before = accepted()
        _wait(lambda: accepted() > before + 20, "readings after the replayed command")
        saved = gateway_status(cfg, capsys)["saved"]
        assert saved["frames"]["dropped_direction"] == 1  # type: ignore[index]
        assert saved["frames"]["dropped_replay"] == 0  # type: ignore[index]
    finally:
        stop_processes(procs)
        broker.stop()
    assert "direction" in log.read_text()
