"""Each home's edge: the gateway daemon (``gateway.daemon.Gateway``, configured from a
``gateway.toml`` the demo writes) with its real peers:

* an emulated SDM120 meter on a real pymodbus TCP server on loopback, the home's billing meter,
  polled by the daemon's Modbus bus;
* emulated BLE plugs (``hardware.ble.plug``) on the home's own bumble virtual link, one per
  flexible appliance, reached through the real bleak API (``gateway.sources.ble`` with the
  bumble-backed bleak backend); their relays switch the appliances (and so what the billing meter
  sees) and their readings are the appliances' sub-metering;
* for the home that hosts it, the node running the real firmware on the MicroPython VM, on MQTT
  through the demo's mosquitto (``tools.demo.vmnode``).

The operator's edge is built the same way: a gateway reading the community's feeder meter (an
emulated SDM630 that measures what every home draws and feeds in, plus the lines' losses),
registered on the ledger as the feeder. ``Deliverer.tamper`` lets ``--faults`` make one home's
gateway rewrite its own reports before they leave (it holds the key, so it can re-sign them).

Time is the demo's ``ManualClock``: meters and plugs integrate energy on it, the daemon stamps and
closes intervals on it. The daemon's own loops run as in production; the demo moves the clock in
steps of the poll period and waits, after each step, until every bus has polled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bumble.link import LocalLink
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware import ble_guard
from gateway.clock import ManualClock
from gateway.config_parse import load_config
from gateway.daemon import Gateway
from gateway.intervals import MISSING, Interval
from gateway.outbox import DELIVERED, PENDING
from gateway.sources.base import NodeSource
from gateway.sources.ble import BleNode, BleNodeSource
from hardware.ble.bleak_bumble import BumbleCentral, bumble_backend
from hardware.ble.plug import PlugEmulator
from hardware.emulators.modbus_meter import EmulatedMeter, Faults, serve_tcp
from ledger.keys import write_key
from ledger.tx import SignedTx
from tools.demo.procs import DemoBroker, free_port

log = logging.getLogger(__name__)

METER_MODEL = "sdm120"
UNIT = 1
SUBMIT_TIMEOUT_S = 3.0  # a ledger that does not answer within this is down: retry later
BLE_RECONNECT_S = (0.05, 0.5)  # real seconds: a dropped virtual link comes back quickly


class SharedLedgerDeliverer:
    """The daemon's ``Deliverer``: the shared ledger client, failing fast while the ledger is
    away (the outbox retries). Sub-meter reports never reach it: each home's gateway config
    marks the plugs and nodes ``report = false`` and only the billing meter reports.
    ``tamper``, when set, may replace a transaction on its way out (a dishonest gateway)."""

    def __init__(self, ledger: Callable[[], Any]) -> None:
        self.ledger = ledger
        self.tamper: Callable[[SignedTx], SignedTx] | None = None

    async def submit(self, tx: SignedTx) -> Any:
        ledger = self.ledger()
        if ledger is None:
            raise ConnectionError("the ledger is stopped")
        if self.tamper is not None:
            tx = self.tamper(tx)
        return await asyncio.wait_for(ledger.submit(tx), SUBMIT_TIMEOUT_S)


@dataclass
class Plug:
    node_id: int
    appliance: str
    power_w: int
    emulator: PlugEmulator
    task: asyncio.Task[None] | None = None


@dataclass
class HomeEdge:
    id_grid: str
    meter_id: str
    clock: ManualClock
    gateway: Gateway
    task: asyncio.Task[None]
    meter: EmulatedMeter
    server: Any
    deliverer: SharedLedgerDeliverer
    plugs: list[Plug] = field(default_factory=list)
    link: LocalLink | None = None
    central: BumbleCentral | None = None
    node_ids: dict[str, tuple[int, int]] = field(default_factory=dict)  # appliance -> node, relay
    relay_ok: int = 0
    relay_failed: int = 0

    @property
    def bus(self) -> Any:
        return self.gateway.buses[0]

    def cycles(self) -> int:
        return int(self.bus.counts["cycles"])

    def ble_ready(self, node_ids: list[int] | None = None) -> bool:
        """The gateway holds a live, subscribed link to each plug (all plugs by default)."""
        ids = node_ids if node_ids is not None else [p.node_id for p in self.plugs]
        ble = [s for s in self.gateway.sources if isinstance(s, BleNodeSource)]
        return all(any(s.is_connected(n) for s in ble) for n in ids)

    def silence(self, on: bool) -> None:
        self.meter.faults = Faults("silence", 1.0) if on else Faults()

    def billing_intervals(self, since_ms: int, until_ms: int) -> list[Interval]:
        return self.gateway.interval_history(self.meter_id, since_ms, until_ms)

    def report_rows(self) -> list[Any]:
        return [r for r in self.gateway.store.outbox_all() if r.kind == "meter.report"
                and r.body.get("meter_id") == self.meter_id] if self.gateway.store else []

    def pending(self) -> int:
        return sum(1 for r in self.report_rows() if r.state == PENDING)

    def hour_reported(self, since_ms: int, until_ms: int, intervals_per_hour: int) -> bool:
        """Every interval of the hour is closed and each one with data is delivered."""
        closed = self.billing_intervals(since_ms, until_ms)
        if len(closed) < intervals_per_hour:
            return False
        names = {i.name for i in closed if not i.flags & MISSING}
        states = {str(r.body.get("interval")): r.state for r in self.report_rows()}
        return all(states.get(n) == DELIVERED for n in names)

    def refused(self) -> list[str]:
        rows = self.gateway.store.outbox_all() if self.gateway.store else []
        return [f"{r.kind} {r.body.get('meter_id', '')} {r.code} {r.message}" for r in rows
                if r.state == "rejected"]

    def sub_meter_reports(self) -> int:
        """Signed reports queued for any meter but the billing meter (the config keeps them
        local, so this is 0)."""
        rows = self.gateway.store.outbox_all() if self.gateway.store else []
        return sum(1 for r in rows if r.kind == "meter.report"
                   and r.body.get("meter_id") != self.meter_id)

    async def relay(self, appliance: str, on: bool) -> bool:
        node, relay = self.node_ids[appliance]
        try:
            status = await asyncio.wait_for(self.gateway.send_relay(node, relay, on), 5.0)
        except Exception as exc:  # link down, no ack: counted and logged, the plan goes on
            self.relay_failed += 1
            log.warning("%s: relay of %s (node %d) not switched: %r", self.id_grid, appliance,
                        node, exc)
            return False
        ok = status == 0
        if not ok:
            log.warning("%s: node %d refused switching %s: status %d", self.id_grid, node,
                        appliance, status)
        if ok:
            self.relay_ok += 1
        else:
            self.relay_failed += 1
        return ok

    async def close(self) -> None:
        self.gateway.stop()
        try:
            await asyncio.wait_for(self.task, 10)
        except Exception:  # a gateway that will not stop cleanly is cancelled
            self.task.cancel()
        for p in self.plugs:
            if p.task is not None:
                p.task.cancel()
        await asyncio.gather(*(p.task for p in self.plugs if p.task), return_exceptions=True)
        if self.central is not None:
            try:
                await asyncio.wait_for(self.central.close(), 5)
            except Exception:  # closing a virtual radio: nothing to save
                pass
        await self.server.shutdown()


@dataclass
class EdgeSpec:
    """What the demo decides about a home's edge before it starts."""

    id_grid: str
    meter_id: str
    key: Ed25519PrivateKey
    profile: Callable[[int], float]  # the billing meter's power (W, export negative) at a time
    plugs: list[tuple[int, str, int]]  # (node id, appliance, power W)
    mqtt_nodes: list[tuple[int, str, bytes]] = field(default_factory=list)  # (id, topic, key)
    node_relays: dict[str, tuple[int, int]] = field(default_factory=dict)
    model: str = METER_MODEL  # the billing meter's (the feeder: sdm630)
    # the order key the member delegated on chain so that the gateway trades for the home;
    # ``key`` is the meter-reporting key; the member's wallet key is never on the gateway
    order_key: Ed25519PrivateKey | None = None


