"""The gateway's BleNodeSource against emulated plugs on bumble's virtual controller, through the
real bleak API (BleakClient with the bumble backend)."""

from __future__ import annotations

import asyncio
import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import frame
from gateway.sources.base import SourceError
from gateway.sources.ble import BleNode, BleNodeSource, backoff_delay
from tests.ble.conftest import KEYS, World, eventually, received, running, serving, stop


async def test_readings_arrive_and_verify_with_the_node_key(world: World) -> None:
    async with serving(world) as (source, sink):
        await eventually(lambda: source.stats()["connected"] == 3)
        await world.clock.advance(5000)
        world.switch_all_on()
        for i in range(3):
            await world.clock.advance(5000)
            await world.tick_all()
            # each batch in before the clock moves on: frames are stamped when received
            await sink.until(lambda i=i: len(sink.raw) == 3 * (i + 1))
        assert all(t == "ble" for _, t, _ in sink.raw)
        counts = sink.verifier.counts()
        assert counts["accepted"] == 9
        assert sum(v for k, v in counts.items() if k.startswith("dropped")) == 0
        r1 = [frame.unpack_reading(v.payload) for v in sink.of(1)]
        assert [r["power_dw"] for r in r1] == [1000, 1000, 1000]
        r3 = [frame.unpack_reading(v.payload) for v in sink.of(3)]
        # 1500 W exported from the switch on: 5 s to the first reading, 15 s to the last
        # (integrated exactly, each counter the floor of its whole mWh)
        assert [r3[0]["export_mwh"], r3[-1]["export_mwh"]] == [
            1500 * 5 * 1000 // 3600, 1500 * 15 * 1000 // 3600]
        assert [v.seq for v in sink.of(2)] == sorted(v.seq for v in sink.of(2))
        now = world.clock.now_ms()
        assert {ms for _, _, ms in sink.raw} == {now - 10000, now - 5000, now}


def _command(nid: int, seq: int, action: int, relay: int = 0, key: bytes | None = None) -> bytes:
    return frame.encode(
        key if key is not None else KEYS[nid],
        frame.T_COMMAND,
        nid,
        seq,
        frame.pack_command(relay, action),
    )


async def test_relay_command_switches_the_plug_and_is_acked(world: World) -> None:
    async with serving(world, [1, 2]) as (source, sink):
        await eventually(lambda: source.stats()["connected"] == 2)
        plug = world.plugs[1]
        assert not plug.core.relay_on  # plugs boot with the relay off
        await world.clock.advance(5000)  # past the boards' minimum off time
        await source.send_command(1, _command(1, 100, frame.A_ON))
        await sink.until(lambda: len(sink.of(1, frame.T_ACK)) == 1)
        assert plug.core.relay_on
        assert not world.plugs[2].core.relay_on  # only the addressed node switched
        ack = frame.unpack_ack(sink.of(1, frame.T_ACK)[0].payload)
        assert ack == (100, 0, frame.S_OK, 1)
        # the next reading shows the relay closed and power flowing
        await world.clock.advance(5000)
        await plug.tick()
        await sink.until(lambda: len(sink.of(1)) == 1)
        reading = frame.unpack_reading(sink.of(1)[0].payload)
        assert reading["relays"] == 1 and reading["power_dw"] > 0
        # the ON captured over the air and written again after an OFF, and a command under
        # the wrong key: both dropped by the node (issue 19, finding 4): not executed, not
        # answered, no sequence number burnt; the next genuine command's ACK is the next frame
        await source.send_command(1, _command(1, 101, frame.A_OFF))
        await source.send_command(1, _command(1, 100, frame.A_ON))  # the replay
        await source.send_command(1, _command(1, 102, frame.A_OFF, key=KEYS[2]))
        await source.send_command(1, _command(1, 103, frame.A_OFF))
        await sink.until(lambda: len(sink.of(1, frame.T_ACK)) >= 3)
        await plug.tick()  # a reading after them: nothing else was in flight before it
        await sink.until(lambda: len(sink.of(1)) == 2)
        acks = sink.of(1, frame.T_ACK)
        assert [frame.unpack_ack(a.payload) for a in acks] == [
            (100, 0, frame.S_OK, 1), (101, 0, frame.S_OK, 0), (103, 0, frame.S_OK, 0)]
        assert acks[2].seq == acks[1].seq + 1 == sink.of(1)[1].seq - 1
        assert not plug.core.relay_on and plug.core.pending is None
        assert plug.core.dropped == {"replay": 1, "tag": 1}
        assert source.stats()["commands"] == 5


async def test_send_command_to_unknown_or_disconnected_node_raises_source_error(
    world: World,
) -> None:
    await world.plugs[3].go_dead()
    async with serving(world, [1, 3], connect_timeout_s=0.2) as (source, _):
        await eventually(lambda: source.stats()["connected"] == 1)
        with pytest.raises(SourceError, match="unknown node 9"):
            await source.send_command(9, _command(1, 1, frame.A_ON))
        with pytest.raises(SourceError, match="not connected"):
            await source.send_command(3, _command(3, 1, frame.A_ON))
        assert source.stats()["write_errors"] == 1


async def test_link_drop_reconnects_with_backoff_and_nothing_after_is_lost(world: World) -> None:
    world.wake.clear()  # hold the source in its backoff sleep until the test lets it go
    held = serving(world, [1, 2], reconnect_initial_s=2.0, reconnect_max_s=30.0)
    async with held as (source, sink):
        await eventually(lambda: source.stats()["connected"] == 2)
        await world.plugs[1].drop_link()
        await eventually(lambda: source.stats()["drops"] == 1)
        await eventually(lambda: len(world.sleeps) == 1)
        assert 1.0 <= world.sleeps[0] <= 2.0  # first retry: initial delay with jitter
        assert source.node_stats(1)["drops"] == 1 and source.node_stats(2).get("drops", 0) == 0
        # plug 2 keeps streaming while plug 1 waits out its backoff
        await world.clock.advance(5000)
        await world.plugs[2].tick()
        await sink.until(lambda: len(sink.of(2)) == 1)
        world.wake.set()
        await eventually(lambda: source.stats()["reconnects"] == 1)
        await eventually(lambda: source.stats()["connected"] == 2)
        await world.clock.advance(5000)
        await world.tick_all()
        await sink.until(lambda: len(sink.of(1)) == 1 and len(sink.of(2)) == 2)
        assert source.stats()["connects"] == 3


async def test_backoff_grows_exponentially_and_is_capped_for_a_dead_node(world: World) -> None:
    sink = received()
    await world.plugs[3].go_dead()
    source = world.source(
        [3],
        reconnect_initial_s=1.0,
        reconnect_max_s=8.0,
        connect_timeout_s=0.05,
        rng=random.Random(7),
    )
    task = await running(source, sink)
    try:
        await eventually(lambda: len(world.sleeps) >= 6)
        for attempt, delay in enumerate(world.sleeps[:6]):
            cap = min(8.0, 2.0**attempt)
            assert cap / 2 <= delay <= cap
        assert source.stats()["connect_failures"] >= 6
        assert source.stats()["connects"] == 0
        await world.plugs[3].revive()
        await eventually(lambda: source.stats()["connected"] == 1)
    finally:
        await stop(task)


async def test_a_dead_plug_never_stalls_the_others(world: World) -> None:
    sink = received()
    await world.plugs[3].go_dead()
    source = world.source(connect_timeout_s=2.0)  # a dead node's attempts last 2 s each
    task = await running(source, sink)
    try:
        await eventually(lambda: source.stats()["connected"] == 2, timeout=1.0)
        # plug 1 drops while plug 3's connect attempt is pending: it is back long before 2 s
        await world.plugs[1].drop_link()
        await eventually(lambda: source.stats()["reconnects"] == 1, timeout=1.0)
        await eventually(lambda: source.stats()["connected"] == 2, timeout=1.0)
        await world.clock.advance(5000)
        await world.tick_all()
        await sink.until(lambda: len(sink.of(1)) == 1 and len(sink.of(2)) == 1, timeout=1.0)
        assert sink.of(3) == []
    finally:
        await stop(task)


async def test_corrupt_replayed_truncated_frames_are_delivered_raw_and_rejected(
    world: World,
) -> None:
    plug = world.plugs[1]
    async with serving(world, [1]) as (source, sink):
        await eventually(lambda: source.stats()["connected"] == 1)
        for _ in range(2):
            await world.clock.advance(1000)
            await plug.tick()
        sent = []
        for fault in ("corrupt_next", "replay_next", "truncate_next", None):
            if fault is not None:
                setattr(plug.faults, fault, 1)
            await world.clock.advance(1000)
            sent.append(await plug.tick())
        await sink.until(lambda: len(sink.raw) == 6)
        # delivered exactly as notified, the bad ones included
        assert [raw for raw, _, _ in sink.raw[2:]] == sent
        corrupt, replayed, truncated, good = sent
        with pytest.raises(frame.FrameError, match="tag"):
            frame.decode(KEYS[1], corrupt)
        with pytest.raises(frame.FrameError, match=r"short|length"):
            frame.decode(KEYS[1], truncated)
        assert frame.decode(KEYS[1], replayed)[2] == 1  # genuine, but an old sequence number
        counts = sink.verifier.counts()
        assert counts["dropped_tag"] == 1 and counts["dropped_replay"] == 1
        assert counts["dropped_short"] + counts["dropped_length"] == 1
        assert len(sink.of(1)) == 3 and sink.of(1)[-1].seq == frame.peek(good)[2]
        assert source.stats()["connected"] == 1 and source.stats()["drops"] == 0


async def test_a_failing_sink_is_counted_and_never_drops_the_link(world: World) -> None:
    calls = []

    def sink(raw: bytes, transport: str, ms: int) -> None:
        calls.append(raw)
        raise RuntimeError("sink bug")

    source = world.source([2])
    task = asyncio.create_task(source.run(sink))
    try:
        await eventually(lambda: source.stats()["connected"] == 1)
        for _ in range(3):
            await world.plugs[2].tick()
        await eventually(lambda: len(calls) == 3)
        assert source.stats()["sink_errors"] == 3
        assert source.stats()["connected"] == 1 and source.stats()["drops"] == 0
    finally:
        await stop(task)


async def test_cancelling_run_disconnects_every_node(world: World) -> None:
    source = world.source()
    task = await running(source, received())
    await eventually(lambda: source.stats()["connected"] == 3)
    await stop(task)
    await eventually(lambda: not any(p.connected for p in world.plugs.values()))
    assert source.stats()["connected"] == 0


async def test_a_silent_node_is_reconnected_by_the_watchdog_on_the_injected_clock(
    world: World,
) -> None:
    sink = received()
    clock = world.clock
    source = world.source(
        [1], sleep=clock.sleep, silence_timeout_s=30.0, reconnect_initial_s=1.0, reconnect_max_s=8.0
    )
    task = await running(source, sink)
    plug = world.plugs[1]
    try:
        await eventually(lambda: source.stats()["connected"] == 1)
        for _ in range(7):  # 70 s of readings every 10 s: the watchdog stays quiet
            await clock.advance(10_000)
            await plug.tick()
            await sink.until(
                lambda: len(sink.raw) == len(sink.of(1)) and plug.notified == len(sink.raw)
            )
        assert source.stats()["silences"] == 0
        plug.faults.silent = True  # the radio link stays up, the node sends nothing
        for _ in range(7):
            await clock.advance(10_000)
            await plug.tick()
        await eventually(lambda: source.stats()["silences"] == 1)
        assert source.stats()["drops"] == 1
        plug.faults.silent = False
        await clock.advance(1_000)  # the first backoff is at most reconnect_initial_s
        await eventually(lambda: source.stats()["reconnects"] == 1)
        await eventually(lambda: source.stats()["connected"] == 1)
        before = len(sink.of(1))
        await clock.advance(10_000)
        await plug.tick()
        await sink.until(lambda: len(sink.of(1)) == before + 1)
    finally:
        await stop(task)


async def test_repeated_drops_never_lose_the_link_for_good(world: World) -> None:
    """Many drop/reconnect cycles of one plug while others stay connected: after each reconnect
    the next reading arrives, and no link drops that the plug did not drop."""
    plug = world.plugs[1]
    async with serving(world, reconnect_initial_s=0.001, reconnect_max_s=0.002) as (source, sink):
        await eventually(lambda: source.stats()["connected"] == 3)
        for cycle in range(25):
            reconnects = source.stats()["reconnects"]
            await plug.drop_link()
            await eventually(
                lambda r=reconnects: source.stats()["reconnects"] > r and source.is_connected(1)
            )
            n = len(sink.of(1))
            await world.clock.advance(1000)
            await plug.tick()
            await sink.until(lambda n=n: len(sink.of(1)) == n + 1, timeout=3.0)
            assert source.stats()["connected"] == 3, cycle
        assert source.node_stats(1)["drops"] == 25  # only the drops the plug made
        assert source.node_stats(2).get("drops", 0) == 0


async def test_the_ble_benchmark_runs_and_reports_json_figures() -> None:
    from tools.ble_bench import bench

    figures = await bench(plugs=2, frames=3)
    assert figures["frames"] == 6 and figures["plugs"] == 2
    assert figures["stats"]["commands"] == 20  # type: ignore[index]


@given(
    attempt=st.integers(0, 10_000),
    initial=st.floats(0.001, 100.0),
    spread=st.floats(1.0, 1000.0),
    u=st.floats(0.0, 1.0),
)
def test_backoff_delay_is_bounded_and_grows(
    attempt: int, initial: float, spread: float, u: float
) -> None:
    maximum = initial * spread
    d = backoff_delay(attempt, initial, maximum, u)
    assert initial / 2 <= d <= maximum * (1 + 1e-9)
    assert backoff_delay(attempt + 1, initial, maximum, 1.0) >= backoff_delay(
        attempt, initial, maximum, 1.0
    )


@given(text=st.text(max_size=40), node_id=st.integers(-5, 70_000))
def test_ble_node_config_is_validated(text: str, node_id: int) -> None:
    try:
        node = BleNode(node_id, text)
    except ValueError as exc:
        assert "BLE node" in str(exc)
        return
    assert 0 <= node.node_id <= 0xFFFF
    assert re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", node.address)
    assert BleNode(1, "D0:57:A7:00:00:01")  # and a good one passes


def test_source_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        BleNodeSource([BleNode(1, "D0:57:A7:00:00:01"), BleNode(1, "D0:57:A7:00:00:02")])
    with pytest.raises(ValueError, match="reconnect"):
        BleNodeSource([], reconnect_initial_s=5, reconnect_max_s=1)
    with pytest.raises(ValueError, match="silence"):
        BleNodeSource([], silence_timeout_s=0)
    assert BleNode(7, "d0:57:a7:00:00:07").address == "d0:57:a7:00:00:07"
