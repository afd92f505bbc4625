"""Faults injected by the emulators, seen through the whole daemon: a tampering, replaying or
babbling MQTT node, and a meter serving wrong values on RTU."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from firmware import frame
from gateway import intervals as iv
from gateway.clock import ManualClock
from gateway.config import BusConfig, GatewayConfig, MeterConfig, MqttConfig, NodeConfig
from gateway.daemon import Gateway
from gateway.intervals import INTERVAL_MS
from gateway.report import report_body, verify_report
from hardware.emulators.modbus_meter import EmulatedMeter, Faults, PtyPair, serve_serial
from hardware.emulators.mqtt_node import MqttNodeEmulator
from hardware.emulators.profiles import constant
from ledger.keys import new_key, write_key
from tests.gateway.conftest import Broker, until

T0 = 1_795_000_000_000 - 1_795_000_000_000 % INTERVAL_MS + 1_000
KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("tamper", "dropped_tag"), ("replay", "dropped_replay"), ("garbage", None)],
)
async def test_misbehaving_mqtt_node(
    tmp_path: Path, broker: Broker, fault: str, reason: str | None
) -> None:
    clock = ManualClock(T0)
    cfg = GatewayConfig(
        gateway_id="home-1", data_dir=tmp_path, key_file=tmp_path / "gw.key", keystore=None,
        mqtt=MqttConfig(port=broker.port, discovery=False),
        nodes=(NodeConfig(7, "mqtt", "n7", topic="wattmesh_7"),
               NodeConfig(8, "mqtt", "n8", topic="wattmesh_8")),
    )  # fmt: skip
    gw = Gateway(cfg, clock=clock, node_keys={7: KEY, 8: KEY[::-1]})
    bad = MqttNodeEmulator(7, KEY, port=broker.port, clock=clock.now_ms, fault=fault, seed=5)
    good = MqttNodeEmulator(8, KEY[::-1], port=broker.port, clock=clock.now_ms)
    tasks = [asyncio.create_task(e.run(publish=False)) for e in (bad, good)]
    run = asyncio.create_task(gw.run())
    try:
        await until(lambda: bad.ready.is_set() and good.ready.is_set())
        await until(lambda: gw.sources[0].stats().get("connects", 0) > 0)
        for _ in range(5):
            await bad.publish_reading()
            await good.publish_reading()
            await until(
                lambda: (
                    sum(gw.sources[0].stats().get(k, 0) for k in ("frames", "bad_payload"))
                    >= 5 + good.sent + bad.sent - 5
                )
            )
            await clock.advance(1_000)
        await until(lambda: gw.verifier.counts()["accepted"] == (10 if fault == "replay" else 5))
        c = gw.verifier.counts()
        if reason is not None:
            assert c[reason] == 5
        else:
            assert sum(v for k, v in c.items() if k.startswith("dropped")) == 5
        assert gw.latest_readings()["n8"].t_ms == clock.now_ms() - 1_000  # the good node is fine
    finally:
        gw.stop()
        await run
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_meter_serving_wrong_values_is_flagged_not_counted(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    meter = EmulatedMeter("pzem004t", constant(1_200.0), clock=clock.now_ms, import_mwh=50_000_000)
    pty = PtyPair().start()
    server = await serve_serial({1: meter}, pty.device_path, 9600)  # the PZEM's one speed
    cfg = GatewayConfig(
        gateway_id="home-1", data_dir=tmp_path, key_file=tmp_path / "gw.key", keystore=None,
        buses=(BusConfig("uart", (MeterConfig("ev", "pzem004t", 1),), serial=pty.host_path,
                         baudrate=9600, poll_s=60, timeout_s=0.3),),
    )  # fmt: skip
    gw = Gateway(cfg, clock=clock)
    run = asyncio.create_task(gw.run())
    bus = gw.buses[0]
    try:
        await until(lambda: bus.counts["cycles"] >= 1, what="the first poll")
        for minute in range(1, 17):  # each poll runs with the fault set before it, no race
            meter.faults = Faults("wrong") if minute in (5, 6) else Faults()
            await clock.advance(60_000)
            await until(lambda m=minute: bus.counts["cycles"] >= m + 1, what="a poll cycle")
        (first,) = gw.interval_history("ev", T0 - 1_000, T0 + INTERVAL_MS)
        assert first.flags & iv.IMPLAUSIBLE and not first.flags & iv.RESET
        # wrong values cost nothing: 1.2 kW over the 899 s seen, to within the PZEM's 1 Wh
        # counter resolution at each end
        assert first.import_wh == pytest.approx(1_200 * 899 / 3600, abs=2)
        # the PZEM's power is unsigned: whatever it counted may have been export (issue 20)
        assert first.flags & iv.SIGN_UNKNOWN and "sign_unknown" in iv.flag_names(first.flags)
    finally:
        gw.stop()
        await run
        await server.shutdown()
        pty.close()


def _open_gateway(tmp_path: Path, clock: ManualClock) -> Gateway:
    """A gateway on node 5 (MQTT, no sources started): frames go in through ``on_frame``."""
    if not (tmp_path / "gw.key").exists():
        write_key(tmp_path / "gw.key", new_key())
    cfg = GatewayConfig(
        gateway_id="home-1", data_dir=tmp_path, key_file=tmp_path / "gw.key", keystore=None,
        nodes=(NodeConfig(5, "mqtt", "n5", topic="wattmesh_5"),),
    )  # fmt: skip
    gw = Gateway(cfg, clock=clock, node_keys={5: KEY}, node_sources=[])
    gw.open()
    return gw


def _reading_frame(seq: int, channel: int, import_mwh: int, flags: int = 0) -> bytes:
    fields = dict.fromkeys(frame.READING_FIELDS, 0)
    fields.update(channel=channel, import_mwh=import_mwh, flags=flags)
    return frame.encode(KEY, frame.T_READING, 5, seq, frame.pack_reading(fields))


async def test_a_failed_store_write_loses_no_reading_and_no_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses one flush and one close (locked, card full): the readings stay
    queued and the closed intervals go back into the aggregator, so the next try stores both
    and signs the reports; nothing is counted twice."""
    clock = ManualClock(T0)
    gw = _open_gateway(tmp_path, clock)
    assert gw.store is not None
    for i in range(16):  # 10 Wh a minute; the last minute crosses the end of the interval
        gw.on_frame(_reading_frame(i + 1, 0, 1_000_000 + i * 10_000), "mqtt", clock.now_ms())
        await clock.advance(60_000)

    def refuse(*args: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as m:
        m.setattr(gw.store, "flush", refuse)
        with pytest.raises(sqlite3.OperationalError):
            gw.flush()
        m.setattr(gw.store, "close_intervals", refuse)
        with pytest.raises(sqlite3.OperationalError):
            gw.close_due()
    assert gw.flush() == 16
    closed = gw.close_due()
    assert [(c.meter_id, c.import_wh) for c in closed] == [("n5", 149)]
    stored = gw.interval_history(None, 0, 2**62)
    assert [(c.meter_id, c.import_wh) for c in stored] == [("n5", 149)]
    assert len(gw.store.readings("n5", 0, 2**62)) == 16
    assert len(gw.store.outbox_all()) == 1
    assert gw.close_due() == []  # closed once


async def test_a_channel_meter_keeps_its_interval_across_a_gateway_restart(
    tmp_path: Path,
) -> None:
    """A node's second clamp (meter ``n5.1``) exists only once its first frame came. A restart
    mid-interval must neither lose that interval's energy nor its reading baseline."""
    clock = ManualClock(T0)
    seq = 0

    def gateway() -> Gateway:
        return _open_gateway(tmp_path, clock)

    async def minutes(gw: Gateway, first: int, last: int) -> None:
        nonlocal seq
        for i in range(first, last):  # 10 Wh a minute on both clamps
            for channel in (0, 1):
                seq += 1
                frame_ = _reading_frame(seq, channel, 1_000_000 + i * 10_000)
                gw.on_frame(frame_, "mqtt", clock.now_ms())
            await clock.advance(60_000)

    gw = gateway()
    await minutes(gw, 0, 7)
    gw.flush()
    assert gw.store is not None
    gw.store.close()
    gw = gateway()  # restarted: n5.1 is unknown until its next frame
    gw.flush()  # a save before that frame must keep n5.1's state
    await minutes(gw, 7, 16)
    gw.flush()
    closed = {c.meter_id: c for c in gw.close_due()}
    assert closed["n5"].import_wh == closed["n5.1"].import_wh == 149
    assert closed["n5.1"].flags == 0 and closed["n5.1"].samples == closed["n5"].samples


async def test_a_reading_the_node_flags_clipped_marks_its_interval_a_lower_bound(
    tmp_path: Path,
) -> None:
    """A current past the clamp's range clips at the ADC and reads low (the node sets
    F_ADC_CLIPPED): the energy still counts, and the interval says it is a lower bound."""
    clock = ManualClock(T0)
    gw = _open_gateway(tmp_path, clock)
    for i in range(16):
        flags = frame.F_ADC_CLIPPED if i == 7 else 0
        gw.on_frame(_reading_frame(i + 1, 0, 1_000_000 + i * 10_000, flags), "mqtt", clock.now_ms())
        await clock.advance(60_000)
    gw.flush()
    (first,) = [c for c in gw.close_due() if c.meter_id == "n5"]
    assert first.import_wh == 149 and first.flags & iv.CLIPPED
    assert "clipped" in iv.flag_names(first.flags)
    # the report the gateway signs for it carries the flag, covered by its signature
    body = report_body(gw.key, first)
    assert body["flags"] == iv.flag_names(first.flags) and "clipped" in body["flags"]
    assert verify_report(gw.key.public_key(), body)
    assert not verify_report(gw.key.public_key(), {k: v for k, v in body.items() if k != "flags"})
    for i in range(16, 32):  # the next interval's readings are clean: no flag there
        gw.on_frame(_reading_frame(i + 1, 0, 1_000_000 + i * 10_000), "mqtt", clock.now_ms())
        await clock.advance(60_000)
    gw.flush()
    (second,) = [c for c in gw.close_due() if c.meter_id == "n5"]
    assert not second.flags & iv.CLIPPED
    assert report_body(gw.key, second).get("flags", []) == iv.flag_names(second.flags)


@pytest.mark.parametrize(("bit", "flag", "name"), [
    (frame.F_SAMPLING_BEHIND, iv.BEHIND, "behind"),
    (frame.F_SIGN_UNKNOWN, iv.SIGN_UNKNOWN, "sign_unknown"),
])  # fmt: skip
async def test_a_node_frames_quality_flags_reach_the_interval_and_its_report(
    tmp_path: Path, bit: int, flag: int, name: str
) -> None:
    """A node whose CT sampling fell behind its period, or whose meter cannot tell export from
    import, says so in its frame; the interval and its signed report say so too."""
    clock = ManualClock(T0)
    gw = _open_gateway(tmp_path, clock)
    for i in range(16):
        flags = bit if i == 3 else 0
        gw.on_frame(_reading_frame(i + 1, 0, 1_000_000 + i * 10_000, flags), "mqtt", clock.now_ms())
        await clock.advance(60_000)
    gw.flush()
    (first,) = [c for c in gw.close_due() if c.meter_id == "n5"]
    assert first.import_wh == 149 and first.flags & flag
    assert name in report_body(gw.key, first)["flags"]
