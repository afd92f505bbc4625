"""The replica's block store: SQLite in WAL mode, one database file per replica.

Tables:
- ``blocks``: height, view, previous block hash, block hash and the block's canonical bytes (the
  ordered batch and its commit certificate). ``prev_hash`` of block h is ``hash`` of block h-1,
  so the rows form a hash chain that ``verify`` re-checks from disk.
- ``tx_index``: executed transactions, ``tx_id`` (its 32 raw bytes; callers pass hex) ->
  (height, index); that is what makes re-execution idempotent: a transaction found here is never
  applied again. ``WITHOUT ROWID``, one B-tree.
- The block row also carries the block's receipts, the canonical list of ``[index, receipt]`` of
  its newly executed transactions, and their ids (``tx_ids``: 32 id bytes and a 4-byte index
  each). A receipt is read back by its (height, index) from the block's list (the last few
  blocks' lists are kept decoded: a client retrying a block's worth asks for them together).

Ids are hashes, so one block's index entries land on pages all over the index: inserted block by
block, every block rewrote (and fsynced, through the WAL) about one index page per transaction.
So the index is written every ``INDEX_MERGE_BLOCKS`` blocks, the ids of those blocks sorted and
inserted in the commit of the last one, and the ids of blocks not merged yet are held in memory
(rebuilt from their rows' ``tx_ids`` on open; ``meta`` names the last block merged). Each
replica merges at its own phase of that cycle (``merge_phase``), so the replicas do not all
spend the merge at the same block. Storing 390-transfer blocks in an isolated run, a row per
receipt cost 14-16 us of CPU per transaction, an index row per transaction written with its
block 9-12 us, this 7-9 us (duplicate checks included).
- ``checkpoints``: the contract snapshot and state digest at every checkpoint height.
- ``meta``: small values the replica keeps across restarts (stable checkpoint, view).
- ``journal``: the consensus core's protocol log: the pre-prepare, batch and prepared certificate
  (one row each) of every sequence number above the stable checkpoint (``ledger.pbft.backend``).
  It is committed with ``synchronous=NORMAL`` (switched on the one connection around each
  journal write): a commit is in the WAL, and so survives the process being killed, before the
  vote that depends on it is sent, without an fsync per vote; the next block's commit fsyncs it
  with the WAL. (A second connection for the journal would flush the first one's page cache at
  every write: SQLite drops a connection's cache when another one changed the file.) A power
  cut can lose the last votes, which makes this replica count towards f until it has caught
  up, as any replica without a log would.

Every executed block is written in ONE SQLite transaction (block row with its receipts, the index
rows of a merge and, at a checkpoint, the snapshot), so after a crash the store holds either all
of a block or none of it.
``synchronous=FULL``: each commit is fsynced before the replica replies to a client, so a
transaction a client saw committed survives power loss too, not only a killed process.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.encoding import EncodingError, canonical, decode

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    view INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    body BLOB NOT NULL,
    receipts BLOB NOT NULL,
    tx_ids BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tx_index (
    tx_id BLOB PRIMARY KEY,
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    height INTEGER PRIMARY KEY,
    state_digest BLOB NOT NULL,
    snapshot BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER NOT NULL,
    part TEXT NOT NULL,
    entry BLOB NOT NULL,
    PRIMARY KEY (seq, part)
);
"""

KEEP_CHECKPOINTS = 2
# Page cache of the main connection. SQLite's default (2 MiB) holds the transaction index of about
# 45,000 transactions; past that every duplicate check (one per transaction at execution, one
# per id a client awaits) read pages through the OS: 4.2-4.5 us per id looked up in a store of
# 120,000 receipts, 2.1-2.4 us with this cache. Filled only as the store grows.
CACHE_KIB = 32 * 1024
# WAL pages after which a commit copies the WAL into the database file (SQLite's default: 1000).
# Transactions are indexed by id, a hash, so each block's inserts dirty pages all over the
# index; with the default, every second or third block wrote ~1000 pages back, most of them
# again a few blocks later. Checkpointing every 10,000 pages (a WAL of up to 40 MiB) writes each
# hot page back once for many blocks: store CPU per transaction at 80,000-117,000 receipts went
# from 24-27 us to 18-20 us (isolated run of 390-receipt blocks), and it no longer grows with
# the chain as fast.
WAL_CHECKPOINT_PAGES = 10_000
# PRAGMA user_version of the schema above; a store written by another layout is refused by name
# (2: receipts keyed by raw ids; 3: the consensus journal; 4: receipts in the block row)
SCHEMA_VERSION = 4
TX_ID_BYTES = 32
RECEIPT_BLOCKS_CACHED = 8  # blocks whose receipts are kept decoded for lookups by id
ABSENT_CACHED = 200_000  # ids known to be missing from the index, at most (then forgotten)
INDEX_MERGE_BLOCKS = 16  # blocks whose ids wait in memory before one sorted write to tx_index
INDEXED_THROUGH = "tx_index_through"  # meta: the last block whose ids are in tx_index
_ID_RECORD = TX_ID_BYTES + 4  # an id and its index in the block, in the row's tx_ids


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
class StateSnapshot:
    height: int
    state_digest: bytes
    snapshot: bytes


