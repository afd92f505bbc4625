"""The daemon hosting the BLE source: plugs emulated on bumble's virtual link, reached through
the real bleak API (bumble-backed backend), frames into intervals, relay commands acked."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from bumble.link import LocalLink

from firmware import frame
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, NodeConfig
from gateway.daemon import Gateway
from gateway.intervals import INTERVAL_MS
from hardware.ble.bleak_bumble import BumbleCentral, bumble_backend
from hardware.ble.plug import PlugEmulator, constant_load
from tests.gateway.conftest import until

T0 = 1_795_000_000_000 - 1_795_000_000_000 % INTERVAL_MS + 1_000
KEYS = {1: bytes([1]) * 32, 2: bytes([2]) * 32}


def ble_gateway(
    tmp_path: Path,
    clock: ManualClock,
    central: BumbleCentral,
    plugs: Mapping[int, PlugEmulator],
    **config: Any,
) -> Gateway:
    """A gateway reading ``plugs`` (node id -> emulator) over BLE through ``central``."""
    cfg = GatewayConfig(
        gateway_id="home-1",
        data_dir=tmp_path,
        key_file=tmp_path / "gateway.key",
        keystore=None,
        nodes=tuple(NodeConfig(n, "ble", f"plug{n}", address=p.address) for n, p in plugs.items()),
        **config,
    )
    return Gateway(cfg, clock=clock, node_keys=KEYS, ble_backend=bumble_backend(central))


async def test_ble_plugs_through_the_daemon(tmp_path: Path) -> None:
    link = LocalLink()
    clock = ManualClock(T0)
    plugs = {  # plugged in a minute ago: past the relay's minimum off time after boot
        nid: PlugEmulator.on_link(
            link, nid, KEYS[nid], load=constant_load(w), now_ms=clock.now_ms, boot_ms=T0 - 60_000
        )
        for nid, w in ((1, 1200.0), (2, 400.0))
    }
    for p in plugs.values():
        await p.start()
    central = BumbleCentral.on_link(link)
    gw = ble_gateway(tmp_path, clock, central, plugs)
    task = asyncio.create_task(gw.run())
    try:
        source = gw.sources[0]
        await until(lambda: source.stats().get("connected") == 2, what="both plugs connected")
        for nid in plugs:  # a plug boots with its relay off, as the boards do
            assert await gw.send_relay(nid, 0, True) == frame.S_OK
        for _ in range(16):
            before = gw.verifier.accepted
            for p in plugs.values():
                await p.tick()
            await until(lambda b=before: gw.verifier.accepted >= b + 2, what="two readings")
            await clock.advance(60_000)
        assert await gw.send_relay(2, 0, False) == frame.S_OK
        assert not plugs[2].core.relay_on
        hist = {i.meter_id: i for i in gw.interval_history(None, T0 - 1_000, T0 + INTERVAL_MS)}
        # seen from 1 s into the interval: 899 s of it, the rest carried into the next one
        assert hist["plug1"].import_wh == 1200 * 899 // 3600
        assert hist["plug2"].import_wh == 400 * 899 // 3600
        assert gw.reports_queued == 2
    finally:
        gw.stop()
        await task
        await central.close()


@pytest.mark.parametrize("silence_s", [30.0, None])
async def test_the_daemon_runs_the_ble_silence_watchdog_from_its_config(
    tmp_path: Path, silence_s: float | None
) -> None:
    """``[ble] silence_timeout_s`` reaches the BLE source: a plug whose link stays up but which
    sends nothing is reconnected once that much gateway time has passed; with the key unset no
    watchdog runs (the same silence is sat out)."""
    link = LocalLink()
    clock = ManualClock(T0)
    plug = PlugEmulator.on_link(link, 1, KEYS[1], load=constant_load(500.0), now_ms=clock.now_ms)
    await plug.start()
    central = BumbleCentral.on_link(link)
    gw = ble_gateway(tmp_path, clock, central, {1: plug}, ble_silence_timeout_s=silence_s)
    task = asyncio.create_task(gw.run())

    async def one_reading() -> None:
        before = gw.verifier.accepted
        await plug.tick()
        await until(lambda: gw.verifier.accepted == before + 1, what="a reading")

    try:
        source = gw.sources[0]
        await until(lambda: source.stats()["connected"] == 1, what="plug connected")
        for _ in range(4):  # readings every 10 s: the watchdog stays quiet
            await clock.advance(10_000)
            await one_reading()
        assert source.stats()["silences"] == 0
        plug.faults.silent = True  # the link stays up, the plug sends nothing
        for _ in range(5):
            await clock.advance(10_000)
            await plug.tick()
        if silence_s is None:
            # (advance runs each woken sleeper before moving on: a watchdog would have fired)
            assert source.stats()["silences"] == 0 and source.is_connected(1)
            return
        await until(lambda: source.stats()["silences"] == 1, what="the watchdog")
        plug.faults.silent = False
        await until(lambda: source.stats()["reconnects"] == 1, what="a reconnect")
        await until(lambda: source.stats()["connected"] == 1, what="plug connected again")
        await one_reading()
    finally:
        gw.stop()
        await task
        await central.close()
