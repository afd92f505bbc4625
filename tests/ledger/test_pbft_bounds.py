"""Bounds that keep consensus messages inside a frame and a faulty peer from filling a correct
replica's memory: transaction bytes, batch bytes, how far ahead pre-prepares are taken, what a
VIEW-CHANGE may leave behind, and which future pre-prepares are buffered."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.encoding import canonical
from ledger.pbft.block import Batch, batch_bytes
from ledger.pbft.memory import MemoryExecutor
from ledger.pbft.messages import PrePrepare, ViewChange, sign
from ledger.pbft.replica import Replica
from ledger.pbft.signing import Signer
from ledger.pbft.simulation import Network, divergence, make_config, replica_key
from ledger.pbft.viewchange import VC_ATTACH_BYTES
from ledger.tx import MAX_TX_BYTES, SignedTx, TxError, sign_tx

CLIENT = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)


def _big_tx(n: int, pad: int = 12_000) -> SignedTx:
    """A transaction of about ``pad`` bytes for the simulation's key-value contract."""
    return sign_tx(CLIENT, "kv.add", {"key": "k", "value": 1, "pad": "Z" * pad}, n)


def test_a_transaction_over_the_bound_is_refused_when_signed_and_when_parsed() -> None:
    with pytest.raises(TxError, match="exceeds"):
        _big_tx(1, MAX_TX_BYTES)
    wire = _big_tx(1).to_wire()
    wire["body"] = dict(wire["body"], pad="Z" * MAX_TX_BYTES)
    with pytest.raises(TxError, match=f"exceeds {MAX_TX_BYTES}"):
        SignedTx.from_wire(wire)


def test_the_primary_cuts_batches_by_bytes_and_everything_commits() -> None:
    net = Network(make_config(4, batch_max_bytes=100_000))
    txs = [_big_tx(n) for n in range(40)]  # ~12 KB each: 8 to a batch, not 40
    net.submit_all(txs)
    net.run(500)
    assert net.all_committed(txs)
    blocks = net.executors[1].blocks
    assert len(blocks) >= 5
    assert all(
        batch_bytes([SignedTx.from_wire(w) for w in b.txs]) <= 100_000 for b in blocks
    )
    assert divergence(net) == []


def test_backups_refuse_a_batch_over_the_byte_bound_and_replace_the_primary() -> None:
    net = Network(make_config(4, batch_max_bytes=100_000, view_change_timeout_ms=100))
    txs = [_big_tx(n) for n in range(10)]  # ~125 KB in one batch
    batch = Batch.from_txs(5, txs)
    pp = sign(PrePrepare(0, 1, batch.digest(), 0), Signer(0, replica_key(0)))
    for b in (1, 2, 3):
        net.inject(b, PrePrepare(0, 1, pp.digest, 0, pp.sig, batch).to_wire(), 0)
        assert net.replicas[b].metrics["rejected_bad_batch"] == 1
    net.run(400)
    assert all(r.view >= 1 for r in net.replicas[1:])


def test_a_pre_prepare_far_ahead_of_execution_is_not_held() -> None:
    cfg = make_config(4, max_ahead=4)
    backup = Replica(cfg, 1, replica_key(1), MemoryExecutor(), now_ms=0)
    batch = Batch.from_txs(5, [_big_tx(1, 100)])
    for seq, counted in ((5, "rejected_too_far_ahead"), (4, None)):
        pp = sign(PrePrepare(0, seq, batch.digest(), 0), Signer(0, replica_key(0)))
        backup.on_message(PrePrepare(0, seq, pp.digest, 0, pp.sig, batch).to_wire(), 0, 1)
        if counted:
            assert backup.metrics[counted] == 1 and seq not in backup.log.slots
        else:
            assert backup.log.slots[seq].pp is not None


def test_a_faulty_replica_cannot_fill_memory_with_view_changes_or_future_pre_prepares() -> None:
    cfg = make_config(4)
    r1 = Replica(cfg, 2, replica_key(2), MemoryExecutor(), now_ms=0)  # a backup of views 0, 1
    byz = Signer(3, replica_key(3))
    tx = _big_tx(1, 2_000)
    for view in range(1, 60):  # view-changes for ever higher views, batches named by no proof
        batches = {}
        for j in range(5):
            b = Batch.from_wire({"ts": view * 100 + j, "txs": [tx.to_wire()] * 20})
            batches[b.digest()] = b
        vc = sign(ViewChange(view, 0, (), (), 3), byz)
        r1.on_message(ViewChange(view, 0, (), (), 3, vc.sig, batches).to_wire(), 3, view)
    assert r1.view == 0 and r1.active  # one replica is not f+1: no view change
    assert sum(len(b) for b in r1.views.batches.values()) == 0
    for i in range(200):  # pre-prepares for view 1 from a replica that is not its primary
        batch = Batch.from_wire({"ts": i, "txs": [tx.to_wire()] * 20})
        fake = PrePrepare(1, 1, batch.digest(), 3, bytes(64), batch)
        r1.on_message(fake.to_wire(), 3, 1000)
    assert not any(isinstance(m, PrePrepare) for m, _ in r1.log.future)
    assert r1.metrics["rejected_future_pre_prepare"] == 200
    for i in range(cfg.max_ahead + 10):  # signed by view 1's primary: kept, up to the bound
        batch = Batch.from_wire({"ts": i, "txs": [tx.to_wire()]})
        pp = sign(PrePrepare(1, i + 1, batch.digest(), 1), Signer(1, replica_key(1)))
        r1.on_message(PrePrepare(1, i + 1, pp.digest, 1, pp.sig, batch).to_wire(), 1, 1000)
    assert sum(isinstance(m, PrePrepare) for m, _ in r1.log.future) == cfg.max_ahead


def test_a_view_change_attaches_batches_within_its_byte_budget() -> None:
    """A faulty primary withholds seq 1 and sends a full pipeline after it: the backups
    cannot execute, and their VIEW-CHANGE would carry every batch; it carries at most
    VC_ATTACH_BYTES, and the new primary (which saw those pre-prepares) still re-proposes
    them all, so nothing prepared is lost."""
    cfg = make_config(4, view_change_timeout_ms=100, max_inflight=10, max_ahead=10)
    sizes: list[int] = []

    def measure(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any]:
        if wire["t"] == "view-change":
            sizes.append(len(canonical(wire)))
        return wire

    net = Network(cfg, tamper=measure)
    per_batch = [[_big_tx(100 * s + k) for k in range(60)] for s in range(2, 9)]  # ~750 KB
    signer = Signer(0, replica_key(0))
    for seq, txs in zip(range(2, 9), per_batch, strict=True):
        batch = Batch.from_txs(seq, txs)
        pp = sign(PrePrepare(0, seq, batch.digest(), 0), signer)
        for b in (1, 2, 3):
            net.inject(b, PrePrepare(0, seq, pp.digest, 0, pp.sig, batch).to_wire(), 0)
    net.crash(0)
    net.run(3000)
    assert sizes and max(sizes) <= VC_ATTACH_BYTES + 200_000  # attachments plus proofs
    assert net.replicas[2].metrics["view_change_batches_left_out"] >= 1
    assert all(net.committed(tx.tx_id) for txs in per_batch for tx in txs)
    assert divergence(net) == []
