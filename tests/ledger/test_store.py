"""The SQLite block store: atomic blocks, a checked hash chain, idempotent receipts, and a
killed writer process that leaves either whole blocks or nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger.store as store_module
from ledger.store import SCHEMA_VERSION, BlockRow, BlockStore, StateSnapshot, StoreError


def tid(name: str) -> str:
    """A transaction id (64 hex characters) named for the test."""
    return hashlib.sha256(name.encode()).hexdigest()


def _block(height: int, prev: bytes) -> BlockRow:
    body = f"block {height}".encode()
    return BlockRow(height, 0, prev, hashlib.sha256(prev + body).digest(), body)


def test_chain_receipts_and_checkpoints(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "r.sqlite")
    assert store.head() == (0, b"")
    prev = b""
    for h in range(1, 6):
        block = _block(h, prev)
        cp = StateSnapshot(h, b"d%d" % h, b"snap%d" % h) if h % 2 == 0 else None
        store.append(block, [(tid(f"tx{h}"), 0, "ok")], cp)
        prev = block.hash
    assert store.head() == (5, prev)
    assert [b.height for b in store.blocks(after=2)] == [3, 4, 5]
    assert [b.height for b in store.blocks(after=0, limit=2)] == [1, 2]
    assert store.receipt(tid("tx3")) == (3, 0, "ok")
    assert store.receipt(tid("tx3").upper()) == (3, 0, "ok")
    assert store.known([tid("tx1"), tid("nope"), tid("tx5")]) == {tid("tx1"), tid("tx5")}
    # strings that are no transaction id are simply not known
    odd = ["", "zz" * 32, tid("tx1")[:62] + "  ", "ab" * 33, " " + tid("tx1")[1:]]
    assert store.known(odd) == set() and all(store.receipt(o) is None for o in odd)
    both = [tid("tx2").upper(), tid("tx2")]
    assert store.known(both) == set(both)  # each spelling asked for
    latest = store.latest_checkpoint()
    assert latest is not None and latest.height == 4
    store.put_checkpoint(StateSnapshot(6, b"d", b"s"))
    store.put_checkpoint(StateSnapshot(8, b"d", b"s"))
    heights = [r[0] for r in store.db.execute("SELECT height FROM checkpoints ORDER BY height")]
    assert heights == [6, 8]
    store.set_meta("view", b"3")
    store.close()
    again = BlockStore(tmp_path / "r.sqlite")
    assert again.head() == (5, prev) and again.get_meta("view") == b"3"
    assert again.get_meta("absent") is None


def test_the_wal_goes_back_into_the_database_every_wal_checkpoint_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "WAL_CHECKPOINT_PAGES", 40)
    path = tmp_path / "r.sqlite"
    store = BlockStore(path)
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 40
    start = path.stat().st_size
    prev = b""
    for h in range(1, 7):  # 6 blocks of 16 pages or more each: one checkpoint past 40 pages
        body = os.urandom(64 * 1024)
        block = BlockRow(h, 0, prev, hashlib.sha256(prev + body).digest(), body)
        store.append(block, [(tid(f"w{h}"), 0, "ok")])
        prev = block.hash
    # the blocks were copied into the database file, not only appended to the WAL
    assert path.stat().st_size >= start + 3 * 64 * 1024
    store.close()
    assert [b.height for b in BlockStore(path).blocks()] == [1, 2, 3, 4, 5, 6]


def test_journal_writes_skip_the_fsync_and_leave_blocks_fsynced(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "r.sqlite")
    level = "PRAGMA synchronous"
    assert store.db.execute(level).fetchone()[0] == 2  # FULL: blocks are fsynced
    store.put_journal(1, {"pp": b"p", "batch": b"b"})
    store.put_journal_meta("view", b"v")
    store.prune_journal(0)
    assert store.db.execute(level).fetchone()[0] == 2  # back to FULL after each journal write
    broken: dict[Any, bytes | None] = {"y": b"1", None: b"2"}  # a part without a name
    with pytest.raises(sqlite3.IntegrityError):  # a failed write rolls back, FULL again
        store.put_journal(2, broken)
    assert store.db.execute(level).fetchone()[0] == 2
    assert store.journal() == {1: {"pp": b"p", "batch": b"b"}}
    assert not store.db.in_transaction


def test_a_store_of_another_layout_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE receipts (tx_id TEXT PRIMARY KEY, height INTEGER)")  # layout 1
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"layout 0, this wattmesh reads layout {SCHEMA_VERSION}"):
        BlockStore(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(StoreError, match="layout 7"):
        BlockStore(path)
    BlockStore(tmp_path / "new.sqlite").close()
    assert BlockStore(tmp_path / "new.sqlite").receipt_count() == 0  # reopened: same layout


@settings(max_examples=200, deadline=None)
@given(
    asked=st.lists(
        st.one_of(
            st.text(max_size=70), st.text("0123456789abcdefABCDEF ", min_size=64, max_size=64)
        ),
        max_size=20,
    )
)
def test_looking_up_any_string_answers_and_never_raises(
    tmp_path_factory: pytest.TempPathFactory, asked: list[str]
) -> None:
    """Ids come from clients (await frames, receipt queries): whatever they are, a lookup answers
    which of them have a receipt, and only those."""
    store = BlockStore(tmp_path_factory.mktemp("s") / "r.sqlite")
    stored = tid("stored")
    store.append(_block(1, b""), [(stored, 0, "ok")])
    assert store.known([*asked, stored]) == {stored} | {a for a in asked if a.lower() == stored}
    for text in asked:
        assert store.receipt(text) == ((1, 0, "ok") if text.lower() == stored else None)
    store.close()


def test_gaps_broken_links_and_duplicate_receipts_are_refused(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "r.sqlite")
    b1 = _block(1, b"")
    store.append(b1, [(tid("a"), 0, "ok")])
    with pytest.raises(StoreError, match="does not follow"):
        store.append(_block(3, b1.hash), [])
    with pytest.raises(StoreError, match="does not link"):
        store.append(_block(2, b"wrong"), [])
    with pytest.raises(StoreError, match="repeats a transaction"):
        store.append(_block(2, b1.hash), [(tid("a"), 0, "again")])
    with pytest.raises(StoreError, match="repeats a transaction"):
        store.append(_block(2, b1.hash), [(tid("b"), 0, "once"), (tid("b"), 1, "twice")])
    # the failed block left nothing behind
    assert store.head() == (1, b1.hash)
    assert store.receipt(tid("a")) == (1, 0, "ok")


def test_receipts_are_read_back_from_their_block_and_damage_is_named(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "r.sqlite")
    b1 = _block(1, b"")
    store.append(b1, [(tid("x"), 0, {"code": "OK"}), (tid("y"), 2, {"code": "NO"})])
    b2 = _block(2, b1.hash)
    store.append(b2, [])  # a block of transactions all executed before: no receipts
    assert store.receipt(tid("y")) == (1, 2, {"code": "NO"})
    assert store.locate([tid("x"), tid("z")]) == {tid("x"): (1, 0)}
    assert store.block_receipts(2) == {}
    store.close()
    for damage in (b"[[0", b'{"0": 1}', b"[[0]]", b'[["a", 1]]'):
        store = BlockStore(tmp_path / "r.sqlite")  # a fresh process: nothing decoded yet
        store.db.execute("UPDATE blocks SET receipts = ? WHERE height = 1", (damage,))
        with pytest.raises(StoreError, match="block 1: stored receipts do not decode"):
            store.receipt(tid("x"))
        store.close()


def test_the_index_is_written_every_merge_cycle_and_rebuilt_on_open(tmp_path: Path) -> None:
    """Ids wait in memory until the block at the store's merge phase writes them all; whatever
    the moment the store is reopened, every id is found where it executed."""
    cycle = store_module.INDEX_MERGE_BLOCKS
    path = tmp_path / "r.sqlite"
    store = BlockStore(path, merge_phase=3)
    prev, height = b"", 0

    def indexed(s: BlockStore) -> int:
        return int(s.db.execute("SELECT COUNT(*) FROM tx_index").fetchone()[0])

    for height in range(1, 2 * cycle + 6):
        block = _block(height, prev)
        store.append(block, [(tid(f"{height}-{i}"), 2 * i, {"n": i}) for i in range(3)])
        prev = block.hash
        merged = [h for h in range(1, height + 1) if h % cycle == 3]
        assert indexed(store) == 3 * (merged[-1] if merged else 0)
        assert store.receipt_count() == 3 * height
        if height in (2, cycle + 3, cycle + 9):
            store.close()
            store = BlockStore(path, merge_phase=3)  # a restart at any point of the cycle
            assert store.receipt_count() == 3 * height
    everything = [tid(f"{h}-{i}") for h in range(1, height + 1) for i in range(3)]
    assert store.locate([*everything, tid("never")]) == {
        tid(f"{h}-{i}"): (h, 2 * i) for h in range(1, height + 1) for i in range(3)
    }
    assert store.receipt(tid(f"{height}-2")) == (height, 4, {"n": 2})  # not merged yet
    assert store.receipt(tid("3-1")) == (3, 2, {"n": 1})  # from the index
    with pytest.raises(StoreError, match="repeats a transaction"):
        store.append(_block(height + 1, prev), [(tid(f"{height}-0"), 0, "again")])
    store.db.execute("UPDATE blocks SET tx_ids = X'00ff' WHERE height = ?", (height,))
    store.close()
    with pytest.raises(StoreError, match=f"block {height}: stored transaction ids are damaged"):
        BlockStore(path, merge_phase=3)


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.lists(st.integers(0, 40), max_size=4), st.lists(st.integers(0, 40), max_size=6)
        ),
        min_size=1,
        max_size=40,
    ),
    phase=st.integers(0, 15),
)
def test_lookups_agree_with_what_was_stored_across_merges(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[list[int], list[int]]], phase: int
) -> None:
    """Ids asked for (and found missing) before their block executes, blocks written across
    merge points: every lookup answers exactly what was stored, as a reference map does."""
    store = BlockStore(tmp_path_factory.mktemp("s") / "r.sqlite", merge_phase=phase)
    stored: dict[str, tuple[int, int]] = {}
    prev = b""
    for height, (new, asked) in enumerate(steps, start=1):
        ids = [tid(str(n)) for n in asked]
        assert store.locate(ids) == {i: stored[i] for i in ids if i in stored}
        fresh = list(dict.fromkeys(tid(str(n)) for n in new if tid(str(n)) not in stored))
        block = _block(height, prev)
        store.append(block, [(i, k, {"k": k}) for k, i in enumerate(fresh)])
        prev = block.hash
        stored.update({i: (height, k) for k, i in enumerate(fresh)})
    everything = [tid(str(n)) for n in range(41)]
    assert store.locate(everything) == stored
    store.close()


WRITER = """
import hashlib, sys
from pathlib import Path
from ledger.store import BlockRow, BlockStore
store = BlockStore(Path(sys.argv[1]))
h, prev = store.head()
print("ready", flush=True)
while True:
    h += 1
    body = b"x" * 2000
    row = BlockRow(h, 0, prev, hashlib.sha256(prev + body + str(h).encode()).digest(), body)
    ids = [hashlib.sha256(f"tx{h}-{i}".encode()).hexdigest() for i in range(50)]
    store.append(row, [(tx_id, i, "ok") for i, tx_id in enumerate(ids)])
    prev = row.hash
"""


def test_sigkill_mid_write_leaves_whole_blocks(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        # let it write for a while, then kill it without warning
        store = BlockStore(db)
        start = store.head()[0]
        while store.head()[0] < start + 20:
            assert proc.poll() is None, "the writer died on its own"
        store.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = BlockStore(db)
    height, _ = store.head()
    assert height >= 60
    prev = b""
    for row in store.blocks():
        assert row.prev_hash == prev
        prev = row.hash
    assert store.receipt_count() == 50 * height
