"""PBFT normal case in a simulated network: batching, replies, dedup, checkpoints, watermarks,
and every kind of bad message counted and dropped without harm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from ledger.executor import SigCache
from ledger.pbft.actions import BlockReplies, Broadcast, ReplyTo
from ledger.pbft.block import Batch
from ledger.pbft.messages import Commit, Prepare, PrePrepare, Reply, sign
from ledger.pbft.replica import Replica
from ledger.pbft.signing import Signer
from ledger.pbft.simulation import Network, divergence, make_config, make_txs, replica_key
from ledger.tx import SignedTx


def _agree(net: Network, expected_total: int) -> None:
    assert divergence(net) == []
    for i in net.correct():
        assert net.executors[i].state.get("k", 0) == expected_total
    digests = {net.executors[i].state_digest() for i in net.correct()}
    assert len(digests) == 1


@pytest.mark.parametrize("n", [4, 7])
def test_normal_case_batches_and_replies(n: int) -> None:
    net = Network(make_config(n, checkpoint_interval=4, log_window=16, batch_max=10))
    txs = make_txs(95)
    net.submit_all(txs)
    net.run(300)
    assert net.all_committed(txs)
    # 9 full batches cut at once, the last 5 after batch_delay_ms
    assert [r.last_executed for r in net.replicas] == [10] * n
    assert net.replicas[0].metrics["batches_proposed"] == 10
    assert all(len(net.replies[tx.tx_id]) == n for tx in txs)
    for i in range(1, n):
        assert net.replicas[i].metrics["txs_verified"] == 95  # every backup checked every tx
    _agree(net, 95)
    heights = [b.height for b in net.executors[1].blocks]
    assert heights == list(range(1, 11))
    cert = net.executors[2].blocks[0].certificate
    assert cert is not None and len(cert.commits) >= 2 * net.config.f + 1


def test_broadcast_requests_are_verified_once_and_not_relayed() -> None:
    net = Network(make_config(4, batch_max=50))
    txs = make_txs(30)
    for tx in txs:
        net.submit(tx, to=range(4))  # client broadcasts, as in the PBFT paper
    net.run(200)
    assert net.all_committed(txs)
    _agree(net, 30)
    for replica in net.replicas:
        # each replica checked each signature once: a backup's pre-prepare check was a cache
        # hit for the requests it had verified on arrival
        assert replica.metrics["tx_signature_checks"] == 30
        # the primary ordered them before any backup's relay delay ran out: no copies
        assert "requests_relayed" not in replica.metrics
    assert "duplicate_tx" not in net.replicas[0].metrics


def test_a_backup_parses_a_transaction_it_already_holds_once() -> None:
    net = Network(make_config(4, batch_max=5))
    txs = make_txs(5)
    net.submit_all(txs, to=range(4))
    net.run(100)
    _agree(net, 5)
    (digest,) = [d for d, ids in net.replicas[1].log.batch_ids.items() if ids]
    # the pre-prepare came as bytes; its transactions are the objects the requests made
    assert all(a is b for a, b in zip(net.replicas[1].log.batches[digest].txs, txs, strict=True))


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": True},  # equal to 1 in Python, another value on the wire
        {"body": {"key": "k", "by": True}},
        {"body": {"key": "k", "by": 1, "x": None}},
    ],
)
def test_a_held_transaction_is_not_taken_for_a_different_wire_form(
    change: dict[str, Any],
) -> None:
    net = Network(make_config(4))
    (tx,) = make_txs(1, start=1)
    net.replicas[1].on_request(tx, net.now)  # backup 1 holds the real one
    wire = {**tx.to_wire(), **change}  # same signature, different transaction
    try:
        batch = Batch(5, (SignedTx.from_wire(wire),), (wire,))
    except ValueError:  # a wire form no parser accepts: build the batch around it
        batch = Batch(5, (tx,), (wire,))
    pp = sign(PrePrepare(0, 1, batch.digest(), 0), Signer(0, replica_key(0)))
    net.inject(1, PrePrepare(0, 1, pp.digest, 0, pp.sig, batch).to_wire(), 0)
    metrics = net.replicas[1].metrics
    assert metrics.get("malformed", 0) + metrics.get("rejected_bad_batch", 0) == 1
    assert 1 not in net.replicas[1].log.slots or net.replicas[1].log.slots[1].pp is None


def test_a_request_only_backups_have_is_relayed_to_the_primary() -> None:
    # e.g. the client's link to the primary is down: the backups forward it after half a view
    # change timeout, and the primary orders it before anyone times it out
    net = Network(make_config(4, view_change_timeout_ms=1000))
    txs = make_txs(3)
    net.submit_all(txs, to=range(1, 4))
    net.run(490)
    assert not any(net.committed(tx.tx_id) for tx in txs)
    assert all("requests_relayed" not in r.metrics for r in net.replicas)
    net.run(200)
    assert net.all_committed(txs)
    assert [r.view for r in net.replicas] == [0] * 4  # no view change was needed
    assert all(r.metrics["requests_relayed"] == 3 for r in net.replicas[1:])
    assert net.replicas[0].metrics["duplicate_tx"] == 6  # the two later copies of each
    _agree(net, 3)
    net.run(2000)  # nothing waits any more: no relay again, no timeout
    assert all(r.metrics["requests_relayed"] == 3 for r in net.replicas[1:])
    assert all("timeouts" not in r.metrics for r in net.replicas)


def test_requests_are_relayed_once_then_the_view_change_takes_over() -> None:
    # the primary never gets them (its relayed copies are lost too): one relay per backup, no
    # copies every half timeout after, and the next primary orders them
    def lose_requests_to_0(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any] | None:
        return None if wire["t"] == "request" and dst == 0 else wire

    net = Network(make_config(4, view_change_timeout_ms=1000), tamper=lose_requests_to_0)
    txs = make_txs(3)
    net.submit_all(txs, to=range(1, 4))
    net.run(990)
    assert all(r.metrics["requests_relayed"] == 3 for r in net.replicas[1:])
    net.run(1500)
    assert net.all_committed(txs)
    assert all(r.view == 1 for r in net.replicas)
    assert all(r.metrics["requests_relayed"] == 3 for r in net.replicas[2:])
    _agree(net, 3)


def test_a_request_the_primary_keeps_losing_is_not_relayed_over_and_over() -> None:
    # the cluster makes progress (the view-change timer restarts with each block) while the
    # primary never gets one request: each backup relays it once, not every half timeout
    (lost,) = make_txs(1, key="lost")

    def lose_it(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any] | None:
        lost_sig = lost.signature.hex()
        return None if wire["t"] == "request" and wire["tx"]["sig"] == lost_sig else wire

    net = Network(make_config(4, view_change_timeout_ms=1000), tamper=lose_it)
    net.submit(lost, to=range(1, 4))
    for k, tx in enumerate(make_txs(30, start=100)):
        net.submit(tx)
        net.run(200)
        assert all(r.metrics.get("requests_relayed", 0) == (k >= 2) for r in net.replicas[1:])
    assert all(r.view == 0 for r in net.replicas)


def test_resent_executed_transaction_is_answered_not_reapplied() -> None:
    net = Network(make_config(4))
    txs = make_txs(5)
    net.submit_all(txs)
    net.run(200)
    before = net.replicas[0].metrics.get("duplicate_tx", 0)
    actions = net.replicas[0].on_request(txs[2].to_wire(), net.now)
    assert [type(a) for a in actions] == [ReplyTo]
    reply = actions[0].reply  # type: ignore[union-attr]
    assert reply.tx_id == txs[2].tx_id and reply.receipt["code"] == "OK"
    assert net.replicas[0].metrics["duplicate_tx"] == before + 1
    for tx in txs:  # client retries everything, to everyone
        net.submit(tx, to=range(4))
    net.run(200)
    _agree(net, 5)
    assert net.replicas[0].last_executed == 1


def test_an_executed_block_is_answered_by_one_action_with_every_reply() -> None:
    net = Network(make_config(4, batch_max=100, batch_delay_ms=0))
    txs = make_txs(3)
    seen: list[BlockReplies] = []
    original = net._perform

    def watch(src: int, actions: list[Any]) -> None:
        seen.extend(a for a in actions if isinstance(a, BlockReplies) and src == 1)
        original(src, actions)

    net._perform = watch  # type: ignore[method-assign]
    net.submit_all(txs)
    net.run(200)
    assert sum(len(b.tx_ids) for b in seen) == 3
    for block in seen:
        for one, (tx_id, receipt) in zip(
            block.replies(), zip(block.tx_ids, block.receipts, strict=True), strict=True
        ):
            assert one.tx_id == tx_id and one.reply.replica == 1 and one.reply.receipt == receipt
            # the node's wire form without a Reply object is the Reply's wire form
            assert Reply.wire(block.view, tx_id, block.height, receipt, 1) == one.reply.to_wire()
    assert {t for b in seen for t in b.tx_ids} == {tx.tx_id for tx in txs}


def test_a_frame_of_requests_answers_the_executed_and_orders_the_new() -> None:
    net = Network(make_config(4, batch_max=100, batch_delay_ms=0))
    old = make_txs(3)
    net.submit_all(old)
    net.run(200)
    new = make_txs(5)[3:]
    primary = net.replicas[0]
    actions = primary.on_requests([old[1], new[0], old[2], new[1]], net.now)
    replied = [a.tx_id for a in actions if isinstance(a, ReplyTo)]
    assert replied == [old[1].tx_id, old[2].tx_id]
    proposed = [a.msg for a in actions if isinstance(a, Broadcast)]
    assert [tx.tx_id for pp in proposed for tx in pp.batch.txs] == [  # type: ignore[union-attr]
        new[0].tx_id,
        new[1].tx_id,
    ]
    assert primary.on_requests([], net.now) == []


def test_duplicate_inside_the_window_is_not_ordered_twice() -> None:
    net = Network(make_config(4, batch_max=100, batch_delay_ms=50))
    txs = make_txs(3)
    for tx in txs + txs:
        net.submit(tx)
    net.run(300)
    _agree(net, 3)
    assert sum(len(b.txs) for b in net.executors[0].blocks) == 3


def test_forged_client_transactions_are_dropped_and_counted() -> None:
    net = Network(make_config(4))
    good = make_txs(2)
    wire = good[0].to_wire()
    wire["body"] = {"key": "k", "by": 1000}
    forged = SignedTx.from_wire(wire)
    net.submit(forged)
    net.replicas[0].on_request({"kind": "kv.add"}, net.now)
    net.submit_all(good)
    net.run(200)
    assert net.replicas[0].metrics["rejected_bad_tx"] == 2
    assert not net.committed(forged.tx_id)
    _agree(net, 2)


def test_backups_reject_a_batch_with_a_forged_transaction_and_change_view() -> None:
    net = Network(make_config(4, view_change_timeout_ms=100))
    forged_wire = make_txs(1, start=50)[0].to_wire()
    forged_wire["nonce"] = 51
    batch = Batch.from_txs(5, [SignedTx.from_wire(forged_wire)])
    pp = sign(PrePrepare(0, 1, batch.digest(), 0), Signer(0, replica_key(0)))
    full = PrePrepare(0, 1, pp.digest, 0, pp.sig, batch)
    for b in (1, 2, 3):
        net.inject(b, full.to_wire(), 0)
        assert net.replicas[b].metrics["rejected_bad_batch"] == 1
    net.run(400)
    assert all(r.view == 1 and r.active for r in net.replicas[1:])
    txs = make_txs(4)
    net.submit_all(txs)
    net.run(200)
    assert net.all_committed(txs)
    _agree(net, 4)


def _with_sig_caches(net: Network) -> list[SigCache]:
    """Each replica of ``net`` booted again with a signature cache as its transaction checker,
    as ``ReplicaNode`` wires it; the caches, by replica."""
    caches = [SigCache() for _ in net.replicas]
    for i, cache in enumerate(caches):
        net.replicas[i] = Replica(
            net.config, i, replica_key(i), net.executors[i], now_ms=0, tx_verifier=cache.check_many
        )
    return caches


def test_a_checked_transaction_with_its_signature_replaced_is_checked_again() -> None:
    """The backups verified a client's transaction when it reached them (the node's signature
    cache, keyed by id); a faulty primary proposes it with the signature replaced by zeros.
    The id hashes the unsigned payload only, so a cache keyed by id alone took the old verdict
    and the backups committed a transaction whose signature does not verify."""
    net = Network(make_config(4, view_change_timeout_ms=100), wire=True)
    caches = _with_sig_caches(net)
    (tx,) = make_txs(1)
    for b in (1, 2, 3):  # what the node does with a client request: check it, hand it over
        assert caches[b].check(tx, tx.tx_id)
        net.replicas[b].on_request(tx, 0, verified=True)
    forged = dict(tx.to_wire(), sig="00" * 64)
    batch = Batch.from_wire({"ts": 1, "txs": [forged]})
    pp = sign(PrePrepare(0, 1, batch.digest(), 0), Signer(0, replica_key(0)))
    for b in (1, 2, 3):
        net.inject(b, PrePrepare(0, 1, pp.digest, 0, pp.sig, batch).to_wire(), 0)
        assert net.replicas[b].metrics["rejected_bad_batch"] == 1
    net.run(400)  # the primary is replaced and the real transaction commits
    assert net.committed(tx.tx_id)
    for b in (1, 2, 3):
        (block,) = net.executors[b].blocks
        assert SignedTx.from_wire(block.txs[0]).verify()
    _agree(net, 1)


def test_a_batch_stamped_far_in_the_future_is_refused_and_the_primary_replaced() -> None:
    """Blocks carry the contract's clock and later primaries stamp max(last stamp, now): one
    accepted stamp of 2**62 would pin every later block there (settlement's TOO_EARLY could
    never fire again)."""
    net = Network(make_config(4, view_change_timeout_ms=100))
    (tx,) = make_txs(1)
    batch = Batch.from_wire({"ts": 2**62, "txs": [tx.to_wire()]})
    pp = sign(PrePrepare(0, 1, batch.digest(), 0), Signer(0, replica_key(0)))
    for b in (1, 2, 3):
        net.inject(b, PrePrepare(0, 1, pp.digest, 0, pp.sig, batch).to_wire(), 0)
        assert net.replicas[b].metrics["rejected_timestamp"] == 1
    net.crash(0)
    net.submit(tx, to=(1, 2, 3))
    net.run(2000)
    assert net.committed(tx.tx_id)
    for b in (1, 2, 3):
        assert all(block.timestamp_ms <= net.now for block in net.executors[b].blocks)
        assert net.replicas[b].view >= 1


def _prepare(view: int, seq: int, digest: bytes, replica: int) -> Prepare:
    return sign(Prepare(view, seq, digest, replica), Signer(replica, replica_key(replica)))


def test_bad_protocol_messages_are_counted_never_fatal() -> None:
    net = Network(make_config(4, checkpoint_interval=4, log_window=8))
    txs = make_txs(3)
    net.submit_all(txs)
    net.run(100)
    r = net.replicas[1]
    d = net.executors[1].blocks[0].batch_digest()

    def hit(msg: Any, sender: int) -> None:
        net.inject(1, msg, sender)

    hit({"t": "prepare", "v": 0}, 2)
    hit({"t": "nonsense"}, 2)
    hit([1, 2, 3], 2)  # type: ignore[arg-type]
    good = _prepare(0, 2, d, 2)
    hit(good.to_wire(), 3)  # signer is 2, link says 3
    hit(good.to_wire(), 9)  # unknown sender
    forged = Prepare(0, 2, d, 2, bytes(64))
    hit(forged.to_wire(), 2)
    corrupted = good.to_wire()
    corrupted["d"] = "00" * 32
    hit(corrupted, 2)
    hit(_prepare(0, 100, d, 2).to_wire(), 2)  # beyond the high watermark
    hit(_prepare(5, 2, d, 2).to_wire(), 2)  # a view not entered: buffered, not acted on
    hit(good.to_wire(), 2)
    hit(good.to_wire(), 2)  # replayed
    commit = sign(Commit(0, 1, d, 2), Signer(2, replica_key(2)))
    hit(commit.to_wire(), 2)  # replay of an old commit: already executed, harmless
    m = r.metrics
    assert m["malformed"] == 3
    assert m["rejected_sender_mismatch"] == 1
    assert m["rejected_unknown_sender"] == 1
    assert m["rejected_bad_sig"] == 2
    assert m["rejected_out_of_window"] == 1
    assert m["buffered_future"] == 1
    assert m["duplicate_msg"] >= 2
    net.run(100)
    for tx in make_txs(3, start=3):
        net.submit(tx)
    net.run(200)
    _agree(net, 6)
    assert all(rep.view == 0 for rep in net.replicas)


def test_old_view_and_non_primary_pre_prepares_are_rejected() -> None:
    net = Network(make_config(4, view_change_timeout_ms=50))
    net.crash(0)
    txs = make_txs(2)
    net.submit(txs[0], to=[1, 2, 3])
    net.run(400)
    assert all(r.view == 1 for r in net.replicas[1:])
    net.restart(0)
    r = net.replicas[2]
    batch = Batch.from_txs(1, txs[1:])
    for view, signer in ((0, 0), (1, 3)):
        pp = sign(PrePrepare(view, 2, batch.digest(), signer), Signer(signer, replica_key(signer)))
        net.inject(2, PrePrepare(view, 2, pp.digest, signer, pp.sig, batch).to_wire(), signer)
    assert r.metrics["rejected_wrong_view"] >= 1
    assert r.metrics["rejected_not_primary"] == 1
    net.run(1500)
    _agree(net, 1)
    assert net.replicas[0].view == 1  # the restarted replica learnt the view from its peers


def test_checkpoints_garbage_collect_and_bound_the_log() -> None:
    net = Network(make_config(4, checkpoint_interval=4, log_window=8, batch_max=2))
    txs = make_txs(100)
    net.submit_all(txs)
    net.run(1000)
    _agree(net, 100)
    for r in net.replicas:
        assert r.last_executed == 50 and r.stable_seq == 48
        assert max(r.log.slots, default=49) > 48 and len(r.log.slots) <= 8
        assert len(r.log.batches) <= 9 and min(r.checkpoints.votes, default=48) >= 48
        assert 6 <= r.metrics["checkpoints_stable"] <= 12  # a later one may subsume one
        assert not r.batcher.in_log and not r.batcher.pending and not r.batcher.queue
    saved = net.executors[0].checkpoint
    assert saved is not None and saved[0] == 48 and len(saved[2]) == 3


def test_watermarks_stop_the_primary_until_a_checkpoint_is_stable() -> None:
    def no_checkpoints(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any] | None:
        return None if wire["t"] == "checkpoint" and blocked else wire

    blocked = True
    net = Network(
        make_config(
            4, checkpoint_interval=4, log_window=8, batch_max=1, view_change_timeout_ms=10_000
        ),
        tamper=no_checkpoints,
    )
    txs = make_txs(20)
    net.submit_all(txs)
    net.run(300)
    assert [r.last_executed for r in net.replicas] == [8] * 4  # high watermark = 0 + L
    blocked = False
    net.run(600)  # re-sent with the next status gossip
    assert [r.last_executed for r in net.replicas] != [8] * 4
    net.run(1500)  # checkpoints resume at 12, 16, 20: the window slides
    _agree(net, 20)


def test_client_signature_can_be_checked_by_the_io_layer() -> None:
    net = Network(make_config(4))
    (tx,) = make_txs(1, client=1)
    net.replicas[0].on_request(tx, net.now, verified=True)
    acts = net.replicas[0].on_tick(net.now + 10)
    assert any(isinstance(a, Broadcast) and isinstance(a.msg, PrePrepare) for a in acts)


def test_restart_resumes_from_the_saved_checkpoint() -> None:
    net = Network(make_config(4, checkpoint_interval=4, log_window=8, batch_max=2))
    txs = make_txs(20)
    net.submit_all(txs)
    net.run(300)
    saved = net.executors[1].checkpoint
    assert saved is not None and saved[0] == 8
    net.restart(1)  # a new core over the same executor (process restart, disk kept)
    fresh = net.replicas[1]
    assert (fresh.stable_seq, fresh.last_executed) == (8, 10)
    assert [c.seq for c in fresh.checkpoints.stable_proof] == [8, 8, 8]
    more = make_txs(10, start=20)
    net.submit_all(more)
    net.run(300)
    assert fresh.last_executed == 15 and fresh.stable_seq == 12
    _agree(net, 30)


@pytest.mark.parametrize("forged_at", [None, 0, 41, 79])
def test_a_forged_transaction_among_many_in_a_pre_prepare_is_found(forged_at: int | None) -> None:
    """Backups check a pre-prepare's transactions together (one batch check when the native
    verifier is built); one forged signature anywhere in the batch still rejects it."""
    net = Network(make_config(4, batch_max=100))
    caches = _with_sig_caches(net)
    wires = [tx.to_wire() for tx in make_txs(80)]
    if forged_at is not None:
        other = make_txs(1, start=500)[0]
        wires[forged_at] = dict(wires[forged_at], sig=other.signature.hex())
    batch = Batch.from_wire({"ts": 1, "txs": wires})
    pp = sign(PrePrepare(0, 1, batch.digest(), 0), Signer(0, replica_key(0)))
    for b in (1, 2, 3):
        net.inject(b, PrePrepare(0, 1, pp.digest, 0, pp.sig, batch).to_wire(), 0)
        metrics = net.replicas[b].metrics
        assert metrics["tx_signature_checks"] == 80 and caches[b].verified == 80
        if forged_at is None:
            assert "rejected_bad_batch" not in metrics
            assert net.replicas[b].log.slots[1].digest == pp.digest
        else:
            assert metrics["rejected_bad_batch"] == 1
            assert caches[b].check_many([batch.txs[forged_at]], [batch.txs[forged_at].tx_id]) == [
                False
            ]


def test_io_layer_signature_cache_is_used_for_pre_prepares() -> None:
    net = Network(make_config(4, batch_max=10))
    checked: list[list[str]] = [[] for _ in range(4)]
    for i, replica in enumerate(net.replicas):

        def verifier(
            txs: Sequence[SignedTx], tx_ids: Sequence[str], seen: list[str] = checked[i]
        ) -> list[bool]:
            seen.extend(tx_ids)
            return [tx.verify() for tx in txs]

        replica.tx_verifier = verifier
    txs = make_txs(10)
    net.submit_all(txs)
    net.run(100)
    _agree(net, 10)
    ids = [tx.tx_id for tx in txs]
    assert checked[0] == ids  # the primary, on request
    assert all(checked[b] == ids for b in (1, 2, 3))  # backups, in the pre-prepare


def test_a_batch_encodes_once_to_what_its_digest_and_the_journal_take() -> None:
    from ledger.encoding import canonical
    from ledger.pbft.block import batch_digest

    batch = Batch.from_txs(1234, make_txs(5))
    assert batch.encoded() == canonical(batch.to_wire())
    assert batch.digest() == batch_digest(batch.timestamp_ms, batch.wires)
    assert batch.encoded() is batch.encoded()  # computed once
    parsed = Batch.from_wire(batch.to_wire())
    assert parsed == batch and parsed.digest() == batch.digest()


def test_a_block_hashes_the_same_with_or_without_the_digest_it_carries() -> None:
    from ledger.pbft.block import Block

    batch = Batch.from_txs(99, make_txs(4))
    bare = Block(7, batch.timestamp_ms, b"\x01" * 32, batch.wires)
    carried = Block(7, batch.timestamp_ms, b"\x01" * 32, batch.wires, digest=batch.digest())
    assert carried.hash() == bare.hash() == bare.hash(batch.digest())
    assert carried == bare  # derived, not part of the block


@pytest.mark.parametrize("hold", [True, False])
def test_a_pre_prepare_above_a_lagging_window_is_taken_when_the_window_moves(hold: bool) -> None:
    """Replicas 2 and 3 get no CHECKPOINT (nor STATUS or BLOCKS, which carry a stable
    checkpoint's proof) for a while, so their windows stay at (0, 8] while the primary's moves
    on and it proposes sequence numbers 9 and 10. Held, those pre-prepares are taken once 2 and
    3 collect the checkpoint (status ticks send its proof) and the batches commit in view 0.
    Dropped (the behaviour before), f+1 replicas lack them, the slots cannot prepare, and only a
    view change gets the cluster going again. The others' votes for 9 and 10 are held as well,
    so the last of the two to catch up commits them itself, without fetching the blocks."""

    def starve(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any] | None:
        return None if wire["t"] in ("checkpoint", "status", "blocks") and dst in (2, 3) else wire

    net = Network(make_config(4, checkpoint_interval=4, log_window=8, batch_max=2), tamper=starve)
    if not hold:
        for replica in net.replicas:
            replica.log.hold_above_window = lambda pp: False  # type: ignore[method-assign]
            replica.log.hold_vote_above_window = lambda vote: False  # type: ignore[method-assign]
    first = make_txs(16)
    net.submit_all(first)
    net.run(200)
    assert [r.last_executed for r in net.replicas] == [8, 8, 8, 8]
    assert [r.stable_seq for r in net.replicas] == [8, 8, 0, 0]
    more = make_txs(4, start=16)
    net.submit_all(more)
    net.run(200)
    assert [r.last_executed for r in net.replicas] == [8, 8, 8, 8]  # 9 and 10 cannot prepare
    held = [r.metrics.get("held_above_window", 0) for r in net.replicas]
    if hold:  # the two pre-prepares, and the votes of the replicas that took them
        assert held[:2] == [0, 0] and held[2] >= 2 and held[3] >= 2
    else:
        assert held == [0, 0, 0, 0]
    net.tamper = None
    net.run(1500)  # status ticks send the checkpoint proofs; 2 and 3 catch up in turn
    at_10 = sum(r.last_executed == 10 for r in net.replicas)
    if hold:  # no view change, and nothing dropped that state transfer must make up for
        assert at_10 == 4 and all(r.view == 0 for r in net.replicas)
        assert all(r.metrics.get("rejected_out_of_window", 0) == 0 for r in net.replicas)
    else:
        assert at_10 == 0 or all(r.view >= 1 for r in net.replicas)  # only a view change helps
    net.run(3000)  # either way, everything commits in the end
    assert all(net.committed(tx.tx_id) for tx in first + more)
    assert divergence(net) == []
