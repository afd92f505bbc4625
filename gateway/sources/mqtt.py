"""MQTT nodes (aiomqtt) against a real broker, with the Tasmota-style topics of
``hardware/node_profile.json``: frames arrive on ``tele/<topic>/FRAME`` (readings) and
``stat/<topic>/ACK`` (acks); commands go to ``cmnd/<topic>/FRAME``. Payloads are raw frame bytes;
this source only carries them, the gateway's verifier judges them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

import aiomqtt

from gateway.broker import broker_client, keep_sessions
from gateway.clock import Clock
from gateway.config import MqttConfig, NodeConfig
from gateway.sources.base import FrameSink, SourceError

log = logging.getLogger(__name__)

MAX_PAYLOAD = 512  # a frame is at most 10 + 200 + 16 bytes; anything much larger is junk


def _profile() -> dict[str, Any]:
    text = resources.files("hardware").joinpath("node_profile.json").read_text()
    mqtt: dict[str, Any] = json.loads(text)["mqtt"]
    return mqtt


PROFILE = _profile()


def topic_for(kind: str, node_topic: str) -> str:
    """``kind`` is a key of the profile's mqtt section, e.g. ``telemetry_frame``."""
    return str(PROFILE[kind]).format(topic=node_topic)


class MqttNodeSource:
    name = "mqtt"

    def __init__(
        self,
        nodes: Sequence[NodeConfig],
        cfg: MqttConfig,
        clock: Clock,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.nodes = {n.node_id: n for n in nodes}
        self.cfg = cfg
        self.clock = clock
        self.sleep = sleep
        self._client: aiomqtt.Client | None = None
        self.counts: Counter[str] = Counter()
        self.connected = asyncio.Event()

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def _subscriptions(self) -> list[str]:
        out = []
        for n in self.nodes.values():
            out += [topic_for("telemetry_frame", n.topic), topic_for("ack_frame", n.topic)]
        return out

    async def run(self, sink: FrameSink) -> None:
        def dropped() -> None:
            self.counts["drops"] += 1

        await keep_sessions(
            self.cfg, lambda: self._session(sink), self.connected, "mqtt nodes", self.sleep, dropped
        )

    async def _session(self, sink: FrameSink) -> None:
        try:
            async with broker_client(self.cfg, "nodes") as client:
                for topic in self._subscriptions():
                    await client.subscribe(topic, qos=1)
                self._client = client
                self.counts["connects"] += 1
                self.connected.set()
                async for message in client.messages:
                    self._deliver(message, sink)
        finally:
            self._client = None

    def _deliver(self, message: aiomqtt.Message, sink: FrameSink) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray) or len(payload) > MAX_PAYLOAD:
            self.counts["bad_payload"] += 1
            if self.counts["bad_payload"] == 1:  # said once; counted always
                log.warning("dropped a message on %s: bad_payload (not bytes, or over %d "
                            "bytes); further ones are only counted", message.topic, MAX_PAYLOAD)
            return
        self.counts["frames"] += 1
        try:
            sink(bytes(payload), self.name, self.clock.now_ms())
        except Exception:  # the sink must not kill the connection
            self.counts["sink_errors"] += 1
            log.exception("frame sink failed")

    async def send_command(self, node_id: int, raw: bytes) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            raise SourceError(f"node {node_id} is not an MQTT node")
        client = self._client
        if client is None:
            raise SourceError("MQTT broker not connected")
        try:
            await client.publish(topic_for("command_frame", node.topic), raw, qos=1)
        except aiomqtt.MqttError as exc:
            raise SourceError(f"publish failed: {exc}") from exc
        self.counts["commands"] += 1
