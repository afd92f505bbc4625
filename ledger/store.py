"""The replica's block store: SQLite in WAL mode, one database file per replica.

Tables:
- ``blocks``: height, view, previous block hash, block hash and the block's canonical bytes (the
  ordered batch and its commit certificate). ``prev_hash`` of block h is ``hash`` of block h-1,
  so the rows form a hash chain that ``verify`` re-checks from disk.
- ``receipts``: one row per executed transaction, keyed by ``tx_id`` (PRIMARY KEY): that is what
  makes re-execution idempotent; a transaction already in this table is never applied again.
- ``checkpoints``: the contract snapshot and state digest at every checkpoint height.
- ``meta``: small values the replica keeps across restarts (its view, say).

Every executed block is written in ONE SQLite transaction (block row, receipts and, at a
checkpoint, the snapshot), so after a crash the store holds either all of a block or none of it.
``synchronous=FULL``: each commit is fsynced before the replica replies to a client, so a
transaction a client saw committed survives power loss too, not only a killed process.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    view INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    tx_id TEXT PRIMARY KEY,
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    receipt BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    height INTEGER PRIMARY KEY,
    state_digest BLOB NOT NULL,
    snapshot BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""

KEEP_CHECKPOINTS = 2


class StoreError(RuntimeError):
    """The store on disk contradicts itself (a gap or a broken link); never silently repaired."""


@dataclass(frozen=True, slots=True)
class BlockRow:
    height: int
    view: int
    prev_hash: bytes
    hash: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    height: int
    state_digest: bytes
    snapshot: bytes


@dataclass(frozen=True, slots=True)
class MetaWrite:
    key: str
    value: bytes


BlockWrite = tuple[BlockRow, Sequence[tuple[str, int, bytes]], Checkpoint | None]
Write = BlockWrite | MetaWrite


class BlockStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- writes ---------------------------------------------------------------------------------

    def append(
        self,
        block: BlockRow,
        receipts: Sequence[tuple[str, int, bytes]],
        checkpoint: Checkpoint | None = None,
    ) -> None:
        """Store one executed block with its receipts (and checkpoint) atomically. ``receipts``
        are ``(tx_id, index, receipt_bytes)``; the caller has already left out transactions that
        have a receipt from an earlier block."""
        self.append_many([(block, receipts, checkpoint)])

    def append_many(self, items: Sequence[Write]) -> None:
        """Store consecutive blocks (and meta values) in ONE SQLite transaction: one fsync for
        all of them (group commit), all or none after a crash."""
        head_height, head_hash = self.head()
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for item in items:
                if isinstance(item, MetaWrite):
                    cur.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (item.key, item.value),
                    )
                    continue
                block, receipts, checkpoint = item
                if block.height != head_height + 1:
                    raise StoreError(f"block {block.height} does not follow height {head_height}")
                if head_height > 0 and block.prev_hash != head_hash:
                    raise StoreError(f"block {block.height} does not link to block {head_height}")
                cur.execute(
                    "INSERT INTO blocks (height, view, prev_hash, hash, body) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (block.height, block.view, block.prev_hash, block.hash, block.body),
                )
                cur.executemany(
                    "INSERT INTO receipts (tx_id, height, idx, receipt) VALUES (?, ?, ?, ?)",
                    [(tx_id, block.height, idx, data) for tx_id, idx, data in receipts],
                )
                if checkpoint is not None:
                    self._put_checkpoint(cur, checkpoint)
                head_height, head_hash = block.height, block.hash
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def put_checkpoint(self, checkpoint: Checkpoint) -> None:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            self._put_checkpoint(cur, checkpoint)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    @staticmethod
    def _put_checkpoint(cur: sqlite3.Cursor, checkpoint: Checkpoint) -> None:
        cur.execute(
            "INSERT OR REPLACE INTO checkpoints (height, state_digest, snapshot) VALUES (?, ?, ?)",
            (checkpoint.height, checkpoint.state_digest, checkpoint.snapshot),
        )
        cur.execute(
            "DELETE FROM checkpoints WHERE height NOT IN "
            "(SELECT height FROM checkpoints ORDER BY height DESC LIMIT ?)",
            (KEEP_CHECKPOINTS,),
        )

    def set_meta(self, key: str, value: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- reads ----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def head(self) -> tuple[int, bytes]:
        """``(height, hash)`` of the last block, ``(0, b"")`` when there is none."""
        row = self.db.execute(
            "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return (0, b"") if row is None else (int(row[0]), bytes(row[1]))

    def block(self, height: int) -> BlockRow | None:
        row = self.db.execute(
            "SELECT height, view, prev_hash, hash, body FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        return None if row is None else _row(row)

    def blocks(self, after: int = 0, limit: int | None = None) -> Iterator[BlockRow]:
        sql = (
            "SELECT height, view, prev_hash, hash, body FROM blocks WHERE height > ? "
            "ORDER BY height"
        )
        params: tuple[int, ...] = (after,)
        if limit is not None:
            sql += " LIMIT ?"
            params = (after, limit)
        for row in self.db.execute(sql, params):
            yield _row(row)

    def receipt(self, tx_id: str) -> tuple[int, int, bytes] | None:
        """``(height, index, receipt_bytes)`` of an executed transaction."""
        row = self.db.execute(
            "SELECT height, idx, receipt FROM receipts WHERE tx_id = ?", (tx_id,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), bytes(row[2]))

    def known(self, tx_ids: Sequence[str]) -> set[str]:
        """Which of these transactions already have a receipt."""
        out: set[str] = set()
        for start in range(0, len(tx_ids), 500):
            chunk = tx_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for (tx_id,) in self.db.execute(
                f"SELECT tx_id FROM receipts WHERE tx_id IN ({marks})", tuple(chunk)
            ):
                out.add(str(tx_id))
        return out

    def latest_checkpoint(self) -> Checkpoint | None:
        row = self.db.execute(
            "SELECT height, state_digest, snapshot FROM checkpoints ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return None if row is None else Checkpoint(int(row[0]), bytes(row[1]), bytes(row[2]))

    def receipt_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])


def _row(row: tuple[object, ...]) -> BlockRow:
    height, view, prev_hash, hash_, body = row
    if not (
        isinstance(height, int)
        and isinstance(view, int)
        and isinstance(prev_hash, bytes)
        and isinstance(hash_, bytes)
        and isinstance(body, bytes)
    ):
        raise StoreError(f"block {height}: stored columns have the wrong types")
    return BlockRow(height=height, view=view, prev_hash=prev_hash, hash=hash_, body=body)


MAX_QUEUED_WRITES = 64  # blocks handed to the writer and not yet durable; more waits


class BlockWriter:
    """Writes blocks on a thread of its own, with its own connection to the store.

    A replica must not answer a client before the block is fsynced, but it need not stop
    ordering and executing the next blocks while the disk works: the fsync was 10-13 % of a
    replica's wall time, spent with the event loop blocked. The writer takes everything queued
    since its last commit and writes it in one transaction (group commit), then reports the
    height now durable through ``on_durable`` (called on the writer thread). A write that fails
    is reported through ``on_error`` and nothing after it is written: the replica must stop.
    """

    def __init__(
        self,
        path: Path,
        on_durable: Callable[[int], object],
        on_error: Callable[[BaseException], object],
    ) -> None:
        self._store = BlockStore(path)
        self._on_durable = on_durable
        self._on_error = on_error
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._room = threading.Semaphore(MAX_QUEUED_WRITES)
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="block-writer", daemon=True)
        self._thread.start()

    def submit(self, write: Write) -> None:
        """Queue a write; blocks only while ``MAX_QUEUED_WRITES`` blocks wait for the disk."""
        if isinstance(write, tuple):
            self._room.acquire()
        self._queue.put(write)

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()
        self._store.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[Write] = []
            while item is not None:
                batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            stop = item is None
            blocks = [w for w in batch if isinstance(w, tuple)]
            try:
                if batch and self.failed is None:
                    self._store.append_many(batch)
                    if blocks:
                        self._on_durable(blocks[-1][0].height)
            except BaseException as exc:
                if self.failed is None:
                    self.failed = exc
                    self._on_error(exc)
            finally:
                for _ in blocks:
                    self._room.release()
