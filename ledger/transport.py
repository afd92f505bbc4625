"""The listening side of a replica: the one port replicas and clients connect to.

``Listener`` accepts every connection, sends it a fresh random challenge and reads its first
frame: a replica's link answers with ``auth`` (checked with ``ledger.peer_link``'s proof, then
every frame on it is attributed to that replica); any other first frame makes it a client
connection (requests, queries, replies; ``ClientConn``). Frames are ``ledger.framing``'s.

A peer that sends garbage (bad length, bad encoding, bad auth) has its connection dropped and
counted; nothing it sends can raise out of the reader.

What a connection may make a replica hold is bounded (``ledger.limits``): connections in all and
per source, the handshake's and a frame's duration, a client's idle time, frame sizes (a
client's 1 MiB, a replica's 8 MiB), the bytes of client frames being read at once (``Budget``),
replies a client leaves unread, and the bytes queued for a peer (``ledger.peer_link``). Each
breach closes that connection only, is counted, and is logged once per cause per minute
(``Incidents``). (By hand because asyncio's server has none of these: no connection cap, no
deadline, no bound on what a reader buffers while ``readexactly`` waits for a large frame; the
limits sit on the same streams.)
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.encoding import EncodingError
from ledger.framing import HEADER, FrameError, decode_payload, encode_frame, read_frame
from ledger.limits import HANDSHAKE_SLOTS, Counters, Incidents, Limits
from ledger.peer_link import NONCE_BYTES, check_link_proof
from ledger.tasks import cancel_and_wait

log = logging.getLogger(__name__)

READ_LIMIT = 32 * 1024  # a connection's read buffer beyond the frame being read
SMALL_FRAME = 32 * 1024  # frames above this are read only within the read budget
MAX_LINKS_PER_PEER = 2  # inbound links one replica may hold open (a reconnect overlaps)
WATCHDOG_S = 1.0


PeerHandler = Callable[[int, dict[str, Any]], None]
ClientHandler = Callable[["ClientConn", dict[str, Any]], None]


class Budget:
    """Bytes of client frames being received, bounded in all and per source address: a frame
    larger than ``SMALL_FRAME`` is read only once its size is taken from here, so what strangers
    make a replica buffer does not grow with the number of their connections."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total, self.per_source = total, per_source
        self.used = 0
        self.by_source: dict[str, int] = {}

    def take(self, source: str, size: int) -> bool:
        mine = self.by_source.get(source, 0)
        if self.used + size > self.total or mine + size > self.per_source:
            return False
        self.used += size
        self.by_source[source] = mine + size
        return True

    def give(self, source: str, size: int) -> None:
        self.used -= size
        left = self.by_source[source] - size
        if left:
            self.by_source[source] = left
        else:
            del self.by_source[source]


class ClientConn:
    """One accepted client connection; replies are queued on its writer without awaiting.
    A client that lets more than ``max_backlog`` bytes of replies pile up unread is cut off."""

    __slots__ = (
        "closed", "deadline", "max_backlog", "nonce", "overflowed", "reader", "source", "writer",
    )

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        source: str = "",
        max_backlog: int = 1 << 62,
        nonce: str = "",
    ) -> None:
        self.writer = writer
        self.source = source
        self.max_backlog = max_backlog
        self.closed = False
        self.nonce = nonce  # the challenge this connection was sent (a client may sign it)
        self.reader: bytes | None = None  # the key the client proved it holds (``hello``)
        self.overflowed = False  # closed for not reading its replies
        self.deadline = float("inf")  # loop time after which the watchdog closes it

    def send(self, message: Any) -> None:
        if self.closed or self.writer.is_closing():
            self.closed = True
            return
        try:
            self.writer.write(encode_frame(message))
        except (ConnectionError, RuntimeError, FrameError, EncodingError):
            self.closed = True
            return
        if self.writer.transport.get_write_buffer_size() > self.max_backlog:
            self.closed = self.overflowed = True
            self.writer.close()  # the listener counts it (``backlog_exceeded``) as it ends

    @property
    def backlog(self) -> int:
        return 0 if self.closed else self.writer.transport.get_write_buffer_size()


class _Pending:
    """A connection that has not sent its first frame yet (a client or a replica's link)."""

    __slots__ = ("deadline", "source", "writer")

    def __init__(self, writer: asyncio.StreamWriter, source: str, deadline: float) -> None:
        self.writer, self.source, self.deadline = writer, source, deadline


def _no_owner_to_tell(conn: ClientConn) -> None:
    """``on_client_closed`` of a listener whose owner keeps nothing per client connection."""


