"""The gateway daemon: wires sources, verifier, aggregator, store, outbox and publisher.

Data path of one node frame: source → ``on_frame`` (verify, decode) → ``_ingest`` (aggregate,
queue for the store, offer to the publisher). A housekeeping loop flushes readings to SQLite
every ``flush_ms`` and closes intervals (storing them and queueing each signed report in the
outbox atomically); a delivery loop drains the outbox into the ledger. Everything reads time from
the injected ``Clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware import frame
from gateway.clock import Clock, SystemClock, wait_until_or_set
from gateway.config import ConfigError, EmsConfig, GatewayConfig, NodeConfig, load_keystore
from gateway.intervals import MISSING, Interval, IntervalAggregator, MeterSpec
from gateway.outbox import Backoff, Deliverer, OutboxRow, deliver_due
from gateway.publish import HaPublisher, MeterInfo
from gateway.report import REPORT_KIND, report_body
from gateway.sources.base import NodeSource, SourceError
from gateway.sources.modbus import MeterReading, ModbusBus
from gateway.store import Reading, Store
from gateway.verify import FrameVerifier
from hardware.meters import load_map
from ledger.contract.market import AUTHORIZE_OFFERS
from ledger.keys import load_key, new_key, write_key
from ledger.tx import MAX_NONCE, SignedTx

if TYPE_CHECKING:
    from gateway.calibration import Session
    from gateway.dr_inbox import DrInbox
    from gateway.ems.plan import DrRequest
    from gateway.ems.runner import EmsRunner

log = logging.getLogger(__name__)

# Field positions in a READING payload, from the firmware's one definition of it; the hot path
# unpacks with struct directly instead of building frame.unpack_reading's dict per frame.
_READING = struct.Struct(frame.READING_FMT)
_CHANNEL, _POWER, _FLAGS, _IMPORT, _EXPORT = (
    frame.READING_FIELDS.index(f)
    for f in ("channel", "power_dw", "flags", "import_mwh", "export_mwh")
)
NODE_MAX_POWER_W = 50_000  # a node's CT clamp tops out near 100 A at 230 V
NODE_COUNTER_MODULUS_MWH = 2**64  # node counters are u64 mWh in the frame
DAY_MS = 86_400_000


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The gateway's Ed25519 key; created (mode 0600) on first start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_key(path, new_key())
        log.warning("created gateway key %s", path)
    return load_key(path)


class LedgerDeliverer:
    """``Deliverer`` over the real ledger client; (re)connects lazily, so an unreachable
    cluster is just a failed attempt that the outbox retries."""

    def __init__(self, cluster: Path, key: Ed25519PrivateKey, timeout_s: float) -> None:
        self.cluster, self.key, self.timeout_s = cluster, key, timeout_s
        self._client: Any = None

    async def _connected(self) -> Any:
        from ledger_client.client import (
            LedgerClient,  # lazily: the gateway runs without a ledger too
        )

        if self._client is None:
            client = LedgerClient.from_cluster_file(
                self.cluster, self.key, timeout_s=self.timeout_s
            )
            try:
                await client.start()
            except BaseException:
                await client.close()
                raise
            self._client = client
        return self._client

    async def submit(self, tx: SignedTx) -> Any:
        client = await self._connected()
        try:
            return await client.submit(tx)
        except Exception:
            await self.close()
            raise

    async def query(self, path: str, **params: Any) -> Any:
        """A read that 2f+1 replicas agree on (the client's ``query``)."""
        client = await self._connected()
        try:
            return await client.query(path, **params)
        except Exception:
            await self.close()
            raise

    async def clearing(self, listing_id: str) -> Mapping[str, Any] | None:
        """The EMS's view of a listing once it is cleared (its ``listing`` plus its ``trades``),
        None while it still takes orders."""
        listing = await self.query("listing", listing_id=listing_id)
        if not isinstance(listing, Mapping) or listing.get("state") == AUTHORIZE_OFFERS:
            return None
        trades = await self.query("trades", listing_id=listing_id)
        return {**listing, "trades": trades}

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


@dataclass
class _PendingCommand:
    future: asyncio.Future[int]
    relay: int


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        clock: Clock | None = None,
        deliverer: Deliverer | None = None,
        node_sources: Sequence[NodeSource] | None = None,
        node_keys: Mapping[int, bytes] | None = None,
        ble_backend: type | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock: Clock = clock or SystemClock()
        self.key = load_or_create_key(cfg.key_file)
        self.node_keys = dict(node_keys) if node_keys is not None else self._keys()
        self.verifier = FrameVerifier(self.node_keys, window=cfg.replay_window)
        self.aggregator = IntervalAggregator(interval_ms=cfg.interval_ms, grace_ms=cfg.grace_ms)
        self.nodes = {n.node_id: n for n in cfg.nodes}
        self.meter_info: dict[str, MeterInfo] = {}
        self.publisher: HaPublisher | None = None
        for n in cfg.nodes:
            self._add_node_meter(n, 0)
        self.buses: list[ModbusBus] = []
        for bus in cfg.buses:
            for m in bus.meters:
                rmap = load_map(m.model)
                modulus = rmap.energy_modulus_wh * 1000 if rmap.energy_modulus_wh else None
                self.aggregator.add_meter(m.meter_id, MeterSpec(modulus, rmap.max_power_w))
                self.meter_info[m.meter_id] = MeterInfo(m.meter_id, m.model)
            self.buses.append(ModbusBus(bus, self._on_meter_reading, self.clock))
        self.sources: list[NodeSource] = (
            list(node_sources) if node_sources is not None else self._node_sources(ble_backend)
        )
        if deliverer is None and cfg.ledger is not None:
            deliverer = LedgerDeliverer(cfg.ledger.cluster, self.key, cfg.ledger.timeout_s)
        self.deliverer = deliverer
        self.backoff = Backoff(
            int((cfg.ledger.retry_initial_s if cfg.ledger else 1.0) * 1000),
            int((cfg.ledger.retry_max_s if cfg.ledger else 300.0) * 1000),
        )
        self.publisher = (
            HaPublisher(cfg.mqtt, cfg.gateway_id, list(self.meter_info.values()), self.clock)
            if cfg.mqtt is not None
            else None
        )
        self.ems = self._ems_runner(cfg.ems) if cfg.ems is not None else None
        self.dr_inbox: DrInbox | None = None
        if self.ems is not None and cfg.mqtt is not None:
            from gateway.dr_inbox import DrInbox

            self.dr_inbox = DrInbox(cfg.mqtt, cfg.gateway_id, self._on_dr_request)
        self.store: Store | None = None
        self._pending: list[Reading] = []
        self._latest: dict[str, Reading] = {}
        self._commands: dict[tuple[int, int], _PendingCommand] = {}
        self._cmd_seq: dict[int, int] = {}
        self._node_source: dict[int, NodeSource] = {}
        self.calibrations: list[Session] = []  # gateway/calibration.py: sessions being fed
        self._nonce = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._started = asyncio.Event()
        self.intervals_closed = 0
        self.reports_queued = 0
        self.ignored_frames = 0
        self._next_prune = 0

    # -- construction helpers ------------------------------------------------------------------
    def _keys(self) -> dict[int, bytes]:
        if self.cfg.keystore is None:
            return {}
        return load_keystore(self.cfg.keystore, self.cfg.nodes)

    def _add_node_meter(self, node: NodeConfig, channel: int) -> str:
        meter_id = node.channel_meter(channel)
        if meter_id not in self.meter_info:
            self.aggregator.add_meter(
                meter_id, MeterSpec(NODE_COUNTER_MODULUS_MWH, NODE_MAX_POWER_W)
            )
            self.meter_info[meter_id] = MeterInfo(meter_id, f"node-{node.transport}")
            if self.publisher is not None:
                self.publisher.add_meter(self.meter_info[meter_id])
        return meter_id

    def _ems_runner(self, cfg: EmsConfig) -> EmsRunner:
        """The home energy management system on this gateway's own parts: relays through the
        node sources, orders through the outbox, forecasts from the closed intervals, and
        clearing results from the ledger (when it trades)."""
        from gateway.ems.agent import TradingAgent
        from gateway.ems.runner import EmsRunner, RunnerConfig

        agent = None
        if cfg.id_grid is not None:
            agent = TradingAgent(cfg.id_grid, cfg.tariff, cfg.res_id, cfg.res_rated_w)
        deliverer = self.deliverer
        clearing = deliverer.clearing if isinstance(deliverer, LedgerDeliverer) else None
        return EmsRunner(
            list(cfg.appliances),
            cfg.tariff,
            RunnerConfig(
                site_meter=cfg.site_meter,
                pv_meter=cfg.pv_meter,
                horizon_slots=cfg.horizon_slots,
                history_days=cfg.history_days,
                limit_w=cfg.limit_w,
                model=cfg.model,
                relay_timeout_s=self.cfg.command_timeout_s,
            ),
            clock=self.clock,
            send_relay=self.send_relay,
            enqueue_tx=self.enqueue_tx,
            interval_history=self.interval_history,
            clearing=clearing,
            agent=agent,
        )

    async def _on_dr_request(self, req: DrRequest) -> None:
        """A demand-response request: planned for at once, not at the next slot edge."""
        assert self.ems is not None
        self.ems.request_demand_response(req)
        await self.ems.replan_now()

    def _node_sources(self, ble_backend: type | None) -> list[NodeSource]:
        sources: list[NodeSource] = []
        mqtt_nodes = [n for n in self.cfg.nodes if n.transport == "mqtt"]
        if mqtt_nodes and self.cfg.mqtt is not None:
            from gateway.sources.mqtt import MqttNodeSource

            sources.append(MqttNodeSource(mqtt_nodes, self.cfg.mqtt, self.clock))
        ble_nodes = [n for n in self.cfg.nodes if n.transport == "ble"]
        if ble_nodes:
            sources.append(self._ble_source(ble_nodes, ble_backend))
        return sources

    def _ble_source(self, nodes: list[NodeConfig], backend: type | None) -> NodeSource:
        try:
            from gateway.sources.ble import BleNode, BleNodeSource
        except ImportError as exc:
            raise ConfigError(f"ble.nodes: BLE is not available in this install ({exc})") from exc
        if backend is None and self.cfg.ble_backend.startswith("bumble:"):
            from hardware.ble.bleak_bumble import backend_from_spec

            backend = backend_from_spec(self.cfg.ble_backend)
        try:
            ble_nodes = [BleNode(n.node_id, n.address) for n in nodes]
        except ValueError as exc:
            raise ConfigError(f"ble.nodes: {exc}") from exc
        source: NodeSource = BleNodeSource(
            ble_nodes,
            backend=backend,
            clock=self.clock,
            silence_timeout_s=self.cfg.ble_silence_timeout_s,
        )
        return source

    # -- the frame path -------------------------------------------------------------------------
    def on_frame(self, raw: bytes, transport: str, received_ms: int) -> None:
        """The ``FrameSink`` every node source feeds."""
        v = self.verifier.verify(raw)
        if v is None:
            return
        node = self.nodes.get(v.node_id)
        if node is not None:
            for s in self.sources:
                if s.name == transport:
                    self._node_source[v.node_id] = s
        if v.ftype == frame.T_READING:
            r = _READING.unpack(v.payload)
            if node is None:  # keyed but not configured: verified, counted, not metered
                self.ignored_frames += 1
                return
            if self.calibrations:
                fields = dict(zip(frame.READING_FIELDS, r, strict=True))
                for c in self.calibrations:
                    if c.node_id == v.node_id:
                        c.node_frame(received_ms, fields)
            meter_id = self._add_node_meter(node, r[_CHANNEL])
            self._ingest(
                meter_id,
                received_ms,
                r[_POWER],
                r[_IMPORT],
                r[_EXPORT],
                transport,
                restored=bool(r[_FLAGS] & frame.F_COUNTERS_RESTORED),
                clipped=bool(r[_FLAGS] & frame.F_ADC_CLIPPED),
                behind=bool(r[_FLAGS] & frame.F_SAMPLING_BEHIND),
                sign_unknown=bool(r[_FLAGS] & frame.F_SIGN_UNKNOWN),
            )
        elif v.ftype == frame.T_ACK:
            cmd_seq, _relay, status, _state = frame.unpack_ack(v.payload)
            pending = self._commands.get((v.node_id, cmd_seq))
            if pending is not None and not pending.future.done():
                pending.future.set_result(status)
        else:
            self.ignored_frames += 1  # a COMMAND from a node is nonsense: authentic, ignored

    def _on_meter_reading(self, r: MeterReading) -> None:
        for c in self.calibrations:
            c.meter_reading(r.meter_id, r.t_ms, r.values, r.power_dw / 10)
        self._ingest(r.meter_id, r.t_ms, r.power_dw, r.import_mwh, r.export_mwh, "modbus",
                     sign_unknown=r.sign_unknown)

    def _ingest(
        self,
        meter_id: str,
        t_ms: int,
        power_dw: int,
        import_mwh: int,
        export_mwh: int,
        source: str,
        *,
        restored: bool = False,
        clipped: bool = False,
        behind: bool = False,
        sign_unknown: bool = False,
    ) -> None:
        if not self.aggregator.sample(
            meter_id, t_ms, import_mwh, export_mwh, restored=restored, clipped=clipped,
            behind=behind, sign_unknown=sign_unknown,
        ):
            return
        reading = Reading(meter_id, t_ms, power_dw, import_mwh, export_mwh, source)
        self._pending.append(reading)
        self._latest[meter_id] = reading
        if self.publisher is not None:
            self.publisher.offer(reading)

    # -- hooks for the EMS, the trading agent and the demo ---------------------------------------
    def latest_readings(self) -> dict[str, Reading]:
        return dict(self._latest)

    def interval_history(
        self, meter_id: str | None, since_ms: int, until_ms: int
    ) -> list[Interval]:
        """Closed intervals with ``since_ms <= start < until_ms``, oldest first."""
        return self._db().intervals(meter_id, since_ms, until_ms)

    def enqueue_tx(self, kind: str, body: Mapping[str, Any]) -> int:
        """Queue a ledger transaction; its nonce is fixed now, so every retry is the same
        transaction. Returns the outbox id."""
        oid = self._db().enqueue(kind, body, self._next_nonce(), self.clock.now_ms())
        self._outbox_wake.set()
        return oid

    def outbox_status(self, oid: int) -> OutboxRow | None:
        return self._db().outbox_get(oid)

    async def send_relay(self, node_id: int, relay: int, on: bool) -> int:
        """Switch a node's relay; returns the node's ack status (``firmware.frame.S_*``).
        Raises ``SourceError`` if no source can reach the node, ``TimeoutError`` without ack."""
        payload = frame.pack_command(relay, frame.A_ON if on else frame.A_OFF)
        return await self.send_node_command(node_id, frame.T_COMMAND, payload, relay)

    async def send_node_command(self, node_id: int, ftype: int, payload: bytes, index: int) -> int:
        """Send an authenticated command frame (``T_COMMAND``, ``T_CALIBRATE``: see
        ``gateway.calibration``) to a node and wait for its ack status; ``index`` is the relay or
        channel it names. Raises as ``send_relay``."""
        key = self.node_keys.get(node_id)
        if key is None:
            raise SourceError(f"node {node_id}: no key")
        seq = max(self._cmd_seq.get(node_id, 0) + 1, self.clock.now_ms() // 1000) & 0xFFFFFFFF
        self._cmd_seq[node_id] = seq
        raw = frame.encode(key, ftype, node_id, seq, payload)
        candidates = [self._node_source[node_id]] if node_id in self._node_source else []
        node = self.nodes.get(node_id)
        candidates += [
            s
            for s in self.sources
            if s not in candidates and node is not None and s.name == node.transport
        ]
        if not candidates:
            raise SourceError(f"node {node_id}: no source reaches it")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._commands[(node_id, seq)] = _PendingCommand(fut, index)
        try:
            last: Exception | None = None
            for source in candidates:
                try:
                    await source.send_command(node_id, raw)
                    break
                except SourceError as exc:
                    last = exc
            else:
                raise SourceError(f"node {node_id}: {last}")
            deadline = self.clock.now_ms() + int(self.cfg.command_timeout_s * 1000)
            timer: asyncio.Future[Any] = asyncio.ensure_future(self.clock.sleep_until(deadline))
            waiting: set[asyncio.Future[Any]] = {fut, timer}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
            if not fut.done():
                raise TimeoutError(f"node {node_id}: no ack for command {seq}")
            return fut.result()
        finally:
            self._commands.pop((node_id, seq), None)

    # -- persistence ------------------------------------------------------------------------------
    def _db(self) -> Store:
        if self.store is None:
            raise RuntimeError("the gateway is not started")
        return self.store

    def _next_nonce(self) -> int:
        self._nonce = min(max(self._nonce + 1, self.clock.now_ms() * 1000), MAX_NONCE)
        return self._nonce

    def _state(self) -> dict[str, Any]:
        return {
            "aggregator": self.aggregator.snapshot(),
            "verifier": self.verifier.snapshot(),
            "cmd_seq": {str(k): v for k, v in self._cmd_seq.items()},
        }

    def open(self) -> None:
        """Open the store and restore the state a previous run left (idempotent)."""
        if self.store is not None:
            return
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.cfg.db_path)
        agg = self.store.get_state("aggregator")
        if agg:
            self.aggregator.restore(agg)
        ver = self.store.get_state("verifier")
        if ver:
            self.verifier.restore(ver)
        seqs = self.store.get_state("cmd_seq") or {}
        self._cmd_seq = {int(k): int(v) for k, v in seqs.items()}
        self._nonce = self.store.max_nonce()

    def flush(self) -> int:
        """Write queued readings and the cores' state in one transaction. If the write fails
        (the database locked, the card full) the readings stay queued for the next flush."""
        batch, self._pending = self._pending, []
        try:
            self._db().flush(batch, self._state())
        except BaseException:
            self._pending = batch + self._pending
            raise
        return len(batch)

    def close_due(self) -> list[Interval]:
        """Close every interval that has ended; store it and queue its signed report. If the
        write fails, the aggregator is put back as it was, so the next try closes the same
        intervals (closing takes them out of the aggregator)."""
        now = self.clock.now_ms()
        due = self.aggregator.next_close_ms()
        if due is None or due > now:
            self.aggregator.tick(now)  # only starts meters that have no interval yet
            return []
        before = self.aggregator.snapshot()
        try:
            return self._close(self.aggregator.tick(now))
        except BaseException:
            self.aggregator.restore(before)
            raise

    def _close(self, closed: list[Interval]) -> list[Interval]:
        if not closed:
            return []
        now = self.clock.now_ms()
        reports = {}
        for i in closed:
            if i.flags & MISSING:
                continue  # no data at all: nothing to vouch for (the energy lands flagged later)
            if not self.cfg.reports(i.meter_id):
                continue  # a sub-meter: kept here, the ledger bills the member's billing meter
            reports[(i.meter_id, i.start_ms)] = (
                REPORT_KIND,
                report_body(self.key, i),
                self._next_nonce(),
            )
        ids = self._db().close_intervals(closed, reports, self._state(), now)
        self.intervals_closed += len(closed)
        self.reports_queued += len(ids)
        if ids:
            self._outbox_wake.set()
        return closed

    # -- loops ------------------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            now = self.clock.now_ms()
            nxt = now + self.cfg.flush_ms
            close_at = self.aggregator.next_close_ms()
            if close_at is not None:
                nxt = min(nxt, max(close_at, now + 1))
            await self.clock.sleep_until(nxt)
            try:
                self.flush()
                self.close_due()
                if self.clock.now_ms() >= self._next_prune:
                    self._db().prune_readings(
                        self.clock.now_ms() - self.cfg.retention_days * DAY_MS
                    )
                    self._next_prune = self.clock.now_ms() + DAY_MS
            except Exception:
                # the store refused (locked, full): what was not written stays in memory; try
                # again one flush period later, not in a tight loop
                log.exception("housekeeping failed; retrying in %d ms", self.cfg.flush_ms)
                await self.clock.sleep_until(self.clock.now_ms() + self.cfg.flush_ms)

    async def _delivery(self) -> None:
        assert self.deliverer is not None
        while True:
            self._outbox_wake.clear()
            try:
                await deliver_due(
                    self._db(), self.key, self.deliverer, self.clock.now_ms(), self.backoff
                )
            except Exception:  # a store error, say: log it and try again in a while
                log.exception("delivery round failed")
                await self.clock.sleep_until(self.clock.now_ms() + self.backoff.initial_ms)
                continue
            # the next row due (one already due: sleep_until returns at once), or sooner when
            # a new row is queued
            await wait_until_or_set(self.clock, self._db().outbox_next_ms(), self._outbox_wake)

    async def _keep_running(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a source forever: a bug that escapes it is logged and it is restarted."""
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s stopped unexpectedly; restarting", name)
                await asyncio.sleep(1.0)

    def _spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        self._tasks.append(asyncio.create_task(self._keep_running(name, run), name=name))

    async def start(self) -> None:
        self.open()
        for s in self.sources:
            self._spawn(f"source:{s.name}", lambda s=s: s.run(self.on_frame))  # type: ignore[misc]
        for bus in self.buses:
            self._spawn(f"modbus:{bus.cfg.name}", bus.run)
        self._spawn("housekeeping", self._housekeeping)
        if self.deliverer is not None:
            self._spawn("delivery", self._delivery)
        if self.publisher is not None:
            self._spawn("publish", self.publisher.run)
        if self.ems is not None:
            ems = self.ems
            self._spawn("ems", lambda: ems.run(self._stopping))
            if self.dr_inbox is not None:
                self._spawn("dr-inbox", self.dr_inbox.run)
        self._started.set()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Run until ``stop()``; then flush everything and close cleanly."""
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for bus in self.buses:
            bus.close()
        if self.store is not None:
            self.flush()
            self.close_due()
            self.store.close()
            self.store = None
        if isinstance(self.deliverer, LedgerDeliverer):
            await self.deliverer.close()
        if self.publisher is not None:
            await self.publisher.offline()

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.verifier.counts(),
            "ignored_frames": self.ignored_frames,
            "aggregator_rejected": self.aggregator.rejected,
            "intervals_closed": self.intervals_closed,
            "reports_queued": self.reports_queued,
            "sources": {s.name: s.stats() for s in self.sources},
            "buses": {b.cfg.name: b.stats() for b in self.buses},
        }
