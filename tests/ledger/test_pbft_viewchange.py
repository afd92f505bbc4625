"""View changes under attack: forged view-change proofs, a new primary that tries to drop a
prepared batch, and hostile messages of every type fed to a running replica."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.pbft.block import NULL_DIGEST
from ledger.pbft.messages import NewView, PreparedProof, PrePrepare, ViewChange, parse, sign
from ledger.pbft.signing import Signer
from ledger.pbft.simulation import (
    Network,
    divergence,
    make_config,
    make_txs,
    replica_key,
)


def _stalled_view_zero(extra_drop: Any = None) -> Network:
    """A cluster whose first batch is prepared everywhere but committed nowhere, primary 0
    crashed: the next primary must carry that batch into view 1."""

    def tamper(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any] | None:
        if wire["t"] == "commit" and wire["v"] == 0:
            return None
        if extra_drop is not None and extra_drop(src, dst, wire):
            return None
        return wire

    net = Network(make_config(4, view_change_timeout_ms=200), tamper=tamper)
    for tx in make_txs(5):
        net.submit(tx)
    net.run(50)
    net.crash(0)
    return net


def test_new_primary_cannot_drop_a_prepared_batch() -> None:
    # Replica 1 (primary of view 1) is byzantine: its honest NEW-VIEW is lost, and it sends
    # one whose O replaces the prepared batch by a null request.
    net = _stalled_view_zero(lambda src, dst, w: w["t"] == "new-view" and src == 1)
    while not (net.replicas[1].views.new_view_msg and net.replicas[2].view == 1):
        net.run(5)
    honest = net.replicas[1].views.new_view_msg
    assert honest is not None and honest.pre_prepares[0].digest != NULL_DIGEST
    lying = sign(
        NewView(
            1,
            honest.refs,
            (sign(PrePrepare(1, 1, NULL_DIGEST, 1), Signer(1, replica_key(1))),),
            1,
            view_changes=honest.view_changes,
        ),
        Signer(1, replica_key(1)),
    )
    for dst in (2, 3):
        net.inject(dst, lying.to_wire(), 1)
        assert net.replicas[dst].metrics["rejected_bad_new_view"] == 1
        assert not net.replicas[dst].active
    net.run(3000)  # 2 and 3 give up on view 1, replica 1 joins them in view 2
    assert all(r.view == 2 and r.active for r in net.replicas[1:])
    txs = make_txs(5)
    assert net.all_committed(txs)
    assert all(net.executors[i].blocks[0].ids() == tuple(t.tx_id for t in txs) for i in (1, 2, 3))
    assert divergence(net) == []


def test_forged_view_change_proofs_are_rejected() -> None:
    blocking = [True]
    net = _stalled_view_zero(
        lambda src, dst, w: blocking[0] and w["t"] == "view-change" and src == 3
    )
    net.run(30)
    target = net.replicas[2]
    slot = net.replicas[3].log.slots[1]
    assert slot.proof is not None
    proof = slot.proof
    s3 = Signer(3, replica_key(3))

    def vc(prepared: tuple[PreparedProof, ...], view: int = 1) -> dict[str, Any]:
        return sign(ViewChange(view, 0, (), prepared, 3), s3).to_wire()

    before = target.metrics.get("rejected_bad_view_change", 0)
    net.inject(2, vc((PreparedProof(proof.pre_prepare, proof.prepares[:1]),)), 3)  # too few
    fake_pp = sign(PrePrepare(0, 1, NULL_DIGEST, 3), s3)  # not the primary of view 0
    net.inject(2, vc((PreparedProof(fake_pp, proof.prepares),)), 3)
    later = PrePrepare(1, 1, proof.pre_prepare.digest, 1)  # claims a view >= the new one
    net.inject(2, vc((PreparedProof(sign(later, Signer(1, replica_key(1))), proof.prepares),)), 3)
    net.inject(2, vc(()).__or__({"n": 4}), 3)  # a stable checkpoint without proof
    assert target.metrics["rejected_bad_view_change"] - before == 4
    assert 3 not in target.views.by_replica
    blocking[0] = False  # replica 3's real view-change gets through now (it re-sends it)
    net.run(2000)
    assert divergence(net) == []
    assert all(net.committed(tx.tx_id) for tx in make_txs(5))


def _recorded_traffic() -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}

    def record(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any]:
        seen.setdefault(wire["t"], copy.deepcopy(wire))
        return wire

    net = Network(
        make_config(
            4, checkpoint_interval=2, log_window=4, batch_max=2, view_change_timeout_ms=100
        ),
        tamper=record,
    )
    for tx in make_txs(8):
        net.submit(tx)
    net.run(200)
    net.crash(0)
    for tx in make_txs(4, start=8):
        net.submit(tx, to=[1, 2, 3])
    # one the new primary never got: relayed to it in view 1
    net.submit(make_txs(1, start=12)[0], to=[2, 3])
    net.run(1500)
    net.restart(0, lose_state=True)
    net.run(1500)
    # batches by id, and a backup that lacks a request fetching the pre-prepare in full
    by_id = Network(make_config(4), tamper=record)
    for replica in by_id.replicas:
        replica.pre_prepare_ids = True
    seen.pop("pre-prepare", None)
    by_id.submit_all(make_txs(3), to=[0, 1, 2])
    by_id.run(200)
    return list(seen.values())


TRAFFIC = _recorded_traffic()
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**64) | st.text(max_size=66),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=8,
)


def test_recorded_traffic_covers_every_replica_message() -> None:
    kinds = {w["t"] for w in TRAFFIC}
    assert {
        "pre-prepare",
        "prepare",
        "commit",
        "checkpoint",
        "view-change",
        "new-view",
        "status",
        "fetch",
        "blocks",
        "request",
        "fetch-pp",
    } <= kinds
    assert any("ids" in w for w in TRAFFIC if w["t"] == "pre-prepare")
    for wire in TRAFFIC:
        parse(wire)


@settings(max_examples=100, deadline=None)
@given(
    index=st.integers(0, 100),
    steps=st.lists(st.integers(0, 2**16), min_size=1, max_size=4),
    replacement=values,
    sender=st.integers(0, 5),
)
def test_hostile_messages_never_break_a_running_replica(
    index: int, steps: list[int], replacement: Any, sender: int
) -> None:
    net = Network(make_config(4, checkpoint_interval=2, log_window=4, batch_max=2), wire=False)
    for tx in make_txs(4):
        net.submit(tx)
    net.run(60)
    wire = copy.deepcopy(TRAFFIC[index % len(TRAFFIC)])
    node: Any = wire
    for step in steps:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[step % len(keys)]
        if isinstance(node[key], dict | list) and node[key] and step % 3:
            node = node[key]
            continue
        node[key] = replacement
        break
    net.inject(1, wire, sender)  # must not raise, whatever it is
    for tx in make_txs(4, start=4):
        net.submit(tx)
    net.run(300)
    assert divergence(net) == []
    assert all(net.committed(tx.tx_id) for tx in make_txs(8))


def test_view_change_carries_only_unexecuted_batches_and_laggers_fetch_the_rest() -> None:
    # Replica 3 never sees view 0's pre-prepares or commits; 0, 1, 2 execute 3 batches.
    def starve_3(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any] | None:
        if dst == 3 and wire["t"] in ("pre-prepare", "commit") and wire["v"] == 0:
            return None
        return wire

    net = Network(
        make_config(4, view_change_timeout_ms=200, batch_max=5, status_interval_ms=10_000),
        tamper=starve_3,
    )
    txs = make_txs(15)
    net.submit_all(txs)
    net.run(100)
    assert [r.last_executed for r in net.replicas] == [3, 3, 3, 0]
    net.crash(0)
    more = make_txs(5, start=15)
    net.submit_all(more, to=[1, 2, 3])
    net.run(1500)
    nv = net.replicas[1].views.new_view_msg
    assert nv is not None and [pp.seq for pp in nv.pre_prepares] == [1, 2, 3]
    assert not nv.batches  # all three executed by the new primary: none attached
    vc_2 = nv.view_changes[[vc.replica for vc in nv.view_changes].index(2)]
    assert len(vc_2.prepared) == 3
    lagger = net.replicas[3]
    assert lagger.view == 1 and lagger.metrics["blocks_fetched"] >= 3
    assert all(net.committed(tx.tx_id) for tx in txs + more)
    assert divergence(net) == []
    assert len({net.executors[i].state_digest() for i in (1, 2, 3)}) == 1
