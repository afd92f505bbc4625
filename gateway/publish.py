"""Publish readings to MQTT with Home Assistant discovery, so a Home Assistant user sees every
meter of the home with no configuration: per meter a power sensor (device_class power,
state_class measurement, W) and imported/exported energy sensors (device_class energy, kWh),
on one retained JSON state topic per meter.

What HA's MQTT sensor discovery expects (and ``tests/gateway/test_publish.py`` checks):
``default_entity_id`` (``sensor.<slug>``; ``object_id`` is deprecated since HA 2025.10), a
``device`` with no ``via_device`` (the gateway itself is not announced as a device), an
``availability`` list with mode ``all``: the gateway's own topic (its MQTT will) and one per
meter, and ``expire_after``, so a meter that falls silent goes ``unavailable`` instead of
showing its last value for ever. A Modbus meter's energy registers only grow (a rollover is a
real reset): ``total_increasing``. A node's counters can step back after a flash restore (up
to its save step), which ``total_increasing`` would read as a meter reset and count the whole
counter again: its energy sensors are ``total``, where a step back is a small negative.

``discovery_messages`` and ``state_message`` are pure (topic, payload) builders; ``HaPublisher``
is the aiomqtt adapter. State updates are coalesced per meter and rate-limited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiomqtt

from gateway.broker import broker_client, keep_sessions
from gateway.clock import Clock, wait_until_or_set
from gateway.config import MqttConfig
from gateway.ingest import MeterInfo
from gateway.store import Reading

log = logging.getLogger(__name__)


def _obj(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def state_topic(cfg: MqttConfig, gateway_id: str, meter_id: str) -> str:
    return f"{cfg.base_topic}/{gateway_id}/{meter_id}/state"


def availability_topic(cfg: MqttConfig, gateway_id: str) -> str:
    return f"{cfg.base_topic}/{gateway_id}/status"


def meter_availability_topic(cfg: MqttConfig, gateway_id: str, meter_id: str) -> str:
    return f"{cfg.base_topic}/{gateway_id}/{meter_id}/availability"


MIN_EXPIRE_S = 300  # a meter silent this long (or 3 publish periods) shows as unavailable

SENSORS = (
    # object id, name, device class, state class, unit, JSON key
    ("power", "Power", "power", "measurement", "W", "power_w"),
    ("energy_import", "Energy imported", "energy", "total_increasing", "kWh", "import_kwh"),
    ("energy_export", "Energy exported", "energy", "total_increasing", "kWh", "export_kwh"),
)


def expire_after_s(cfg: MqttConfig) -> int:
    return max(MIN_EXPIRE_S, int(3 * cfg.publish_min_s))


def discovery_messages(
    cfg: MqttConfig, gateway_id: str, meter: MeterInfo
) -> list[tuple[str, dict[str, Any]]]:
    node = _obj(f"{gateway_id}_{meter.meter_id}")
    device = {
        "identifiers": [f"wattmesh_{node}"],
        "name": f"{meter.meter_id} ({gateway_id})",
        "manufacturer": "wattmesh",
        "model": meter.model,
    }
    steps_back = meter.model.startswith("node")  # flash-restored counters (see above)
    out = []
    for obj, name, dclass, sclass, unit, key in SENSORS:
        if steps_back and sclass == "total_increasing":
            sclass = "total"
        out.append(
            (
                f"{cfg.discovery_prefix}/sensor/{node}/{obj}/config",
                {
                    "name": name,
                    "unique_id": f"{node}_{obj}",
                    "default_entity_id": f"sensor.{node}_{obj}".lower().replace("-", "_"),
                    "state_topic": state_topic(cfg, gateway_id, meter.meter_id),
                    "value_template": f"{{{{ value_json.{key} }}}}",
                    "device_class": dclass,
                    "state_class": sclass,
                    "unit_of_measurement": unit,
                    "availability": [
                        {"topic": availability_topic(cfg, gateway_id)},
                        {"topic": meter_availability_topic(cfg, gateway_id, meter.meter_id)},
                    ],
                    "availability_mode": "all",
                    "expire_after": expire_after_s(cfg),
                    "device": device,
                },
            )
        )
    return out


def state_message(cfg: MqttConfig, gateway_id: str, r: Reading) -> tuple[str, dict[str, Any]]:
    return state_topic(cfg, gateway_id, r.meter_id), {
        "power_w": r.power_dw / 10,
        "import_kwh": round(r.import_mwh / 1_000_000, 6),
        "export_kwh": round(r.export_mwh / 1_000_000, 6),
        "time_ms": r.t_ms,
    }


class HaPublisher:
    def __init__(
        self,
        cfg: MqttConfig,
        gateway_id: str,
        meters: Sequence[MeterInfo],
        clock: Clock,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.cfg, self.gateway_id, self.clock, self.sleep = cfg, gateway_id, clock, sleep
        self.meters = list(meters)
        self._undiscovered: list[MeterInfo] = []  # added while connected: announce them
        self._latest: dict[str, Reading] = {}
        self._last_sent: dict[str, int] = {}
        self._available: set[str] = set()  # meters marked online in this session
        self._wake = asyncio.Event()
        self.published = 0
        self.connected = asyncio.Event()

    def add_meter(self, meter: MeterInfo) -> None:
        """A meter that appeared after start (a node's second clamp, with its first frame): it
        is announced to Home Assistant before its first state, and on every reconnect."""
        if all(m.meter_id != meter.meter_id for m in self.meters):
            self.meters.append(meter)
            self._undiscovered.append(meter)
            self._wake.set()

    def offer(self, r: Reading) -> None:
        """Queue a reading; only the latest per meter is kept until it is published."""
        self._latest[r.meter_id] = r
        self._wake.set()

    async def run(self) -> None:
        await keep_sessions(self.cfg, self._session, self.connected, "mqtt publisher", self.sleep)

    async def _session(self) -> None:
        avail = availability_topic(self.cfg, self.gateway_id)
        will = aiomqtt.Will(avail, b"offline", qos=1, retain=True)
        async with broker_client(self.cfg, "gw", will) as client:
            self._undiscovered.clear()
            self._available = set()
            await self._discover(client, list(self.meters))
            await client.publish(avail, b"online", qos=1, retain=True)
            self.connected.set()
            await self._publish_loop(client)

    async def _discover(self, client: aiomqtt.Client, meters: Sequence[MeterInfo]) -> None:
        if self.cfg.discovery:
            for m in meters:
                for topic, payload in discovery_messages(self.cfg, self.gateway_id, m):
                    await client.publish(topic, json.dumps(payload), qos=1, retain=True)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        min_ms = int(self.cfg.publish_min_s * 1000)
        while True:
            self._wake.clear()
            if self._undiscovered:
                new, self._undiscovered = self._undiscovered, []
                await self._discover(client, new)
            now = self.clock.now_ms()
            due: int | None = None
            for meter_id, r in list(self._latest.items()):
                last = self._last_sent.get(meter_id)
                if last is not None and now - last < min_ms:
                    due = last + min_ms if due is None else min(due, last + min_ms)
                    continue  # rate-limited: published when its time comes (see below)
                del self._latest[meter_id]
                if meter_id not in self._available:  # this session's first state of it
                    self._available.add(meter_id)
                    await client.publish(
                        meter_availability_topic(self.cfg, self.gateway_id, meter_id),
                        b"online", qos=1, retain=True,
                    )  # fmt: skip
                topic, payload = state_message(self.cfg, self.gateway_id, r)
                await client.publish(topic, json.dumps(payload), qos=0, retain=True)
                self._last_sent[meter_id] = now
                self.published += 1
            await wait_until_or_set(self.clock, due, self._wake)

    async def offline(self) -> None:
        """Best effort on a clean stop: mark the gateway offline (the will covers crashes)."""
        try:
            async with broker_client(self.cfg, "gw-offline", timeout_s=2) as c:
                await c.publish(
                    availability_topic(self.cfg, self.gateway_id), b"offline", qos=1, retain=True
                )
        except aiomqtt.MqttError:
            pass
