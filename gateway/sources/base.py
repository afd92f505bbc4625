"""The seam between device sources and the gateway core.

A node source (BLE, MQTT) hands every raw node frame it receives to a ``FrameSink``; it never
verifies frames itself (the gateway's ``FrameVerifier`` does, in one place). A source runs until
cancelled, reconnects on its own, and never raises because a device misbehaves: it counts the
fault in ``stats()`` and carries on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

# (raw frame bytes, transport name such as "ble" or "mqtt", gateway time of receipt in ms)
FrameSink = Callable[[bytes, str, int], None]


class SourceError(RuntimeError):
    """A command could not be handed to a node (unknown node, link down)."""


@runtime_checkable
class NodeSource(Protocol):
    name: str

    async def run(self, sink: FrameSink) -> None:
        """Receive frames and pass each to ``sink`` until cancelled. Reconnects internally with
        backoff; never raises on device faults."""
        ...

    async def send_command(self, node_id: int, raw: bytes) -> None:
        """Deliver one encoded COMMAND frame to a node. Raises ``SourceError`` if the node is
        unknown to this source or its link is down right now."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters (connects, drops, frames, errors...) for logs and the check command."""
        ...
