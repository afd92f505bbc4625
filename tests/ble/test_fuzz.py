"""Fuzzed BLE notifications: whatever bytes a (possibly hostile) node notifies reach the sink
unchanged and in order, are rejected by the frame verifier unless genuine, and never upset the
source or the link. One virtual world serves every example (setting up a BLE link per example
would dominate the run time)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import frame
from gateway.sources.ble import BleNodeSource
from tests.ble.conftest import KEYS, Received, World, eventually, make_world, received


@dataclass
class Fuzz:
    loop: asyncio.AbstractEventLoop
    world: World
    source: BleNodeSource
    sink: Received
    task: asyncio.Task[None]


@pytest.fixture(scope="module")
def fuzz() -> Iterator[Fuzz]:
    loop = asyncio.new_event_loop()

    async def setup() -> Fuzz:
        world = await make_world((1,))
        sink = received()
        source = world.source([1])
        task = asyncio.create_task(source.run(sink))
        await eventually(lambda: source.stats()["connected"] == 1)
        return Fuzz(loop, world, source, sink, task)

    f = loop.run_until_complete(setup())
    yield f

    async def teardown() -> None:
        f.task.cancel()
        await asyncio.gather(f.task, return_exceptions=True)
        await f.world.central.close()

    loop.run_until_complete(teardown())
    loop.close()


MAX_NOTIFY = 244  # ATT MTU 247 - 3


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payloads=st.lists(st.binary(min_size=1, max_size=MAX_NOTIFY), min_size=1, max_size=4))
def test_fuzzed_notifications_are_delivered_raw_and_rejected(
    fuzz: Fuzz, payloads: list[bytes]
) -> None:
    async def case() -> None:
        plug = fuzz.world.plugs[1]
        before = len(fuzz.sink.raw)
        accepted = len(fuzz.sink.verified)
        for p in payloads:
            await plug.notify(p)
        genuine = await plug.tick()  # and a genuine reading after the garbage
        await fuzz.sink.until(lambda: len(fuzz.sink.raw) == before + len(payloads) + 1)
        assert [raw for raw, _, _ in fuzz.sink.raw[before:]] == [*payloads, genuine]
        for p in payloads:
            with pytest.raises(frame.FrameError):
                frame.decode(KEYS[1], p)
        assert len(fuzz.sink.verified) == accepted + 1
        assert fuzz.source.stats()["connected"] == 1 and fuzz.source.stats()["drops"] == 0

    fuzz.loop.run_until_complete(case())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(max_size=MAX_NOTIFY))
def test_fuzzed_command_writes_are_dropped_by_the_plug(fuzz: Fuzz, raw: bytes) -> None:
    """Hostile bytes written to the command characteristic over GATT: the node answers nothing,
    keeps its relay, and the link stays up."""

    async def case() -> None:
        plug = fuzz.world.plugs[1]
        rejected = plug.core.commands_rejected
        relay_on = plug.core.relay_on
        acks = len(fuzz.sink.of(1, frame.T_ACK))
        await fuzz.source.send_command(1, raw)  # write with response: the plug has handled it
        assert plug.core.commands_rejected == rejected + 1
        assert plug.core.relay_on == relay_on
        assert len(fuzz.sink.of(1, frame.T_ACK)) == acks
        assert fuzz.source.stats()["connected"] == 1

    fuzz.loop.run_until_complete(case())
