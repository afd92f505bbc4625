"""Frames: a 4-byte big-endian length, then that many bytes of one canonical-encoded message
(``ledger.encoding``). The one wire framing of replicas and clients.

``FrameDecoder`` is the sans-IO parser (bytes in, payloads out); ``read_frame`` and
``read_message`` are the thin asyncio readers around the same header. Bytes that are not a valid
frame raise ``FrameError``; the connection that sent them is dropped by its reader.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from ledger.encoding import EncodingError, canonical, decode

HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024  # a replica's frames; a client's are bounded by max_client_frame


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
