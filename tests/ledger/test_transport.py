"""Framing and links: the sans-IO decoder against arbitrary bytes, and real loopback sockets for
the authenticated replica link, a client connection, and peers that send garbage."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import keys
from ledger.transport import (
    HEADER,
    ClientConn,
    Counters,
    FrameDecoder,
    FrameError,
    Listener,
    PeerLink,
    decode_payload,
    encode_frame,
    link_proof,
    read_message,
)
from tests.ledger.strategies import ints

messages = st.fixed_dictionaries(
    {"t": st.text(max_size=10)},
    optional={
        "n": ints,
        "s": st.text(max_size=20),
        "l": st.lists(ints),
    },
)


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(messages, max_size=6), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_decoder_reassembles_any_split(msgs: list[dict[str, Any]], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = FrameDecoder()
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += dec.feed(stream[a:b])
    assert [decode_payload(p) for p in out] == msgs
    assert dec.pending == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_decoder_never_raises_anything_but_frame_error(data: bytes) -> None:
    dec = FrameDecoder(max_frame=1000)
    try:
        for payload in dec.feed(data):
            try:
                decode_payload(payload)
            except FrameError:
                pass
    except FrameError:
        pass


def test_oversized_header_and_non_objects_are_frame_errors() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        FrameDecoder(max_frame=10).feed(HEADER.pack(11))
    for payload in (b"[1]", b'{"t":1}', b"\xff", b"1.5", b'{"t":"x"', b'{"t":"x"}x'):
        with pytest.raises(FrameError):
            decode_payload(payload)
    # a repeated key keeps its last value (RFC 8259 leaves it open; message parsers re-check
    # every field and signatures cover re-encoded headers, so nothing rests on the raw bytes)
    assert decode_payload(b'{"t":"x","t":"y"}') == {"t": "y"}


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
