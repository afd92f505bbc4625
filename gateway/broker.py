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
    id (``wattmesh-<role>-<random>``), so two gateway parts never take each other's session."""
    return aiomqtt.Client(
        cfg.host,
        cfg.port,
        username=cfg.username,
        password=cfg.password,
        identifier=f"wattmesh-{role}-{secrets.token_hex(4)}",
        will=will,
        timeout=timeout_s,
    )


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
            log.info("%s: %s; reconnecting in %.1f s", name, exc, delay)
        if up.is_set():
            delay = cfg.reconnect_initial_s
        up.clear()
        await sleep(delay)
        delay = min(delay * 2, cfg.reconnect_max_s)
