"""The adaptive view-change timeout (ledger/pbft/viewchange.py): a dead primary is replaced
sooner where the observed waits are short, never sooner than the floor, never later than the
configured timeout, and a steady slow link causes no view change."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.cluster import ClusterFileError, cluster_document
from ledger.keys import new_key, public_hex
from ledger.pbft.config import PbftConfig, PbftConfigError
from ledger.pbft.simulation import Network, divergence, make_config, make_txs

SLOW_MS = 2000


def _warm(net: Network, rounds: int) -> None:
    """``rounds`` rounds of ten transactions to all four replicas, each run until committed."""
    for round_ in range(rounds):
        txs = make_txs(10, start=10 * round_)
        net.submit_all(txs, range(4))
        while not net.all_committed(txs):
            net.run(5)


def _recovery_ms(min_view_change_ms: int, seed: int = 1) -> tuple[int, Network]:
    """Warm a 4-replica cluster up with a few rounds of load, kill the primary, submit more
    to every replica and return how long (simulated) until all of it commits."""
    cfg = make_config(
        4, view_change_timeout_ms=SLOW_MS, min_view_change_timeout_ms=min_view_change_ms
    )
    net = Network(cfg, seed=seed, delay=(2, 6))
    _warm(net, 20)
    net.crash(0)
    txs = make_txs(10, start=1000)
    net.submit_all(txs, range(4))
    start = net.now
    while not net.all_committed(txs):
        net.run(5)
        assert net.now - start < 10 * SLOW_MS
    return net.now - start, net


def test_a_dead_primary_is_replaced_sooner_where_waits_are_short() -> None:
    fixed, net_fixed = _recovery_ms(0)
    adaptive, net = _recovery_ms(50)
    assert fixed >= SLOW_MS  # today: the whole configured timeout
    assert adaptive < SLOW_MS // 4
    assert not divergence(net, net.correct()) and not divergence(net_fixed, net_fixed.correct())
    timeouts = [net.replicas[i].views.timer.base_timeout() for i in net.correct()]
    assert all(50 <= t < SLOW_MS for t in timeouts)


def test_a_steady_slow_link_changes_no_view_and_stays_within_the_bounds() -> None:
    """Waits of 1.2-1.8 s with a configured 3 s timeout and a floor of 100 ms: the estimate
    rises to cover them and no view change happens."""
    cfg = make_config(4, view_change_timeout_ms=3000, min_view_change_timeout_ms=100)
    net = Network(cfg, seed=3, delay=(200, 300))
    for round_ in range(15):
        txs = make_txs(5, start=5 * round_)
        net.submit_all(txs, range(4))
        while not net.all_committed(txs):
            net.run(20)
    assert all(r.view == 0 for r in net.replicas)
    for r in net.replicas:
        assert 100 <= r.views.timer.base_timeout() <= 3000
        # above the waits it saw (3-4 one-way delays)
        assert r.views.timer.base_timeout() >= 2 * 600


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 100_000), min_size=1, max_size=40),
    st.integers(1, 5000),
    st.integers(0, 5000),
)
def test_the_estimate_never_leaves_its_bounds(waits: list[int], upper: int, floor: int) -> None:
    floor = min(floor, upper)
    net = Network(make_config(4, view_change_timeout_ms=upper, min_view_change_timeout_ms=floor))
    views = net.replicas[1].views
    now = 0
    for wait in waits:
        views.timer.arm(now)
        now += wait
        views.timer.progress(now)
        bound = upper if floor == 0 else views.timer.base_timeout()
        assert (floor or upper) <= views.timer.base_timeout() <= upper
        assert views.timer.timeout == bound


def test_the_floor_above_the_timeout_is_refused() -> None:
    try:
        make_config(4, view_change_timeout_ms=500, min_view_change_timeout_ms=600)
    except PbftConfigError as exc:
        assert "min_view_change_ms" in str(exc)
    else:
        raise AssertionError("accepted a floor above the timeout")
    cfg = PbftConfig.from_dict(
        {
            "replicas": [
                {"id": r.id, "host": r.host, "port": r.port, "public_key": r.public_key.hex()}
                for r in make_config(4).replicas
            ],
            "timers": {"view_change_ms": 800, "min_view_change_ms": 150},
        }
    )
    assert cfg.min_view_change_timeout_ms == 150


def test_the_cluster_file_refuses_a_floor_above_the_timeout() -> None:
    keys = [public_hex(new_key()) for _ in range(4)]
    ports = [7100, 7101, 7102, 7103]
    doc = cluster_document(keys, ports, {}, timers={"min_view_change_ms": 300})
    assert doc["timers"]["min_view_change_ms"] == 300
    with pytest.raises(ClusterFileError, match="min_view_change_ms"):
        cluster_document(keys, ports, {}, timers={"view_change_ms": 500, "min_view_change_ms": 600})
    with pytest.raises(ClusterFileError, match="min_view_change_ms"):
        cluster_document(keys, ports, {}, timers={"min_view_change_ms": -1})


def test_a_view_change_itself_gets_the_configured_timeout() -> None:
    """The short timeout detects the dead primary; the wait for the NEW-VIEW is never shorter
    than the configured timeout (a NEW-VIEW on a thin link takes seconds)."""
    cfg = make_config(4, view_change_timeout_ms=SLOW_MS, min_view_change_timeout_ms=50)
    net = Network(cfg, seed=2, delay=(2, 6))
    _warm(net, 10)
    net.crash(0)
    net.submit_all(make_txs(5, start=5000), range(4))
    backup = net.replicas[2]
    while backup.active:
        net.run(1)
        assert net.now < 100_000
    assert backup.views.timer.deadline is not None
    assert backup.views.timer.deadline - net.now >= SLOW_MS - 1