def write_gateway_files(d: Path, spec: EdgeSpec, modbus_port: int, poll_s: int,
                        plug_keys: dict[int, bytes], broker: DemoBroker | None) -> Path:
    (d / "data").mkdir(parents=True, exist_ok=True)
    write_key(d / "data" / "gateway.key", spec.key)
    if spec.order_key is not None:
        write_key(d / "data" / "order.key", spec.order_key)
    nodes = {str(nid): {"key": key.hex(), "name": f"plug-{nid}", "transport": "ble"}
             for nid, key in plug_keys.items()}
    for nid, topic, key in spec.mqtt_nodes:
        nodes[str(nid)] = {"key": key.hex(), "name": topic, "transport": "mqtt"}
    fd = os.open(d / "nodes.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # node keys
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps({"nodes": nodes}, indent=1))
    toml = [
        "# written by `wattmesh demo`: one home's gateway",
        "[gateway]", f'id = "{spec.id_grid.lower()}"', 'data_dir = "data"',
        'key_file = "gateway.key"', 'keystore = "nodes.json"', "flush_ms = 60000",
        "command_timeout_s = 30",
        *(['order_key_file = "order.key"'] if spec.order_key is not None else []), "",
    ]
    if broker is not None:  # TLS, the gateway's own account (README: a home's broker)
        base = f"wattmesh-{spec.id_grid.lower()}"
        user, pw_file = broker.gateway_account(spec.id_grid.lower(), base)
        toml += ["[mqtt]", 'host = "127.0.0.1"', f"port = {broker.port}", "tls = true",
                 f'ca_file = "{broker.ca_file}"', f'username = "{user}"',
                 f'password_file = "{pw_file}"', "publish_min_s = 300",
                 f'base_topic = "{base}"', "[mqtt.discovery]", "enabled = true", ""]
        for nid, topic, _ in spec.mqtt_nodes:
            toml += ["[[mqtt.nodes]]", f"node_id = {nid}", f'meter_id = "node-{nid}"',
                     f'topic = "{topic}"', "report = false", ""]
    if spec.plugs:
        toml += ["[ble]", 'backend = "bleak"', ""]
        from hardware.ble.profile import plug_address

        for nid, _appliance, _w in spec.plugs:
            toml += ["[[ble.nodes]]", f"node_id = {nid}", f'meter_id = "plug-{nid}"',
                     f'address = "{plug_address(nid)}"', "report = false", ""]
    toml += [
        "[[modbus.buses]]", 'name = "rs485"', f'tcp = "127.0.0.1:{modbus_port}"',
        f"poll_s = {poll_s}", "timeout_s = 0.5", "retries = 0",
        f"backoff_initial_s = {poll_s}", f"backoff_max_s = {poll_s}", "",
        "[[modbus.buses.meters]]", f'meter_id = "{spec.meter_id}"', f'model = "{spec.model}"',
        f"unit = {UNIT}", "report = true", "",
    ]
    path = d / "gateway.toml"
    path.write_text("\n".join(toml), encoding="utf-8")
    return path


