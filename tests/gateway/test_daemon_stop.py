"""A stop always ends: a part that swallows its cancellation (as aiomqtt and pymodbus clients
can, turning it into an error and retrying) is left behind with an error logged, and the
daemon still closes its store and returns."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway import daemon
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.daemon import Gateway
from gateway.sources.base import FrameSink
from ledger.keys import new_key, write_key


class StubbornSource:
    """A node source whose loop takes a cancellation for an error and goes on."""

    name = "stubborn"

    def __init__(self, convert: bool) -> None:
        self.convert = convert  # raise an error in place of the cancellation (else: ignore it)
        self.cancels = 0
        self.released = False  # the test's end: a cancellation is taken again

    async def run(self, sink: FrameSink) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.released:
                    raise
                self.cancels += 1
                if self.convert:
                    raise RuntimeError("connection lost") from None

    async def send_command(self, node_id: int, raw: bytes) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        return {"cancels": self.cancels}


@pytest.mark.parametrize("convert", [False, True], ids=["ignores", "turns-into-error"])
async def test_a_stop_ends_although_a_part_swallows_its_cancellation(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    convert: bool,
) -> None:
    monkeypatch.setattr(daemon, "SHUTDOWN_GRACE_S", 0.2)
    write_key(tmp_path / "gw.key", new_key())
    cfg = GatewayConfig(gateway_id="home-1", data_dir=tmp_path / "gw", key_file=tmp_path / "gw.key",
                        keystore=None)  # fmt: skip
    source = StubbornSource(convert)
    gw = Gateway(cfg, clock=ManualClock(1_795_000_000_000), node_sources=[source])
    run = asyncio.create_task(gw.run())
    await asyncio.wait_for(gw._started.wait(), 10)
    gw.stop()
    await asyncio.wait_for(run, 10)  # before the fix: for ever (ignores) or restarted (error)
    assert source.cancels == 1  # cancelled once, never restarted
    assert gw.recorder.store is None  # flushed and closed
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if convert:
        assert not any("restarting" in e for e in errors), errors
    else:
        assert any("stubborn" in e and "left behind" in e for e in errors), errors
    source.released = True
    for task in asyncio.all_tasks():
        if task.get_name() == "source:stubborn":
            task.cancel()
            await asyncio.wait({task}, timeout=10)