class BlockStore:
    def __init__(self, path: Path, *, merge_phase: int = 0) -> None:
        self.path = path
        self.merge_phase = merge_phase % INDEX_MERGE_BLOCKS
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self.db.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        self._receipts: OrderedDict[int, Mapping[int, Any]] = OrderedDict()
        self._recent: dict[bytes, tuple[int, int]] = {}  # ids of blocks not merged yet
        # Ids the index was asked for and did not have, since the last merge (only a merge
        # writes the index, so the answer holds until then): a transaction is looked up when
        # its request (or a client's wait for it) arrives and again when its block executes,
        # and the second lookup is then answered from memory. Cleared at every merge.
        self._absent: set[bytes] = set()
        self._migrate()
        self._load_recent()

    def _load_recent(self) -> None:
        raw = self.get_meta(INDEXED_THROUGH)
        through = 0 if raw is None else int(raw)
        rows = self.db.execute(
            "SELECT height, tx_ids FROM blocks WHERE height > ? ORDER BY height", (through,)
        )
        for height, ids in rows:
            if not isinstance(ids, bytes) or len(ids) % _ID_RECORD:
                raise StoreError(f"block {height}: stored transaction ids are damaged")
            for at in range(0, len(ids), _ID_RECORD):
                key = ids[at : at + TX_ID_BYTES]
                self._recent[key] = (
                    int(height),
                    int.from_bytes(ids[at + TX_ID_BYTES : at + _ID_RECORD]),
                )

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version == SCHEMA_VERSION:
            return
        tables = self.db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
        if version != 0 or int(tables.fetchone()[0]) != 0:
            self.db.close()
            raise StoreError(
                f"{self.path}: block store layout {version}, this wattmesh reads layout "
                f"{SCHEMA_VERSION}; move the file away and let the replica fetch the chain "
                "from its peers (state transfer)"
            )
        self.db.executescript(SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")

    def close(self) -> None:
        self.db.close()

    # -- writes ---------------------------------------------------------------------------------

    def append(
        self,
        block: BlockRow,
        receipts: Sequence[tuple[str, int, Any]],
        checkpoint: StateSnapshot | None = None,
    ) -> None:
        """Store one executed block with its receipts (and checkpoint) atomically. ``receipts``
        are ``(tx_id, index, receipt)``, the receipt a JSON-like value, in index order; the caller
        has already left out transactions that have a receipt from an earlier block."""
        head = self.head()
        if block.height != head[0] + 1:
            raise StoreError(f"block {block.height} does not follow height {head[0]}")
        if head[0] > 0 and block.prev_hash != head[1]:
            raise StoreError(f"block {block.height} does not link to block {head[0]}")
        keys = [bytes.fromhex(tx_id) for tx_id, _, _ in receipts]
        fresh = {key: (block.height, idx) for key, (_, idx, _) in zip(keys, receipts, strict=True)}
        if len(fresh) != len(keys) or not self._recent.keys().isdisjoint(fresh):
            raise StoreError(f"block {block.height} repeats a transaction that has a receipt")
        listed = canonical([[idx, receipt] for _, idx, receipt in receipts], checked=False)
        ids = b"".join(key + idx.to_bytes(4, "big") for key, (_, idx) in fresh.items())
        merge = block.height % INDEX_MERGE_BLOCKS == self.merge_phase
        with _atomic(self.db) as cur:
            cur.execute(
                "INSERT INTO blocks (height, view, prev_hash, hash, body, receipts, tx_ids) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (block.height, block.view, block.prev_hash, block.hash, block.body, listed, ids),
            )
            if merge:
                # sorted: neighbouring ids share index pages, each page is written once. An id
                # the index has already keeps its first entry (the executor never repeats one).
                rows = sorted(
                    (key, height, idx)
                    for key, (height, idx) in (*self._recent.items(), *fresh.items())
                )
                cur.executemany(
                    "INSERT OR IGNORE INTO tx_index (tx_id, height, idx) VALUES (?, ?, ?)", rows
                )
                cur.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (INDEXED_THROUGH, str(block.height).encode()),
                )
            if checkpoint is not None:
                self._put_checkpoint(cur, checkpoint)
        if merge:
            self._recent.clear()
            self._absent.clear()
        else:
            self._recent.update(fresh)

    def put_checkpoint(self, checkpoint: StateSnapshot) -> None:
        with _atomic(self.db) as cur:
            self._put_checkpoint(cur, checkpoint)

    @staticmethod
    def _put_checkpoint(cur: sqlite3.Cursor, checkpoint: StateSnapshot) -> None:
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

    def put_journal(self, seq: int, parts: Mapping[str, bytes | None]) -> None:
        """Write (bytes) or drop (None) parts of the journal entry of ``seq``, in one commit."""
        with _atomic(self.db, synchronous="NORMAL") as cur:
            for part, entry in parts.items():
                if entry is None:
                    cur.execute("DELETE FROM journal WHERE seq = ? AND part = ?", (seq, part))
                else:
                    cur.execute(
                        "INSERT OR REPLACE INTO journal (seq, part, entry) VALUES (?, ?, ?)",
                        (seq, part, entry),
                    )

    def put_journal_meta(self, key: str, value: bytes) -> None:
        with _atomic(self.db, synchronous="NORMAL") as cur:
            cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def prune_journal(self, upto: int) -> None:
        with _atomic(self.db, synchronous="NORMAL") as cur:
            cur.execute("DELETE FROM journal WHERE seq <= ?", (upto,))

    def journal(self) -> dict[int, dict[str, bytes]]:
        out: dict[int, dict[str, bytes]] = {}
        for seq, part, entry in self.db.execute("SELECT seq, part, entry FROM journal"):
            out.setdefault(int(seq), {})[str(part)] = bytes(entry)
        return out

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

    def receipt(self, tx_id: str) -> tuple[int, int, Any] | None:
        """``(height, index, receipt)`` of an executed transaction. The receipt is shared with
        other callers: read it, never change it."""
        found = self.locate([tx_id]).get(tx_id)
        if found is None:
            return None
        height, idx = found
        return height, idx, self.block_receipts(height)[idx]

    def block_receipts(self, height: int) -> Mapping[int, Any]:
        """The receipts stored with block ``height``, by index (shared: read-only)."""
        cached = self._receipts.get(height)
        if cached is not None:
            self._receipts.move_to_end(height)
            return cached
        row = self.db.execute("SELECT receipts FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            raise StoreError(f"block {height} is indexed but not stored")
        try:
            listed = decode(row[0], strict=False)
            by_index = {int(idx): receipt for idx, receipt in listed}
        except (EncodingError, TypeError, ValueError) as exc:
            raise StoreError(f"block {height}: stored receipts do not decode: {exc}") from exc
        self._receipts[height] = by_index
        if len(self._receipts) > RECEIPT_BLOCKS_CACHED:
            self._receipts.popitem(last=False)
        return by_index

    def locate(self, tx_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``(height, index)`` of each of these transactions that was executed (every spelling
        of an id asked for is answered; strings that are no id are simply not found)."""
        asked: dict[bytes, list[str]] = {}
        for tx_id in tx_ids:
            key = _tx_key(tx_id)
            if key is not None:
                asked.setdefault(key, []).append(tx_id)
        out: dict[str, tuple[int, int]] = {}
        keys = []
        recent, absent = self._recent, self._absent
        for key, spellings in asked.items():
            where = recent.get(key)
            if where is not None:
                for spelling in spellings:
                    out[spelling] = where
            elif key not in absent:
                keys.append(key)
        if len(absent) + len(keys) > ABSENT_CACHED:
            absent.clear()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            absent.update(chunk)
            for key, height, idx in self.db.execute(
                f"SELECT tx_id, height, idx FROM tx_index WHERE tx_id IN ({marks})", chunk
            ):
                absent.discard(bytes(key))
                where = (int(height), int(idx))
                for spelling in asked[bytes(key)]:
                    out[spelling] = where
        return out

    def known(self, tx_ids: Sequence[str]) -> set[str]:
        """Which of these transactions already have a receipt."""
        return set(self.locate(tx_ids))

    def checkpoint_digest(self, height: int) -> bytes | None:
        """The state digest stored with the checkpoint at ``height``, if it is still kept."""
        row = self.db.execute(
            "SELECT state_digest FROM checkpoints WHERE height = ?", (height,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def latest_checkpoint(self) -> StateSnapshot | None:
        row = self.db.execute(
            "SELECT height, state_digest, snapshot FROM checkpoints ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return None if row is None else StateSnapshot(int(row[0]), bytes(row[1]), bytes(row[2]))

    def receipt_count(self) -> int:
        indexed = int(self.db.execute("SELECT COUNT(*) FROM tx_index").fetchone()[0])
        return indexed + len(self._recent)


@contextmanager
def _atomic(conn: sqlite3.Connection, synchronous: str = "FULL") -> Iterator[sqlite3.Cursor]:
    """One SQLite transaction on ``conn``: committed if the block ends normally, else rolled
    back, so a crash or an error leaves all of it or none. ``synchronous="NORMAL"``: committed to
    the WAL without an fsync (the connection is FULL again afterwards)."""
    cur = conn.cursor()
    if synchronous != "FULL":
        cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.execute("BEGIN IMMEDIATE")
    try:
        yield cur
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    finally:
        if synchronous != "FULL":
            cur.execute("PRAGMA synchronous=FULL")


def _tx_key(tx_id: str) -> bytes | None:
    """The stored key of a hex transaction id; None for a string that is no id (such an id has
    no receipt, and asking for one is not an error)."""
    if len(tx_id) != 2 * TX_ID_BYTES:
        return None
    try:
        key = bytes.fromhex(tx_id)
    except (ValueError, TypeError):
        return None
    return key if len(key) == TX_ID_BYTES else None  # fromhex skips spaces


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
