"""Demand-response requests for the home's EMS over MQTT: the grid operator's (DSO's) or the
community operator's "import at most ``max_w`` W from ``start`` to ``end``", signed.

A request is one JSON object published to ``<base_topic>/<gateway_id>/ems/dr``::

    {"request": {"id": "dso-2026-0615-1", "to": "home-1", "role": "dso",
                 "start": "2026-06-15T19:00Z", "end": "2026-06-15T21:00Z", "max_w": 1500},
     "signer": "<Ed25519 public key, hex>", "sig": "<signature, hex>"}

The signature is over ``DOMAIN + canonical(request)`` (``ledger.encoding.canonical``) by a key
registered for that role in ``[ems.dr_signers]``; ``to`` names this gateway, so a request for
one home cannot be replayed to another, and ``id`` is unique, so a replayed request is answered
as a duplicate and not applied twice. Anyone may publish on the broker's topic; only a signed
request from a registered key is taken (issue 19: an anonymous week-long ``max_w 0`` was).
Times are ISO 8601; one without an offset is UTC. ``decode_request`` is the one parser (pure,
``now_ms`` given); ``sign_request`` makes a message; ``DrInbox`` is the aiomqtt adapter: it
persists each valid request (``Store.dr_add``, before the EMS sees it, so it survives a SIGKILL)
and answers on ``.../ems/dr/result`` with ``{"ok": true, ...}`` or ``{"ok": false, "error":
...}``. A refused message is answered, logged once with its reason and counted, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.broker import broker_client, keep_sessions
from gateway.config import DR_ROLES, ID_RE, MqttConfig
from gateway.ems.plan import DrRequest
from gateway.ems.problem import PlanError
from gateway.store import DrRow
from ledger.encoding import canonical

log = logging.getLogger(__name__)

MAX_PAYLOAD = 2048
DOMAIN = b"wattmesh/dr/v1\x00"  # what a DR signature is over, apart from any other signature
HEX_RE = re.compile(r"^[0-9a-f]+$")
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


def decode_body(doc: Any) -> DrRequest:
    """The ``start``/``end``/``max_w`` of a request object, checked."""
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


@dataclass(frozen=True, slots=True)
class SignedDr:
    """A request that passed every check: who signed it, in which role, and what it asks."""

    id: str
    role: str
    signer: str  # public key hex
    request: DrRequest

    @property
    def start_ms(self) -> int:
        return int(self.request.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.request.end.timestamp() * 1000)


REQUEST_KEYS = {"id", "to", "role", "start", "end", "max_w"}


def _hex(doc: dict[str, Any], key: str, size: int) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str) or len(value) != 2 * size or not HEX_RE.match(value):
        raise DrDecodeError(f"{key}: expected {size} bytes in lower-case hex")
    return bytes.fromhex(value)


def decode_request(
    payload: bytes, gateway_id: str, signers: Mapping[str, str], now_ms: int
) -> SignedDr:
    """The signed request in one MQTT payload, or ``DrDecodeError`` naming what is wrong.
    ``signers`` maps each registered public key (hex) to its role; ``now_ms``: a request that
    has already ended is refused."""
    if len(payload) > MAX_PAYLOAD:
        raise DrDecodeError(f"longer than {MAX_PAYLOAD} bytes")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DrDecodeError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"request", "signer", "sig"}:
        raise DrDecodeError('expected {"request": {...}, "signer": ..., "sig": ...} (unsigned '
                            "requests are refused)")
    body = doc["request"]
    if not isinstance(body, dict):
        raise DrDecodeError("request: expected an object")
    extra = sorted(set(body) - REQUEST_KEYS)
    if extra:
        raise DrDecodeError(f"request: unknown key {extra[0]!r}")
    signer_raw, sig = _hex(doc, "signer", 32), _hex(doc, "sig", 64)
    role = body.get("role")
    if role not in DR_ROLES:
        raise DrDecodeError(f"request.role: expected one of {', '.join(DR_ROLES)}")
    rid = body.get("id")
    if not isinstance(rid, str) or not ID_RE.match(rid):
        raise DrDecodeError("request.id: expected 1-64 of letters, digits, . _ -")
    if not isinstance(body.get("to"), str):
        raise DrDecodeError("request.to: expected the gateway's id")
    req = decode_body(body)  # every field checked: the body is canonical-encodable
    signer = signer_raw.hex()
    if signers.get(signer) != role:
        raise DrDecodeError(f"signer {signer[:16]}... is not registered as {role}")
    try:
        Ed25519PublicKey.from_public_bytes(signer_raw).verify(sig, DOMAIN + canonical(body))
    except (InvalidSignature, ValueError):  # EncodingError is a ValueError
        raise DrDecodeError("sig: not a valid signature by signer over the request") from None
    if body["to"] != gateway_id:
        raise DrDecodeError(f"request.to: this is gateway {gateway_id!r}")
    dr = SignedDr(rid, role, signer, req)
    if dr.end_ms <= now_ms:
        raise DrDecodeError("the request has already ended")
    return dr


def to_row(dr: SignedDr, received_ms: int) -> DrRow:
    return DrRow(dr.id, dr.role, dr.signer, dr.start_ms, dr.end_ms, dr.request.max_w, received_ms)


def from_row(row: DrRow) -> DrRequest:
    """The request a stored row holds (what the EMS gets back after a restart)."""
    return DrRequest(
        start=datetime.fromtimestamp(row.start_ms / 1000, UTC),
        end=datetime.fromtimestamp(row.end_ms / 1000, UTC),
        max_w=row.max_w,
    )


def sign_request(key: Ed25519PrivateKey, body: Mapping[str, Any]) -> bytes:
    """The MQTT payload of a request ``body`` (id, to, role, start, end, max_w) signed by
    ``key``: what ``wattmesh operator dr`` publishes."""
    raw_pub = key.public_key().public_bytes_raw()
    sig = key.sign(DOMAIN + canonical(dict(body)))
    return json.dumps(
        {"request": dict(body), "signer": raw_pub.hex(), "sig": sig.hex()},
        separators=(",", ":"),
    ).encode()


class DrInbox:
    """Subscribe to the request topic; persist each valid request (``store_request`` returns
    False for an id already taken) and pass it to ``on_request``."""

    def __init__(
        self,
        cfg: MqttConfig,
        gateway_id: str,
        signers: Mapping[str, str],
        now_ms: Callable[[], int],
        store_request: Callable[[SignedDr], bool],
        on_request: Callable[[DrRequest], Awaitable[None]],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.cfg, self.gateway_id, self.on_request, self.sleep = cfg, gateway_id, on_request, sleep
        self.signers, self.now_ms, self.store_request = dict(signers), now_ms, store_request
        self.accepted = 0
        self.refused = 0
        self.duplicates = 0
        self.refusals: Counter[str] = Counter()
        self.subscribed = asyncio.Event()

    def stats(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "refused": self.refused,
                "duplicates": self.duplicates, "refusals": dict(self.refusals)}

    async def run(self) -> None:
        await keep_sessions(self.cfg, self._session, self.subscribed, "dr inbox", self.sleep)

    async def _session(self) -> None:
        async with broker_client(self.cfg, "dr") as client:
            await client.subscribe(request_topic(self.cfg, self.gateway_id), qos=1)
            self.subscribed.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                answer = await self.handle(payload)
                await client.publish(
                    result_topic(self.cfg, self.gateway_id), json.dumps(answer), qos=1
                )

    def _refuse(self, reason: str) -> dict[str, Any]:
        self.refused += 1
        self.refusals[reason.split(":")[0][:40]] += 1
        log.warning("demand-response request refused: %s", reason)
        return {"ok": False, "error": reason}

    async def handle(self, payload: bytes) -> dict[str, Any]:
        try:
            dr = decode_request(payload, self.gateway_id, self.signers, self.now_ms())
        except DrDecodeError as exc:
            return self._refuse(str(exc))
        req = dr.request
        answer = {"ok": True, "id": dr.id, "start": req.start.isoformat(),
                  "end": req.end.isoformat(), "max_w": req.max_w}  # fmt: skip
        if not self.store_request(dr):
            self.duplicates += 1
            log.info("demand-response request %s again (a replay): already taken", dr.id)
            return answer | {"duplicate": True}
        log.warning(
            "demand-response request %s from the %s (key %s...): at most %d W from %s to %s",
            dr.id, dr.role, dr.signer[:16], req.max_w, req.start.isoformat(), req.end.isoformat(),
        )  # fmt: skip
        try:
            await self.on_request(req)
        except Exception as exc:  # the EMS failing on one request never stops the inbox
            log.exception("demand-response request failed")
            return self._refuse(f"{type(exc).__name__}: {exc}")
        self.accepted += 1
        return answer
