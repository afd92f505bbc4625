"""A replica's client-facing handler against arbitrary messages: nothing a client sends can raise
out of it, every query gets an answer, and the replica still serves a good query afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.node import WAITER_TTL_MS, ReplicaNode
from ledger.setup import init_cluster
from ledger.transport import ClientConn, FrameDecoder, decode_payload
from tests.ledger.strategies import ints
from tests.ledger.toy_contract import make_contract


class Capture:
    """Collects what the replica writes to one client; the socket side of the same path is
    exercised by the process tests, this isolates the handler for thousands of inputs."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    @property
    def transport(self) -> Capture:
        return self

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> ReplicaNode:
    d = tmp_path_factory.mktemp("node") / "c"
    init_cluster(d, 4, genesis={"toy": 1})
    return ReplicaNode(d, 0, make_contract)


json_leaf = st.none() | st.booleans() | ints | st.text(max_size=70)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
messages = st.fixed_dictionaries(
    {"t": st.sampled_from(["request", "requests", "await", "query", "hello", ""])},
    optional={
        "tx": json_value,
        "txs": st.lists(json_value, max_size=3) | json_value,
        "tx_id": json_value | st.just("ab" * 32),
        "tx_ids": st.lists(json_value, max_size=3) | json_value,
        "id": json_value,
        "path": st.sampled_from(
            [
                "ledger.height",
                "ledger.block",
                "ledger.receipt",
                "ledger.status",
                "ledger.nope",
                "count",
                "notes",
                "x",
            ]
        )
        | json_value,
        "params": json_value,
        "key": json_value | st.just("ab" * 32) | st.text("0123456789abcdefABCDEF", max_size=66),
        "sig": json_value | st.just("cd" * 64) | st.text("0123456789abcdef", max_size=130),
    },
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=messages)
def test_any_client_message_is_handled(node: ReplicaNode, message: dict[str, Any]) -> None:
    writer = Capture()
    conn = ClientConn(cast(asyncio.StreamWriter, writer))
    node._on_client(conn, message)
    replies = [decode_payload(p) for p in FrameDecoder().feed(bytes(writer.data))]
    for reply in replies:
        assert reply["t"] in {"answer", "reject", "reply", "hello"}
    if message["t"] == "query":
        assert len(replies) == 1 and replies[0]["t"] == "answer"
    good = Capture()
    node._on_client(
        ClientConn(good), {"t": "query", "id": 1, "path": "ledger.height", "params": {}}
    )
    (answer,) = [decode_payload(p) for p in FrameDecoder().feed(bytes(good.data))]
    assert answer["ok"] and answer["value"] == 0


def test_waits_for_transactions_that_never_execute_expire(tmp_path: Path) -> None:
    now = [1_000_000]
    d = tmp_path / "c"
    init_cluster(d, 4, genesis={"toy": 1})
    node = ReplicaNode(d, 1, make_contract, clock=lambda: now[0])
    conn = ClientConn(cast(asyncio.StreamWriter, Capture()))
    node._on_client(conn, {"t": "await", "tx_ids": ["ab" * 32, "cd" * 32]})
    now[0] += WAITER_TTL_MS // 2
    node._on_client(conn, {"t": "await", "tx_ids": ["ef" * 32]})
    node.prune_waiters(now[0])
    assert set(node.waiters) == {"ab" * 32, "cd" * 32, "ef" * 32}
    now[0] += WAITER_TTL_MS // 2 + 1
    node.prune_waiters(now[0])
    assert set(node.waiters) == {"ef" * 32}
    assert node.counters["waiters_expired"] == 2
    node._on_client_closed(conn)
    assert not node.waiters and not node.waiting_since


def test_a_frame_of_requests_is_checked_together_and_its_bad_ones_rejected(
    tmp_path: Path,
) -> None:
    """The signatures of a ``requests`` frame are checked together (one batch check when the
    native verifier is built); a malformed and a forged transaction among them are each
    answered with their own reject, and only the others are taken."""
    from ledger.pbft.simulation import make_txs

    d = tmp_path / "c"
    init_cluster(d, 4, genesis={"toy": 1})
    node = ReplicaNode(d, 1, make_contract)  # a backup: it notes the requests, orders nothing
    txs = make_txs(90)
    wires: list[Any] = [tx.to_wire() for tx in txs]
    forged = make_txs(1, start=900)[0]
    wires[10] = dict(wires[10], sig=forged.signature.hex())
    wires[20] = dict(wires[20], nonce=-1)
    writer = Capture()
    node._on_client(ClientConn(cast(asyncio.StreamWriter, writer)), {"t": "requests", "txs": wires})
    rejects = [decode_payload(p) for p in FrameDecoder().feed(bytes(writer.data))]
    assert sorted((r["code"], r["tx_id"]) for r in rejects) == [
        ("BAD_SIGNATURE", txs[10].tx_id),
        ("MALFORMED_TX", ""),
    ]
    good = {tx.tx_id for n, tx in enumerate(txs) if n not in (10, 20)}
    assert set(node.waiters) == good
    assert set(node.replica.batcher.pending) == good
    assert node.counters["rejected_requests"] == 2
    assert node.sigs.verified == 89


