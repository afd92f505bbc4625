"""The gateway's BleNodeSource against emulated plugs on bumble's virtual controller, through the
real bleak API (BleakClient with the bumble backend)."""

from __future__ import annotations

from firmware import frame
from tests.ble.conftest import World, eventually, received, running, stop


async def test_readings_arrive_and_verify_with_the_node_key(world: World) -> None:
    sink = received()
    source = world.source()
    task = await running(source, sink)
    try:
        await eventually(lambda: source.stats()["connected"] == 3)
        for _ in range(3):
            await world.clock.advance(5000)
            await world.tick_all()
        await sink.until(lambda: all(len(sink.of(n)) == 3 for n in (1, 2, 3)))
        assert all(t == "ble" for _, t, _ in sink.raw)
        counts = sink.verifier.counts()
        assert counts["accepted"] == 9
        assert sum(v for k, v in counts.items() if k.startswith("dropped")) == 0
        r1 = [frame.unpack_reading(v.payload) for v in sink.of(1)]
        assert [r["power_dw"] for r in r1] == [1000, 1000, 1000]
        r3 = [frame.unpack_reading(v.payload) for v in sink.of(3)]
        # 1500 W exported for 10 s between the first and the last reading: 4166 mWh (floor)
        assert r3[-1]["export_mwh"] - r3[0]["export_mwh"] == 1500 * 10 * 1000 // 3600
        assert [v.seq for v in sink.of(2)] == sorted(v.seq for v in sink.of(2))
        now = world.clock.now_ms()
        assert {ms for _, _, ms in sink.raw} == {now - 10000, now - 5000, now}
    finally:
        await stop(task)
