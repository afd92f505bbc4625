"""The user-space link shaper: the sans-IO model on an injected clock and seeded randomness, and
the relay on real sockets."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.transport import encode_frame, read_frame
from tools.netem import (
    MSS,
    RTO_MIN_S,
    LinkShaper,
    LinkSpec,
    LinkSpecError,
    Route,
    ShapedRelay,
    parse_link,
    uniform_plan,
)


def test_parse_link_reads_tc_units() -> None:
    assert parse_link("50ms,1mbit,1%") == LinkSpec(0.05, 1_000_000, 0.01)
    assert parse_link("20ms/5ms,10mbit,0%") == LinkSpec(0.02, 10_000_000, 0.0, jitter_s=0.005)
    assert parse_link(" 1s , 512kbit , 0.5% ") == LinkSpec(1.0, 512_000, 0.005)
    assert parse_link("0ms,0,0%").rate_bps is None
    assert parse_link("250us,1.5gbit,2%").delay_s == pytest.approx(250e-6)


@pytest.mark.parametrize(
    "text, part",
    [
        ("50ms,1mbit", "expected"),
        ("50,1mbit,1%", "delay"),
        ("50ms,1mb,1%", "rate"),
        ("50ms,1mbit,1", "loss"),
        ("50ms,1mbit,60%", "loss"),
        ("50ms,10bit,1%", "rate"),
        ("50ms/x,1mbit,1%", "jitter"),
        ("-5ms,1mbit,1%", "delay"),
        ("61s,1mbit,1%", "delay"),
    ],
)
def test_parse_link_names_the_bad_part(text: str, part: str) -> None:
    with pytest.raises(LinkSpecError, match=part):
        parse_link(text)


@given(st.text(max_size=80))
def test_parse_link_refuses_garbage_cleanly(text: str) -> None:
    try:
        spec = parse_link(text)
    except LinkSpecError:
        return
    assert spec.delay_s >= 0 and 0 <= spec.loss <= 0.5


def test_delay_only_link_delivers_each_segment_one_delay_later() -> None:
    shaper = LinkShaper(LinkSpec(0.05, None, 0.0), random.Random(1), now=10.0)
    out = shaper.send(10.0, 3 * MSS + 5)
    assert [size for _, size in out] == [MSS, MSS, MSS, 5]
    assert all(at == pytest.approx(10.05) for at, _ in out)


def test_rate_serialises_bytes_beyond_the_burst() -> None:
    shaper = LinkShaper(LinkSpec(0.0, 1_000_000, 0.0), random.Random(1), now=0.0)
    out = shaper.send(0.0, 125_000)  # one second's worth at 1 Mbit/s
    burst = shaper.burst
    assert out[-1][0] == pytest.approx((125_000 - burst) / 125_000, rel=1e-6)
    # after a quiet second the bucket is full again: the burst goes out at once
    assert shaper.send(5.0, burst)[-1][0] == pytest.approx(5.0)


def test_a_lost_segment_costs_a_retransmission_timeout_and_holds_back_the_rest() -> None:
    class Losing(random.Random):
        def __init__(self) -> None:
            super().__init__(0)
            self.draws = [0.0, 0.9]  # the first segment lost once, then delivered

        def random(self) -> float:
            return self.draws.pop(0) if self.draws else 0.9

    spec = LinkSpec(0.05, None, 0.01)
    shaper = LinkShaper(spec, Losing(), now=0.0)
    out = shaper.send(0.0, 2 * MSS)
    rto = spec.rtt_s + RTO_MIN_S
    assert out[0][0] == pytest.approx(rto + 0.05)
    assert out[1][0] == pytest.approx(rto + 0.05)  # head-of-line: not before the first
    assert shaper.lost == 1


def test_loss_rate_and_schedule_follow_the_seed() -> None:
    spec = parse_link("50ms/10ms,1mbit,1%")
    a = LinkShaper(spec, random.Random("s"), now=0.0)
    b = LinkShaper(spec, random.Random("s"), now=0.0)
    sched_a = [a.send(t * 0.01, 3000) for t in range(2000)]
    sched_b = [b.send(t * 0.01, 3000) for t in range(2000)]
    assert sched_a == sched_b
    assert 0.005 < a.lost / a.segments < 0.02


@settings(max_examples=60)
@given(
    st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 20_000)), max_size=40),
    st.sampled_from(["0ms,0,0%", "50ms,1mbit,1%", "5ms/4ms,100kbit,20%"]),
    st.integers(0, 2**32),
)
def test_a_stream_arrives_whole_in_order_never_early(
    sends: list[tuple[float, int]], link: str, seed: int
) -> None:
    spec = parse_link(link)
    shaper = LinkShaper(spec, random.Random(seed), now=0.0)
    now, last = 0.0, 0.0
    for gap, size in sends:
        now += gap
        out = shaper.send(now, size)
        assert sum(s for _, s in out) == size
        for at, _ in out:
            assert at >= now + max(0.0, spec.delay_s - spec.jitter_s) - 1e-9
            assert at >= last
            last = at


async def test_relay_shapes_replica_links_and_passes_clients() -> None:
    """A stand-in replica (it only sends the challenge and collects what arrives) behind a
    relay: a replica's bytes arrive whole, counted and no sooner than the link's delay; a
    client's pass unshaped."""
    got: dict[str, bytearray] = {}
    loop = asyncio.get_running_loop()
    arrived: dict[str, float] = {}

    async def replica(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame({"t": "challenge", "nonce": "00", "replica": 1}))
        first = await read_frame(reader)
        name = "peer" if b'"auth"' in first else "client"
        buf = got.setdefault(name, bytearray())
        while data := await reader.read(65536):
            buf += data
            arrived[name] = loop.time()
        writer.close()

    target = await asyncio.start_server(replica, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    listen_port = probe.getsockname()[1]
    probe.close()
    route = Route(1, ("127.0.0.1", listen_port), ("127.0.0.1", target_port), socket.socket)
    relay = ShapedRelay([route], uniform_plan(parse_link("80ms,10mbit,0%")), seed=7)
    await relay.start()
    payload = bytes(range(256)) * 400
    sent_at: dict[str, float] = {}
    for name, first in (
        ("peer", {"t": "auth", "from": 0, "proof": "ab"}),
        ("client", {"t": "query", "id": 1}),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", listen_port)
        await read_frame(reader)
        writer.write(encode_frame(first))
        sent_at[name] = loop.time()
        writer.write(payload)
        await writer.drain()
        writer.close()
    for _ in range(200):  # waiting for real sockets, with a bound
        if len(got.get("peer", b"")) == len(payload) and len(got.get("client", b"")) == len(
            payload
        ):
            break
        await asyncio.sleep(0.01)
    await relay.close()
    target.close()
    assert bytes(got["peer"]) == payload and bytes(got["client"]) == payload
    assert arrived["peer"] - sent_at["peer"] >= 0.08
    auth = encode_frame({"t": "auth", "from": 0, "proof": "ab"})
    assert relay.sent == {(0, 1): len(auth) + len(payload)}