async def start_edge(spec: EdgeSpec, clock: ManualClock, directory: Path, poll_s: int,
                     ledger: Callable[[], Any], plug_keys: dict[int, bytes],
                     plug_load: Callable[[int, int], Callable[[int], int]],
                     broker: DemoBroker | None, plug_boot_ms: int | None = None) -> HomeEdge:
    meter = EmulatedMeter(spec.model, spec.profile, clock=clock.now_ms)
    port = free_port()
    server = await serve_tcp({UNIT: meter}, "127.0.0.1", port)
    cfg = load_config(write_gateway_files(directory, spec, port, poll_s, plug_keys,
                                          broker if spec.mqtt_nodes else None))
    sources: list[NodeSource] = []
    plugs: list[Plug] = []
    link = central = None
    if spec.plugs:
        link = LocalLink()  # type: ignore[no-untyped-call]
        for nid, appliance, watts in spec.plugs:
            emu = PlugEmulator.on_link(link, nid, plug_keys[nid], load=plug_load(nid, watts),
                                       now_ms=clock.now_ms, boot_ms=plug_boot_ms)
            await emu.start()
            plugs.append(Plug(nid, appliance, watts, emu))
        central = BumbleCentral.on_link(link)
        sources.append(BleNodeSource(
            [BleNode(n.node_id, n.address, ble_guard.passkey(plug_keys[n.node_id]))
             for n in cfg.nodes if n.transport == "ble"],
            backend=bumble_backend(central), clock=clock,
            reconnect_initial_s=BLE_RECONNECT_S[0], reconnect_max_s=BLE_RECONNECT_S[1]))
    mqtt_nodes = [n for n in cfg.nodes if n.transport == "mqtt"]
    if mqtt_nodes and cfg.mqtt is not None:
        from gateway.sources.mqtt import MqttNodeSource

        sources.append(MqttNodeSource(mqtt_nodes, cfg.mqtt, clock))
    deliverer = SharedLedgerDeliverer(ledger)
    gw = Gateway(cfg, clock=clock, deliverer=deliverer, node_sources=sources)
    task = asyncio.create_task(gw.run(), name=f"gateway-{spec.id_grid}")
    edge = HomeEdge(spec.id_grid, spec.meter_id, clock, gw, task, meter, server, deliverer,
                    plugs, link, central)
    for nid, appliance, _w in spec.plugs:
        edge.node_ids[appliance] = (nid, 0)
    edge.node_ids.update(spec.node_relays)
    return edge
