"""An emulated wattmesh node on MQTT (aiomqtt against a real broker), speaking the firmware's
frames on the Tasmota-style topics of ``hardware/node_profile.json``: READING frames on
``tele/<topic>/FRAME`` (and a human-readable ``tele/<topic>/SENSOR``), COMMAND frames taken from
``cmnd/<topic>/FRAME`` and answered with ACK frames on ``stat/<topic>/ACK``; ``tele/<topic>/LWT``
is ``Online``/``Offline`` (the broker publishes ``Offline`` if the node dies).

The metered load hangs on the node's relays: it draws (and the import counter rises) only while
one of them is on (with ``relays=0``: always); relays boot off, as the boards' do. An ACK carries
the addressed relay's state after the command (1/0; 0 for no such relay), as ``firmware/node.py``.

Faults for tests: ``tamper`` (frames with a wrong tag), ``replay`` (every frame sent twice),
``garbage`` (random bytes instead of frames).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import aiomqtt

from firmware import frame
from hardware.emulators.profiles import EnergyCounters, Profile, constant, wall_ms

FAULTS = ("tamper", "replay", "garbage")
PROFILE: dict[str, Any] = json.loads(
    resources.files("hardware").joinpath("node_profile.json").read_text()
)["mqtt"]


class MqttNodeEmulator:
    def __init__(
        self,
        node_id: int,
        key: bytes,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        topic: str | None = None,
        profile: Profile | None = None,
        clock: Callable[[], int] = wall_ms,
        period_s: float = 5.0,
        seq: int = 1,
        relays: int = 2,
        fault: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        seed: int = 0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: expected one of {', '.join(FAULTS)}")
        self.node_id, self.key, self.host, self.port = node_id, key, host, port
        self.username, self.password = username, password  # the node's broker account
        self.topic = topic or f"wattmesh_{node_id}"
        self.profile = profile or constant(500.0)
        # the counters integrate what the load really drew: nothing while its relays are off
        self.counters = EnergyCounters(self._drawn)
        self.clock, self.period_s, self.sleep = clock, period_s, sleep
        self.seq = seq
        self.relay_state = 0
        self.relays = relays
        self.fault = fault
        self.last_cmd_seq = -1
        self.sent = 0
        self.commands = 0
        self._rng = random.Random(seed)
        self._client: aiomqtt.Client | None = None
        self.ready = asyncio.Event()
        self._start_ms = clock()

    def _drawn(self, t_ms: int) -> float:
        return self.profile(t_ms) if self.relay_state or self.relays == 0 else 0.0

    def t(self, kind: str) -> str:
        return str(PROFILE[kind]).format(topic=self.topic)

    def reading_frame(self) -> bytes:
        now = self.clock()
        imp, exp = self.counters.at(now)
        p = self._drawn(now)
        fields = {
            "channel": 0,
            "uptime_s": max(0, (now - self._start_ms) // 1000) & 0xFFFFFFFF,
            "voltage_dv": 2300,
            "current_ma": min(int(abs(p) / 230 * 1000), 0xFFFFFFFF),
            "power_dw": int(p * 10),
            "apparent_dva": int(abs(p) * 10),
            "pf_milli": 1000,
            "relays": self.relay_state,
            "flags": 0,
            "import_mwh": imp,
            "export_mwh": exp,
        }
        raw: bytes = frame.encode(
            self.key, frame.T_READING, self.node_id, self.seq, frame.pack_reading(fields)
        )
        self.seq += 1
        return raw

    async def publish_reading(self) -> None:
        assert self._client is not None, "not connected"
        raw = self.reading_frame()
        if self.fault == "tamper":
            raw = raw[:-1] + bytes([raw[-1] ^ 1])
        elif self.fault == "garbage":
            raw = self._rng.randbytes(self._rng.randrange(0, 80))
        await self._client.publish(self.t("telemetry_frame"), raw, qos=1)
        if self.fault == "replay":
            await self._client.publish(self.t("telemetry_frame"), raw, qos=1)
        imp, exp = self.counters.at(self.clock())
        sensor = {"ENERGY": {"Total": imp / 1e6, "Export": exp / 1e6, "Voltage": 230}}
        await self._client.publish(self.t("telemetry_sensor"), json.dumps(sensor))
        self.sent += 1

    async def _on_command(self, raw: bytes) -> None:
        assert self._client is not None
        try:
            _, node_id, seq, payload = frame.decode(self.key, raw)
            relay, action = frame.unpack_command(payload)
        except frame.FrameError:
            return  # a node drops what it cannot authenticate
        if node_id != self.node_id:
            return
        self.commands += 1
        if seq <= self.last_cmd_seq:
            status = frame.S_REPLAY
        elif relay >= self.relays:
            status = frame.S_BAD_RELAY
        else:
            status = frame.S_OK
            self.counters.at(self.clock())  # the energy up to now was drawn in the old state
            bit = 1 << relay
            if action == frame.A_ON:
                self.relay_state |= bit
            elif action == frame.A_OFF:
                self.relay_state &= ~bit
            else:
                self.relay_state ^= bit
        if status != frame.S_REPLAY:
            self.last_cmd_seq = seq
        ack = frame.encode(
            self.key,
            frame.T_ACK,
            self.node_id,
            self.seq,
            frame.pack_ack(seq, relay, status, self.relay_state >> relay & 1),
        )
        self.seq += 1
        await self._client.publish(self.t("ack_frame"), ack, qos=1)

    async def run(self, *, publish: bool = True) -> None:
        """Connect, then publish a reading every ``period_s`` (if ``publish``) and answer
        commands, until cancelled."""
        async with aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"{self.topic}-{secrets.token_hex(3)}",
            username=self.username,
            password=self.password,
            will=aiomqtt.Will(self.t("lwt"), PROFILE["lwt_offline"], qos=1, retain=True),
        ) as client:
            self._client = client
            await client.subscribe(self.t("command_frame"), qos=1)
            await client.publish(self.t("lwt"), PROFILE["lwt_online"], qos=1, retain=True)
            self.ready.set()
            listener = asyncio.create_task(self._listen(client))
            try:
                while True:
                    if publish:
                        await self.publish_reading()
                    await self.sleep(self.period_s)
            finally:
                listener.cancel()
                self._client = None
                self.ready.clear()

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                await self._on_command(message.payload)
