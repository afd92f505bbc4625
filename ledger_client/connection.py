"""The client's connection to one replica (asyncio): connect and reconnect, the ``hello`` that
proves the client's key, requests and awaits sent in frames a replica accepts, replies read in
chunks and handed to the ``LedgerClient`` that owns the connection.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.framing import (
    HEADER,
    FrameDecoder,
    FrameError,
    decode_payload,
    encode_frame,
    read_message,
)
from ledger.limits import MAX_CLIENT_FRAME
from ledger.tx import public_bytes
from ledger_client.protocol import hello_bytes

if TYPE_CHECKING:
    from ledger_client.client import LedgerClient

RECONNECT_S = 0.2
MAX_PER_FRAME = 500  # transactions or awaited ids in one frame
READ_CHUNK = 1 << 16


class ReplicaConnection:
    """The client's connection to one replica: reconnects, proves the client's key (``hello``),
    gathers the requests and awaits of one turn of the loop into frames, and hands each message
    it reads to the client."""

    def __init__(self, client: LedgerClient, index: int, host: str, port: int) -> None:
        self.client, self.index, self.host, self.port = client, index, host, port
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self._requests: list[dict[str, Any]] = []
        self._awaits: list[str] = []
        self._flush_scheduled = False

    def send(self, message: dict[str, Any]) -> bool:
        if self.writer is None or self.writer.is_closing():
            return False
        self.writer.write(encode_frame(message))
        return True

    def send_list(self, kind: str, field: str, items: list[Any]) -> None:
        """``items`` in frames of ``kind``, halved until each fits a client frame (a replica
        drops a connection that sends a larger one)."""
        if self.writer is None or self.writer.is_closing():
            return
        data = encode_frame({"t": kind, field: items})
        if len(data) - HEADER.size > MAX_CLIENT_FRAME and len(items) > 1:
            half = len(items) // 2
            self.send_list(kind, field, items[:half])
            self.send_list(kind, field, items[half:])
            return
        self.writer.write(data)

    def request(self, wire: dict[str, Any]) -> None:
        """Queue a transaction; all queued in one turn of the loop go out in one frame."""
        self._requests.append(wire)
        self._schedule()

    def await_reply(self, tx_id: str) -> None:
        self._awaits.append(tx_id)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        requests, self._requests = self._requests, []
        awaits, self._awaits = self._awaits, []
        for start in range(0, len(requests), MAX_PER_FRAME):
            self.send_list("requests", "txs", requests[start : start + MAX_PER_FRAME])
        for start in range(0, len(awaits), MAX_PER_FRAME):
            self.send_list("await", "tx_ids", awaits[start : start + MAX_PER_FRAME])

    async def run(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                challenge = await read_message(reader)
                key = self.client.key
                if key is not None:  # authenticate the connection: queries read as this key
                    writer.write(encode_frame(hello(key, challenge)))
                self.writer = writer
                self.ready.set()
                self.client._on_connect(self.index)
                # read whatever has arrived and split it into frames: one read for many
                # replies (two awaited reads per frame cost more than the reply itself)
                decoder = FrameDecoder()
                while True:
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        break
                    for payload in decoder.feed(data):
                        self.client._on_message(self.index, decode_payload(payload))
            except (OSError, asyncio.IncompleteReadError, FrameError):
                pass
            finally:
                was_up = self.writer is not None
                self.ready.clear()
                self.writer = None
                writer.close()
                if was_up:
                    self.client._on_disconnect(self.index)
            await asyncio.sleep(RECONNECT_S)


def hello(key: Ed25519PrivateKey, challenge: dict[str, Any]) -> dict[str, Any]:
    """The ``hello`` that proves ``key`` to the replica that sent ``challenge``."""
    nonce, replica = challenge.get("nonce"), challenge.get("replica")
    if not isinstance(nonce, str) or isinstance(replica, bool) or not isinstance(replica, int):
        raise FrameError("the replica's challenge has no nonce or replica id")
    key_hex = public_bytes(key.public_key()).hex()
    sig = key.sign(hello_bytes(nonce, replica, key_hex)).hex()
    return {"t": "hello", "key": key_hex, "sig": sig}

