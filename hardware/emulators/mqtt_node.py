"""An emulated wattmesh node on MQTT (aiomqtt against a real broker), speaking the firmware's
frames on the Tasmota-style topics of ``hardware/node_profile.json``: READING frames on
``tele/<topic>/FRAME`` (and a human-readable ``tele/<topic>/SENSOR``), COMMAND frames taken from
``cmnd/<topic>/FRAME`` and answered with ACK frames on ``stat/<topic>/ACK`` (taken as the
firmware takes them, ``frame.open_command``: a replayed, forged or misdirected command is dropped
unanswered, logged and counted in ``dropped``); ``tele/<topic>/LWT``
is ``Online``/``Offline`` (the broker publishes ``Offline`` if the node dies).

The metered load hangs on the node's relays: it draws (and the import counter rises) only while
one of them is on (with ``relays=0``: always); relays boot off, as the boards' do. An ACK carries
the addressed relay's state after the command (1/0; 0 for no such relay), as ``firmware/node.py``.

Faults for tests: ``tamper`` (frames with a wrong tag), ``replay`` (every frame sent twice),
``garbage`` (random bytes instead of frames).

``node_account(config.json)`` reads the broker, the account and the TLS trust of a provisioned
node (``wattmesh provision node``) as the firmware does: TLS with the broker's certificate checked
against the CA file beside the config (``mqtt.ca``) and against the host name; the emulator
connects with it. A refused login or an untrusted certificate fails ``run()`` with
``aiomqtt.MqttError`` saying so (paho's and OpenSSL's words).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiomqtt

from firmware import frame
from hardware.emulators.profiles import EnergyCounters, Profile, constant, wall_ms

FAULTS = ("tamper", "replay", "garbage")
log = logging.getLogger(__name__)
PROFILE: dict[str, Any] = json.loads(
    resources.files("hardware").joinpath("node_profile.json").read_text()
)["mqtt"]


@dataclass(frozen=True)
class NodeAccount:
    """How a provisioned node reaches its broker: where, as whom, trusting which CA."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None  # None: plain MQTT (a config that says ``"tls": false``)


def node_account(config: Path) -> NodeAccount:
    """The ``mqtt`` section of a node's config.json, with its CA file (``mqtt.ca``, beside the
    config) loaded into a context that checks the broker's chain and host name, as the node's
    link does. ``ValueError`` names the key or file at fault."""
    try:
        mq = json.loads(config.read_text(encoding="utf-8"))["mqtt"]
        host, port = mq["host"], mq.get("port", 8883 if mq.get("tls", True) else 1883)
        user, password = mq.get("user"), mq.get("password")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{config}: not a provisioned MQTT node's config ({exc!r})") from None
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"{config}: mqtt.host must be a string and mqtt.port a number")
    ctx = None
    if mq.get("tls", True):
        ca = config.parent / str(mq.get("ca", "ca.crt"))
        try:
            ctx = ssl.create_default_context(cafile=str(ca))  # CERT_REQUIRED, host name checked
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{config}: mqtt.ca: cannot load {ca} ({exc})") from None
    return NodeAccount(host, port, user, password, ctx)


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
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: expected one of {', '.join(FAULTS)}")
        self.node_id, self.key, self.host, self.port = node_id, key, host, port
        self.username, self.password = username, password  # the node's broker account
        self.tls = tls  # checks the broker's certificate (node_account), None: plain MQTT
        self.topic = topic or f"wattmesh_{node_id}"
        self.profile = profile or constant(500.0)
        # the counters integrate what the load really drew: nothing while its relays are off
        self.counters = EnergyCounters(self._drawn)
        self.clock, self.period_s, self.sleep = clock, period_s, sleep
        self.seq = seq
        self.relay_state = 0
        self.relays = relays
        self.fault = fault
        self.last_cmd_seq = 0  # the last command taken (the gateway counts from 1)
        self.sent = 0
        self.commands = 0  # commands taken (and acked)
        self.dropped: dict[str, int] = {}  # reason -> command frames dropped unanswered
        self._rng = random.Random(seed)
        self._client: aiomqtt.Client | None = None
        self.ready = asyncio.Event()
        self._start_ms = clock()

    @classmethod
    def with_account(
        cls, node_id: int, key: bytes, account: NodeAccount, **kw: Any
    ) -> MqttNodeEmulator:
        """An emulator that reaches the broker as ``account`` (``node_account``) says."""
        return cls(node_id, key, account.host, account.port, username=account.username,
                   password=account.password, tls=account.tls, **kw)

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
        try:  # as the firmware: only an authentic, new COMMAND for this node gets anywhere
            seq, relay, action = frame.open_relay_command(self.key, self.node_id, raw,
                                                          self.last_cmd_seq)
        except frame.FrameError as exc:
            # dropped unanswered, a replay too: an ACK would burn a sequence number
            reason = exc.args[0]
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            log.warning("node %d: command dropped (%s)", self.node_id, reason)
            return
        self.commands += 1
        self.last_cmd_seq = seq
        if relay >= self.relays:
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
            tls_context=self.tls,
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
