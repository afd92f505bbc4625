"""The gateway's SQLite store (WAL): readings, closed intervals, the outbox and small state.

Everything that must survive a restart is written here before it goes anywhere else. Closing an
interval, queueing its report and saving the aggregator's state happen in one transaction, so a
crash either did all of it or none of it, and an interval is reported at most once (its primary
key).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.intervals import Interval
from gateway.outbox import PENDING, OutboxRow
from ledger.encoding import canonical

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    meter_id TEXT NOT NULL, t_ms INTEGER NOT NULL, power_dw INTEGER NOT NULL,
    import_mwh INTEGER NOT NULL, export_mwh INTEGER NOT NULL, source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_t ON readings (meter_id, t_ms);
CREATE TABLE IF NOT EXISTS intervals (
    meter_id TEXT NOT NULL, start_ms INTEGER NOT NULL, import_wh INTEGER NOT NULL,
    export_wh INTEGER NOT NULL, flags INTEGER NOT NULL, samples INTEGER NOT NULL,
    PRIMARY KEY (meter_id, start_ms)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, body TEXT NOT NULL,
    nonce INTEGER NOT NULL UNIQUE, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL DEFAULT 0, code TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_ms);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dr_requests (
    id TEXT PRIMARY KEY, role TEXT NOT NULL, signer TEXT NOT NULL, start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL, max_w INTEGER NOT NULL, received_ms INTEGER NOT NULL
);
"""


def read_states(path: str | Path, prefix: str) -> dict[str, Any]:
    """``Store.states`` of a store file, opened read-only (a running daemon may hold it); empty
    if there is no store yet."""
    if not Path(path).exists():
        return {}
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _states(db, prefix)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    finally:
        db.close()


def _states(db: sqlite3.Connection, prefix: str) -> dict[str, Any]:
    rows = db.execute(
        "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
    ).fetchall()
    return {k: json.loads(v) for k, v in rows}


@dataclass(frozen=True, slots=True)
class DrRow:
    """A demand-response request the gateway took (``gateway.dr_inbox``)."""

    id: str
    role: str
    signer: str
    start_ms: int
    end_ms: int
    max_w: int
    received_ms: int


