"""Framing and links over loopback TCP: the only place replicas and clients touch sockets.

Frame: a 4-byte big-endian length, then that many bytes of one canonical-encoded message
(``ledger.encoding``). ``FrameDecoder`` is the sans-IO parser (bytes in, payloads out); the asyncio
parts around it are thin.

Replica links are authenticated at connect time: the accepting side sends a fresh random
challenge, the connecting replica answers with its id and an Ed25519 signature over
``LINK_DOMAIN + canonical({"from", "to", "nonce"})``. From then on every frame on that connection is
attributed to that replica. Consensus messages are signed by the core as well, so a forged or
replayed frame on an authenticated link still fails the core's checks; the link check keeps
unauthenticated strangers from consuming a replica's CPU. Connections that do not answer the
challenge with ``auth`` are client connections (requests, queries, replies).

A peer that sends garbage (bad length, bad encoding, bad auth) has its connection dropped and
counted; nothing it sends can raise out of the reader. Outbound links reconnect with capped
exponential backoff and drop the oldest queued frames when a peer is gone for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.encoding import EncodingError, canonical, decode

HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024
LINK_DOMAIN = b"wattmesh/link/v1\x00"
NONCE_BYTES = 32
HANDSHAKE_TIMEOUT_S = 5.0
MAX_QUEUED_FRAMES = 20_000
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0


class FrameError(ValueError):
    """Bytes that are not a valid frame; the connection that sent them is dropped."""


def encode_frame(message: Any) -> bytes:
    return frame(canonical(message, checked=False))


def frame(payload: bytes) -> bytes:
    """A frame around a message's canonical bytes."""
    if len(payload) > MAX_FRAME:
        raise FrameError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    """A frame's payload as a message object (a dict with a string ``t``)."""
    try:
        value = decode(payload, strict=False)
    except EncodingError as exc:
        raise FrameError(str(exc)) from exc
    if not isinstance(value, dict) or not isinstance(value.get("t"), str):
        raise FrameError("message must be an object with a string 't'")
    return value


