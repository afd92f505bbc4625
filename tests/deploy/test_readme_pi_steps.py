"""The top README's Pi deployment and operator steps, followed in order against the emulators
(issue 19, finding 5): provision the nodes and the gateway's broker account, install the example
config, appliances, keystore and password as the README says (a temporary folder stands in for
``/etc/wattmesh`` and ``/var/lib/wattmesh``; no sudo, so the owner is this user, the modes are
the README's), edit the config for this "hardware", ``gateway check``, ``gateway pubkey``, the
operator's ``member admit`` / ``meter add`` / ``meter list`` (and the member's ``meter confirm``)
against a local ledger,
``gateway run``, ``gateway status`` and a signed ``operator dr`` request. Every command is a
real process: mosquitto with TLS and the provisioned accounts and ACLs, the meter and node
emulators, four ledger replicas, the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.keys import new_key, public_hex, write_key
from tests.gateway.conftest import SecureBroker, broker_tls, free_port, stop_processes
from tests.gateway.test_ledger_hil import Replicas

ROOT = Path(__file__).resolve().parents[2]
WATTMESH = [sys.executable, "-m", "tools.cli"]


def _run(*args: str, env: dict[str, str] | None = None, ok: bool | None = True) -> Any:
    """The command as a process; ``ok``: it must succeed (True) or fail (False); None: either."""
    p = subprocess.run([*WATTMESH, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env, check=False)  # fmt: skip
    if ok is not None:
        assert (p.returncode == 0) == ok, (args, p.returncode, p.stdout[-2000:],
                                           p.stderr[-2000:])  # fmt: skip
    return p


def _install(src: Path, dst: Path, mode: int) -> None:
    """``install -m MODE SRC DST``."""
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)


def _wait(cond: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _edit(text: str, etc: Path, var: Path, broker: SecureBroker, modbus: int, pty: str,
          operator_pub: str) -> str:  # fmt: skip
    """The installer's edits of the example for this home's hardware (the emulators)."""
    text = text.replace("/etc/wattmesh", str(etc)).replace("/var/lib/wattmesh", str(var))
    text = text.replace("port = 8883", f"port = {broker.port}")
    # the example's BLE plug (node 7) is an MQTT node here; BLE is covered by the BLE tests
    text = re.sub(r'\[ble\]\nbackend = "bleak".*?\n\n\[\[ble\.nodes\]\]\nnode_id = 7\n'
                  r'address = "[^"]*"\n', '[[mqtt.nodes]]\nnode_id = 7\n', text, flags=re.S)
    # the RS-485 adapter is an emulated meter on Modbus TCP, the PZEM's UART a pseudo-terminal
    text = text.replace('serial = "/dev/ttyUSB0"             # USB RS-485 adapter',
                        f'tcp = "127.0.0.1:{modbus}"')
    text = text.replace('serial = "/dev/ttyAMA0"', f'serial = "{pty}"')
    text = text.replace('model = "sdm120"\nunit = 2', 'model = "sdm630"\nunit = 2')
    text = text.replace("poll_s = 10", "poll_s = 1")
    text = text.replace('model = "ridge"', 'model = "naive"')
    text = text.replace("operator = []", f'operator = ["{operator_pub}"]')
    return text


def test_the_readme_pi_and_operator_steps_work_end_to_end(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    for step in ("install -m 0640 -o root -g wattmesh deploy/gateway.example.toml",
                 "install -m 0644 deploy/appliances.example.json /etc/wattmesh/",
                 "install -m 0600 -o wattmesh -g wattmesh nodes.json /etc/wattmesh/nodes.json",
                 "wattmesh provision gateway --gateway-id home-1 --out gw-mqtt",
                 "wattmesh gateway pubkey --config /etc/wattmesh/gateway.toml",
                 "wattmesh operator meter add", "wattmesh operator meter confirm",
                 "--link mqtt --mqtt-host pi.home --mqtt-ca mqtt-ca.crt"):  # fmt: skip
        assert step in readme, step  # the steps below are the README's
    assert 'keystore = "/etc/wattmesh/nodes.json"' in (
        ROOT / "deploy" / "gateway.example.toml").read_text()
    work, etc, var = tmp_path / "work", tmp_path / "etc", tmp_path / "var"
    work.mkdir()
    env = dict(os.environ, WATTMESH_WIFI_PASSWORD="wifi-secret")
    # -- Flashing a node: provision (the example's two nodes, both on MQTT here) with the CA of
    #    the home's broker (made first: the nodes trust it alone)
    tls = broker_tls(tmp_path / "broker")
    shutil.copyfile(tls.ca_cert, work / "mqtt-ca.crt")
    for nid in (7, 12):
        _run("provision", "node", "--id", str(nid), "--keystore", str(work / "nodes.json"),
             "--out", str(work / f"node{nid}"), "--link", "mqtt", "--mqtt-host", "127.0.0.1",
             "--mqtt-ca", str(work / "mqtt-ca.crt"), "--wifi-ssid", "home", env=env)  # fmt: skip
    # -- Running the gateway on a Raspberry Pi
    etc.mkdir(mode=0o750)
    _install(ROOT / "deploy" / "gateway.example.toml", etc / "gateway.toml", 0o640)
    _install(ROOT / "deploy" / "appliances.example.json", etc / "appliances.example.json", 0o644)
    _install(work / "nodes.json", etc / "nodes.json", 0o600)
    _run("provision", "gateway", "--gateway-id", "home-1", "--out", str(work / "gw-mqtt"))
    _install(work / "gw-mqtt" / "mqtt.password", etc / "mqtt.password", 0o600)
    var.mkdir(mode=0o750)
    broker = SecureBroker(tmp_path / "broker", {}, tls=tls,
                          lines=(work / "gw-mqtt", work / "node7", work / "node12"))
    shutil.copyfile(work / "mqtt-ca.crt", etc / "mqtt-ca.crt")
    replicas = Replicas(tmp_path / "ledger")
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{args[0]}-{len(procs)}.log").open("wb")
        p = subprocess.Popen([*WATTMESH, *args], cwd=ROOT, stdout=log, stderr=log)
        procs.append(p)
        return p

    try:
        replicas.start()
        modbus = free_port()
        start("emulate", "meter", "--model", "sdm630", "--tcp", f"127.0.0.1:{modbus}",
              "--unit", "1", "--unit", "2", "--profile", "constant:1500")  # fmt: skip
        pzem = subprocess.Popen([*WATTMESH, "emulate", "meter", "--model", "pzem004t",
                                 "--serial", "pty", "--unit", "1", "--profile", "constant:800"],
                                cwd=ROOT, stdout=subprocess.PIPE)  # fmt: skip
        procs.append(pzem)
        assert pzem.stdout is not None
        pty = json.loads(pzem.stdout.readline())["serial"]
        for nid in (7, 12):  # the nodes with their provisioned accounts and CA, over TLS
            start("emulate", "node", "--node-id", str(nid), "--keystore", str(etc / "nodes.json"),
                  "--account", str(work / f"node{nid}" / "config.json"),
                  "--mqtt", f"127.0.0.1:{broker.port}", "--period", "0.5",
                  "--profile", "constant:600")  # fmt: skip
        operator_key = replicas.dir / "operator.key"
        dso = new_key()
        write_key(work / "operator-dr.key", dso)
        cfg = etc / "gateway.toml"
        shutil.copyfile(replicas.dir / "cluster.json", etc / "cluster.json")  # the example's
        cfg.write_text(_edit(cfg.read_text(), etc, var, broker, modbus, pty, public_hex(dso)))
        assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
        conf = ["--config", str(cfg)]

        def checked() -> bool:
            p = _run("gateway", "check", *conf, "--json", "--timeout", "3", ok=None)
            if p.returncode == 2:
                raise AssertionError(p.stderr)
            return p.returncode == 0

        _wait(checked, "gateway check: every device found")
        gw_pub = json.loads(_run("gateway", "pubkey", *conf).stdout)["public_key"]
        assert stat.S_IMODE((var / "gateway.key").stat().st_mode) == 0o600
        # -- the operator's steps
        on = ["--cluster", str(replicas.dir / "cluster.json"), "--key", str(operator_key)]
        wallet = new_key()
        r = json.loads(_run("operator", "member", "admit", *on, "--id-grid", "PT0001",
                            "--name", "Home 1", "--email", "home1@example.org",
                            "--address", "Rua 1, Lisboa", "--register", str(work / "personal.db"),
                            "--public-key", public_hex(wallet), "--role", "prosumer").stdout)
        assert r["code"] == "OK", r
        r = json.loads(_run("operator", "meter", "add", *on, "--member", "PT0001",
                            "--meter", "grid", "--gateway-key", gw_pub,
                            "--import-limit-w", "6900", "--export-limit-w", "3000").stdout)
        assert r["result"]["meter_id"] == "PT0001:grid", r
        write_key(work / "wallet.key", wallet)  # the member's, on its own machine
        r = json.loads(_run("operator", "meter", "confirm", "--cluster",
                            str(replicas.dir / "cluster.json"), "--key", str(work / "wallet.key"),
                            "--member", "PT0001", "--meter", "grid").stdout)
        assert r["code"] == "OK", r
        listed = json.loads(_run("operator", "meter", "list", *on, "--member", "PT0001").stdout)
        assert [m["meter_id"] for m in listed] == ["PT0001:grid"]
        # -- the daemon, then its status
        gw = start("gateway", "run", *conf)

        def running() -> bool:
            assert gw.poll() is None, "the gateway died"
            p = _run("gateway", "status", *conf, "--json", ok=None)
            if p.returncode != 0:
                return False
            saved = json.loads(p.stdout)["saved"]
            return bool(saved) and {"7", "12"} <= set(saved["nodes"]) and {
                "grid", "pv", "ev-charger"} <= set(saved["meters"])  # fmt: skip

        _wait(running, "the daemon reading every node and meter")
        # -- a demand-response request signed by the registered key, over TLS as the gateway
        now = time.time()
        iso = lambda t: time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))  # noqa: E731
        request = _run("operator", "dr", "--key", str(work / "operator-dr.key"),
                       "--role", "operator", "--gateway", "home-1", "--id", "op-1",
                       "--start", iso(now), "--end", iso(now + 7200), "--max-w", "1500").stdout
        answer = asyncio.run(_ask(broker, work, request.encode()))
        assert answer["ok"] is True, answer
        status = json.loads(_run("gateway", "status", *conf, "--json").stdout)
        assert [d["id"] for d in status["demand_response"]] == ["op-1"]
        assert status["ledger"]["ok"] is True, status["ledger"]
    finally:
        stop_processes(procs)
        replicas.stop()
        broker.stop()
    assert gw.returncode == 0


async def _ask(broker: SecureBroker, work: Path, payload: bytes) -> Any:
    """Publish a request as the gateway's own account would let Home Assistant or the operator's
    bridge (here: the gateway account, whose ACL holds the topic) and wait for the answer."""
    password = (work / "gw-mqtt" / "mqtt.password").read_text().strip()
    async with broker.client("gateway-home-1", password) as c:
        await c.subscribe("wattmesh/home-1/ems/dr/result", qos=1)
        for _ in range(30):
            await c.publish("wattmesh/home-1/ems/dr", payload, qos=1)
            try:
                async with asyncio.timeout(2):
                    async for m in c.messages:
                        assert isinstance(m.payload, bytes)
                        return json.loads(m.payload)
            except TimeoutError:
                continue
    raise AssertionError("no answer to the demand-response request")