def _source(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class Listener:
    """Accepts replicas and clients on one port and hands their messages to the owner.

    Every connection starts in a bounded set of handshakes: it must send its first whole frame
    within ``handshake_ms``; when the set is full the oldest handshake is closed (a source's own
    oldest once it holds a quarter of the set), so a flood of idle connections only pushes out
    itself while a replica or client that answers at once gets through. A first frame ``auth``
    with a valid link proof makes it a peer link (at most two per replica, the older one closed);
    anything else makes it a client connection, taken only while there are client slots left in
    all (``client_slots``) and for its source (``max_clients_per_source``). A client that sends
    nothing for ``client_idle_ms``, or whose frame takes longer than ``frame_ms`` to arrive, is
    closed. A watchdog, not a timer per read, enforces these deadlines."""

    def __init__(
        self,
        me: int,
        peer_keys: dict[int, Ed25519PublicKey],
        on_peer: PeerHandler,
        on_client: ClientHandler,
        counters: Counters,
        on_client_closed: Callable[[ClientConn], None] | None = None,
        *,
        limits: Limits | None = None,
        client_slots: int | None = None,
        handshake_slots: int | None = None,
        incidents: Incidents | None = None,
    ) -> None:
        self.me = me
        self.peer_keys = peer_keys
        self.on_peer = on_peer
        self.on_client = on_client
        self.on_client_closed = on_client_closed or _no_owner_to_tell
        self.counters = counters
        self.limits = limits or Limits.from_dict()
        self.client_slots = client_slots if client_slots is not None else self.limits.max_clients
        self.handshake_slots = handshake_slots or HANDSHAKE_SLOTS[0]
        self.incidents = incidents or Incidents(counters, log)
        self.budget = Budget(self.limits.read_budget, self.limits.read_budget_per_source)
        self.server: asyncio.Server | None = None
        self.clients: dict[ClientConn, None] = {}
        self.clients_by_source: dict[str, dict[ClientConn, None]] = {}  # in order of arrival
        self.pending: dict[asyncio.StreamWriter, _Pending] = {}  # in order of arrival
        self.pending_by_source: dict[str, dict[asyncio.StreamWriter, None]] = {}
        self.peer_writers: dict[int, list[asyncio.StreamWriter]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(
            self._accept, host, port, reuse_address=True, limit=READ_LIMIT
        )
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Stop accepting and end every connection by closing its socket (cancelling the
        handler tasks instead makes asyncio log each one as an error)."""
        if self.server is not None:
            self.server.close()
        await cancel_and_wait(self._watchdog)
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    def drop_peer(self, replica: int) -> None:
        """Close the links ``replica`` opened (it was removed from the replica set); a new one
        is refused, its key being no longer in ``peer_keys``."""
        for writer in self.peer_writers.pop(replica, []):
            writer.close()

    def snapshot(self) -> dict[str, int]:
        """Connection counts and budgets for ``status``."""
        return {
            "clients": len(self.clients),
            "client_slots": self.client_slots,
            "handshakes": len(self.pending),
            "peer_links_in": sum(len(w) for w in self.peer_writers.values()),
            "read_budget_used": self.budget.used,
        }

    # -- deadlines ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        shortest = min(self.limits.handshake_ms, self.limits.frame_ms, self.limits.client_idle_ms)
        period = max(0.01, min(WATCHDOG_S, shortest / 4000))
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for pending in [p for p in self.pending.values() if p.deadline <= now]:
                self.incidents("handshake_timeouts")
                pending.writer.close()
            for conn in [c for c in self.clients if c.deadline <= now]:
                self.incidents("client_timeouts")
                conn.closed = True
                conn.writer.close()

    # -- accepting ------------------------------------------------------------------------------

    def _admit_pending(self, writer: asyncio.StreamWriter, source: str) -> None:
        mine = self.pending_by_source.setdefault(source, {})
        victim: asyncio.StreamWriter | None = None
        if len(mine) >= max(1, self.handshake_slots // 4):
            victim = next(iter(mine))
        elif len(self.pending) >= self.handshake_slots:
            victim = next(iter(self.pending))
        if victim is not None:
            self.incidents("handshakes_evicted")
            self._forget_pending(victim)
            victim.close()
        deadline = asyncio.get_running_loop().time() + self.limits.handshake_ms / 1000
        self.pending[writer] = _Pending(writer, source, deadline)
        mine[writer] = None

    def _forget_pending(self, writer: asyncio.StreamWriter) -> None:
        pending = self.pending.pop(writer, None)
        if pending is None:
            return
        mine = self.pending_by_source.get(pending.source)
        if mine is not None:
            mine.pop(writer, None)
            if not mine:
                del self.pending_by_source[pending.source]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        source = _source(writer)
        self._admit_pending(writer, source)
        try:
            await self._serve(reader, writer, source)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except FrameError as exc:
            self.counters["rejected_frames"] += 1
            self.incidents("dropped_connections", str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug behind one connection must not take down the replica
            self.counters["handler_errors"] += 1
            self.incidents("dropped_connections", f"{type(exc).__name__}: {exc}")
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._writers.discard(writer)
            self._forget_pending(writer)
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
    ) -> None:
        nonce = os.urandom(NONCE_BYTES).hex()
        writer.write(encode_frame({"t": "challenge", "nonce": nonce, "replica": self.me}))
        first = decode_payload(await self._read(reader, source, self.limits.max_client_frame))
        self._forget_pending(writer)
        if first["t"] == "auth":
            await self._serve_peer(reader, writer, nonce, first)
            return
        if not self._room_for_client(source):
            self.incidents("refused_clients", f"from {source}")
            return
        await self._serve_client(reader, writer, source, nonce, first)

    def _room_for_client(self, source: str) -> bool:
        """Whether a client from ``source`` may be taken. Within its source's cap but with all
        slots taken, the source holding the most connections gives up its oldest if it holds
        more than this one's: a flood from a few addresses cannot lock the others out."""
        mine = len(self.clients_by_source.get(source, ()))
        if mine >= self.limits.max_clients_per_source:
            return False
        if len(self.clients) < self.client_slots:
            return True
        largest = max(self.clients_by_source.values(), key=len)
        if len(largest) <= mine + 1:
            return False
        victim = next(iter(largest))
        self.incidents("clients_evicted", f"from {victim.source}")
        victim.closed = True
        victim.writer.close()
        self._forget_client(victim)
        return True

    def _forget_client(self, conn: ClientConn) -> None:
        if conn not in self.clients:
            return  # forgotten already (evicted)
        del self.clients[conn]
        theirs = self.clients_by_source[conn.source]
        del theirs[conn]
        if not theirs:
            del self.clients_by_source[conn.source]

    async def _read(
        self,
        reader: asyncio.StreamReader,
        source: str,
        max_frame: int,
        conn: ClientConn | None = None,
    ) -> bytes:
        """One frame's payload; a frame above ``SMALL_FRAME`` is read only within the budget.
        A client's frame must then arrive within ``frame_ms`` of its header."""
        header = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        if size > max_frame:
            raise FrameError(f"frame of {size} bytes exceeds {max_frame}")
        if conn is not None:
            conn.deadline = asyncio.get_running_loop().time() + self.limits.frame_ms / 1000
        if size <= SMALL_FRAME:
            return await reader.readexactly(size)
        if not self.budget.take(source, size):
            self.incidents("read_budget_full", f"from {source}")
            raise FrameError("read budget full")
        try:
            return await reader.readexactly(size)
        finally:
            self.budget.give(source, size)

    async def _serve_peer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        nonce: str,
        first: dict[str, Any],
    ) -> None:
        sender = first.get("from")
        key = self.peer_keys.get(sender) if isinstance(sender, int) else None
        if key is None or sender == self.me:
            raise FrameError("auth from an unknown replica")
        assert isinstance(sender, int)
        if not check_link_proof(key, sender, self.me, nonce, first.get("proof")):
            self.counters["bad_link_auth"] += 1
            raise FrameError("bad link proof")
        links = self.peer_writers.setdefault(sender, [])
        links.append(writer)
        if len(links) > MAX_LINKS_PER_PEER:
            links.pop(0).close()  # a peer reconnected: its older link goes
        try:
            while True:
                payload = await read_frame(reader)
                try:
                    message = decode_payload(payload)
                except FrameError:
                    self.counters["rejected_frames"] += 1
                    raise
                self.on_peer(sender, message)
        finally:
            if writer in links:
                links.remove(writer)

    async def _serve_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: str,
        nonce: str,
        first: dict[str, Any],
    ) -> None:
        limits = self.limits
        conn = ClientConn(writer, source, limits.max_client_backlog, nonce)
        self.clients[conn] = None
        self.clients_by_source.setdefault(source, {})[conn] = None
        loop = asyncio.get_running_loop()
        idle_s = limits.client_idle_ms / 1000
        try:
            conn.deadline = loop.time() + idle_s
            self.on_client(conn, first)
            while not conn.closed:
                payload = await self._read(reader, source, limits.max_client_frame, conn)
                self.on_client(conn, decode_payload(payload))
                conn.deadline = loop.time() + idle_s
                if conn.backlog > limits.max_client_backlog // 2:
                    await writer.drain()  # read no more from a client that does not read
        finally:
            if conn.overflowed:
                self.incidents("backlog_exceeded", f"from {source}")
            conn.closed = True
            self._forget_client(conn)
            self.on_client_closed(conn)