def test_a_hello_proves_a_key_for_its_own_connection_only(node: ReplicaNode) -> None:
    """A ``hello`` signed over this connection's challenge sets the connection's reader; one
    signed over another connection's challenge, by another key than it names, or a second one,
    is refused and counted."""
    from ledger.keys import new_key
    from ledger_client.client import hello

    key, other = new_key(), new_key()
    conn = ClientConn(cast(asyncio.StreamWriter, Capture()), nonce="aa" * 32)
    replayed = hello(key, {"nonce": "bb" * 32, "replica": 0})
    wrong_replica = hello(key, {"nonce": "aa" * 32, "replica": 1})
    swapped = dict(hello(key, {"nonce": "aa" * 32, "replica": 0}), key=hello(other, {
        "nonce": "aa" * 32, "replica": 0})["key"])  # fmt: skip
    before = node.counters["rejected_hello"]
    for message in (replayed, wrong_replica, swapped):
        node._on_client(conn, message)
        assert conn.reader is None
    node._on_client(conn, hello(key, {"nonce": "aa" * 32, "replica": 0}))
    assert conn.reader == key.public_key().public_bytes_raw()
    node._on_client(conn, hello(other, {"nonce": "aa" * 32, "replica": 0}))
    assert conn.reader == key.public_key().public_bytes_raw()  # once per connection
    assert node.counters["rejected_hello"] == before + 4
    writer = cast(Capture, conn.writer)
    answers = [decode_payload(p) for p in FrameDecoder().feed(bytes(writer.data))]
    assert [a["ok"] for a in answers] == [False, False, False, True, False]


def _limited_node(directory: Path, **limits: int) -> ReplicaNode:
    import json

    init_cluster(directory, 4, genesis={"toy": 1})
    doc = json.loads((directory / "cluster.json").read_text())
    doc["limits"] = limits
    (directory / "cluster.json").write_text(json.dumps(doc))
    return ReplicaNode(directory, 1, make_contract)


def _ids(start: int, count: int) -> list[str]:
    return [f"{k:064x}" for k in range(start, start + count)]


def test_one_connections_await_flood_leaves_room_for_every_other_client(tmp_path: Path) -> None:
    """Finding 5 in the handler: a connection is held to its own limit, and when the table is
    full the largest holder gives up its oldest waits, never a client that waits for a few."""
    node = _limited_node(tmp_path / "c", max_waiters=100, max_waiters_per_client=60)
    flood = [ClientConn(cast(asyncio.StreamWriter, Capture())) for _ in range(2)]
    node._on_client(flood[0], {"t": "await", "tx_ids": _ids(0, 80)})
    assert len(node.held[flood[0]]) == 60 and node.counters["waiters_refused"] == 20
    node._on_client(flood[1], {"t": "await", "tx_ids": _ids(100, 60)})
    assert node.wait_count == 100  # full: the second flood made the first give some up
    assert len(node.held[flood[0]]) == len(node.held[flood[1]]) == 50
    member = ClientConn(cast(asyncio.StreamWriter, Capture()))
    node._on_client(member, {"t": "await", "tx_ids": _ids(1000, 3)})
    assert set(node.held[member]) == set(_ids(1000, 3))
    assert node.wait_count <= 100
    # closing the flood costs what it held and leaves the member's waits
    node._on_client_closed(flood[0])
    node._on_client_closed(flood[1])
    assert set(node.waiters) == set(_ids(1000, 3)) and node.wait_count == 3


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["await", "close", "reply", "prune"]),
            st.integers(0, 4),
            st.integers(0, 30),
            st.integers(0, 12),
        ),
        max_size=40,
    )
)
def test_the_wait_table_stays_consistent_and_bounded(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int, int]]
) -> None:
    now = [1_000_000]
    d = tmp_path_factory.mktemp("w") / "c"
    node = _limited_node(d, max_waiters=25, max_waiters_per_client=10)
    node.clock = lambda: now[0]
    conns = [ClientConn(cast(asyncio.StreamWriter, Capture())) for _ in range(5)]
    for op, k, start, count in ops:
        now[0] += 1000
        if op == "await":
            node._on_client(conns[k], {"t": "await", "tx_ids": _ids(start, count)})
        elif op == "close":
            conns[k].closed = True
            node._on_client_closed(conns[k])
            conns[k] = ClientConn(cast(asyncio.StreamWriter, Capture()))
        elif op == "reply":
            node._take_waiters(_ids(start, 1)[0])
        else:
            node.prune_waiters(now[0] + WAITER_TTL_MS - 5000)
        pairs = {(t, c) for t, cs in node.waiters.items() for c in cs}
        assert pairs == {(t, c) for c, ts in node.held.items() for t in ts}
        assert node.wait_count == len(pairs) <= 25
        assert all(len(ts) <= 10 for ts in node.held.values())
        assert set(node.waiting_since) == set(node.waiters)
        assert set(node.to_ask) <= set(node.waiters)
    node.state.close()
