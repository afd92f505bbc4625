"""Shared rigs for the gateway's tests: a real mosquitto on a free loopback port, a real ledger
of four replica processes (``replicas``), free ports, and a helper to wait (in real time, for
real IO only) until a condition holds."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ledger.setup import init_cluster

if TYPE_CHECKING:
    from tools.mqtt_auth import TlsFiles

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_processes(procs: list[subprocess.Popen[Any]]) -> None:
    """SIGTERM to every process still running, then wait for each (killed after 10 s)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def until(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Wait for IO to happen (a message to cross the broker, a process to answer)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def collect_json(client: Any, into: list[Any]) -> asyncio.Task[None]:
    """A task appending the JSON payload of every message an aiomqtt ``client`` receives to
    ``into``, until cancelled."""

    async def collect() -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            into.append(json.loads(m.payload))

    return asyncio.create_task(collect())


def write_keystore(directory: Path, nodes: dict[str, dict[str, str]]) -> Path:
    """``directory``/nodes.json holding ``nodes`` (node id -> entry), owner-only: node keys
    others can read are refused by ``gateway check`` and ``run``."""
    ks = directory / "nodes.json"
    ks.write_text(json.dumps({"nodes": nodes}))
    ks.chmod(0o600)
    return ks


def write_gateway_config(directory: Path, rest: str) -> Path:
    """``directory``/gateway.toml: the ``[gateway]`` table of a test home (``home-1``, its data
    in ``data``, its node keys in ``nodes.json``), then ``rest`` (more of that table, then the
    other tables)."""
    path = directory / "gateway.toml"
    path.write_text('[gateway]\nid = "home-1"\ndata_dir = "data"\nkeystore = "nodes.json"\n' + rest)
    return path


def gateway_status(cfg: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """What ``wattmesh gateway status --json`` prints for ``cfg`` (the command must succeed)."""
    from tools.cli import main

    assert main(["gateway", "status", "--config", str(cfg), "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


class Broker:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_listening(lambda: "")

    def _wait_listening(self, log: Callable[[], str]) -> None:
        """Until the broker accepts on ``self.port``; stops it and raises (the message ending
        in ``log()``) if it exits or 10 s pass first."""
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not start{log()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def broker_tls(tmp: Path) -> TlsFiles:
    """A CA and the broker's certificate for 127.0.0.1 / localhost, made now in ``tmp``/tls:
    ``ca_cert`` is what ``wattmesh provision node --mqtt-ca`` takes."""
    from tools.mqtt_auth import make_tls

    return make_tls(tmp / "tls")


def provision_node(tmp: Path, node_id: int, ca: Path) -> Path:
    """``wattmesh provision node`` for an MQTT node of a broker on 127.0.0.1 whose CA is ``ca``,
    keys in ``tmp``/nodes.json (the Wi-Fi password from ``WATTMESH_WIFI_PASSWORD``, which the
    caller sets); the node's folder."""
    from tools.cli import main

    out = tmp / f"node{node_id}"
    assert main(["provision", "node", "--id", str(node_id), "--keystore", str(tmp / "nodes.json"),
                 "--out", str(out), "--link", "mqtt", "--mqtt-host", "127.0.0.1",
                 "--mqtt-ca", str(ca), "--wifi-ssid", "home"]) == 0  # fmt: skip
    return out


class SecureBroker(Broker):
    """A private mosquitto as a home should run it: TLS only (certificates made now by
    ``tools.mqtt_auth.make_tls``), no anonymous clients, a password file and an ACL with one
    block per account. ``accounts`` maps user to (password, ACL block); ``lines`` adds files
    of password-file and ACL lines as ``wattmesh provision`` writes them; ``tls``: certificates
    made before (``broker_tls``: nodes are provisioned with the CA before the broker starts)."""

    def __init__(
        self, tmp: Path, accounts: dict[str, tuple[str, str]], lines: tuple[Path, ...] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        from tools.mqtt_auth import mosquitto_conf, password_line

        self.tls = tls or broker_tls(tmp)
        self.port = free_port()
        self.accounts = accounts
        pw = tmp / "mosquitto.passwd"
        pw.write_text(
            "".join(password_line(u, p) + "\n" for u, (p, _) in accounts.items())
            + "".join((d / "mosquitto.passwd").read_text() for d in lines)
        )
        acl = tmp / "mosquitto.acl"
        acl.write_text(
            "\n".join([b for _, b in accounts.values()]
                      + [(d / "mosquitto.acl").read_text() for d in lines])
        )
        conf = tmp / "mosquitto.conf"
        conf.write_text(mosquitto_conf(self.port, self.tls, pw, acl))
        self.log = tmp / "mosquitto.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        self._wait_listening(lambda: f": {self.log.read_text()}")

    def client(self, user: str | None, password: str | None = None, **kw: Any) -> Any:
        """An aiomqtt client over TLS trusting this broker's CA, as ``user``."""
        import ssl

        import aiomqtt

        ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        if user is not None and password is None:
            password = self.accounts[user][0]
        return aiomqtt.Client(
            "127.0.0.1", self.port, username=user, password=password, tls_context=ctx, **kw
        )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    try:
        yield b
    finally:
        b.stop()


class Replicas:
    """A real ledger: four replica processes on loopback (fast timers), started and stopped
    by the test."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        init_cluster(
            directory,
            4,
            timers={"view_change_ms": 300, "request_timeout_ms": 500, "status_ms": 100},
            batch={"max_txs": 50, "max_delay_ms": 2},
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for i in range(4):
            log = open(self.dir / f"replica-{i}.log", "ab")  # noqa: SIM115 - owned by the child
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ledger", "run",
                     "--dir", str(self.dir), "--replica", str(i)],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
            log.close()

    def stop(self) -> None:
        stop_processes(self.procs)
        self.procs.clear()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    r = Replicas(tmp_path / "ledger")
    try:
        yield r
    finally:
        r.stop()
