"""Automatic calibration turned on in the gateway's config (issue 20), end to end on real parts:
the gateway daemon built from a TOML file with a ``[[calibration]]`` entry, a real mosquitto, the
home's SDM120 emulator on a real pymodbus server (the reference), and the real firmware on the
MicroPython VM behind an MQTT bridge (what ``link_mqtt`` does on the device), its parts off its
board's constants. The daemon fits, sends the constants, keeps the outcome in SQLite; the node
reads the truth and keeps reading it after a reboot; a restarted gateway sends nothing again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path

import aiomqtt
import pytest

from firmware import frame
from gateway.calibrator import APPLIED, store_key
from gateway.clock import ManualClock
from gateway.config_parse import load_config
from gateway.daemon import Gateway
from gateway.sources.mqtt import topic_for
from hardware.emulators.modbus_meter import EmulatedMeter, serve_tcp
from tests.firmware import nodeutil
from tests.gateway.conftest import Broker, free_port, until, write_gateway_config, write_keystore
from tests.gateway.test_calibration_hil import BOARD, T0, TRUE, stepped_load
from tools import mpvm
from tools.cli import main

STEPS = [(6.0, 1.0), (14.0, 0.75), (22.0, 0.6), (9.0, 0.9), (16.0, 0.7)]
# varying loads for 5 minutes, 16 A at PF 0.7 until 10 minutes, then varying loads again
LOADS = [(60 * k, i, pf) for k, (i, pf) in enumerate(STEPS)] + [
    (600 + 60 * k, i, pf) for k, (i, pf) in enumerate(STEPS)
]
TOPIC = "wattmesh_7"

_load = stepped_load(LOADS)


def _config(tmp: Path, mqtt_port: int, modbus_port: int) -> Path:
    write_keystore(tmp, {"7": {"key": nodeutil.KEY.hex(), "name": "n7", "transport": "mqtt"}})
    path = write_gateway_config(
        tmp,
        f"""command_timeout_s = 30

[mqtt]
port = {mqtt_port}
discovery.enabled = false

[[mqtt.nodes]]
node_id = 7
meter_id = "n7"
topic = "{TOPIC}"

[[modbus.buses]]
name = "b"
tcp = "127.0.0.1:{modbus_port}"
poll_s = 5

[[modbus.buses.meters]]
meter_id = "home"
model = "sdm120"
unit = 1

[[calibration]]
node_id = 7
channel = 0
reference = "home"
ical = {BOARD["ical"]}
vcal = {BOARD["vcal"]}
phase_deg = 0.0
points = 4
interval_s = 60
apply = true
""")  # fmt: skip
    return path


class Bridge:
    """The node's MQTT link: its frames to ``tele/<topic>/FRAME`` (ACKs to ``stat/<topic>/ACK``)
    with the gateway's clock set to the node's uptime first, commands from
    ``cmnd/<topic>/FRAME`` to the node's stdin (counted)."""

    def __init__(self, node: mpvm.HostNode, clock: ManualClock, port: int) -> None:
        self.node, self.clock, self.port = node, clock, port
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.commands: list[bytes] = []
        self.restored = 0  # frames of a node that started from its flash
        self.ready = asyncio.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.node.frames():
            self.loop.call_soon_threadsafe(self.frames.put_nowait, raw)

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port) as client:
            await client.subscribe(topic_for("command_frame", TOPIC), qos=1)
            self.ready.set()

            async def commands() -> None:
                async for m in client.messages:
                    assert isinstance(m.payload, bytes)
                    self.commands.append(m.payload)
                    self.node.send(m.payload)

            task = asyncio.create_task(commands())
            try:
                while True:
                    raw = await self.frames.get()
                    ftype = frame.peek(raw)[0]
                    if ftype == frame.T_READING:
                        fields = frame.unpack_reading(frame.decode(nodeutil.KEY, raw)[3])
                        self.restored += bool(fields["flags"] & frame.F_COUNTERS_RESTORED)
                        at = frame.HEADER_LEN + 1
                        await self.clock.set(T0 + int.from_bytes(raw[at:at + 4], "big") * 1000)
                        await client.publish(topic_for("telemetry_frame", TOPIC), raw, qos=1)
                    elif ftype == frame.T_ACK:
                        await client.publish(topic_for("ack_frame", TOPIC), raw, qos=1)
            finally:
                task.cancel()


def _calibrations(raws: list[bytes]) -> int:
    return sum(frame.decode(nodeutil.KEY, r)[0] == frame.T_CALIBRATE for r in raws)


