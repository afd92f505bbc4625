"""BLE node source: the gateway's link to wattmesh nodes over Bluetooth Low Energy, via bleak.

One task per configured node: connect, subscribe to the readings and ack characteristics of the
node profile, hand every notification's bytes to the sink unchanged (verification is the sink's
job), write COMMAND frames to the command characteristic, and after a drop or a failed connect
try again with exponential backoff and jitter. A node's faults stay inside its own task.

Only the public bleak API is used (``BleakClient``); ``backend=None`` is bleak's platform backend
(BlueZ on a Raspberry Pi), and tests and the demo pass a bumble-backed backend class instead.

Security: a node with a passkey (``BleNode.passkey``, ``firmware.ble_guard.passkey`` of its key)
is connected with ``pair=True``: the link is encrypted under the stored bond, or paired (LE Secure
Connections, Passkey Entry, bonding) before any notification is subscribed or command written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakError

from gateway.clock import Clock, SystemClock
from gateway.config import BLE_ADDRESS_RE
from gateway.sources.base import FrameSink, SourceError
from hardware.ble.profile import PROFILE

log = logging.getLogger(__name__)

TRANSPORT = "ble"
_ADDRESS = BLE_ADDRESS_RE
DEFAULT_CONNECT_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class BleNode:
    node_id: int
    address: str
    passkey: int | None = None  # None: no pairing (a node without link security)

    def __post_init__(self) -> None:
        if not 0 <= self.node_id <= 0xFFFF:
            raise ValueError(f"BLE node id {self.node_id} out of range 0..65535")
        if self.passkey is not None and not 0 <= self.passkey <= 999_999:
            raise ValueError(f"BLE node {self.node_id}: passkey must be 0..999999")
        if _ADDRESS.fullmatch(self.address) is None:
            raise ValueError(
                f"BLE node {self.node_id}: address {self.address!r} is not AA:BB:CC:DD:EE:FF"
            )


def backoff_delay(attempt: int, initial_s: float, max_s: float, u: float) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): exponential from ``initial_s``,
    capped at ``max_s``, scaled by ``u`` in [0, 1] into its upper half ("equal jitter"), so that
    many nodes that dropped together do not all retry at the same instant."""
    base = min(max_s, initial_s * (2.0 ** min(attempt, 62)))
    return base * (0.5 + 0.5 * min(1.0, max(0.0, u)))


class _Link:
    """The state of one node's connection."""

    def __init__(self, node: BleNode) -> None:
        self.node = node
        self.client: BleakClient | None = None
        self.write_lock = asyncio.Lock()


