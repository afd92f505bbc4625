"""The Modbus poller against emulated meters on real pymodbus servers, over TCP and over RTU on
a pseudo-terminal pair, with every fault injected."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.clock import ManualClock
from gateway.config import BusConfig, MeterConfig
from gateway.sources.modbus import MeterReading, ModbusBus
from hardware.emulators.modbus_meter import EmulatedMeter, Faults, PtyPair, serve_serial, serve_tcp
from hardware.emulators.profiles import constant

T0 = 1_795_000_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Rig:
    clock: ManualClock
    meters: dict[int, EmulatedMeter]
    bus: ModbusBus
    readings: list[MeterReading]


async def make_rig(
    transport: str, models: dict[int, str], rtu_timeout_s: float = 0.5
) -> AsyncIterator[Rig]:
    clock = ManualClock(T0)
    meters = {
        u: EmulatedMeter(m, constant(2_300.0), clock=clock.now_ms, import_mwh=5_000_000)
        for u, m in models.items()
    }
    readings: list[MeterReading] = []
    cfg_meters = tuple(MeterConfig(f"m{u}", m, u) for u, m in models.items())
    pty = None
    if transport == "tcp":
        port = free_port()
        server = await serve_tcp(meters, "127.0.0.1", port)
        cfg = BusConfig("b", cfg_meters, tcp=("127.0.0.1", port), timeout_s=0.25, retries=1)
    else:
        pty = PtyPair().start()
        # 9600 baud, the one speed all three models share (the PZEM-004T knows no other); the
        # line carries bytes at that speed, so the longest reply takes ~0.17 s
        server = await serve_serial(meters, pty.device_path, baudrate=9600)
        cfg = BusConfig("b", cfg_meters, serial=pty.host_path, baudrate=9600,
                        timeout_s=rtu_timeout_s)
    bus = ModbusBus(cfg, readings.append, clock)
    try:
        yield Rig(clock, meters, bus, readings)
    finally:
        bus.close()
        await server.shutdown()
        if pty is not None:
            pty.close()


@pytest.fixture(params=["tcp", "rtu"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async for r in make_rig(request.param, {1: "sdm630", 2: "pzem004t", 3: "sdm120"}):
        yield r


async def test_reads_every_model_with_the_planned_number_of_requests(rig: Rig) -> None:
    assert await rig.bus.poll_cycle() == 3
    by_id = {r.meter_id: r for r in rig.readings}
    assert by_id["m1"].power_dw == 23_000 and by_id["m3"].power_dw == 23_000
    assert by_id["m2"].power_dw == 23_000  # PZEM: 0.1 W units, low word first
    assert by_id["m1"].import_mwh == 5_000_000 and by_id["m2"].import_mwh == 5_000_000
    assert rig.bus.counts["requests"] == rig.bus.min_requests_per_cycle() == 2 + 1 + 2
    await rig.clock.advance(3_600_000)  # one hour at 2.3 kW
    rig.readings.clear()
    await rig.bus.poll_cycle()
    for r in rig.readings:
        assert abs(r.import_mwh - 7_300_000) <= 2_000, r


@pytest.mark.parametrize("fault", ["silence", "crc", "exception", "wrong"])
async def test_each_fault_is_counted_backed_off_and_never_stalls_the_bus(
    rig: Rig, fault: str
) -> None:
    rig.meters[1].faults = Faults(fault)
    assert await rig.bus.poll_cycle() == 2  # the two healthy meters still answer
    kind = {"silence": "timeout", "crc": "crc", "exception": "exception", "wrong": "bad_value"}
    if fault == "crc" and rig.bus.cfg.tcp is not None:
        kind["crc"] = "timeout"  # Modbus TCP has no CRC: a corrupted answer is just unusable
    stats = rig.bus.stats()
    assert stats[f"m1.{kind[fault]}"] >= 1, stats
    assert "m1.ok" not in stats and stats["m2.ok"] == stats["m3.ok"] == 1
    # Backed off: the next cycle does not even ask the dead meter.
    sent = rig.meters[1].requests
    await rig.clock.advance(1_000)
    assert await rig.bus.poll_cycle() == 2
    assert rig.meters[1].requests == sent
    # Healed: after its backoff the meter is read again.
    rig.meters[1].faults = Faults()
    await rig.clock.advance(10_000)
    assert await rig.bus.poll_cycle() == 3
    assert rig.bus.stats()["m1.ok"] == 1


async def test_intermittent_crc_is_retried_within_the_cycle() -> None:
    async for rig in make_rig("rtu", {1: "sdm120"}, rtu_timeout_s=0.3):  # short replies
        rig.meters[1].faults = Faults("crc", rate=0.5, seed=3)
        good = 0
        for _ in range(12):
            good += await rig.bus.poll_cycle()
            await rig.clock.advance(10_000)
        stats = rig.bus.stats()
        assert stats["m1.crc"] >= 1 and good >= 6, stats


async def test_nobody_listening_is_a_counted_connect_failure() -> None:
    clock = ManualClock(T0)
    cfg = BusConfig("b", (MeterConfig("m", "sdm120", 1),), tcp=("127.0.0.1", free_port()))
    bus = ModbusBus(cfg, lambda r: None, clock)
    assert await bus.poll_cycle() == 0
    assert bus.counts["connect"] == 1
    bus.close()
