"""PRE-PREPAREs that name their batch by transaction ids (``pre_prepare_ids``), for clients
that send every request to every replica: the backups rebuild the batch from what they hold,
fetch the pre-prepare in full when they lack a transaction, and refuse ids that do not make
the batch the primary signed."""

from __future__ import annotations

from typing import Any

from ledger.encoding import canonical
from ledger.pbft.block import Batch
from ledger.pbft.messages import BatchIds, FetchPrePrepare, PrePrepare, sign
from ledger.pbft.signing import Signer
from ledger.pbft.simulation import Network, divergence, make_config, make_txs, replica_key


def _network(**tuning: Any) -> tuple[Network, dict[tuple[int, str], int]]:
    sent: dict[tuple[int, str], int] = {}  # (sender, kind) -> bytes

    def count(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any]:
        key = (src, wire["t"])
        sent[key] = sent.get(key, 0) + len(canonical(wire))
        return wire

    network = Network(make_config(4, batch_max=50, **tuning), tamper=count)
    for replica in network.replicas:
        replica.pre_prepare_ids = True
    return network, sent


def test_backups_holding_the_requests_rebuild_the_batch_from_ids() -> None:
    network, sent = _network()
    txs = make_txs(200)
    network.submit_all(txs, range(4))  # every request to every replica
    while not network.all_committed(txs):
        network.run(20)
        assert network.now < 10_000
    network.run(200)
    assert divergence(network) == []
    assert all(r.last_executed == 4 and r.metrics["executed_txs"] == 200 for r in network.replicas)
    assert not any(r.metrics.get("pre_prepares_fetched") for r in network.replicas)
    # 3 backups x 200 transactions: about 66 bytes each named, against about 290 in full
    assert sent[(0, "pre-prepare")] < 3 * 200 * 80


def test_a_backup_without_a_request_fetches_the_pre_prepare_in_full_once() -> None:
    network, _ = _network()
    txs = make_txs(10)
    network.submit_all(txs, range(3))  # replica 3 never gets them from the client
    while not network.all_committed(txs):
        network.run(20)
        assert network.now < 10_000
    network.run(200)
    three = network.replicas[3]
    assert three.metrics["pre_prepares_fetched"] == 1
    assert "pre_prepares_fetched" not in network.replicas[1].metrics
    assert three.last_executed == 1 and divergence(network) == []
    # the primary answered once; a second fetch for the same slot is not answered again
    primary = network.replicas[0]
    assert primary.log.slots[1].served == {3}
    again = network.inject(0, sign(FetchPrePrepare(0, 1, 3), Signer(3, replica_key(3))), 3)
    assert again == [] and primary.metrics["stale_fetch"] == 1


def test_ids_that_do_not_rebuild_the_signed_batch_are_refused() -> None:
    network, _ = _network(view_change_timeout_ms=500)
    signed_for, named = make_txs(3), make_txs(3, start=3)
    network.submit_all(signed_for + named, range(1, 4))  # the backups hold all six
    batch = Batch.from_txs(1, signed_for)
    pp = sign(PrePrepare(0, 1, batch.digest(), 0), Signer(0, replica_key(0)))
    lying = PrePrepare(0, 1, pp.digest, 0, pp.sig, ids=BatchIds(1, tuple(t.tx_id for t in named)))
    for dst in (1, 2, 3):
        network.inject(dst, lying.to_wire(), 0)
        replica = network.replicas[dst]
        assert replica.metrics["rejected_bad_digest"] == 1
        assert 1 not in replica.log.slots or replica.log.slots[1].pp is None
