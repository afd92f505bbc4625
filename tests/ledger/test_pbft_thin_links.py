"""What a thin link gets spared: a VIEW-CHANGE's batches go to the new primary only, and the
batch prepared in the old view still commits in the new one."""

from __future__ import annotations

from typing import Any

from ledger.pbft.messages import Commit
from ledger.pbft.simulation import Network, divergence, make_config, make_txs


def test_view_change_batches_go_to_the_new_primary_only() -> None:
    carried: list[tuple[int, int]] = []  # (sender, receiver) of view-changes with batches
    plain: list[tuple[int, int]] = []

    def tamper(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any] | None:
        if wire["t"] == "commit" and wire["v"] == 0:
            return None  # prepared everywhere, committed nowhere: view 1 must carry the batch
        if wire["t"] == "view-change":
            (carried if wire.get("batches") else plain).append((src, dst))
        return wire

    net = Network(make_config(7, view_change_timeout_ms=200), tamper=tamper)
    txs = make_txs(5)
    net.submit_all(txs)
    net.run(50)
    net.crash(0)
    net.submit_all(txs, range(1, 7))
    while not net.all_committed(txs):
        net.run(10)
        assert net.now < 10_000
    assert carried and {dst for _, dst in carried} == {1}  # primary of view 1
    assert {src for src, _ in carried} >= {2, 3, 4, 5, 6} - {1}
    assert {dst for _, dst in plain} >= {2, 3, 4, 5, 6}  # the others got it without
    assert not divergence(net, net.correct())


def test_votes_past_a_quorum_are_not_checked_and_change_nothing() -> None:
    """At n = 7 a slot prepares on 4 PREPAREs of 5 and commits on 5 COMMITs of 7: the rest
    are surplus, dropped before their signature is checked; a surplus vote with a broken
    signature is therefore not even counted as bad, and a vote the slot still needs is."""
    net = Network(make_config(7, batch_max=10))
    txs = make_txs(10)
    net.submit_all(txs)
    while not net.all_committed(txs):
        net.run(5)
    net.run(50)
    assert not divergence(net, net.correct())
    backup = net.replicas[3]
    assert backup.metrics["surplus_votes"] > 0
    assert "rejected_bad_sig" not in backup.metrics
    slot = backup.log.slots[1]
    assert slot.committed and slot.cert is not None and len(slot.cert.commits) == 5
    late = next(c for c in slot.commits[(0, slot.digest)].values() if c.replica != 3)
    absent = next(r for r in range(7) if (0, r) not in slot.commit_votes)  # its vote was surplus
    before = backup.metrics["surplus_votes"]
    net.inject(3, Commit(late.view, late.seq, late.digest, absent, bytes(64)), absent)
    assert backup.metrics["surplus_votes"] == before + 1
    assert "rejected_bad_sig" not in backup.metrics
    # a vote for a slot without its quorum is checked, and a broken one refused
    net.inject(4, Commit(0, 2, late.digest, absent, bytes(64)), absent)
    assert net.replicas[4].metrics["rejected_bad_sig"] == 1
