"""The node that runs the real firmware: ``firmware/`` on the MicroPython VM (WebAssembly port,
run by ``node`` through ``firmware/host/run_vm.mjs`` stream mode, as ``tools.mpvm`` does), with
the emulated HAL fed a load profile, bridged onto MQTT as the ESP32's own MQTT link would be (TLS
against the node's provisioned CA, as its own account): READING frames to
``tele/<topic>/FRAME``, ACK frames to ``stat/<topic>/ACK``, and COMMAND frames from
``cmnd/<topic>/FRAME`` into the VM (``hardware/node_profile.json`` topics).

The VM keeps its own simulated clock and runs faster than the community's: the bridge releases
each reading when the demo's clock reaches the reading's time (the node's uptime from midnight),
and pauses the VM process (SIGSTOP, SIGCONT) when it is more than ``MAX_LEAD_MS`` ahead, so it
does not burn a CPU core on hours nobody has reached yet. A command resumes it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from firmware import frame
from firmware.config import DEFAULT_NTP
from gateway.clock import ManualClock
from hardware.emulators.mqtt_node import NodeAccount, node_account
from tools.demo.procs import Child, DemoBroker, Supervisor
from tools.mpvm import REPO, RUNNER, check_vm

BOARD = "esp32_devkitc_ct"
VM_NODE_BASE = 60_000  # node id of the firmware node: this + the home's index (plugs: 16..975)
SAMPLE_S = 60  # one metering window per simulated minute: a day is 1440 windows on the VM
PUBLISH_S = 300  # a READING per channel every 5 simulated minutes, as the Modbus polls
STEP_MS = 60_000
MAX_LEAD_MS = 2 * 3_600_000
NOMINAL_V = 230.0
TOPIC_PREFIX = json.loads((REPO / "hardware" / "node_profile.json").read_text())["mqtt"]


def topic(kind: str, name: str) -> str:
    return str(TOPIC_PREFIX[kind]).format(topic=name)


def provision(directory: Path, node_id: int, broker: DemoBroker) -> tuple[Path, Path, bytes, str]:
    """``wattmesh provision node`` for the VM node (the demo broker's TLS port and CA), then the
    demo's sampling periods."""
    from tools.firmware_cli import provision as provision_node

    name = f"wattmesh_{node_id}"
    keystore = directory / "keystore.json"
    wifi = directory / "wifi.password"  # an open network: an empty password file
    wifi.write_text("", encoding="utf-8")
    provision_node(argparse.Namespace(
        id=node_id, keystore=str(keystore), out=str(directory), board=BOARD, link="mqtt",
        name=name, mqtt_host="127.0.0.1", mqtt_port=broker.port, mqtt_ca=str(broker.ca_file),
        wifi_ssid="community", ntp_host=DEFAULT_NTP,
        wifi_password_file=str(wifi), force=False))
    config = directory / "config.json"
    cfg = json.loads(config.read_text())
    cfg["sample_s"], cfg["publish_s"] = SAMPLE_S, PUBLISH_S
    config.write_text(json.dumps(cfg, indent=1) + "\n")  # keeps provision's mode 0600
    key = bytes.fromhex((directory / "node.key").read_text().strip())
    return config, directory / "node.key", key, name


def channel_curve(watts_per_slot: list[int], slot_s: int,
                  offset_s: int = 0) -> list[list[float]]:
    """The HAL profile of one CT channel: ``[t_s, irms_a, pf]`` from t_s on, per 15-min slot,
    the first slot starting ``offset_s`` after the VM boots (nothing flows before it)."""
    out: list[list[float]] = [[0, 0.0, 1.0]] if offset_s else []
    last = 0.0 if offset_s else None
    for s, w in enumerate(watts_per_slot):
        irms = round(w / NOMINAL_V, 3)
        if irms != last:
            out.append([offset_s + s * slot_s, irms, 1.0])
            last = irms
    return out or [[0, 0.0, 1.0]]


@dataclass
class VmNode:
    node_id: int
    name: str
    key: bytes
    child: Child
    clock: ManualClock
    day0_ms: int  # when the VM booted, on the community's clock
    broker: DemoBroker
    account: NodeAccount  # the node's broker, user, password and CA (its config.json)
    frames: deque[bytes] = field(default_factory=deque)
    ack_queue: deque[bytes] = field(default_factory=deque)
    produced_ms: int = 0  # simulated time the VM has reached (of its last reading)
    released: int = 0
    acks: int = 0
    commands: int = 0
    paused: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _ack_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, sup: Supervisor, directory: Path, node_id: int, broker: DemoBroker,
              clock: ManualClock, day0_ms: int, channels: list[list[int]],
              slot_s: int) -> VmNode:
        node_exe = check_vm()
        directory.mkdir(parents=True, exist_ok=True)
        config, key_path, key, name = provision(directory, node_id, broker)
        broker.add_accounts(directory)  # the node's account: its own topics only
        # The VM boots one publish period before midnight, so that its first reading (one
        # period after boot) lands at midnight: the gateway's baseline for the day's counters.
        profile = {"vrms": NOMINAL_V, "load": [[0, 0.0, 1.0]],
                   "channels": {str(i): channel_curve(w, slot_s, PUBLISH_S)
                                for i, w in enumerate(channels)}}
        # ticks 0: the VM runs until the demo closes its stdin (or stops it), paced by the
        # bridge below, so it is there for relay commands until the very end of the run.
        ticks = 0
        day0_ms -= PUBLISH_S * 1000
        child = sup.spawn(
            f"node-{node_id}-vm",
            [node_exe, str(RUNNER), "stream", "--config", str(config), "--key", str(key_path),
             "--profile", json.dumps(profile), "--step-ms", str(STEP_MS), "--ticks", str(ticks)],
            cwd=REPO, stdin=subprocess.PIPE, stdout_pipe=True)
        vm = cls(node_id, name, key, child, clock, day0_ms, broker, node_account(config))
        loop = asyncio.get_running_loop()
        threading.Thread(target=vm._reader, args=(loop,), daemon=True).start()
        vm._task = asyncio.create_task(vm._bridge(), name=f"vm-bridge-{node_id}")
        return vm

    # -- the VM's stdout, read in a thread (a pipe read blocks) --------------------------------
    def _reader(self, loop: asyncio.AbstractEventLoop) -> None:
        out = self.child.proc.stdout
        assert out is not None
        for line in iter(out.readline, b""):
            if line.startswith(b"F "):
                with contextlib.suppress(ValueError, RuntimeError):
                    raw = bytes.fromhex(line[2:].strip().decode())
                    loop.call_soon_threadsafe(self._got, raw)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    def _got(self, raw: bytes) -> None:
        try:
            ftype = frame.peek(raw)[0]
        except frame.FrameError:
            ftype = frame.T_READING  # let the gateway judge it, as a radio would deliver it
        if ftype == frame.T_READING:
            self.frames.append(raw)
            with contextlib.suppress(frame.FrameError):
                r = frame.unpack_reading(raw[frame.HEADER_LEN:-frame.TAG_LEN])
                self.produced_ms = r["uptime_s"] * 1000
        else:
            self.ack_queue.append(raw)
        if self.produced_ms - (self.clock.now_ms() - self.day0_ms) > MAX_LEAD_MS:
            self._pause(True)
        self._wake.set()
        self._ack_wake.set()

    def _pause(self, on: bool) -> None:
        if on == self.paused or not self.child.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child.pid, signal.SIGSTOP if on else signal.SIGCONT)
        self.paused = on

    # -- the node's MQTT link -----------------------------------------------------------------
    async def _bridge(self) -> None:
        while True:
            try:
                acc = self.account  # TLS, as the node's own link (firmware/link_mqtt.py)
                async with aiomqtt.Client(acc.host, acc.port, username=acc.username,
                                          password=acc.password, tls_context=acc.tls,
                                          identifier=f"{self.name}-vm") as client:
                    await client.publish(topic("lwt", self.name), b"Online", retain=True)
                    await client.subscribe(topic("command_frame", self.name), qos=1)
                    tasks = [asyncio.create_task(self._commands(client)),
                             asyncio.create_task(self._acks(client))]
                    try:
                        await self._release(client)
                    finally:
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)  # broker restarting: reconnect (real time, real broker)

    async def _commands(self, client: aiomqtt.Client) -> None:
        stdin = self.child.proc.stdin
        assert stdin is not None
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, bytes | bytearray):
                self.commands += 1
                self._pause(False)
                stdin.write(bytes(payload).hex().encode() + b"\n")
                stdin.flush()

    async def _acks(self, client: aiomqtt.Client) -> None:
        """ACK frames go out at once: the gateway is waiting for them."""
        while True:
            while self.ack_queue:
                await client.publish(topic("ack_frame", self.name), self.ack_queue[0], qos=1)
                self.ack_queue.popleft()
                self.acks += 1
            self._ack_wake.clear()
            await self._ack_wake.wait()

    async def _release(self, client: aiomqtt.Client) -> None:
        while True:
            while not self.frames:
                self._wake.clear()
                if self.child.proc.poll() is not None and not self.frames:
                    await asyncio.Event().wait()  # the VM finished its ticks: nothing more
                await self._wake.wait()
            raw = self.frames[0]
            due = self.clock.now_ms()
            with contextlib.suppress(frame.FrameError):
                r = frame.unpack_reading(raw[frame.HEADER_LEN:-frame.TAG_LEN])
                due = self.day0_ms + r["uptime_s"] * 1000
            if due > self.clock.now_ms():
                await self.clock.sleep_until(due)
            if self.produced_ms - (self.clock.now_ms() - self.day0_ms) < MAX_LEAD_MS // 2:
                self._pause(False)
            await client.publish(topic("telemetry_frame", self.name), raw, qos=1)
            self.released += 1
            self.frames.popleft()

    def caught_up(self, t_ms: int) -> bool:
        """The VM has produced its readings up to ``t_ms`` (or has stopped)."""
        return self.produced_ms >= t_ms - self.day0_ms or not self.child.alive()

    async def close(self) -> None:
        self._pause(False)
        with contextlib.suppress(OSError, ValueError):
            if self.child.proc.stdin is not None:
                self.child.proc.stdin.close()  # the VM's loop ends when its input does
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"released": self.released, "acks": self.acks, "commands": self.commands,
                "produced_s": self.produced_ms // 1000}
