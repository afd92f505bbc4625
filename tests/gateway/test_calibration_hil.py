"""Automatic multi-point calibration end to end (issue 20): the real gateway daemon, the home's
SDM120 emulator on a real pymodbus server (the reference), and a node running the real firmware
on the MicroPython VM with parts off its board's constants. The gateway pairs them over intervals
at different loads, fits gain and phase (``gateway/calibration.py``), sends the constants in an
authenticated command through its node source, and afterwards the node reads the truth."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from firmware import frame
from gateway import calibration as cal
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, NodeConfig
from gateway.daemon import Gateway
from gateway.sources.base import FrameSink
from gateway.sources.modbus import BusConfig, MeterConfig
from hardware.emulators.modbus_meter import EmulatedMeter, serve_tcp
from ledger.keys import new_key, write_key
from tests.firmware import nodeutil
from tests.gateway.conftest import until
from tools import mpvm

T0 = 1_795_000_000_000 - 1_795_000_000_000 % 60_000  # on a whole minute: intervals = loads
TRUE = {"ical_x": 0.97, "vcal_x": 1.02, "phase_deg": -1.5}
SEGMENTS = [(0, 6.0, 1.0), (60, 14.0, 0.75), (120, 22.0, 0.6), (180, 9.0, 0.9), (240, 16.0, 0.7)]
BOARD = nodeutil.board("esp32_devkitc_ct")["meters"][0]


def stepped_load(segments: list[tuple[int, float, float]]) -> Callable[[int], float]:
    """The active power (W, at 230 V) at a time (ms) of the load that takes each (start in s
    after ``T0``, current A, power factor) of ``segments`` in turn."""

    def load(t_ms: int) -> float:
        t = (t_ms - T0) / 1000
        i, pf = segments[0][1:]
        for start, seg_i, seg_pf in segments:
            if start <= t:
                i, pf = seg_i, seg_pf
        return 230.0 * i * pf

    return load


_load = stepped_load(SEGMENTS)


class VmNodeSource:
    """The node source of a node on the VM: its frames to the gateway at the node's time (the
    gateway's clock follows the node's uptime up to ``until_s``, and again from the first
    command on), commands to its stdin."""

    name = "mqtt"

    def __init__(self, node: mpvm.HostNode, clock: ManualClock, until_s: int) -> None:
        self.node, self.clock, self.until_s = node, clock, until_s
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.sent = 0
        # (node uptime, gateway clock) at the first reading after a command: the node runs on
        # while the test fits, so from then on the clock follows the uptime elapsed since
        self.resumed: tuple[int, int] | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.node.frames():
            self.loop.call_soon_threadsafe(self.frames.put_nowait, raw)

    async def run(self, sink: FrameSink) -> None:
        while True:
            raw = await self.frames.get()
            ftype, _nid, _seq = frame.peek(raw)
            if ftype == frame.T_READING:
                uptime = int.from_bytes(raw[frame.HEADER_LEN + 1:frame.HEADER_LEN + 5], "big")
                if not self.sent:
                    if uptime <= self.until_s:
                        await self.clock.set(T0 + uptime * 1000)
                else:
                    if self.resumed is None:
                        self.resumed = (uptime, self.clock.now_ms())
                    await self.clock.set(self.resumed[1] + (uptime - self.resumed[0]) * 1000)
            sink(raw, self.name, self.clock.now_ms())

    async def send_command(self, node_id: int, raw: bytes) -> None:
        self.sent += 1
        self.node.send(raw)

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_gateway_calibrates_a_node_against_the_home_meter(tmp_path: Path) -> None:
    for path, text in nodeutil.node_files("esp32_devkitc_ct", root=str(tmp_path)).items():
        Path(path).write_text(text)
    profile = {"vrms": 230, "load": [list(s) for s in SEGMENTS],
               "channels": {"1": [[0, 0.0, 1.0]]}, "true": {"0": TRUE}}
    clock = ManualClock(T0)
    meter = EmulatedMeter("sdm120", _load, clock=clock.now_ms)
    port = _free_port()
    server = await serve_tcp({1: meter}, "127.0.0.1", port)
    write_key(tmp_path / "gw.key", new_key())
    cfg = GatewayConfig(
        gateway_id="home-1", data_dir=tmp_path / "gw", key_file=tmp_path / "gw.key",
        keystore=None, nodes=(NodeConfig(7, "mqtt", "n7", topic="wattmesh_7"),),
        buses=(BusConfig("b", (MeterConfig("home", "sdm120", 1),), tcp=("127.0.0.1", port),
                         poll_s=5, timeout_s=1.0),),
    )  # fmt: skip
    node = mpvm.HostNode(tmp_path / "config.json", tmp_path / "node.key", profile, speed=0)
    source = VmNodeSource(node, clock, until_s=300)
    gw = Gateway(cfg, clock=clock, node_sources=[source], node_keys={7: nodeutil.KEY})
    session = cal.Session(7, 0, "home", cal.Constants(BOARD["ical"], BOARD["vcal"], 0.0))
    gw.calibrations.append(session)
    run = asyncio.create_task(gw.run())
    try:
        # the reference is polled every 5 s of the node's time, the node frames every 5 s
        await until(lambda: clock.now_ms() >= T0 + 300_000, timeout_s=120, what="5 minutes")
        fit, new, payload = session.command()
        gw.calibrations.remove(session)
        assert fit.pairs >= 4 and fit.phase_fitted, fit
        assert abs(new.ical / BOARD["ical"] - TRUE["ical_x"]) < 0.005, new
        assert abs(new.vcal / BOARD["vcal"] - TRUE["vcal_x"]) < 0.005, new
        assert abs(new.phase_deg - TRUE["phase_deg"]) < 0.3, new
        status = await asyncio.wait_for(
            gw.send_node_command(7, frame.T_CALIBRATE, payload), timeout=60)
        assert status == frame.S_OK
        # the node now reads the truth: the last load, 16 A at PF 0.7 on 230 V
        after = clock.now_ms()
        await until(lambda: clock.now_ms() >= after + 30_000, timeout_s=60, what="30 s more")
        latest = gw.latest_readings()["n7"]
        assert abs(latest.power_dw / 10 - 230 * 16 * 0.7) <= 0.005 * 230 * 16
    finally:
        gw.stop()
        await run
        node.close_input()
        node.kill()
        await server.shutdown()
