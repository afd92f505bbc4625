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

import pytest

from ledger.store import BlockRow, BlockStore, Checkpoint, StoreError


def _block(height: int, prev: bytes) -> BlockRow:
    body = f"block {height}".encode()
    return BlockRow(height, 0, prev, hashlib.sha256(prev + body).digest(), body)


def test_chain_receipts_and_checkpoints(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "r.sqlite")
    assert store.head() == (0, b"")
    prev = b""
    for h in range(1, 6):
        block = _block(h, prev)
        cp = Checkpoint(h, b"d%d" % h, b"snap%d" % h) if h % 2 == 0 else None
        store.append(block, [(f"tx{h}", 0, b"ok")], cp)
        prev = block.hash
    assert store.head() == (5, prev)
    assert [b.height for b in store.blocks(after=2)] == [3, 4, 5]
    assert [b.height for b in store.blocks(after=0, limit=2)] == [1, 2]
    assert store.receipt("tx3") == (3, 0, b"ok")
    assert store.known(["tx1", "nope", "tx5"]) == {"tx1", "tx5"}
    latest = store.latest_checkpoint()
    assert latest is not None and latest.height == 4
    store.put_checkpoint(Checkpoint(6, b"d", b"s"))
    store.put_checkpoint(Checkpoint(8, b"d", b"s"))
    heights = [r[0] for r in store.db.execute("SELECT height FROM checkpoints ORDER BY height")]
    assert heights == [6, 8]
    store.set_meta("view", b"3")
    store.close()
    again = BlockStore(tmp_path / "r.sqlite")
    assert again.head() == (5, prev) and again.get_meta("view") == b"3"
    assert again.get_meta("absent") is None


def test_gaps_broken_links_and_duplicate_receipts_are_refused(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "r.sqlite")
    b1 = _block(1, b"")
    store.append(b1, [("a", 0, b"ok")])
    with pytest.raises(StoreError, match="does not follow"):
        store.append(_block(3, b1.hash), [])
    with pytest.raises(StoreError, match="does not link"):
        store.append(_block(2, b"wrong"), [])
    with pytest.raises(sqlite3.IntegrityError):
        store.append(_block(2, b1.hash), [("a", 0, b"again")])
    # the failed block left nothing behind
    assert store.head() == (1, b1.hash)
    assert store.receipt("a") == (1, 0, b"ok")


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
    store.append(row, [(f"tx{h}-{i}", i, b"ok") for i in range(50)])
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
            pass
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
