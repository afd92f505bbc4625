"""The gateway's one MQTT adapter (aiomqtt): a connection to the home's broker as the config
says, and the reconnecting loop around one session. The MQTT node source
(``gateway.sources.mqtt``), the Home Assistant publisher (``gateway.publish``) and the
demand-response inbox (``gateway.dr_inbox``) each run their own sessions through it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

import aiomqtt

from gateway.config import MqttConfig
from gateway.credentials import mqtt_password, tls_context

log = logging.getLogger(__name__)


async def run_session(session: Awaitable[None], grace_s: float = 2.0) -> None:
    """Run one aiomqtt connection in its own task and wait for it. aiomqtt can turn a
    cancellation into an ``MqttError`` or wait forever for a DISCONNECT acknowledgement while it
    closes; this way a cancelled caller is cancelled promptly and always, and the session gets
    ``grace_s`` to say goodbye to the broker."""
    inner = asyncio.ensure_future(session)
    try:
        await asyncio.wait({inner})
    except asyncio.CancelledError:
        inner.cancel()
        await asyncio.wait({inner}, timeout=grace_s)
        raise
    inner.result()


def broker_client(
    cfg: MqttConfig, role: str, will: aiomqtt.Will | None = None, timeout_s: float = 10
) -> aiomqtt.Client:
    """A connection to the home's broker as the config says; ``role`` names it in the client
    id (``wattmesh-<role>-<random>``), so two gateway parts never take each other's session.
    The password is read now (``gateway.credentials``), TLS checks the broker's certificate."""
    return aiomqtt.Client(
        cfg.host,
        cfg.port,
        username=cfg.username,
        password=mqtt_password(cfg),
        identifier=f"wattmesh-{role}-{secrets.token_hex(4)}",
        will=will,
        timeout=timeout_s,
        tls_context=tls_context(cfg),
    )


def explain(exc: aiomqtt.MqttError) -> str:
    """An MQTT failure in words an operator can act on: a refused login, a certificate the
    broker's CA does not sign or that names another host, a broker not listening."""
    text = str(exc)
    low = text.lower()
    if "not authorized" in low or "bad user name or password" in low or "code:5" in low \
            or "code:4" in low or "code:134" in low or "code:135" in low:
        return f"the broker refused the login (user name or password wrong): {text}"
    if "certificate" in low or "ssl" in low or "tls" in low or "hostname" in low:
        return f"TLS failed: the broker's certificate is not trusted (mqtt.ca_file, host): {text}"
    return text


async def keep_sessions(
    cfg: MqttConfig,
    session: Callable[[], Awaitable[None]],
    up: asyncio.Event,
    name: str,
    sleep: Callable[[float], Awaitable[None]],
    on_drop: Callable[[], None] | None = None,
) -> None:
    """Run ``session`` (one aiomqtt connection, which sets ``up`` once it is usable) for ever:
    after a broker error wait ``reconnect_initial_s``, doubling up to ``reconnect_max_s``, and
    back to the first wait once a session got up."""
    delay = cfg.reconnect_initial_s
    while True:
        try:
            await run_session(session())
        except aiomqtt.MqttError as exc:
            if on_drop is not None:
                on_drop()
            log.warning("%s: %s; reconnecting in %.1f s", name, explain(exc), delay)
        if up.is_set():
            delay = cfg.reconnect_initial_s
        up.clear()
        await sleep(delay)
        delay = min(delay * 2, cfg.reconnect_max_s)
