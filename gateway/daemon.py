"""The gateway daemon: the lifecycle of a gateway that ``gateway.build`` wired.

It runs each part in a supervised task (node sources, Modbus buses, a housekeeping loop that
flushes readings to SQLite every ``flush_ms`` and closes due intervals, a delivery loop that
drains the outbox into the ledger, the MQTT publisher, the EMS and its demand-response inbox),
and on stop cancels them and writes down what is left. Everything reads time from the injected
``Clock``. The frame path is ``gateway.ingest`` (sans-IO), the relay protocol
``gateway.relays``, the writes ``gateway.recorder``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway import calibrator
from gateway.build import build
from gateway.clock import Clock, SystemClock, wait_until_or_set
from gateway.config import GatewayConfig
from gateway.intervals import Interval
from gateway.ledger_link import LedgerDeliverer
from gateway.outbox import Deliverer, OutboxRow, deliver_due
from gateway.sources.base import NodeSource
from gateway.store import Reading, Store

if TYPE_CHECKING:
    from gateway.calibration import Session

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
# How long a stop waits for each part to end after cancelling it, and for the last "offline"
# message: a part that swallows its cancellation (a library that turns it into an error and
# retries) must not keep the daemon from closing its store and exiting.
SHUTDOWN_GRACE_S = 5.0


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
        parts = build(
            cfg,
            self.clock,
            deliverer=deliverer,
            node_sources=node_sources,
            node_keys=node_keys,
            ble_backend=ble_backend,
        )
        self.parts = parts
        self.key = parts.key  # the meter-reporting key
        self.signers = parts.signers  # which key signs which kind (gateway.signers)
        self.ingest = parts.ingest
        self.verifier = parts.ingest.verifier
        self.aggregator = parts.ingest.aggregator
        self.sources = parts.sources
        self.buses = parts.buses
        self.relays = parts.relays
        self.recorder = parts.recorder
        self.deliverer = parts.deliverer
        self.backoff = parts.backoff
        self.publisher = parts.publisher
        self.ems = parts.ems
        self.dr_inbox = parts.dr_inbox
        self.on_frame = parts.on_frame  # the FrameSink every node source feeds
        self._outbox_wake = parts.outbox_wake
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._started = asyncio.Event()
        self._next_prune = 0
        self.recorder.status = self.status_snapshot
        self.calibrator: calibrator.Calibrator | None = None  # [[calibration]], from start()

    # -- hooks for the EMS, the trading agent, the demo and tools (see gateway/README.md) ----------
    @property
    def store(self) -> Store | None:
        return self.recorder.store

    @property
    def reports_queued(self) -> int:
        return self.recorder.reports_queued

    def latest_readings(self) -> dict[str, Reading]:
        return dict(self.ingest.latest)

    def interval_history(
        self, meter_id: str | None, since_ms: int, until_ms: int
    ) -> list[Interval]:
        """Closed intervals with ``since_ms <= start < until_ms``, oldest first."""
        return self.recorder.interval_history(meter_id, since_ms, until_ms)

    def enqueue_tx(self, kind: str, body: Mapping[str, Any]) -> int:
        """Queue a ledger transaction (nonce fixed now); returns the outbox id."""
        return self.recorder.enqueue_tx(kind, body)

    def outbox_status(self, oid: int) -> OutboxRow | None:
        return self.recorder.outbox_status(oid)

    @property
    def calibrations(self) -> list[Session]:
        """Calibration sessions (``gateway.calibration``) being fed every verified frame of
        their node and every reading of their reference meter."""
        return self.ingest.calibrations

    async def send_node_command(self, node_id: int, ftype: int, payload: bytes) -> int:
        """Send an authenticated command frame (``T_COMMAND``, ``T_CALIBRATE``) to a node and
        wait for its ack status. Raises as ``send_relay``."""
        return await self.relays.send_command(node_id, ftype, payload)

    async def send_relay(self, node_id: int, relay: int, on: bool) -> int:
        """Switch a node's relay; the node's ack status (``firmware.frame.S_*``)."""
        return await self.relays.send(node_id, relay, on)

    def open(self) -> None:
        """Open the store and restore the state a previous run left (idempotent), with the
        demand-response requests that have not ended yet."""
        fresh = self.recorder.store is None
        self.recorder.open()
        if fresh and self.ems is not None and self.store is not None:
            from gateway.dr_inbox import from_row

            for row in self.store.dr_active(self.clock.now_ms()):
                self.ems.request_demand_response(from_row(row))
                log.warning("demand-response request %s (%s) still holds: at most %d W until %s",
                            row.id, row.role, row.max_w,
                            datetime.fromtimestamp(row.end_ms / 1000, UTC).isoformat())

    def flush(self) -> int:
        """Write queued readings and the cores' state (see ``Recorder.flush``)."""
        return self.recorder.flush()

    def close_due(self) -> list[Interval]:
        """Close, store and report every interval that has ended (see ``Recorder.close_due``)."""
        return self.recorder.close_due()

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
                    self.recorder.db().prune_readings(
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
                    self.recorder.db(), self.signers.key_for, self.deliverer, self.clock.now_ms(),
                    self.backoff, new_nonce=self.recorder.next_nonce,
                )  # fmt: skip
            except Exception:  # a store error, say: log it and try again in a while
                log.exception("delivery round failed")
                await self.clock.sleep_until(self.clock.now_ms() + self.backoff.initial_ms)
                continue
            # the next row due (one already due: sleep_until returns at once), or sooner when
            # a new row is queued
            next_ms = self.recorder.db().outbox_next_ms()
            await wait_until_or_set(self.clock, next_ms, self._outbox_wake)

    async def _keep_running(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a source forever: a bug that escapes it is logged and it is restarted."""
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                task = asyncio.current_task()
                if self._stopping.is_set() or (task is not None and task.cancelling()):
                    # cancelled, and the part turned it into an error: stop, do not restart
                    raise asyncio.CancelledError() from None
                log.exception("%s stopped unexpectedly; restarting", name)
                await asyncio.sleep(1.0)

    def _spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        self._tasks.append(asyncio.create_task(self._keep_running(name, run), name=name))

    def _start_calibrations(self) -> None:
        """The configured calibrations not done yet (the store keeps what was done)."""
        if not self.cfg.calibrations or self.calibrator is not None:
            return
        db = self.recorder.db()
        cal = calibrator.Calibrator(
            self.cfg.calibrations, db.states(calibrator.KEY_PREFIX), self.ingest.calibrations
        )
        self.calibrator = cal
        self._spawn("calibration", lambda: calibrator.run(
            cal, self.clock, self.send_node_command, lambda k, v: self.recorder.db().put_state(k, v)
        ))  # fmt: skip

    async def start(self) -> None:
        self.open()
        self._start_calibrations()
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
        if tasks:
            done, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.error("%s ended with %r while stopping", t.get_name(), t.exception())
            for t in stuck:
                log.error("%s did not stop within %.0f s of being cancelled; left behind",
                          t.get_name(), SHUTDOWN_GRACE_S)  # fmt: skip
        for bus in self.buses:
            bus.close()
        self.recorder.close()
        if isinstance(self.deliverer, LedgerDeliverer):
            await self.deliverer.close()
        if self.publisher is not None:
            try:
                await asyncio.wait_for(self.publisher.offline(), SHUTDOWN_GRACE_S)
            except TimeoutError:
                log.warning("the broker did not take the offline message in time")

    def status_snapshot(self) -> dict[str, Any]:
        """What ``wattmesh gateway status`` shows of the running daemon (saved at each flush)."""
        return {
            "t_ms": self.clock.now_ms(),
            "gateway_id": self.cfg.gateway_id,
            "nodes": {
                str(n): {"last_frame_ms": t, "transport": tr}
                for n, (t, tr) in sorted(self.ingest.last_frame.items())
            },
            "meters": {m: r.t_ms for m, r in sorted(self.ingest.latest.items())},
            **self.stats(),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.verifier.counts(),
            "ignored_frames": self.ingest.ignored_frames,
            "aggregator_rejected": self.aggregator.rejected,
            "intervals_closed": self.recorder.intervals_closed,
            "reports_queued": self.recorder.reports_queued,
            "sources": {s.name: s.stats() for s in self.sources},
            "buses": {b.cfg.name: b.stats() for b in self.buses},
            "dr": self.dr_inbox.stats() if self.dr_inbox is not None else None,
            "calibration": self.calibrator.status() if self.calibrator is not None else {},
        }
