"""What the gateway writes down: readings and the cores' state, closed intervals with their
signed meter reports, and ledger transactions queued in the outbox (SQLite, ``gateway.store``).

Every write that fails (the database locked, the card full) loses nothing: readings go back to
the ingest queue, and closed intervals go back into the aggregator, for the next try. Outbox
nonces are fixed when a row is queued, so every retry is the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.clock import Clock
from gateway.ingest import Ingest
from gateway.intervals import MISSING, Interval
from gateway.outbox import OutboxRow
from gateway.relays import RelayCommander
from gateway.report import REPORT_KIND, report_body
from gateway.store import Store
from ledger.tx import MAX_NONCE


class Recorder:
    def __init__(
        self,
        db_path: Path,
        key: Ed25519PrivateKey,
        ingest: Ingest,
        relays: RelayCommander,
        clock: Clock,
        reports: Callable[[str], bool],
        on_queued: Callable[[], None],
        member: str | None = None,
    ) -> None:
        """``reports(meter_id)``: whether that meter's intervals are reported to the ledger;
        ``on_queued()``: called when rows were added to the outbox (wakes the delivery loop)."""
        self.db_path, self.key, self.ingest, self.relays, self.clock = (
            db_path, key, ingest, relays, clock
        )  # fmt: skip
        self.reports, self.on_queued, self.member = reports, on_queued, member
        self.store: Store | None = None
        # what `gateway status` reads: saved with the state at every flush (set by the daemon)
        self.status: Callable[[], dict[str, Any]] | None = None
        self._nonce = 0
        self.intervals_closed = 0
        self.reports_queued = 0

    def db(self) -> Store:
        if self.store is None:
            raise RuntimeError("the gateway is not started")
        return self.store

    def open(self) -> None:
        """Open the store and restore the state a previous run left (idempotent)."""
        if self.store is not None:
            return
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.db_path)
        self.ingest.restore({k: self.store.get_state(k) for k in ("aggregator", "verifier")})
        self.relays.restore(self.store.get_state("cmd_seq") or {})
        self._nonce = self.store.max_nonce()

    def close(self) -> None:
        """Flush, close what is due, and close the store (after the sources stopped)."""
        if self.store is not None:
            self.flush()
            self.close_due()
            self.store.close()
            self.store = None

    def next_nonce(self) -> int:
        self._nonce = min(max(self._nonce + 1, self.clock.now_ms() * 1000), MAX_NONCE)
        return self._nonce

    def _state(self) -> dict[str, Any]:
        state = {**self.ingest.snapshot(), "cmd_seq": self.relays.snapshot()}
        if self.status is not None:
            state["status"] = self.status()
        return state

    def flush(self) -> int:
        """Write queued readings and the cores' state in one transaction. If the write fails
        (the database locked, the card full) the readings stay queued for the next flush."""
        batch = self.ingest.take_pending()
        try:
            self.db().flush(batch, self._state())
        except BaseException:
            self.ingest.put_back(batch)
            raise
        return len(batch)

    def close_due(self) -> list[Interval]:
        """Close every interval that has ended; store it and queue its signed report. If the
        write fails, the aggregator is put back as it was, so the next try closes the same
        intervals (closing takes them out of the aggregator)."""
        aggregator = self.ingest.aggregator
        now = self.clock.now_ms()
        due = aggregator.next_close_ms()
        if due is None or due > now:
            aggregator.tick(now)  # only starts meters that have no interval yet
            return []
        before = aggregator.snapshot()
        try:
            return self._close(aggregator.tick(now))
        except BaseException:
            aggregator.restore(before)
            raise

    def _close(self, closed: list[Interval]) -> list[Interval]:
        if not closed:
            return []
        now = self.clock.now_ms()
        reports = {}
        for i in closed:
            if i.flags & MISSING:
                continue  # no data at all: nothing to vouch for (the energy lands flagged later)
            if not self.reports(i.meter_id):
                continue  # a sub-meter: kept here, the ledger bills the member's billing meter
            reports[(i.meter_id, i.start_ms)] = (
                REPORT_KIND,
                report_body(self.key, i, self.member),
                self.next_nonce(),
            )
        ids = self.db().close_intervals(closed, reports, self._state(), now)
        self.intervals_closed += len(closed)
        self.reports_queued += len(ids)
        if ids:
            self.on_queued()
        return closed

    def enqueue_tx(self, kind: str, body: Mapping[str, Any]) -> int:
        """Queue a ledger transaction; its nonce is fixed now, so every retry is the same
        transaction. Returns the outbox id."""
        oid = self.db().enqueue(kind, body, self.next_nonce(), self.clock.now_ms())
        self.on_queued()
        return oid

    def outbox_status(self, oid: int) -> OutboxRow | None:
        return self.db().outbox_get(oid)

    def interval_history(
        self, meter_id: str | None, since_ms: int, until_ms: int
    ) -> list[Interval]:
        """Closed intervals with ``since_ms <= start < until_ms``, oldest first."""
        return self.db().intervals(meter_id, since_ms, until_ms)
