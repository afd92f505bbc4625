"""A user-space link shaper between replicas: one-way delay, jitter, bandwidth and loss.

Kernel queueing disciplines (``tc netem``) need privileges and modules a test machine may lack,
so the shaping is done in a TCP relay in front of each replica, shared by the tests and
``wattmesh bench ledger --link``.

Two parts:

* ``LinkShaper`` (sans-IO): one direction of one TCP connection. ``send(now, size)`` says when
  each of the segments of ``size`` bytes handed to the link at ``now`` arrives at the far end.
  Time comes in as an argument and randomness from the ``random.Random`` it is given (seeded),
  so the same seed and the same sends give the same schedule.
* ``ShapedRelay`` (asyncio, thin): listens on each replica's advertised address, connects to the
  replica's private port, learns which replica is calling from the link's ``auth`` frame, and
  delays that connection's bytes as its ``LinkShaper`` says. One ``ShapedRelay`` serves a whole
  cluster; sockets come from a factory, so each can be made in the replica's network namespace.

The model, link by link (each directed replica pair ``i -> j`` is one connection, as
``ledger.peer_link.PeerLink`` dials one per peer):

* Bandwidth: a token bucket of ``rate`` bits per second with a burst of ``BURST_SEGMENTS``
  segments. A segment leaves when the bucket holds its bytes; the bucket may go into debt, so
  segments queue behind each other (serialisation delay) without a drop.
* Delay and jitter: each segment arrives ``delay`` plus a uniform draw in ``[-jitter, +jitter]``
  after it leaves (never before it left).
* Loss: TCP cannot lose bytes, only time. Each segment (``MSS`` bytes) is lost with probability
  ``loss``; a lost segment is sent again after one retransmission timeout, ``RTO = RTT +
  RTO_MIN`` (Linux's ``srtt + max(4 rttvar, rto_min)`` on a steady path), doubling if the
  retransmission is lost too, and the retransmission costs bandwidth again. This is the
  pessimistic case: fast retransmit (three duplicate ACKs) and tail-loss probes recover most
  losses of a busy stream in about one RTT instead.
* Order: a stream delivers in order, so a segment never arrives before the one sent before it
  (a lost segment holds back everything behind it: head-of-line blocking).

Not modelled: ACK traffic and congestion control (the rate is the link's, not the sender's
congestion window; slow start after an idle period is ignored), the first leg of the link
handshake (the replica's challenge is forwarded at once), and client connections, which the
relay passes through unshaped: the clients stand in the operator's host next to the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ledger.framing import HEADER, FrameError, decode_payload, read_frame

MSS = 1448  # bytes of payload per TCP segment on a 1500-byte Ethernet path
BURST_SEGMENTS = 10  # the token bucket's depth (a typical initial congestion window)
RTO_MIN_S = 0.2  # Linux's tcp_rto_min
RTO_MAX_S = 120.0
RELAY_BUFFER_BYTES = 4 * 1024 * 1024  # bytes a shaped connection holds before it stops reading

_DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_DELAY = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s)")
_RATE = re.compile(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)")
_LOSS = re.compile(r"(\d+(?:\.\d+)?)%")


class LinkSpecError(ValueError):
    """A link description that cannot be used; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of a link: one-way delay and jitter (seconds), rate (bits per second,
    None for unlimited) and the probability that a segment is lost."""

    delay_s: float
    rate_bps: int | None
    loss: float
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.delay_s <= 60 or not 0 <= self.jitter_s <= 60:
            raise LinkSpecError("delay and jitter must be between 0 and 60 s")
        if self.rate_bps is not None and not 1000 <= self.rate_bps <= 10**11:
            raise LinkSpecError("rate must be between 1kbit and 100gbit")
        if not 0 <= self.loss <= 0.5:
            raise LinkSpecError("loss must be between 0% and 50%")

    @property
    def rtt_s(self) -> float:
        return 2 * self.delay_s

    def describe(self) -> str:
        rate = "unlimited" if self.rate_bps is None else f"{self.rate_bps}bit"
        jitter = f"/{self.jitter_s * 1000:g}ms" if self.jitter_s else ""
        return f"{self.delay_s * 1000:g}ms{jitter},{rate},{self.loss * 100:g}%"


def parse_link(text: str) -> LinkSpec:
    """``DELAY[/JITTER],RATE,LOSS`` as ``tc`` writes them: ``50ms,1mbit,1%``,
    ``20ms/5ms,10mbit,0%``; ``RATE`` may be ``0`` for unlimited. Units: us, ms, s; bit, kbit,
    mbit, gbit (decimal, as tc); loss in per cent."""
    if not isinstance(text, str) or len(text) > 64:
        raise LinkSpecError("expected DELAY[/JITTER],RATE,LOSS such as 50ms,1mbit,1%")
    parts = text.strip().lower().split(",")
    if len(parts) != 3:
        raise LinkSpecError(f"expected DELAY[/JITTER],RATE,LOSS such as 50ms,1mbit,1%: {text!r}")
    delay_text, rate_text, loss_text = (p.strip() for p in parts)
    delay_part, _, jitter_part = delay_text.partition("/")
    delay = _time(delay_part, "delay")
    jitter = _time(jitter_part, "jitter") if jitter_part else 0.0
    if rate_text == "0":
        rate: int | None = None
    else:
        m = _RATE.fullmatch(rate_text)
        if m is None:
            raise LinkSpecError(f"rate: expected a number and bit/kbit/mbit/gbit: {rate_text!r}")
        rate = round(float(m.group(1)) * _RATE_UNITS[m.group(2)])
    m = _LOSS.fullmatch(loss_text)
    if m is None:
        raise LinkSpecError(f"loss: expected a percentage such as 1%, got {loss_text!r}")
    return LinkSpec(delay_s=delay, rate_bps=rate, loss=float(m.group(1)) / 100, jitter_s=jitter)


def _time(text: str, what: str) -> float:
    m = _DELAY.fullmatch(text)
    if m is None:
        raise LinkSpecError(f"{what}: expected a number and us/ms/s, got {text!r}")
    return float(m.group(1)) * _DELAY_UNITS[m.group(2)]


class LinkShaper:
    """Sans-IO: when the bytes handed to one direction of one TCP connection arrive."""

    def __init__(self, spec: LinkSpec, rng: random.Random, now: float) -> None:
        self.spec = spec
        self.rng = rng
        self.burst = BURST_SEGMENTS * MSS
        self.tokens = float(self.burst)
        self.stamp = now
        self.last_arrival = now
        self.segments = 0
        self.lost = 0

    def rto(self) -> float:
        return self.spec.rtt_s + RTO_MIN_S

    def _leave(self, now: float, size: int) -> float:
        """The moment a segment of ``size`` bytes handed over at ``now`` leaves (token bucket)."""
        rate = self.spec.rate_bps
        if rate is None:
            return now
        per_s = rate / 8
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * per_s)
            self.stamp = now
        self.tokens -= size
        return now if self.tokens >= 0 else now + -self.tokens / per_s

    def send(self, now: float, size: int) -> list[tuple[float, int]]:
        """``size`` bytes handed to the link at ``now``: (arrival time, bytes) per segment, in
        order, arrival times never decreasing."""
        out: list[tuple[float, int]] = []
        spec = self.spec
        while size > 0:
            seg = min(MSS, size)
            size -= seg
            self.segments += 1
            leave = self._leave(now, seg)
            rto = self.rto()
            while spec.loss and self.rng.random() < spec.loss:
                self.lost += 1
                # sent again one timeout later, taking the link's bandwidth again
                leave = max(leave + rto, self._leave(now, seg))
                rto = min(RTO_MAX_S, 2 * rto)
            jitter = self.rng.uniform(-spec.jitter_s, spec.jitter_s) if spec.jitter_s else 0.0
            arrive = max(leave + spec.delay_s + jitter, leave, self.last_arrival)
            self.last_arrival = arrive
            out.append((arrive, seg))
        return out


# -- the relay (asyncio) -------------------------------------------------------------------------

SocketFactory = Callable[[], socket.socket]
# (calling replica, called replica) -> how that direction is shaped; None: not shaped
LinkPlan = Callable[[int, int], "LinkSpec | None"]


@dataclass(frozen=True, slots=True)
class Route:
    """Replica ``replica`` is advertised at ``listen`` and really listens at ``target``;
    ``make_socket`` makes a TCP socket in the network the replica lives in."""

    replica: int
    listen: tuple[str, int]
    target: tuple[str, int]
    make_socket: SocketFactory


def uniform_plan(spec: LinkSpec | None) -> LinkPlan:
    """Every directed replica pair shaped alike."""
    return lambda _source, _dest: spec


class ShapedRelay:
    """Shapes every replica-to-replica connection of a cluster; clients pass unshaped.

    ``sent[(i, j)]`` counts the bytes replica ``i`` sent to replica ``j`` through the relay (all
    of them, from the link's ``auth`` frame on), ``lost[(i, j)]`` the segments the model lost."""

    def __init__(self, routes: list[Route], plan: LinkPlan, seed: int) -> None:
        self.routes = routes
        self.plan = plan
        self.seed = seed
        self.sent: Counter[tuple[int, int]] = Counter()
        self.lost: Counter[tuple[int, int]] = Counter()
        self.connections = 0
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        for route in self.routes:
            sock = route.make_socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(route.listen)
            sock.setblocking(False)
            server = await asyncio.start_server(self._handler(route), sock=sock)
            self._servers.append(server)

    def _handler(
        self, route: Route
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(route, reader, writer)

        return handle

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()

    async def _connect(self, route: Route) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = route.make_socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, route.target)
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _handle(
        self, route: Route, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter
    ) -> None:
        try:
            ureader, uwriter = await self._connect(route)
        except OSError:
            cwriter.close()
            return
        self._writers.update((cwriter, uwriter))
        self.connections += 1
        try:
            challenge = await read_frame(ureader)
            cwriter.write(HEADER.pack(len(challenge)) + challenge)
            payload = await read_frame(creader)
            first = HEADER.pack(len(payload)) + payload
            message = decode_payload(payload)
            source = message.get("from") if message["t"] == "auth" else None
            spec = None
            if isinstance(source, int) and not isinstance(source, bool):
                spec = self.plan(source, route.replica)
            if spec is None or not isinstance(source, int):
                uwriter.write(first)
                await asyncio.gather(pump(creader, uwriter), pump(ureader, cwriter))
                return
            loop = asyncio.get_running_loop()
            rng = random.Random(f"{self.seed}:{source}:{route.replica}:{self.connections}")
            shaper = LinkShaper(spec, rng, loop.time())
            pair = (source, route.replica)
            await asyncio.gather(
                _shaped_pump(creader, cwriter, uwriter, shaper, first, self.sent, self.lost, pair),
                pump(ureader, cwriter),
            )
        except (OSError, asyncio.IncompleteReadError, FrameError):
            pass
        finally:
            self._writers.difference_update((cwriter, uwriter))
            cwriter.close()
            uwriter.close()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF or a broken link, then close ``writer``."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _shaped_pump(
    reader: asyncio.StreamReader,
    source: asyncio.StreamWriter,
    writer: asyncio.StreamWriter,
    shaper: LinkShaper,
    first: bytes,
    sent: Counter[tuple[int, int]],
    lost: Counter[tuple[int, int]],
    pair: tuple[int, int],
) -> None:
    """Reads as the bytes come, writes each segment when ``shaper`` says it arrives. At most
    ``RELAY_BUFFER_BYTES`` wait in between; beyond that it stops reading, so the sender's own
    socket buffer and queue fill as behind a slow link. When the far end goes, the connection
    to ``source`` is closed too, so the sender sees its link fail."""
    loop = asyncio.get_running_loop()
    pending: deque[tuple[float, bytes]] = deque()
    held = 0
    more = asyncio.Event()
    room = asyncio.Event()
    room.set()
    done = False

    def take(data: bytes) -> None:
        nonlocal held
        before = shaper.lost
        offset = 0
        for at, size in shaper.send(loop.time(), len(data)):
            pending.append((at, data[offset : offset + size]))
            offset += size
        held += len(data)
        sent[pair] += len(data)
        lost[pair] += shaper.lost - before
        more.set()
        if held >= RELAY_BUFFER_BYTES:
            room.clear()

    async def read() -> None:
        nonlocal done
        take(first)
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                take(data)
                await room.wait()
        done = True
        more.set()

    async def write() -> None:
        nonlocal held
        with contextlib.suppress(OSError):
            while True:
                if not pending:
                    if done:
                        break
                    more.clear()
                    await more.wait()
                    continue
                wait = pending[0][0] - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = loop.time()
                chunks = []
                while pending and pending[0][0] <= now:
                    chunks.append(pending.popleft()[1])
                data = b"".join(chunks)
                held -= len(data)
                if held < RELAY_BUFFER_BYTES:
                    room.set()
                writer.write(data)
                await writer.drain()
        writer.close()
        source.close()
        room.set()

    await asyncio.gather(read(), write())
