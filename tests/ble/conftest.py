"""A virtual BLE world for the tests: one LocalLink, emulated plugs on it, and the gateway's
bumble central behind the real bleak API."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from bumble.link import LocalLink

from firmware import ble_guard, frame
from gateway.clock import ManualClock
from gateway.sources.ble import BleNode, BleNodeSource
from gateway.verify import FrameVerifier, Verified
from hardware.ble.bleak_bumble import BumbleCentral, bumble_backend
from hardware.ble.plug import PlugEmulator, constant_load

KEYS = {nid: bytes([nid]) * 32 for nid in range(1, 10)}
POWER_W = {1: 100.0, 2: 2000.0, 3: -1500.0}


@dataclass
class Received:
    """A sink that keeps everything and verifies it as the gateway does."""

    verifier: FrameVerifier
    raw: list[tuple[bytes, str, int]] = field(default_factory=list)
    verified: list[Verified] = field(default_factory=list)
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, raw: bytes, transport: str, received_ms: int) -> None:
        self.raw.append((raw, transport, received_ms))
        v = self.verifier.verify(raw)
        if v is not None:
            self.verified.append(v)
        self._event.set()

    def of(self, node_id: int, ftype: int = frame.T_READING) -> list[Verified]:
        return [v for v in self.verified if v.node_id == node_id and v.ftype == ftype]

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not cond():
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(wait(), timeout)


@dataclass
class World:
    link: LocalLink
    central: BumbleCentral
    plugs: dict[int, PlugEmulator]
    clock: ManualClock
    sleeps: list[float]
    wake: asyncio.Event

    def backend(self) -> type:
        return bumble_backend(self.central)

    def nodes(self, ids: list[int] | None = None) -> list[BleNode]:
        return [
            BleNode(nid, p.address, ble_guard.passkey(KEYS[nid]))
            for nid, p in self.plugs.items()
            if ids is None or nid in ids
        ]

    async def fake_sleep(self, seconds: float) -> None:
        """The source's injected sleep: records the backoff, then yields only until a test
        lets it go, so no test waits for wall-clock backoff."""
        self.sleeps.append(seconds)
        await self.wake.wait()

    def source(self, ids: list[int] | None = None, **kw: object) -> BleNodeSource:
        return BleNodeSource(
            self.nodes(ids),
            backend=self.backend(),
            sleep=kw.pop("sleep", self.fake_sleep),  # type: ignore[arg-type]
            clock=self.clock,
            connect_timeout_s=kw.pop("connect_timeout_s", 1.0),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )

    def switch_all_on(self) -> None:
        """Close every plug's relay (they boot open) past the boards' minimum off time, as a
        gateway's ON command would, without the radio: a test of readings needs power."""
        for nid, p in self.plugs.items():
            cmd = frame.encode(KEYS[nid], frame.T_COMMAND, nid, 2**31, frame.pack_command(
                0, frame.A_ON))
            ack = p.core.command(cmd, self.clock.now_ms())
            assert ack is not None and frame.unpack_ack(frame.decode(KEYS[nid], ack)[3])[2] == 0

    async def tick_all(self) -> None:
        for p in self.plugs.values():
            await p.tick()


async def make_world(ids: tuple[int, ...] = (1, 2, 3)) -> World:
    link = LocalLink()
    clock = ManualClock(1_700_000_000_000)
    plugs = {
        nid: PlugEmulator.on_link(
            link, nid, KEYS[nid], load=constant_load(POWER_W.get(nid, 50.0)), now_ms=clock.now_ms,
            sleep=clock.sleep,
        )
        for nid in ids
    }
    for p in plugs.values():
        await p.start()
    central = BumbleCentral.on_link(link)
    wake = asyncio.Event()
    wake.set()
    return World(link, central, plugs, clock, [], wake)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = await make_world()
    yield w
    await w.central.close()


def received(keys: dict[int, bytes] | None = None) -> Received:
    return Received(FrameVerifier(keys if keys is not None else KEYS))


async def running(source: BleNodeSource, sink: Received) -> asyncio.Task[None]:
    return asyncio.create_task(source.run(sink))


@contextlib.asynccontextmanager
async def serving(
    world: World, ids: list[int] | None = None, **kw: object
) -> AsyncIterator[tuple[BleNodeSource, Received]]:
    """``world.source(ids, **kw)`` running into a fresh sink; stopped on the way out."""
    sink = received()
    source = world.source(ids, **kw)
    task = await running(source, sink)
    try:
        yield source, sink
    finally:
        await stop(task)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition the real stack makes true (no fixed sleeps: returns as soon as it holds)."""

    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), timeout)


async def start_plugs(*args: str) -> asyncio.subprocess.Process:
    """``plug`` in a process of its own, its HCI server on a free loopback port."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hardware.ble.plug_cli", "plug", "--hci", "tcp-server:127.0.0.1:0",
        *args, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
