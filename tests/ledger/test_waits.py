"""The table of client waits (``ledger.waits``), sans-IO: bounded in all and per connection,
indexed both ways, and the two indexes always agree whatever the order of events."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from ledger.waits import EVICT_CHUNK, WAITER_TTL_MS, ClientWaits


class Conn:
    """A connection as the table sees it (a replica's ``ClientConn``)."""

    def __init__(self, source: str = "10.0.0.1") -> None:
        self.closed = False
        self.source = source


def _table(max_waits: int = 100, max_per_client: int = 60) -> tuple[ClientWaits[Conn], list[str]]:
    incidents: list[str] = []
    counters: Counter[str] = Counter()

    def incident(cause: str, detail: str = "") -> None:
        counters[cause] += 1
        incidents.append(cause)

    return ClientWaits(max_waits, max_per_client, 500, counters, incident), incidents


def _ids(start: int, count: int) -> list[str]:
    return [f"{k:064x}" for k in range(start, start + count)]


def test_a_flood_pays_for_itself_and_a_client_waiting_for_a_few_is_served() -> None:
    waits, incidents = _table()
    flood = [Conn(), Conn()]
    assert sum(waits.add(flood[0], t, 0) for t in _ids(0, 80)) == 60
    assert incidents == ["waiters_refused"] * 20
    for t in _ids(100, 60):
        waits.add(flood[1], t, 1)
    assert waits.count == 100  # full: the second flood made the first give some up
    assert len(waits.held[flood[0]]) == len(waits.held[flood[1]]) == 50
    assert waits.counters["waiters_evicted"] >= 1
    member = Conn()
    assert all(waits.add(member, t, 2) for t in _ids(1000, 3))
    assert waits.count <= 100
    waits.close(flood[0])
    waits.close(flood[1])
    assert set(waits.by_tx) == set(_ids(1000, 3)) and waits.count == 3


def test_an_eviction_takes_the_oldest_waits_and_at_most_a_chunk() -> None:
    waits, _ = _table(max_waits=2 * EVICT_CHUNK + 10, max_per_client=10_000)
    flood, other = Conn(), Conn()
    for t in _ids(0, 2 * EVICT_CHUNK + 10):
        waits.add(flood, t, 0)
    assert waits.add(other, "ff" * 32, 1)
    left = list(waits.held[flood])
    assert len(left) == EVICT_CHUNK + 10 and left[0] == _ids(EVICT_CHUNK, 1)[0]


def test_a_closed_connection_waits_for_nothing_and_a_repeat_is_one_wait() -> None:
    waits, _ = _table()
    conn = Conn()
    assert waits.add(conn, "ab" * 32, 0) and waits.add(conn, "ab" * 32, 5)
    assert waits.count == 1 and waits.since["ab" * 32] == 0
    conn.closed = True
    assert not waits.add(conn, "cd" * 32, 6)
    assert waits.take("ab" * 32) == {conn} and waits.take("ab" * 32) is None
    assert waits.count == 0 and not waits.held[conn]


def test_waits_expire_oldest_first_after_their_time_to_live() -> None:
    waits, _ = _table()
    conn = Conn()
    waits.add(conn, "ab" * 32, 1_000)
    waits.add(conn, "cd" * 32, 1_000 + WAITER_TTL_MS // 2)
    waits.expire(1_000 + WAITER_TTL_MS - 1)
    assert set(waits.by_tx) == {"ab" * 32, "cd" * 32}
    waits.expire(1_000 + WAITER_TTL_MS)
    assert set(waits.by_tx) == {"cd" * 32} and waits.counters["waiters_expired"] == 1
    assert list(waits.held[conn]) == ["cd" * 32]


def test_an_awaited_transaction_not_held_here_is_asked_for_once() -> None:
    waits, _ = _table()
    a, b = Conn(), Conn()
    held = {"cd" * 32}
    for conn in (a, b):
        waits.add(conn, "ab" * 32, 0, ask=True)
    waits.add(a, "cd" * 32, 0, ask=True)
    waits.add(a, "ef" * 32, 0)  # sent in full: never asked for
    waits.add(b, "12" * 32, 400, ask=True)
    assert waits.stale(499, held.__contains__) == {}
    assert waits.stale(500, held.__contains__) == {a: ["ab" * 32], b: ["ab" * 32]}
    assert waits.stale(10_000, held.__contains__) == {b: ["12" * 32]}
    assert not waits.to_ask and waits.stale(20_000, held.__contains__) == {}


@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["await", "request", "close", "reply", "expire", "ask"]),
            st.integers(0, 4),
            st.integers(0, 30),
            st.integers(0, 12),
        ),
        max_size=40,
    )
)
def test_the_wait_table_stays_consistent_and_bounded(ops: list[tuple[str, int, int, int]]) -> None:
    now = 1_000_000
    waits, _ = _table(max_waits=25, max_per_client=10)
    conns = [Conn() for _ in range(5)]
    for op, k, start, count in ops:
        now += 1000
        if op in ("await", "request"):
            for tx_id in _ids(start, count):
                waits.add(conns[k], tx_id, now, ask=op == "await")
        elif op == "close":
            conns[k].closed = True
            waits.close(conns[k])
            conns[k] = Conn()
        elif op == "reply":
            waits.take(_ids(start, 1)[0])
        elif op == "expire":
            waits.expire(now + WAITER_TTL_MS - 5000)
        else:
            waits.stale(now, lambda tx_id: int(tx_id, 16) % 2 == 0)
        pairs = {(t, c) for t, cs in waits.by_tx.items() for c in cs}
        assert pairs == {(t, c) for c, ts in waits.held.items() for t in ts}
        assert waits.count == len(pairs) <= 25
        assert all(len(ts) <= 10 for ts in waits.held.values())
        assert set(waits.since) == set(waits.by_tx)
        assert set(waits.to_ask) <= set(waits.by_tx)