def _reads_truth(gw: Gateway, i: float, pf: float) -> bool:
    latest = gw.latest_readings().get("n7")
    return latest is not None and abs(latest.power_dw / 10 - 230 * i * pf) <= 0.005 * 230 * i


# The node's 17 minutes run on the VM at 20x its clock: about a minute alone, several when the
# two cores are shared; each wait below has its own bound, so the test cannot hang.
@pytest.mark.timeout(900)
async def test_config_enabled_calibration_applies_is_kept_and_not_resent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path, text in nodeutil.node_files("esp32_devkitc_ct", root=str(tmp_path)).items():
        Path(path).write_text(text)
    profile = {"vrms": 230, "load": [list(s) for s in LOADS],
               "channels": {"1": [[0, 0.0, 1.0]]}, "true": {"0": TRUE}}
    broker = Broker(tmp_path)
    clock = ManualClock(T0)
    port = free_port()
    server = await serve_tcp({1: EmulatedMeter("sdm120", _load, clock=clock.now_ms)},
                             "127.0.0.1", port)
    cfg_path = _config(tmp_path, broker.port, port)
    node = mpvm.HostNode(tmp_path / "config.json", tmp_path / "node.key", profile, speed=20)
    bridge = Bridge(node, clock, broker.port)
    bridge_task = asyncio.create_task(bridge.run())
    gw = Gateway(load_config(cfg_path), clock=clock)
    run = asyncio.create_task(gw.run())
    try:
        await asyncio.wait_for(bridge.ready.wait(), 10)
        # 4 intervals at different loads are needed: within the third, nothing is sent yet and
        # the node is off the truth (22 A at PF 0.6)
        await until(lambda: clock.now_ms() >= T0 + 170_000, timeout_s=120, what="3 minutes")
        assert not _reads_truth(gw, *STEPS[2]), "the node must be off before it is calibrated"
        assert gw.stats()["calibration"]["7.0"]["state"] == "collecting"
        await until(lambda: gw.stats()["calibration"]["7.0"]["state"] == APPLIED,
                    timeout_s=120, what="the calibration to be applied")  # fmt: skip
        assert _calibrations(bridge.commands) == 1
        assert gw.store is not None
        record = gw.store.get_state(store_key(7, 0))
        assert record["state"] == APPLIED and record["status"] == frame.S_OK, record
        assert abs(record["ical"] / BOARD["ical"] - TRUE["ical_x"]) < 0.005, record
        assert abs(record["vcal"] / BOARD["vcal"] - TRUE["vcal_x"]) < 0.005, record
        assert abs(record["phase_deg"] - TRUE["phase_deg"]) < 0.3, record
        # the node reads the truth now (16 A at PF 0.7 until 10 minutes), and after a reboot
        applied = clock.now_ms()
        await until(lambda: clock.now_ms() >= applied + 30_000, timeout_s=60, what="30 s more")
        assert _reads_truth(gw, *STEPS[4])
        assert clock.now_ms() < T0 + 480_000, "the reboot must come before the loads change"
        assert bridge.restored == 0
        node.reboot()
        rebooted = clock.now_ms()
        await until(lambda: clock.now_ms() >= rebooted + 30_000, timeout_s=60, what="reboot")
        assert bridge.restored > 0  # it did start again from its flash
        assert _reads_truth(gw, *STEPS[4])
        # `gateway check` reads it from the store the running daemon holds
        check = ["gateway", "check", "--config", str(cfg_path), "--json", "--timeout", "0.5"]
        capsys.readouterr()
        await asyncio.to_thread(main, check)
        shown = json.loads(capsys.readouterr().out)["calibration"]["7.0"]
        assert shown["state"] == APPLIED and shown["record"] == record
        # a restart of the gateway: the store says done, so loads that vary again (from 10 to
        # 15 minutes) send nothing
        gw.stop()
        await run
        gw = Gateway(load_config(cfg_path), clock=clock)
        run = asyncio.create_task(gw.run())
        await until(lambda: clock.now_ms() >= T0 + 1_020_000, timeout_s=180, what="17 minutes")
        assert gw.stats()["calibration"]["7.0"]["state"] == APPLIED
        assert gw.calibrations == []
        assert _calibrations(bridge.commands) == 1
    finally:
        gw.stop()
        await run
        bridge_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bridge_task
        node.close_input()
        node.kill()
        await server.shutdown()
        broker.stop()
