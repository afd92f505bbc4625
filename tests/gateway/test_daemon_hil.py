"""The whole daemon against real peers: mosquitto with an MQTT node emulator, a Modbus TCP meter
emulator, SQLite, and a ledger behind the Deliverer interface; driven by a ManualClock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware import frame
from gateway.clock import ManualClock
from gateway.config_parse import load_config
from gateway.daemon import Gateway
from gateway.intervals import INTERVAL_MS, interval_name
from gateway.report import verify_report
from hardware.emulators.modbus_meter import EmulatedMeter, serve_tcp
from hardware.emulators.mqtt_node import MqttNodeEmulator
from hardware.emulators.profiles import constant
from ledger.tx import public_bytes
from tests.gateway.conftest import Broker, free_port, until, write_gateway_config
from tests.gateway.fakes import MemoryLedger
from tests.gateway.test_publish import check_ha_sensor_discovery

T0 = 1_795_000_000_000 - 1_795_000_000_000 % INTERVAL_MS + 60_000  # one minute into an interval
KEY7 = bytes(range(32))
MIN = 60_000


def write_config(tmp: Path, mqtt_port: int, modbus_port: int, node_report: str = "true") -> Path:
    """``node_report``: the node's ``report`` line (most tests have the node report to the
    ledger like a billing meter; "" leaves the default, a sub-meter kept local)."""
    (tmp / "nodes.json").write_text(
        json.dumps({"nodes": {"7": {"key": KEY7.hex(), "name": "plug", "transport": "mqtt"}}})
    )
    cfg = write_gateway_config(
        tmp,
        f"""flush_ms = 1000

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
publish_min_s = 0

[[mqtt.nodes]]
node_id = 7
meter_id = "plug7"
{f"report = {node_report}" if node_report else ""}

