"""A primary killed under load on thin links: every transaction in flight is committed exactly
once, in the first view change (the simulator's links carry ``rate`` bytes per ms each, as the
link shaper's do).

At n = 31 over 1 Mbit/s the NEW-VIEW used to carry 2f+1 whole VIEW-CHANGEs, each with a
window of prepared certificates: about 1 MB, 8 s on the link, longer than the backups waited
for it, so they gave up on the view, and again on the next. It now names the view-changes by
digest (the backups received them all); here the same at n = 7 on a link of 100 kbit/s.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from ledger.encoding import canonical
from ledger.pbft.messages import ViewChange, sign
from ledger.pbft.signing import Signer
from ledger.pbft.simulation import Network, divergence, make_config, make_txs, replica_key
from ledger.tx import SignedTx


def _killed_under_load(n: int, **net: Any) -> tuple[Network, list[SignedTx], list[int]]:
    """``n`` replicas commit 12 batches of 20 through their primary, which is then killed; the
    clients give the 40 transactions in flight to every other replica (as ``LedgerClient``
    does when its connection to the primary drops). Returns the network, every transaction
    and the sizes of the NEW-VIEWs sent."""
    sizes: list[int] = []

    def measure(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any]:
        if wire["t"] == "new-view":
            sizes.append(len(canonical(wire)))
        return wire

    config = make_config(n, view_change_timeout_ms=1000, batch_max=20)
    network = Network(config, delay=(50, 60), tamper=measure, **net)
    txs = make_txs(280)
    for k in range(0, 240, 20):
        network.submit_all(txs[k : k + 20])
        network.run(100)
    while not network.all_committed(txs[:240]):
        network.run(100)
        assert network.now < 120_000
    network.crash(0)
    network.submit_all(txs[240:], range(1, n))
    return network, txs, sizes


def _settle(network: Network, txs: list[SignedTx], limit_ms: int) -> None:
    """Run until the client saw every transaction committed and every live replica executed
    as far as the others (or ``limit_ms`` passed)."""
    start = network.now
    while network.now < start + limit_ms and not (
        network.all_committed(txs)
        and len({network.replicas[i].last_executed for i in network.correct()}) == 1
    ):
        network.run(100)


def test_a_primary_killed_under_load_on_a_thin_link_is_replaced_in_one_view_change() -> None:
    network, txs, sizes = _killed_under_load(7, rate=60)  # 60 bytes/ms: about 500 kbit/s
    killed_at = network.now
    while not network.all_committed(txs):
        network.run(50)
        assert network.now < killed_at + 60_000
    # simulated time: 1750 ms (a 3.5 KB NEW-VIEW); before, 4000 ms through view 2 (78 KB)
    assert network.now - killed_at < 2_500
    _settle(network, txs, 60_000)
    live = network.correct()
    assert {network.replicas[i].view for i in live} == {1}  # one view change, not a series
    assert sizes and max(sizes) < 8_000  # references, not 5 view-changes of 12 proofs each
    assert divergence(network, live) == []
    for i in live:  # every transaction exactly once in every live replica's chain
        ids = Counter(t for block in network.executors[i].blocks for t in block.ids())
        assert set(ids) == {tx.tx_id for tx in txs} and set(ids.values()) == {1}


def test_the_new_view_without_its_view_changes_is_completed_from_the_primary() -> None:
    """A backup that did not receive a VIEW-CHANGE the NEW-VIEW names (its link from that
    sender is cut) holds the NEW-VIEW and asks the primary for it with its view-changes."""
    network, txs, _ = _killed_under_load(7)
    network.cut.add(frozenset((2, 3)))  # replica 3 never hears replica 2's view-change
    _settle(network, txs, 30_000)
    assert network.all_committed(txs)
    three = network.replicas[3]
    assert three.view == 1 and three.active
    assert three.metrics["new_view_incomplete"] >= 1
    assert divergence(network, network.correct()) == []


def test_a_new_view_whose_attached_view_changes_do_not_match_its_references_is_refused() -> None:
    network, _, _ = _killed_under_load(7)
    network.tamper = lambda src, dst, wire: None if wire["t"] == "new-view" else wire
    while network.replicas[1].views.new_view_msg is None:
        network.run(10)
        assert network.now < 60_000
    nv = network.replicas[1].views.new_view_msg
    assert nv is not None and len(nv.view_changes) == len(nv.refs) == 5
    three = network.replicas[3]
    three.views.by_replica.clear()  # holds none of them: only the attachments can complete it
    three.views.digests.clear()
    first = nv.view_changes[0]
    for vcs in (
        (nv.view_changes[1], *nv.view_changes[1:]),  # one sender twice
        (replace(first, prepared=first.prepared[:-1]), *nv.view_changes[1:]),  # not as named
    ):
        network.inject(3, replace(nv, view_changes=vcs).to_wire(), 2)
    assert three.metrics["rejected_bad_new_view"] == 2 and not three.active
    network.inject(3, nv.compact().to_wire(), 2)  # references only: held, not entered
    assert three.metrics["new_view_incomplete"] == 1 and not three.active
    network.inject(3, nv.to_wire(), 2)  # in full: entered
    assert three.active and three.view == 1


def test_a_primary_the_io_layer_cannot_reach_is_given_up_at_once_while_requests_wait() -> None:
    network = Network(make_config(4, view_change_timeout_ms=2000))
    network.submit_all(make_txs(3))
    network.run(100)
    for i in (1, 2, 3):  # nothing waits: the hint changes nothing
        network.report_unreachable(i, 0)
        network.report_unreachable(i, 2)  # not the primary
    network.run(100)
    assert all(r.view == 0 and r.active for r in network.replicas)
    network.crash(0)
    txs = make_txs(3, start=3)
    network.submit_all(txs, range(1, 4))
    network.run(50)
    for i in (1, 2, 3):
        network.report_unreachable(i, 0)
        network.report_unreachable(i, 0)  # once per view
    network.run(400)  # far below the 2 s timer
    assert network.all_committed(txs)
    assert all(network.replicas[i].view == 1 for i in (1, 2, 3))
    assert all(network.replicas[i].metrics["primary_unreachable"] == 1 for i in (1, 2, 3))
    assert divergence(network, network.correct()) == []


def test_a_view_change_with_an_empty_checkpoint_proof_is_refused_not_raised() -> None:
    """The stable checkpoint a replica knows lets it skip the proof's signatures, never the
    proof: a VIEW-CHANGE naming that checkpoint with no proof at all is refused."""
    network = Network(make_config(4, checkpoint_interval=2, log_window=4, batch_max=2))
    txs = make_txs(8)
    network.submit_all(txs)
    while not network.all_committed(txs):
        network.run(20)
    network.run(200)
    target = network.replicas[1]
    assert target.stable_seq >= 2
    bare = sign(ViewChange(1, target.stable_seq, (), (), 2), Signer(2, replica_key(2)))
    network.inject(1, bare.to_wire(), 2)
    assert target.metrics["rejected_bad_view_change"] == 1
