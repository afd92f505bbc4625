"""Demand response as an attacker on the home network tried it (issue 19, finding 2): an
anonymous week-long ``max_w 0`` was accepted, never logged, and lost after a SIGKILL. Now a
request must be signed by a key registered for its role; the real gateway process refuses
others (and says why in its log), persists what it takes, shows it in ``gateway status``, and
holds it after SIGKILL and restart. Real mosquitto, real ``wattmesh gateway run`` processes."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.dr_inbox import sign_request
from tests.gateway.conftest import (
    Broker,
    collect_json,
    gateway_status,
    stop_processes,
    until,
    write_keystore,
)

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "wattmesh/home-1/ems/dr"


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _config(tmp: Path, port: int, operator: Ed25519PrivateKey) -> Path:
    (tmp / "appliances.json").write_text(json.dumps({"appliances": [
        {"name": "heat pump", "flexible": True, "start": "00:00", "end": "24:00",
         "working_min": 60, "power_w": 1200, "node": 12, "relay": 0},
    ]}))  # fmt: skip
    pub = operator.public_key().public_bytes_raw().hex()
    write_keystore(tmp, {"12": {"key": "11" * 32, "name": "n12", "transport": "mqtt"}})
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'[gateway]\nid = "home-1"\ndata_dir = "data"\nkeystore = "nodes.json"\n'
        f"[mqtt]\nport = {port}\n[mqtt.discovery]\nenabled = false\n"
        '[[mqtt.nodes]]\nnode_id = 12\nmeter_id = "main"\nreport = true\n'
        '[ems]\nappliances = "appliances.json"\nsite_meter = "main"\nmodel = "naive"\n'
        f'[ems.dr_signers]\noperator = ["{pub}"]\n'
    )
    return cfg


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "gateway", "run", "--config", str(cfg)],
            cwd=ROOT, stdout=f, stderr=f,
        )  # fmt: skip


async def _ask(port: int, payloads: list[bytes], gw: subprocess.Popen[bytes]) -> list[Any]:
    """Publish each payload on the request topic (as whoever may publish on the broker) and
    return the gateway's answers, in order."""
    answers: list[Any] = []
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(TOPIC + "/result", qos=1)
        collector = collect_json(client, answers)
        for p in payloads:
            n = len(answers)
            # the inbox may not be subscribed yet: ask again until it answers
            deadline = time.monotonic() + 60
            while len(answers) == n:
                assert gw.poll() is None, "the gateway died"
                assert time.monotonic() < deadline, "no answer from the gateway"
                await client.publish(TOPIC, p, qos=1)
                try:
                    await until(lambda n=n: len(answers) > n, 2.0, "answer")
                except AssertionError:
                    continue
        collector.cancel()
    return answers


def test_only_signed_requests_are_taken_and_they_survive_sigkill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Broker(tmp_path)
    operator, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    cfg = _config(tmp_path, broker.port, operator)
    log = tmp_path / "gateway.log"
    now = datetime.now(UTC).replace(microsecond=0)
    week = {"start": _iso(now), "end": _iso(now + timedelta(days=7)), "max_w": 0}
    body = {"id": "op-1", "to": "home-1", "role": "operator", "start": _iso(now),
            "end": _iso(now + timedelta(hours=2)), "max_w": 1500}  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        gw = _start(cfg, log)
        procs.append(gw)
        answers = asyncio.run(_ask(broker.port, [
            json.dumps(week).encode(),  # the finding: anonymous, a week of no import
            sign_request(stranger, body | {"id": "x-1"}),  # signed, by a key nobody registered
            sign_request(operator, body | {"role": "dso"}),  # a role the key does not hold
            sign_request(operator, body | {"to": "home-2"}),  # another home's request
            sign_request(operator, body | {"end": _iso(now - timedelta(hours=1)),
                                           "start": _iso(now - timedelta(hours=3))}),
            sign_request(operator, body),  # the operator's own: taken
            sign_request(operator, body),  # replayed: a duplicate, not taken twice
        ], gw))  # fmt: skip
        assert [a["ok"] for a in answers] == [False] * 5 + [True, True], answers
        assert "unsigned" in answers[0]["error"]
        assert "not registered as operator" in answers[1]["error"]
        assert "not registered as dso" in answers[2]["error"]
        assert "request.to" in answers[3]["error"]
        assert "already ended" in answers[4]["error"]
        assert answers[6].get("duplicate") is True
        status = gateway_status(cfg, capsys)
        assert [d["id"] for d in status["demand_response"]] == ["op-1"]
        assert status["demand_response"][0]["max_w"] == 1500
        gw.send_signal(signal.SIGKILL)  # a power cut, right after
        gw.wait(10)
        assert [d["id"] for d in gateway_status(cfg, capsys)["demand_response"]] == ["op-1"]
        gw = _start(cfg, log)
        procs.append(gw)

        def restored() -> bool:
            assert gw.poll() is None, log.read_text()[-3000:]
            return "op-1 (operator) still holds" in log.read_text()

        deadline = time.monotonic() + 60
        while not restored():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        # after the restart the replay is still a duplicate: the id was kept
        again = asyncio.run(_ask(broker.port, [sign_request(operator, body)], gw))
        assert again[0].get("duplicate") is True, again
    finally:
        stop_processes(procs)
        broker.stop()
    text = log.read_text()
    for reason in ("unsigned", "not registered as operator", "request.to", "already ended"):
        assert any("demand-response request refused: " in line and reason in line
                   for line in text.splitlines()), reason
    assert "demand-response request op-1 from the operator" in text
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as db:
        assert db.execute("SELECT id, max_w FROM dr_requests").fetchall() == [("op-1", 1500)]


def test_a_request_expires_when_its_span_ends(tmp_path: Path) -> None:
    """Persisted requests are in force until their end, then neither restored nor shown."""
    from gateway.status import read_status
    from gateway.store import DrRow, Store

    store = Store(tmp_path / "gateway.db")
    row = DrRow("op-1", "operator", "ab" * 32, 1_000_000, 2_000_000, 0, 999_000)
    assert store.dr_add(row) is True
    assert store.dr_add(row) is False  # the same id again: not taken twice
    assert store.dr_active(1_999_999) == [row]
    assert store.dr_active(2_000_000) == []
    store.close()
    assert [d["id"] for d in read_status(tmp_path / "gateway.db", 1_500_000)[
        "demand_response"]] == ["op-1"]  # fmt: skip
    assert read_status(tmp_path / "gateway.db", 2_000_000)["demand_response"] == []


def test_the_store_commits_with_synchronous_full(tmp_path: Path) -> None:
    """The replay windows, command sequence numbers and DR requests live in this store: with
    synchronous=NORMAL a power cut could roll back their last commits (finding 4)."""
    from gateway.store import Store

    store = Store(tmp_path / "gateway.db")
    try:
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()