[[modbus.buses]]
name = "tcp0"
tcp = "127.0.0.1:{modbus_port}"
poll_s = 60
timeout_s = 0.3
meters = [{{meter_id = "main", model = "sdm630", unit = 1}}]
"""
    )
    return cfg


@dataclass
class Home:
    clock: ManualClock
    cfg_path: Path
    node: MqttNodeEmulator
    meter: EmulatedMeter
    ledger: MemoryLedger
    broker: Broker
    modbus_port: int


@pytest.fixture
async def home(tmp_path: Path, broker: Broker) -> AsyncIterator[Home]:
    clock = ManualClock(T0)
    mport = free_port()
    meter = EmulatedMeter("sdm630", constant(2_000.0), clock=clock.now_ms)
    server = await serve_tcp({1: meter}, "127.0.0.1", mport)
    node = MqttNodeEmulator(
        7, KEY7, "127.0.0.1", broker.port, profile=constant(600.0), clock=clock.now_ms, relays=2
    )
    node.relay_state = 1
    node_task = asyncio.create_task(node.run(publish=False))
    await until(node.ready.is_set, what="node connected")
    try:
        yield Home(
            clock, write_config(tmp_path, broker.port, mport), node, meter, MemoryLedger(), broker,
            mport,
        )
    finally:
        node_task.cancel()
        await asyncio.gather(node_task, return_exceptions=True)
        await server.shutdown()


async def start(home: Home, *, crashable: bool = False) -> tuple[Gateway, asyncio.Task[None]]:
    """Start a gateway. ``crashable``: run its tasks without the clean-stop path, so cancelling
    them is a crash (nothing flushed; only what SQLite committed survives)."""
    gw = Gateway(load_config(home.cfg_path), clock=home.clock, deliverer=home.ledger)
    if crashable:
        await gw.start()
        task = asyncio.create_task(asyncio.Event().wait())
    else:
        task = asyncio.create_task(gw.run())
    src = gw.sources[0]
    await until(lambda: src.stats().get("connects", 0) > 0, what="gateway on the broker")
    await until(lambda: gw.buses[0].counts["cycles"] > 0, what="first modbus poll")
    return gw, task


async def minute(home: Home, gw: Gateway) -> None:
    """One minute of home life: the node reports, the clock moves, the gateway keeps up."""
    before = gw.verifier.accepted
    await home.node.publish_reading()
    await until(lambda: gw.verifier.accepted > before, what="frame through the broker")
    cycles = gw.buses[0].counts["cycles"]
    await home.clock.advance(MIN)
    await until(lambda: gw.buses[0].counts["cycles"] > cycles, what="modbus poll")


async def test_frames_and_meters_become_signed_reports_delivered_once(home: Home) -> None:
    gw, task = await start(home)
    for _ in range(16):
        await minute(home, gw)
    await until(lambda: len(home.ledger.applied) >= 2, what="reports delivered")
    start_ms = T0 - MIN
    rows = {i.meter_id: i for i in gw.interval_history(None, start_ms, start_ms + INTERVAL_MS)}
    # the node at 600 W was seen from minute 1: 14 minutes inside the first interval
    assert rows["plug7"].import_wh == pytest.approx(600 * 14 / 60, abs=1)
    assert rows["main"].import_wh == pytest.approx(2_000 * 14 / 60, abs=1)
    reports = {tx.body["meter_id"]: tx for tx in home.ledger.applied.values()}
    assert set(reports) == {"plug7", "main"}
    pub = Ed25519PublicKey.from_public_bytes(public_bytes(gw.key.public_key()))
    for tx in reports.values():
        assert tx.kind == "meter.report" and tx.sender == public_bytes(gw.key.public_key())
        assert tx.body["interval"] == interval_name(start_ms)
        assert verify_report(pub, dict(tx.body))
    assert reports["plug7"].body["import_wh"] == rows["plug7"].import_wh
    gw.stop()
    await task


async def test_sub_meters_are_kept_local_and_only_billing_meters_reported(home: Home) -> None:
    home.cfg_path = write_config(
        home.cfg_path.parent, home.broker.port, home.modbus_port, node_report=""
    )
    cfg = load_config(home.cfg_path)
    assert not cfg.reports("plug7") and not cfg.reports("plug7.1") and cfg.reports("main")
    gw, task = await start(home)
    for _ in range(31):
        await minute(home, gw)
    await until(lambda: len(home.ledger.applied) >= 2, what="reports delivered")
    start_ms = T0 - MIN
    rows = gw.interval_history(None, start_ms, start_ms + 2 * INTERVAL_MS)
    # the plug's intervals are closed and kept in the gateway, with their energy ...
    assert {i.meter_id for i in rows} == {"plug7", "main"}
    assert sum(i.import_wh for i in rows if i.meter_id == "plug7") > 200
    # ... but only the billing meter's reports were signed for the ledger
    assert {tx.body["meter_id"] for tx in home.ledger.applied.values()} == {"main"}
    assert len(home.ledger.applied) == 2 and gw.reports_queued == 2
    gw.stop()
    await task


async def test_relay_command_round_trip_over_mqtt(home: Home) -> None:
    gw, task = await start(home)
    await minute(home, gw)  # the gateway learns which source reaches node 7
    assert await gw.send_relay(7, 1, True) == frame.S_OK
    assert home.node.relay_state == 0b11
    assert await gw.send_relay(7, 0, False) == frame.S_OK
    assert home.node.relay_state == 0b10
    assert await gw.send_relay(7, 5, True) == frame.S_BAD_RELAY
    gw.stop()
    await task


async def test_home_assistant_discovery(home: Home) -> None:
    seen: dict[str, dict[str, object]] = {}
    async with aiomqtt.Client("127.0.0.1", home.broker.port) as client:
        await client.subscribe("homeassistant/#")
        await client.subscribe("wattmesh/#")
        gw, task = await start(home)
        await minute(home, gw)

        async def collect() -> None:
            async for m in client.messages:
                if isinstance(m.payload, bytes | str) and m.payload:
                    try:
                        seen[str(m.topic)] = json.loads(m.payload)
                    except ValueError:
                        seen[str(m.topic)] = {"raw": m.payload}
                if "wattmesh/home-1/plug7/state" in seen and len(seen) >= 8:
                    return

        await asyncio.wait_for(collect(), 10)
        gw.stop()
        await task
    power = seen["homeassistant/sensor/home-1_plug7/power/config"]
    assert (power["device_class"], power["state_class"], power["unit_of_measurement"]) == (
        "power",
        "measurement",
        "W",
    )
    energy = seen["homeassistant/sensor/home-1_main/energy_import/config"]
    assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == (
        "energy",
        "total_increasing",
        "kWh",
    )
    assert energy["state_topic"] == "wattmesh/home-1/main/state"
    assert seen["wattmesh/home-1/plug7/state"]["power_w"] == 600.0
    # what crossed the broker meets HA's sensor discovery schema (test_publish states it)
    check_ha_sensor_discovery([(t, p) for t, p in seen.items() if t.endswith("/config")])


async def test_bad_frames_are_dropped_and_counted(home: Home) -> None:
    gw, task = await start(home)
    await minute(home, gw)
    async with aiomqtt.Client("127.0.0.1", home.broker.port) as client:
        good = home.node.reading_frame()
        await client.publish("tele/wattmesh_7/FRAME", good)
        await client.publish("tele/wattmesh_7/FRAME", good)  # replay
        await client.publish("tele/wattmesh_7/FRAME", good[:-1] + bytes([good[-1] ^ 1]))
        await client.publish("tele/wattmesh_7/FRAME", b"\x00" * 5000)  # oversize
        await client.publish("tele/wattmesh_7/FRAME", b"")
    c = gw.verifier.counts
    await until(lambda: c()["dropped_replay"] == 1 and c()["dropped_tag"] == 1, what="drops")
    await until(lambda: c()["dropped_short"] == 1, what="empty frame dropped")
    assert gw.sources[0].stats()["bad_payload"] == 1
    gw.stop()
    await task


async def test_ledger_outage_and_crash_mid_interval_lose_and_duplicate_nothing(home: Home) -> None:
    home.ledger.up = False
    gw, task = await start(home, crashable=True)
    for _ in range(7):
        await minute(home, gw)
    await home.node.publish_reading()  # in memory only when the crash comes
    await until(lambda: len(gw.ingest.pending) > 0, what="a reading not yet flushed")
    for t in [task, *gw._tasks]:
        t.cancel()
    await asyncio.gather(task, *gw._tasks, return_exceptions=True)
    gw.buses[0].close()
    assert gw.store is not None
    gw.store.close()
    gw2, task2 = await start(home)
    for _ in range(40):  # 40 minutes: two more intervals close while the ledger is down
        await minute(home, gw2)
    assert gw2.reports_queued >= 4 and not home.ledger.applied
    home.ledger.up = True
    home.ledger.lose_reply = 1
    await home.clock.advance(400_000)  # past the outbox's backoff
    await until(lambda: len(home.ledger.applied) >= 6, what="backlog delivered")
    gw2.stop()
    await task2
    bodies = [tx.body for tx in home.ledger.applied.values()]
    keys = [(b["meter_id"], b["interval"]) for b in bodies]
    assert len(keys) == len(set(keys)), "a report was duplicated"
    plug = sorted((b["interval"], b["import_wh"]) for b in bodies if b["meter_id"] == "plug7")
    # 600 W without a gap: each whole interval is 150 Wh; the first is partial (14 min)
    assert [wh for _, wh in plug[1:3]] == [150, 150]
    assert plug[0][1] == pytest.approx(140, abs=1)