class BleNodeSource:
    """A ``NodeSource`` for BLE nodes (see ``gateway.sources.base``)."""

    name = TRANSPORT

    def __init__(
        self,
        nodes: Sequence[BleNode],
        *,
        backend: type | None = None,
        reconnect_initial_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Clock | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        rng: random.Random | None = None,
        silence_timeout_s: float | None = None,
    ) -> None:
        if reconnect_initial_s <= 0 or reconnect_max_s < reconnect_initial_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
        ids = [n.node_id for n in nodes]
        if len(set(ids)) != len(ids):
            raise ValueError("BLE nodes: duplicate node id")
        self._links = {n.node_id: _Link(n) for n in nodes}
        self._backend = backend
        self._initial = reconnect_initial_s
        self._max = reconnect_max_s
        self._sleep = sleep
        self._clock: Clock = clock if clock is not None else SystemClock()
        if silence_timeout_s is not None and not silence_timeout_s > 0:
            raise ValueError("silence_timeout_s must be positive (or None for no watchdog)")
        self._silence_s = silence_timeout_s
        self._timeout = connect_timeout_s
        self._rng = rng if rng is not None else random.Random()
        self._stats: Counter[str] = Counter()
        self._per_node: dict[int, Counter[str]] = {n.node_id: Counter() for n in nodes}

    # -- NodeSource -------------------------------------------------------------------------
    async def run(self, sink: FrameSink) -> None:
        tasks = [
            asyncio.create_task(self._node_loop(link, sink), name=f"ble-node-{nid}")
            for nid, link in self._links.items()
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            # Tasks already being cancelled (by the gather) are left to finish their cleanup:
            # a second cancel would interrupt their disconnect.
            for task in tasks:
                if not task.done() and not task.cancelling():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def send_command(self, node_id: int, raw: bytes) -> None:
        link = self._links.get(node_id)
        if link is None:
            raise SourceError(f"BLE: unknown node {node_id}")
        client = link.client
        if client is None or not client.is_connected:
            self._count(node_id, "write_errors")
            raise SourceError(f"BLE: node {node_id} is not connected")
        try:
            async with link.write_lock:
                await client.write_gatt_char(PROFILE.command_uuid, bytes(raw), response=True)
        except (BleakError, OSError, TimeoutError) as exc:
            self._count(node_id, "write_errors")
            raise SourceError(f"BLE: writing a command to node {node_id} failed: {exc}") from exc
        self._count(node_id, "commands")

    def stats(self) -> dict[str, int]:
        out = {
            k: 0
            for k in (
                "connects",
                "connect_failures",
                "drops",
                "reconnects",
                "notifications",
                "sink_errors",
                "commands",
                "write_errors",
                "silences",
            )
        }
        out.update(self._stats)
        out["connected"] = sum(1 for nid in self._links if self.is_connected(nid))
        return out

    def is_connected(self, node_id: int) -> bool:
        link = self._links.get(node_id)
        return link is not None and link.client is not None and link.client.is_connected

    def node_stats(self, node_id: int) -> dict[str, int]:
        return dict(self._per_node[node_id])

    # -- one node ---------------------------------------------------------------------------
    def _count(self, node_id: int, key: str, n: int = 1) -> None:
        self._stats[key] += n
        self._per_node[node_id][key] += n

    async def _node_loop(self, link: _Link, sink: FrameSink) -> None:
        node_id = link.node.node_id
        attempt = 0
        ever_connected = False
        while True:
            try:
                connected = await self._session(link, sink, ever_connected)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a node fault, or a bug: never let it reach other nodes
                log.warning("BLE node %d: %s", node_id, exc)
                connected = False
            if connected:
                ever_connected = True
                attempt = 0
            delay = backoff_delay(attempt, self._initial, self._max, self._rng.random())
            attempt += 1
            await self._sleep(delay)

    async def _watch_silence(self, node_id: int, dropped: asyncio.Event) -> None:
        """End the session (as a drop) when a connected node sends nothing for a whole
        ``silence_timeout_s``: a node whose firmware hung behind a live radio link is only
        revived by a reconnect (and the failure shows in the counters)."""
        assert self._silence_s is not None
        silence_ms = max(1, int(self._silence_s * 1000))
        seen = self._per_node[node_id]["notifications"]
        while True:
            # on the gateway clock, which also stamps the frames: silence is judged in the same
            # time the nodes report in (a driven clock in tests and the demo)
            await self._clock.sleep_until(self._clock.now_ms() + silence_ms)
            now = self._per_node[node_id]["notifications"]
            if now == seen:
                self._count(node_id, "silences")
                log.info("BLE node %d: silent for %s s, reconnecting", node_id, self._silence_s)
                dropped.set()
                return
            seen = now

    async def _session(self, link: _Link, sink: FrameSink, reconnect: bool) -> bool:
        """Connect and stream until the link drops. True if a session was established."""
        node_id = link.node.node_id
        dropped = asyncio.Event()
        passkey = link.node.passkey
        # the passkey goes to the backend (bleak passes unknown keywords on); BlueZ takes it
        # from its agent instead (see the gateway README), and bonds itself
        extra: dict[str, Any] = {} if passkey is None else {"passkey": passkey}
        client = BleakClient(
            link.node.address,
            disconnected_callback=lambda _c: dropped.set(),
            timeout=self._timeout,
            pair=passkey is not None,
            backend=self._backend,
            **extra,
        )

        def on_notify(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            self._count(node_id, "notifications")
            try:
                sink(bytes(data), TRANSPORT, self._clock.now_ms())
            except Exception:  # the sink's bug must not take the link down
                self._count(node_id, "sink_errors")
                log.exception("BLE node %d: frame sink failed", node_id)

        try:
            try:
                await client.connect()
                await client.start_notify(PROFILE.readings_uuid, on_notify)
                await client.start_notify(PROFILE.ack_uuid, on_notify)
            except (BleakError, OSError, TimeoutError) as exc:
                self._count(node_id, "connect_failures")
                log.info("BLE node %d (%s): connect failed: %s", node_id, link.node.address, exc)
                return False
            self._count(node_id, "connects")
            if reconnect:
                self._count(node_id, "reconnects")
            link.client = client
            watchdog = None
            if self._silence_s is not None:
                watchdog = asyncio.create_task(self._watch_silence(node_id, dropped))
            try:
                if client.is_connected:
                    await dropped.wait()
            finally:
                if watchdog is not None:
                    watchdog.cancel()
            self._count(node_id, "drops")
            log.info("BLE node %d: link dropped", node_id)
            return True
        finally:
            link.client = None
            with contextlib.suppress(Exception):
                await client.disconnect()
