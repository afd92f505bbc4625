"""The authenticated link from one replica to another.

Replica links are authenticated at connect time: the accepting side (``ledger.transport``'s
``Listener``) sends a fresh random challenge, the connecting replica answers with its id and an
Ed25519 signature over ``LINK_DOMAIN + canonical({"from", "to", "nonce"})``. From then on every
frame on that connection is attributed to that replica. Consensus messages are signed by the
core as well, so a forged or replayed frame on an authenticated link still fails the core's
checks; the link check keeps unauthenticated strangers from consuming a replica's CPU.

``PeerLink`` is the dialling side: it reconnects with capped exponential backoff and keeps what
waits for a peer bounded in frames and in bytes (the oldest go first).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.encoding import canonical
from ledger.framing import FrameError, encode_frame, read_message
from ledger.limits import DEFAULTS, Counters
from ledger.tasks import cancel_and_wait

LINK_DOMAIN = b"wattmesh/link/v1\x00"
NONCE_BYTES = 32
HANDSHAKE_TIMEOUT_S = 5.0  # a replica's link waiting for the challenge of the peer it dialled
MAX_QUEUED_FRAMES = 20_000
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
WRITE_AHEAD = 1024 * 1024  # bytes a peer link hands to its socket before waiting for it


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


class PeerLink:
    """The outbound, authenticated connection to one other replica, reconnecting with backoff.

    ``send`` never blocks and never raises: frames wait in a queue bounded in frames and in bytes
    while the peer is slow or away (the oldest go first; the protocol's own retransmission
    covers what is dropped). Only ``WRITE_AHEAD`` bytes at a time are handed to the socket, so
    what waits for a peer that does not read stays within ``max_bytes`` plus that."""

    def __init__(
        self,
        me: int,
        peer: int,
        host: str,
        port: int,
        key: Ed25519PrivateKey,
        counters: Counters,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_bytes: int = DEFAULTS["max_link_bytes"],
    ) -> None:
        self.me, self.peer, self.host, self.port = me, peer, host, port
        self.key = key
        self.counters = counters
        self.sleep = sleep
        self.max_bytes = max_bytes
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.connected = False
        self.task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        await cancel_and_wait(self.task)

    @property
    def backlog(self) -> int:
        """Bytes waiting for this peer: queued here and handed to the socket but not sent."""
        writer = self._writer
        unsent = 0 if writer is None else writer.transport.get_write_buffer_size()
        return self.queued_bytes + unsent

    def send_frame(self, frame: bytes) -> None:
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        while len(self.queue) > MAX_QUEUED_FRAMES or (
            self.queued_bytes > self.max_bytes and len(self.queue) > 1
        ):
            self.queued_bytes -= len(self.queue.popleft())
            self.counters["frames_dropped"] += 1  # the oldest goes; the protocol re-sends
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
                self._writer = writer
                backoff = BACKOFF_MIN_S
                self.counters["links_up"] += 1
                eof = asyncio.ensure_future(reader.read(1))
                try:
                    while not eof.done():
                        transport = writer.transport
                        while self.queue and transport.get_write_buffer_size() < WRITE_AHEAD:
                            frame = self.queue.popleft()
                            self.queued_bytes -= len(frame)
                            writer.write(frame)
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
                self._writer = None
                writer.close()
            self.counters["reconnects"] += 1
            await self.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)
