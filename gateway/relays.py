"""The relay command/ACK protocol of the gateway: switch a node's relay and wait for its ACK.

A command is one COMMAND frame (``firmware.frame``) under the node's key, with a sequence number
that only moves forward (at least the clock's seconds, so a restart with lost state still moves
forward; persisted through ``snapshot``). It goes out through the source the node was last
heard on, else through any source of its configured transport; the node's ACK comes back as a
frame through the ingest path (``acked``). A command without an ACK within
``command_timeout_s`` of the injected clock is a ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from firmware import frame
from gateway.clock import Clock
from gateway.config import NodeConfig
from gateway.ingest import Ack
from gateway.sources.base import NodeSource, SourceError


class RelayCommander:
    def __init__(
        self,
        node_keys: Mapping[int, bytes],
        nodes: Mapping[int, NodeConfig],
        sources: Sequence[NodeSource],
        clock: Clock,
        timeout_s: float,
    ) -> None:
        self.node_keys, self.nodes, self.sources = node_keys, nodes, sources
        self.clock, self.timeout_s = clock, timeout_s
        self._waiting: dict[tuple[int, int], asyncio.Future[int]] = {}
        self._cmd_seq: dict[int, int] = {}
        self._heard_on: dict[int, NodeSource] = {}

    def heard(self, node_id: int, transport: str) -> None:
        """An authentic frame of ``node_id`` came through ``transport``: answer it there."""
        if node_id in self.nodes:
            for s in self.sources:
                if s.name == transport:
                    self._heard_on[node_id] = s

    def acked(self, ack: Ack) -> None:
        waiting = self._waiting.get((ack.node_id, ack.cmd_seq))
        if waiting is not None and not waiting.done():
            waiting.set_result(ack.status)

    def _candidates(self, node_id: int) -> list[NodeSource]:
        candidates = [self._heard_on[node_id]] if node_id in self._heard_on else []
        node = self.nodes.get(node_id)
        candidates += [
            s
            for s in self.sources
            if s not in candidates and node is not None and s.name == node.transport
        ]
        return candidates

    async def send(self, node_id: int, relay: int, on: bool) -> int:
        """Switch a node's relay; returns the node's ack status (``firmware.frame.S_*``).
        Raises ``SourceError`` if no source can reach the node, ``TimeoutError`` without ack."""
        payload = frame.pack_command(relay, frame.A_ON if on else frame.A_OFF)
        return await self.send_command(node_id, frame.T_COMMAND, payload)

    async def send_command(self, node_id: int, ftype: int, payload: bytes) -> int:
        """Send one authenticated command frame (``T_COMMAND``, or ``T_CALIBRATE`` built by
        ``gateway.calibration``) and wait for the node's ack status. Raises as ``send``."""
        key = self.node_keys.get(node_id)
        if key is None:
            raise SourceError(f"node {node_id}: no key")
        seq = max(self._cmd_seq.get(node_id, 0) + 1, self.clock.now_ms() // 1000) & 0xFFFFFFFF
        self._cmd_seq[node_id] = seq
        raw = frame.encode(key, ftype, node_id, seq, payload)
        candidates = self._candidates(node_id)
        if not candidates:
            raise SourceError(f"node {node_id}: no source reaches it")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[(node_id, seq)] = fut
        try:
            last: Exception | None = None
            for source in candidates:
                try:
                    await source.send_command(node_id, raw)
                    break
                except SourceError as exc:
                    last = exc
            else:
                raise SourceError(f"node {node_id}: {last}")
            deadline = self.clock.now_ms() + int(self.timeout_s * 1000)
            timer: asyncio.Future[Any] = asyncio.ensure_future(self.clock.sleep_until(deadline))
            waiting: set[asyncio.Future[Any]] = {fut, timer}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
            if not fut.done():
                raise TimeoutError(f"node {node_id}: no ack for command {seq}")
            return fut.result()
        finally:
            self._waiting.pop((node_id, seq), None)

    def snapshot(self) -> dict[str, int]:
        return {str(k): v for k, v in self._cmd_seq.items()}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._cmd_seq = {int(k): int(v) for k, v in state.items()}