class FrameDecoder:
    """Sans-IO: ``feed`` bytes, get whole payloads; raises ``FrameError`` on an oversized header."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self._max:
                raise FrameError(f"frame of {size} bytes exceeds {self._max}")
            if len(self._buf) < HEADER.size + size:
                break
            out.append(bytes(self._buf[HEADER.size : HEADER.size + size]))
            del self._buf[: HEADER.size + size]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


async def read_frame(reader: asyncio.StreamReader, max_frame: int = MAX_FRAME) -> bytes:
    """One payload; raises ``asyncio.IncompleteReadError`` at EOF and ``FrameError`` on garbage."""
    header = await reader.readexactly(HEADER.size)
    (size,) = HEADER.unpack(header)
    if size > max_frame:
        raise FrameError(f"frame of {size} bytes exceeds {max_frame}")
    return await reader.readexactly(size)


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    return decode_payload(await read_frame(reader))


def link_proof(key: Ed25519PrivateKey, sender: int, receiver: int, nonce: str) -> str:
    body = canonical({"from": sender, "nonce": nonce, "to": receiver}, checked=False)
    return key.sign(LINK_DOMAIN + body).hex()


def check_link_proof(
    public: Ed25519PublicKey, sender: int, receiver: int, nonce: str, proof: Any
) -> bool:
    if not isinstance(proof, str) or len(proof) != 128:
        return False
    try:
        sig = bytes.fromhex(proof)
        body = canonical({"from": sender, "nonce": nonce, "to": receiver}, checked=False)
        public.verify(sig, LINK_DOMAIN + body)
    except (ValueError, InvalidSignature):
        return False
    return True


class Counters(Counter[str]):
    """Named event counts (rejected frames, dropped connections, reconnects) for ``status``."""


PeerHandler = Callable[[int, dict[str, Any]], None]
ClientHandler = Callable[["ClientConn", dict[str, Any]], None]


class ClientConn:
    """One accepted client connection; replies are queued on its writer without awaiting."""

    def __init__(self, writer: asyncio.StreamWriter, nonce: str = "") -> None:
        self.writer = writer
        self.closed = False
        self.nonce = nonce  # the challenge this connection was sent (a client may sign it)
        self.reader: bytes | None = None  # the key the client proved it holds (``hello``)

    def send(self, message: Any) -> None:
        if self.closed or self.writer.is_closing():
            self.closed = True
            return
        try:
            self.writer.write(encode_frame(message))
        except (ConnectionError, RuntimeError, FrameError, EncodingError):
            self.closed = True


class Listener:
    """Accepts replicas and clients on one port and hands their messages to the owner."""

    def __init__(
        self,
        me: int,
        peer_keys: dict[int, Ed25519PublicKey],
        on_peer: PeerHandler,
        on_client: ClientHandler,
        counters: Counters,
        on_client_closed: Callable[[ClientConn], None] | None = None,
    ) -> None:
        self.me = me
        self.peer_keys = peer_keys
        self.on_peer = on_peer
        self.on_client = on_client
        self.on_client_closed = on_client_closed
        self.counters = counters
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._accept, host, port, reuse_address=True)

    async def close(self) -> None:
        """Stop accepting and end every connection by closing its socket (cancelling the
        handler tasks instead makes asyncio log each one as an error)."""
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except FrameError:
            self.counters["rejected_frames"] += 1
            self.counters["dropped_connections"] += 1
        except TimeoutError:
            self.counters["handshake_timeouts"] += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug behind one connection must not take down the replica
            self.counters["handler_errors"] += 1
            self.counters["dropped_connections"] += 1
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonce = os.urandom(NONCE_BYTES).hex()
        writer.write(encode_frame({"t": "challenge", "nonce": nonce, "replica": self.me}))
        first = await asyncio.wait_for(read_message(reader), HANDSHAKE_TIMEOUT_S)
        if first["t"] == "auth":
            sender = first.get("from")
            key = self.peer_keys.get(sender) if isinstance(sender, int) else None
            if key is None or sender == self.me:
                raise FrameError("auth from an unknown replica")
            assert isinstance(sender, int)
            if not check_link_proof(key, sender, self.me, nonce, first.get("proof")):
                self.counters["bad_link_auth"] += 1
                raise FrameError("bad link proof")
            while True:
                payload = await read_frame(reader)
                try:
                    message = decode_payload(payload)
                except FrameError:
                    self.counters["rejected_frames"] += 1
                    raise
                self.on_peer(sender, message)
        conn = ClientConn(writer, nonce)
        try:
            self.on_client(conn, first)
            while True:
                message = await read_message(reader)
                self.on_client(conn, message)
                if writer.transport.get_write_buffer_size() > 4 * MAX_FRAME:
                    await writer.drain()
        finally:
            conn.closed = True
            if self.on_client_closed is not None:
                self.on_client_closed(conn)


class PeerLink:
    """The outbound, authenticated connection to one other replica, reconnecting with backoff.

    ``send`` never blocks and never raises: frames wait in a bounded queue while the peer is away
    (the protocol's own retransmission covers what is dropped)."""

    def __init__(
        self,
        me: int,
        peer: int,
        host: str,
        port: int,
        key: Ed25519PrivateKey,
        counters: Counters,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.me, self.peer, self.host, self.port = me, peer, host, port
        self.key = key
        self.counters = counters
        self.sleep = sleep
        self.queue: deque[bytes] = deque(maxlen=MAX_QUEUED_FRAMES)
        self.wakeup = asyncio.Event()
        self.connected = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    def send_frame(self, frame: bytes) -> None:
        if len(self.queue) == MAX_QUEUED_FRAMES:
            self.counters["frames_dropped"] += 1  # the oldest goes; the protocol re-sends
        self.queue.append(frame)
        self.wakeup.set()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await self.sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            try:
                challenge = await asyncio.wait_for(read_message(reader), HANDSHAKE_TIMEOUT_S)
                nonce = challenge.get("nonce")
                if challenge["t"] != "challenge" or not isinstance(nonce, str):
                    raise FrameError("expected a challenge")
                proof = link_proof(self.key, self.me, self.peer, nonce)
                writer.write(encode_frame({"t": "auth", "from": self.me, "proof": proof}))
                self.connected = True
                backoff = BACKOFF_MIN_S
                self.counters["links_up"] += 1
                eof = asyncio.ensure_future(reader.read(1))
                try:
                    while not eof.done():
                        while self.queue:
                            writer.write(self.queue.popleft())
                        await writer.drain()
                        self.wakeup.clear()
                        if self.queue:
                            continue
                        waiter = asyncio.ensure_future(self.wakeup.wait())
                        await asyncio.wait({waiter, eof}, return_when=asyncio.FIRST_COMPLETED)
                        waiter.cancel()
                finally:
                    eof.cancel()
            except (OSError, asyncio.IncompleteReadError, FrameError, TimeoutError):
                pass
            finally:
                self.connected = False
                writer.close()
            self.counters["reconnects"] += 1
            await self.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)
