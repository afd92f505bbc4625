"""What a thin link gets spared: a VIEW-CHANGE's batches go to the new primary only, and the
batch prepared in the old view still commits in the new one."""

from __future__ import annotations

from typing import Any

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
