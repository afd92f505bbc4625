"""Where the gateway's secrets come from, and the checks on them.

A secret is never a config value or a command-line argument: the MQTT password is read from
``[mqtt] password_file`` or the environment (``WATTMESH_MQTT_PASSWORD``, e.g. systemd's
``EnvironmentFile=``) when a session opens, and every file holding a secret (the password, the
gateway key, the node keystore) must be readable by its owner only. ``tls_context`` is the one
place TLS to the broker is set up: certificate and host name checked, never switched off.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from gateway.config import GatewayConfigError, MqttConfig
from ledger.secret_files import check_owner_only

PASSWORD_ENV = "WATTMESH_MQTT_PASSWORD"
MAX_SECRET = 4096


class CredentialError(GatewayConfigError):
    """A secret that cannot be used: missing, unreadable, or open to other users."""


def check_private(path: Path, what: str) -> None:
    """Refuse a secret file that others may read or write (it must be mode 0600 or 0400)."""
    check_owner_only(path, what, CredentialError)


def read_secret(path: Path, what: str) -> str:
    check_private(path, what)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SECRET + 1)
    except OSError as exc:
        raise CredentialError(f"{what}: cannot read {path} ({exc.strerror})") from None
    if len(raw) > MAX_SECRET:
        raise CredentialError(f"{what}: {path} is longer than {MAX_SECRET} bytes")
    try:
        text = raw.decode().strip()
    except UnicodeDecodeError:
        raise CredentialError(f"{what}: {path} is not UTF-8 text") from None
    if not text:
        raise CredentialError(f"{what}: {path} is empty")
    return text


def mqtt_password(cfg: MqttConfig) -> str | None:
    """The broker password: from ``password_file``, else the environment, else none."""
    if cfg.password_file is not None:
        return read_secret(cfg.password_file, "mqtt.password_file")
    return os.environ.get(PASSWORD_ENV) or None


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """TLS to the broker with the certificate chain and host name checked (``ca_file`` or the
    system's CAs); None when ``tls`` is off."""
    if not cfg.tls:
        return None
    try:
        ctx = ssl.create_default_context(
            cafile=None if cfg.ca_file is None else str(cfg.ca_file)
        )
    except (OSError, ssl.SSLError) as exc:
        raise CredentialError(f"mqtt.ca_file: cannot load {cfg.ca_file} ({exc})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
