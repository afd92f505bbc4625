"""Links: real loopback sockets for the authenticated replica link, a client connection, and
peers that send garbage (the sans-IO frame decoder is tested in ``test_framing.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import keys
from ledger.framing import HEADER, encode_frame, read_message
from ledger.limits import (
    MAX_CLIENT_FRAME,
    RESERVED_FDS,
    Counters,
    Incidents,
    Limits,
    client_slots,
    handshake_slots,
    peer_slots,
)
from ledger.peer_link import PeerLink, link_proof
from ledger.transport import Budget, ClientConn, Listener


class Harness:
    def __init__(self) -> None:
        self.keys = [keys.new_key() for _ in range(2)]
        self.pubs = {i: k.public_key() for i, k in enumerate(self.keys)}
        self.peer_msgs: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        self.client_msgs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.counters = Counters()
        self.listener = Listener(0, self.pubs, self.on_peer, self.on_client, self.counters)

    def on_peer(self, sender: int, msg: dict[str, Any]) -> None:
        self.peer_msgs.put_nowait((sender, msg))

    def on_client(self, conn: ClientConn, msg: dict[str, Any]) -> None:
        self.client_msgs.put_nowait(msg)
        conn.send({"t": "echo", "m": msg})

    async def start(self) -> int:
        await self.listener.start("127.0.0.1", 0)
        assert self.listener.server is not None
        return int(self.listener.server.sockets[0].getsockname()[1])


async def test_authenticated_link_and_client_echo() -> None:
    h = Harness()
    port = await h.start()
    link = PeerLink(1, 0, "127.0.0.1", port, h.keys[1], Counters())
    link.start()
    for i in range(3):
        link.send_frame(encode_frame({"t": "hello", "i": i}))
    got = [await asyncio.wait_for(h.peer_msgs.get(), 5) for _ in range(3)]
    assert got == [(1, {"t": "hello", "i": i}) for i in range(3)]

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    challenge = await read_message(reader)
    assert challenge["t"] == "challenge"
    writer.write(encode_frame({"t": "query", "path": "x"}))
    assert await asyncio.wait_for(read_message(reader), 5) == {
        "t": "echo",
        "m": {"t": "query", "path": "x"},
    }
    writer.close()
    await link.close()
    await h.listener.close()


async def _connect_and(port: int, send: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await read_message(reader)
    writer.write(send)
    await writer.drain()
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return rest


async def test_forged_auth_garbage_and_oversize_drop_only_that_connection() -> None:
    h = Harness()
    port = await h.start()
    stranger = keys.new_key()
    # a proof by the wrong key, a proof for the wrong nonce, an unknown replica id, raw garbage
    attempts = [
        encode_frame({"t": "auth", "from": 1, "proof": link_proof(stranger, 1, 0, "00")}),
        encode_frame({"t": "auth", "from": 1, "proof": link_proof(h.keys[1], 1, 0, "00")}),
        encode_frame({"t": "auth", "from": 7, "proof": "00" * 64}),
        encode_frame({"t": "auth", "from": 0, "proof": "00" * 64}),
        HEADER.pack(50) + b"\xff" * 50,
        HEADER.pack(1 << 30),
    ]
    for data in attempts:
        assert await _connect_and(port, data) == b""
    assert h.counters["bad_link_auth"] == 2
    assert h.counters["dropped_connections"] == len(attempts)
    # an authenticated peer that then sends garbage is dropped too, and comes back
    link = PeerLink(1, 0, "127.0.0.1", port, h.keys[1], Counters())
    link.start()
    link.send_frame(HEADER.pack(3) + b"\x00\x01\x02")
    link.send_frame(encode_frame({"t": "after"}))
    # the listener still serves: a new link delivers
    link2 = PeerLink(1, 0, "127.0.0.1", port, h.keys[1], Counters())
    link2.start()
    link2.send_frame(encode_frame({"t": "fine"}))
    sender, msg = await asyncio.wait_for(h.peer_msgs.get(), 5)
    assert sender == 1 and msg["t"] in {"fine", "after"}
    assert h.counters["rejected_frames"] >= 1 + 2
    await link.close()
    await link2.close()
    await h.listener.close()


async def test_link_reconnects_after_the_peer_restarts() -> None:
    h = Harness()
    port = await h.start()
    delays: list[float] = []

    async def fast_sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    link = PeerLink(1, 0, "127.0.0.1", port, h.keys[1], Counters(), sleep=fast_sleep)
    link.start()
    link.send_frame(encode_frame({"t": "one"}))
    assert (await asyncio.wait_for(h.peer_msgs.get(), 5))[1]["t"] == "one"
    await h.listener.close()
    h2 = Harness()
    h2.keys, h2.pubs = h.keys, h.pubs
    h2.listener = Listener(0, h.pubs, h2.on_peer, h2.on_client, h2.counters)
    while link.connected:
        await asyncio.sleep(0.01)
    await h2.listener.start("127.0.0.1", port)
    link.send_frame(encode_frame({"t": "two"}))
    assert (await asyncio.wait_for(h2.peer_msgs.get(), 10))[1]["t"] == "two"
    assert delays, "reconnecting went through the injected backoff"
    await link.close()
    await h2.listener.close()


# -- limits (issue 17): deadlines, caps, budgets and queues, on real loopback sockets ----------


def limited(**given: int) -> Limits:
    return Limits.from_dict(given)


class LimitedHarness(Harness):
    def __init__(self, limits: Limits, client_slots: int | None = None, reply: bytes = b"") -> None:
        super().__init__()
        self.reply = reply
        self.listener = Listener(
            0,
            self.pubs,
            self.on_peer,
            self.on_client,
            self.counters,
            limits=limits,
            client_slots=client_slots,
        )

    def on_client(self, conn: ClientConn, msg: dict[str, Any]) -> None:
        self.client_msgs.put_nowait(msg)
        conn.send({"t": "echo", "blob": self.reply.hex()} if self.reply else {"t": "echo"})


async def client(
    port: int, source: str = "127.0.0.1", first: dict[str, Any] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    await read_message(reader)
    if first is not None:
        writer.write(encode_frame(first))
        assert (await asyncio.wait_for(read_message(reader), 5))["t"] == "echo"
    return reader, writer


async def closed(reader: asyncio.StreamReader, within_s: float = 5.0) -> bool:
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(reader.read(65536), within_s):
            pass
    return True


async def test_handshake_idle_and_frame_deadlines_close_only_that_connection() -> None:
    h = LimitedHarness(limited(handshake_ms=200, client_idle_ms=300, frame_ms=200))
    port = await h.start()
    silent, _ = await client(port)  # never sends a first frame
    idle, _ = await client(port, first={"t": "query"})  # one query, then nothing
    slow, slow_writer = await client(port, first={"t": "query"})
    slow_writer.write(HEADER.pack(100) + b"{")  # a frame started and never finished
    link = PeerLink(1, 0, "127.0.0.1", port, h.keys[1], Counters())
    link.start()
    for reader in (silent, idle, slow):
        assert await closed(reader)
    assert h.counters["handshake_timeouts"] == 1
    assert h.counters["client_timeouts"] == 2
    await asyncio.sleep(0.5)  # longer than every deadline: a replica's link is not a client
    link.send_frame(encode_frame({"t": "still here"}))
    assert (await asyncio.wait_for(h.peer_msgs.get(), 5))[1]["t"] == "still here"
    await link.close()
    await h.listener.close()


async def test_client_caps_per_source_and_in_all_leave_room_for_others() -> None:
    h = LimitedHarness(limited(max_clients_per_source=2), client_slots=3)
    port = await h.start()
    first = {"t": "query"}
    a1, _ = await client(port, "127.0.0.2", first)
    _ = await client(port, "127.0.0.2", first)
    a3, a3w = await client(port, "127.0.0.2")
    a3w.write(encode_frame(first))
    assert await closed(a3)  # over its source's cap
    assert h.counters["refused_clients"] == 1
    _ = await client(port, "127.0.0.3", first)  # the third slot
    _ = await client(port, "127.0.0.4", first)  # all taken: 127.0.0.2 (two) gives one up
    assert await closed(a1)
    assert h.counters["clients_evicted"] == 1
    c2, c2w = await client(port, "127.0.0.4")  # now every source holds one: no room
    c2w.write(encode_frame(first))
    assert await closed(c2)
    assert h.counters["refused_clients"] == 2
    assert h.listener.snapshot()["clients"] == 3
    await h.listener.close()


async def test_a_handshake_flood_from_one_source_does_not_keep_a_peer_out() -> None:
    h = LimitedHarness(limited())
    port = await h.start()
    flood = [await client(port, "127.0.0.2") for _ in range(40)]  # silent, more than the slots
    assert h.counters["handshakes_evicted"] >= 40 - h.listener.handshake_slots // 4
    assert h.listener.snapshot()["handshakes"] <= h.listener.handshake_slots // 4
    link = PeerLink(1, 0, "127.0.0.1", port, h.keys[1], Counters())
    link.start()
    link.send_frame(encode_frame({"t": "in"}))
    assert (await asyncio.wait_for(h.peer_msgs.get(), 5))[1]["t"] == "in"
    for _, writer in flood:
        writer.close()
    await link.close()
    await h.listener.close()


async def test_frame_sizes_per_kind_and_the_read_budget() -> None:
    h = LimitedHarness(limited(read_budget=1 << 20, read_budget_per_source=1 << 20))
    port = await h.start()
    reader, writer = await client(port, first={"t": "query"})
    writer.write(HEADER.pack(MAX_CLIENT_FRAME + 1))  # above a client's frame
    assert await closed(reader)
    # two frames of 600 KiB started from one source: the second finds no budget
    _, w1 = await client(port, first={"t": "query"})
    w1.write(HEADER.pack(600 * 1024) + b"{")
    await asyncio.sleep(0.1)
    r2, w2 = await client(port, first={"t": "query"})
    w2.write(HEADER.pack(600 * 1024) + b"{")
    assert await closed(r2)
    assert h.counters["read_budget_full"] == 1
    assert h.listener.budget.used == 600 * 1024
    w1.close()
    # a replica's link may send frames above a client's limit
    link = PeerLink(1, 0, "127.0.0.1", port, h.keys[1], Counters())
    link.start()
    link.send_frame(encode_frame({"t": "big", "x": "a" * (2 * MAX_CLIENT_FRAME)}))
    assert (await asyncio.wait_for(h.peer_msgs.get(), 5))[1]["t"] == "big"
    await link.close()
    await h.listener.close()
    assert h.listener.budget.used == 0


async def test_a_client_that_does_not_read_its_replies_is_cut_off() -> None:
    h = LimitedHarness(limited(max_client_backlog=64 * 1024), reply=b"\x00" * (512 * 1024))
    port = await h.start()
    _, writer = await client(port)
    for _ in range(64):  # 64 MiB of replies requested, none read
        writer.write(encode_frame({"t": "query"}))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    for _ in range(500):
        if h.counters["backlog_exceeded"]:
            break
        await asyncio.sleep(0.01)
    assert h.counters["backlog_exceeded"] == 1
    assert h.listener.snapshot()["clients"] == 0
    writer.close()
    await h.listener.close()


def test_a_peer_links_queue_is_bounded_in_bytes_and_frames() -> None:
    counters = Counters()
    link = PeerLink(1, 0, "127.0.0.1", 1, keys.new_key(), counters, max_bytes=10_000)
    for k in range(100):
        link.send_frame(bytes([k]) * 1000)
    assert link.queued_bytes == sum(len(f) for f in link.queue) <= 10_000
    assert link.queue[-1] == bytes([99]) * 1000  # the newest are kept
    assert counters["frames_dropped"] == 90
    link.send_frame(b"x" * 50_000)  # one frame above the bound is still sent, alone
    assert list(link.queue) == [b"x" * 50_000]


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 700)), max_size=30))
def test_the_read_budget_never_exceeds_its_bounds(ops: list[tuple[str, int]]) -> None:
    budget = Budget(1000, 600)
    held: list[tuple[str, int]] = []
    for source, size in ops:
        if budget.take(source, size):
            held.append((source, size))
        assert budget.used <= 1000
        assert all(v <= 600 for v in budget.by_source.values())
        if len(held) > 2:
            budget.give(*held.pop(0))
    for item in held:
        budget.give(*item)
    assert budget.used == 0 and not budget.by_source


def test_incidents_are_counted_always_and_logged_once_per_cause_per_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    counters = Counters()
    incidents = Incidents(counters, logging.getLogger("test.incidents"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.incidents"):
        for _ in range(1000):
            incidents("refused_clients", "from 127.0.0.2")
        incidents("read_budget_full")
        now[0] = 61.0
        incidents("refused_clients")
    assert counters["refused_clients"] == 1001
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused_clients: from 127.0.0.2",
        "read_budget_full",
        "refused_clients (999 more since the last report)",
    ]
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("nofile", [256, 1024, 4096, 20_000, 1 << 20])
def test_client_and_handshake_slots_leave_descriptors_for_peers_and_the_store(nofile: int) -> None:
    for n in (4, 7, 64):
        clients = client_slots(Limits.from_dict(), nofile, n)
        assert 1 <= clients <= Limits.from_dict().max_clients
        if nofile >= 1024:
            used = clients + handshake_slots(nofile) + peer_slots(n) + RESERVED_FDS
            assert used <= nofile
