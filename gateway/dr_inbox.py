"""Demand-response requests for the home's EMS over MQTT: the grid operator's (or Home
Assistant's) "import at most ``max_w`` W from ``start`` to ``end``".

A request is one JSON object published to ``<base_topic>/<gateway_id>/ems/dr``::

    {"start": "2026-06-15T19:00Z", "end": "2026-06-15T21:00Z", "max_w": 1500}

Times are ISO 8601; one without an offset is UTC. ``decode_request`` is the one parser (pure);
``DrInbox`` is the aiomqtt adapter: it hands each valid request to the EMS and answers on
``.../ems/dr/result`` with ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``, so whoever
asked sees at once whether the home took it. A malformed message is answered and counted, never
raised. The topic is on the home's own broker: whoever may publish there may ask the home to
shed load (protect the broker with credentials, as for Home Assistant).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from gateway.broker import broker_client, keep_sessions
from gateway.config import MqttConfig
from gateway.ems.plan import DrRequest
from gateway.ems.problem import PlanError

log = logging.getLogger(__name__)

MAX_PAYLOAD = 1024
MAX_SPAN_S = 7 * 24 * 3600  # a week: a longer request is a typo, not a grid event
MAX_W = 10**7


class DrDecodeError(ValueError):
    """A demand-response message that is not a request; the message says what is wrong."""


def request_topic(cfg: MqttConfig, gateway_id: str) -> str:
    return f"{cfg.base_topic}/{gateway_id}/ems/dr"


def result_topic(cfg: MqttConfig, gateway_id: str) -> str:
    return f"{cfg.base_topic}/{gateway_id}/ems/dr/result"


def _time(doc: dict[str, Any], key: str) -> datetime:
    value = doc.get(key)
    if not isinstance(value, str) or len(value) > 40:
        raise DrDecodeError(f"{key}: expected an ISO 8601 time such as 2026-06-15T19:00Z")
    try:
        t = datetime.fromisoformat(value)
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # an offset can push year 1 or 9999 out of range
        raise DrDecodeError(f"{key}: {value!r} is not an ISO 8601 time") from exc
    if not 2000 <= t.year <= 2200:
        raise DrDecodeError(f"{key}: {value!r} is not a time this home will see")
    return t


def decode_request(payload: bytes) -> DrRequest:
    """The request in one MQTT payload, or ``DrDecodeError`` naming what is wrong."""
    if len(payload) > MAX_PAYLOAD:
        raise DrDecodeError(f"longer than {MAX_PAYLOAD} bytes")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DrDecodeError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DrDecodeError('expected {"start": ..., "end": ..., "max_w": ...}')
    extra = sorted(set(doc) - {"start", "end", "max_w"})
    if extra:
        raise DrDecodeError(f"unknown key {extra[0]!r}")
    start, end = _time(doc, "start"), _time(doc, "end")
    max_w = doc.get("max_w")
    if isinstance(max_w, bool) or not isinstance(max_w, int) or not 0 <= max_w <= MAX_W:
        raise DrDecodeError(f"max_w: expected whole watts in 0..{MAX_W}")
    if not 0 < (end - start).total_seconds() <= MAX_SPAN_S:
        raise DrDecodeError("end must come after start, at most a week later")
    try:
        return DrRequest(start=start, end=end, max_w=max_w)
    except PlanError as exc:
        raise DrDecodeError(str(exc)) from exc


class DrInbox:
    """Subscribe to the request topic and pass each valid request to ``on_request``."""

    def __init__(
        self,
        cfg: MqttConfig,
        gateway_id: str,
        on_request: Callable[[DrRequest], Awaitable[None]],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.cfg, self.gateway_id, self.on_request, self.sleep = cfg, gateway_id, on_request, sleep
        self.accepted = 0
        self.refused = 0
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        await keep_sessions(self.cfg, self._session, self.subscribed, "dr inbox", self.sleep)

    async def _session(self) -> None:
        async with broker_client(self.cfg, "dr") as client:
            await client.subscribe(request_topic(self.cfg, self.gateway_id), qos=1)
            self.subscribed.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                answer = await self._handle(payload)
                await client.publish(
                    result_topic(self.cfg, self.gateway_id), json.dumps(answer), qos=1
                )

    async def _handle(self, payload: bytes) -> dict[str, Any]:
        try:
            req = decode_request(payload)
        except DrDecodeError as exc:
            self.refused += 1
            return {"ok": False, "error": str(exc)}
        try:
            await self.on_request(req)
        except Exception as exc:  # the EMS failing on one request never stops the inbox
            log.exception("demand-response request failed")
            self.refused += 1
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.accepted += 1
        return {
            "ok": True,
            "start": req.start.isoformat(),
            "end": req.end.isoformat(),
            "max_w": req.max_w,
        }
