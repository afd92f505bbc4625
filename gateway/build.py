"""Wiring one gateway from its config: ``build`` makes every part and connects them, once.

The parts: the ingest path (``gateway.ingest``, sans-IO), the node sources and Modbus buses that
feed it, the relay commander (``gateway.relays``), the recorder that writes to SQLite
(``gateway.recorder``), the deliverer that drains the outbox into the ledger, the MQTT publisher,
and the EMS with its demand-response inbox. ``frame_sink`` is the path of one node frame through
them. The daemon (``gateway.daemon``) only runs what is built here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware import ble_guard
from gateway.clock import Clock
from gateway.config import (
    Backoff,
    EmsConfig,
    GatewayConfig,
    GatewayConfigError,
    NodeConfig,
    load_keystore,
)
from gateway.ingest import Ingest
from gateway.intervals import SIGN_UNKNOWN, IntervalAggregator, MeterSpec
from gateway.ledger_link import LedgerDeliverer
from gateway.outbox import Deliverer
from gateway.publish import HaPublisher
from gateway.recorder import Recorder
from gateway.relays import RelayCommander
from gateway.signers import Signers, load_order_key
from gateway.sources.base import FrameSink, NodeSource
from gateway.sources.modbus import MeterReading, ModbusBus
from gateway.verify import FrameVerifier
from hardware.meters import load_map
from ledger.keys import load_key, new_key, write_key

if TYPE_CHECKING:
    from gateway.dr_inbox import DrInbox
    from gateway.ems.runner import EmsRunner

log = logging.getLogger(__name__)


@dataclass
class GatewayParts:
    key: Ed25519PrivateKey  # the meter-reporting key
    signers: Signers  # the meter key reports, the delegated order key (if any) orders
    node_keys: dict[int, bytes]
    ingest: Ingest
    sources: list[NodeSource]
    buses: list[ModbusBus]
    relays: RelayCommander
    recorder: Recorder
    outbox_wake: asyncio.Event  # set when a row is queued: the delivery loop looks again
    deliverer: Deliverer | None
    backoff: Backoff
    publisher: HaPublisher | None
    ems: EmsRunner | None
    dr_inbox: DrInbox | None
    on_frame: FrameSink


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The gateway's meter-reporting key (Ed25519, never the member's wallet key); created (mode
    0600) on first start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_key(path, new_key())
        log.warning("created gateway key %s", path)
    return load_key(path)


def build(
    cfg: GatewayConfig,
    clock: Clock,
    *,
    deliverer: Deliverer | None = None,
    node_sources: Sequence[NodeSource] | None = None,
    node_keys: Mapping[int, bytes] | None = None,
    ble_backend: type | None = None,
) -> GatewayParts:
    """Every part of the gateway ``cfg`` describes. ``node_sources`` replaces the sources the
    config names, ``node_keys`` the keystore; without ``deliverer``, ``[ledger]`` gives a
    ``LedgerDeliverer``."""
    key = load_or_create_key(cfg.key_file)
    signers = Signers(key, load_order_key(cfg.order_key_file))
    if node_keys is None:
        node_keys = load_keystore(cfg.keystore, cfg.nodes) if cfg.keystore is not None else {}
    keys = dict(node_keys)
    ingest = Ingest(
        FrameVerifier(keys, window=cfg.replay_window),
        IntervalAggregator(interval_ms=cfg.interval_ms, grace_ms=cfg.grace_ms),
        cfg.nodes,
    )
    for bus in cfg.buses:
        for m in bus.meters:
            rmap = load_map(m.model)
            modulus = rmap.energy_modulus_wh * 1000 if rmap.energy_modulus_wh else None
            ingest.add_meter(m.meter_id, MeterSpec(modulus, rmap.max_power_w), m.model)
    publisher = (
        HaPublisher(cfg.mqtt, cfg.gateway_id, list(ingest.meter_info.values()), clock)
        if cfg.mqtt is not None
        else None
    )
    ingest.take_new_meters()  # the publisher has them all: it announces each on connect

    def on_meter_reading(r: MeterReading) -> None:
        for session in ingest.calibrations:
            session.meter_reading(r.meter_id, r.t_ms, r.values, r.power_dw / 10)
        reading = ingest.sample(r.meter_id, r.t_ms, r.power_dw, r.import_mwh, r.export_mwh,
                                "modbus", SIGN_UNKNOWN if r.sign_unknown else 0)  # fmt: skip
        if reading is not None and publisher is not None:
            publisher.offer(reading)

    buses = [ModbusBus(bus, on_meter_reading, clock) for bus in cfg.buses]
    sources = (
        list(node_sources)
        if node_sources is not None
        else _node_sources(cfg, clock, ble_backend, keys)
    )
    relays = RelayCommander(keys, ingest.nodes, sources, clock, cfg.command_timeout_s)
    outbox_wake = asyncio.Event()
    recorder = Recorder(
        cfg.db_path, key, ingest, relays, clock, cfg.reports, outbox_wake.set, cfg.member
    )
    if deliverer is None and cfg.ledger is not None:
        deliverer = LedgerDeliverer(cfg.ledger.cluster, key, cfg.ledger.timeout_s)
    backoff = cfg.ledger.retry if cfg.ledger else Backoff()
    ems = dr_inbox = None
    if cfg.ems is not None:
        ems = ems_runner(cfg.ems, cfg.command_timeout_s, clock, relays, recorder, deliverer)
        if cfg.mqtt is not None:
            dr_inbox = _dr_inbox(cfg, ems, recorder, clock)
    return GatewayParts(
        key=key,
        signers=signers,
        node_keys=keys,
        ingest=ingest,
        sources=sources,
        buses=buses,
        relays=relays,
        recorder=recorder,
        outbox_wake=outbox_wake,
        deliverer=deliverer,
        backoff=backoff,
        publisher=publisher,
        ems=ems,
        dr_inbox=dr_inbox,
        on_frame=frame_sink(ingest, relays, publisher),
    )


def frame_sink(ingest: Ingest, relays: RelayCommander, publisher: HaPublisher | None) -> FrameSink:
    """The ``FrameSink`` every node source feeds: verify and meter (ingest), route an ACK to
    the command waiting for it, offer an accepted reading (and a node's new meter) to MQTT."""

    def on_frame(raw: bytes, transport: str, received_ms: int) -> None:
        result = ingest.frame(raw, transport, received_ms)
        if result is None:
            return
        relays.heard(result.node_id, transport)
        if result.ack is not None:
            relays.acked(result.ack)
        if ingest.new_meters:
            for meter in ingest.take_new_meters():
                if publisher is not None:
                    publisher.add_meter(meter)
        if result.reading is not None and publisher is not None:
            publisher.offer(result.reading)

    return on_frame


def ems_runner(
    cfg: EmsConfig,
    relay_timeout_s: float,
    clock: Clock,
    relays: RelayCommander,
    recorder: Recorder,
    deliverer: Deliverer | None,
) -> EmsRunner:
    """The home energy management system on this gateway's own parts: relays through the
    node sources, orders through the outbox, forecasts from the closed intervals, and
    clearing results from the ledger (when it trades)."""
    from gateway.ems.agent import TradingAgent
    from gateway.ems.runner import DaemonHooks, EmsRunner

    agent = None
    if cfg.id_grid is not None:
        agent = TradingAgent(cfg.id_grid, cfg.tariff, cfg.res_id, cfg.res_rated_w,
                             sealed=cfg.sealed_orders, commit_deposit=cfg.commit_deposit)
    clearing = deliverer.clearing if isinstance(deliverer, LedgerDeliverer) else None
    return EmsRunner(
        list(cfg.appliances),
        cfg.tariff,
        dataclasses.replace(cfg.runner, relay_timeout_s=relay_timeout_s),
        DaemonHooks(clock, relays.send, recorder.enqueue_tx, recorder.interval_history, clearing),
        agent=agent,
    )


def _dr_inbox(cfg: GatewayConfig, ems: EmsRunner, recorder: Recorder, clock: Clock) -> DrInbox:
    from gateway.dr_inbox import DrInbox, SignedDr, to_row
    from gateway.ems.plan import DrRequest

    assert cfg.mqtt is not None and cfg.ems is not None

    def store_request(dr: SignedDr) -> bool:
        """Persisted before the EMS sees it: a request survives a SIGKILL right after."""
        return recorder.db().dr_add(to_row(dr, clock.now_ms()))

    async def on_request(req: DrRequest) -> None:
        """A demand-response request: planned for at once, not at the next slot edge."""
        ems.request_demand_response(req)
        await ems.replan_now()

    signers = {key: role for role, key in cfg.ems.dr_signers}
    return DrInbox(cfg.mqtt, cfg.gateway_id, signers, clock.now_ms, store_request, on_request)


def _node_sources(
    cfg: GatewayConfig, clock: Clock, ble_backend: type | None, keys: Mapping[int, bytes]
) -> list[NodeSource]:
    sources: list[NodeSource] = []
    mqtt_nodes = [n for n in cfg.nodes if n.transport == "mqtt"]
    if mqtt_nodes and cfg.mqtt is not None:
        from gateway.sources.mqtt import MqttNodeSource

        sources.append(MqttNodeSource(mqtt_nodes, cfg.mqtt, clock))
    ble_nodes = [n for n in cfg.nodes if n.transport == "ble"]
    if ble_nodes:
        sources.append(_ble_source(cfg, clock, ble_nodes, ble_backend, keys))
    return sources


def _ble_source(
    cfg: GatewayConfig,
    clock: Clock,
    nodes: list[NodeConfig],
    backend: type | None,
    keys: Mapping[int, bytes],
) -> NodeSource:
    """Every BLE node is paired (Passkey Entry, the passkey from its key in the keystore) and
    its link encrypted before anything is read or written."""
    try:
        from gateway.sources.ble import BleNode, BleNodeSource
    except ImportError as exc:
        raise GatewayConfigError(
            f"ble.nodes: BLE is not available in this install ({exc})"
        ) from exc
    if backend is None and cfg.ble_backend.startswith("bumble:"):
        from hardware.ble.bleak_bumble import backend_from_spec
        from hardware.ble.bonds import BondStoreError, read_bond_store

        try:
            read_bond_store(cfg.ble_bond_store)  # a bad store stops the start, not a pairing
        except BondStoreError as exc:
            raise GatewayConfigError(f"ble.bond_store: {exc}") from exc
        backend = backend_from_spec(cfg.ble_backend, cfg.ble_bond_store)
    missing = [n.node_id for n in nodes if n.node_id not in keys]
    if missing:
        raise GatewayConfigError(f"ble.nodes: no key (so no passkey) for node(s) {missing}")
    try:
        ble_nodes = [
            BleNode(n.node_id, n.address, ble_guard.passkey(keys[n.node_id])) for n in nodes
        ]
    except ValueError as exc:
        raise GatewayConfigError(f"ble.nodes: {exc}") from exc
    source: NodeSource = BleNodeSource(
        ble_nodes,
        backend=backend,
        clock=clock,
        silence_timeout_s=cfg.ble_silence_timeout_s,
    )
    return source