@dataclass(frozen=True, slots=True)
class Reading:
    meter_id: str
    t_ms: int
    power_dw: int  # real power in deciwatts, export negative
    import_mwh: int
    export_mwh: int
    source: str


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # isolation_level=None: transactions are explicit (BEGIN ... COMMIT) below.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is on the card before it returns. With NORMAL a power cut could
        # roll back the last commits, and with them the replay windows (kv "verifier"), the
        # command sequence numbers and taken demand-response requests (issue 19, finding 4).
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- small state ------------------------------------------------------------------------
    def get_state(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _put_state(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value, separators=(",", ":"))),
        )

    def put_state(self, key: str, value: Any) -> None:
        """Keep one small value (its own transaction)."""
        with self._transaction({key: value}):
            pass

    def states(self, prefix: str) -> dict[str, Any]:
        """Every small value whose key starts with ``prefix``, by key."""
        return _states(self.db, prefix)

    # -- readings and state, one transaction per flush ---------------------------------------
    @contextlib.contextmanager
    def _transaction(self, state: Mapping[str, Any] | None = None) -> Iterator[None]:
        """One write transaction, which also saves ``state``; rolled back on any error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            for key, value in (state or {}).items():
                self._put_state(key, value)
            self.db.execute("COMMIT")
        except BaseException:
            # a KeyboardInterrupt may land after COMMIT returned: nothing left to roll back
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def flush(self, readings: Sequence[Reading], state: Mapping[str, Any]) -> None:
        with self._transaction(state):
            self.db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.meter_id, r.t_ms, r.power_dw, r.import_mwh, r.export_mwh, r.source)
                    for r in readings
                ],
            )

    def close_intervals(
        self,
        intervals: Iterable[Interval],
        reports: Mapping[tuple[str, int], tuple[str, Mapping[str, Any], int]],
        state: Mapping[str, Any],
        now_ms: int,
    ) -> list[int]:
        """Store closed intervals, queue the report of each newly stored one (``reports`` maps
        (meter_id, start_ms) to (kind, body, nonce)) and save ``state``, atomically. Returns the
        outbox ids created."""
        ids: list[int] = []
        with self._transaction(state):
            for i in intervals:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO intervals VALUES (?, ?, ?, ?, ?, ?)",
                    (i.meter_id, i.start_ms, i.import_wh, i.export_wh, i.flags, i.samples),
                )
                report = reports.get((i.meter_id, i.start_ms))
                if cur.rowcount == 1 and report is not None:
                    ids.append(self._enqueue(*report, now_ms))
        return ids

    def readings(self, meter_id: str, since_ms: int, until_ms: int) -> list[Reading]:
        rows = self.db.execute(
            "SELECT meter_id, t_ms, power_dw, import_mwh, export_mwh, source FROM readings "
            "WHERE meter_id = ? AND t_ms >= ? AND t_ms < ? ORDER BY t_ms",
            (meter_id, since_ms, until_ms),
        ).fetchall()
        return [Reading(*r) for r in rows]

    def prune_readings(self, before_ms: int) -> int:
        return self.db.execute("DELETE FROM readings WHERE t_ms < ?", (before_ms,)).rowcount

    def intervals(self, meter_id: str | None, since_ms: int, until_ms: int) -> list[Interval]:
        q = (
            "SELECT meter_id, start_ms, import_wh, export_wh, flags, samples FROM intervals "
            "WHERE start_ms >= ? AND start_ms < ?"
        )
        args: list[Any] = [since_ms, until_ms]
        if meter_id is not None:
            q += " AND meter_id = ?"
            args.append(meter_id)
        rows = self.db.execute(q + " ORDER BY start_ms, meter_id", args).fetchall()
        return [Interval(*r) for r in rows]

    # -- outbox ------------------------------------------------------------------------------
    def _enqueue(self, kind: str, body: Mapping[str, Any], nonce: int, now_ms: int) -> int:
        cur = self.db.execute(
            "INSERT INTO outbox (kind, body, nonce, state, created_ms) VALUES (?, ?, ?, ?, ?)",
            (kind, canonical(body).decode(), nonce, PENDING, now_ms),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def enqueue(self, kind: str, body: Mapping[str, Any], nonce: int, now_ms: int) -> int:
        with self._transaction():
            return self._enqueue(kind, body, nonce, now_ms)

    def max_nonce(self) -> int:
        row = self.db.execute("SELECT MAX(nonce) FROM outbox").fetchone()
        return int(row[0]) if row[0] is not None else 0

    def _row(self, r: Sequence[Any]) -> OutboxRow:
        return OutboxRow(
            id=r[0],
            kind=r[1],
            body=json.loads(r[2]),
            nonce=r[3],
            state=r[4],
            attempts=r[5],
            next_ms=r[6],
            code=r[7],
            message=r[8],
        )

    _COLS = "id, kind, body, nonce, state, attempts, next_ms, code, message"

    def outbox_due(self, now_ms: int, limit: int) -> list[OutboxRow]:
        rows = self.db.execute(
            f"SELECT {self._COLS} FROM outbox WHERE state = ? AND next_ms <= ? ORDER BY id LIMIT ?",
            (PENDING, now_ms, limit),
        ).fetchall()
        return [self._row(r) for r in rows]

    def outbox_next_ms(self) -> int | None:
        row = self.db.execute(
            "SELECT MIN(next_ms) FROM outbox WHERE state = ?", (PENDING,)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def outbox_get(self, oid: int) -> OutboxRow | None:
        r = self.db.execute(f"SELECT {self._COLS} FROM outbox WHERE id = ?", (oid,)).fetchone()
        return None if r is None else self._row(r)

    def outbox_all(self) -> list[OutboxRow]:
        rows = self.db.execute(f"SELECT {self._COLS} FROM outbox ORDER BY id").fetchall()
        return [self._row(r) for r in rows]

    def outbox_save(self, row: OutboxRow) -> None:
        self.db.execute(
            "UPDATE outbox SET state = ?, attempts = ?, next_ms = ?, code = ?, message = ?, "
            "nonce = ? WHERE id = ?",
            (row.state, row.attempts, row.next_ms, row.code, row.message, row.nonce, row.id),
        )

    # -- demand-response requests -----------------------------------------------------------
    def dr_add(self, row: DrRow) -> bool:
        """Record a request; False (nothing written) when its id was taken before."""
        with self._transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO dr_requests VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.role, row.signer, row.start_ms, row.end_ms, row.max_w,
                 row.received_ms),
            )  # fmt: skip
            return cur.rowcount == 1

    def dr_active(self, now_ms: int) -> list[DrRow]:
        """The requests that have not ended at ``now_ms``, by start."""
        rows = self.db.execute(
            "SELECT id, role, signer, start_ms, end_ms, max_w, received_ms FROM dr_requests "
            "WHERE end_ms > ? ORDER BY start_ms, id",
            (now_ms,),
        ).fetchall()
        return [DrRow(*r) for r in rows]
