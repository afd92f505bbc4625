"""MQTT accounts for mosquitto: password-file lines, ACL blocks, and TLS material for a private
broker (the demo's and the tests').

``password_line`` writes mosquitto's own hash format (``mosquitto_passwd``, mosquitto 2.x:
``user:$7$<iterations>$<salt b64>$<PBKDF2-HMAC-SHA512 b64>``); it is written here because
provisioning runs on machines without mosquitto installed, and mosquitto ships no library for it.
``node_acl`` lets a node publish only its own ``tele``/``stat`` topics and read only its own
``cmnd`` topic; ``gateway_acl`` gives a gateway what its parts use (node frames and ACKs,
commands, its state and discovery topics, its demand-response topic).

``make_tls`` makes a throw-away CA and a server certificate for ``127.0.0.1``/``localhost``
with ``cryptography`` at run time: no key is ever committed.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
SALT_BYTES = 12
USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TOPIC_RE = re.compile(r"^[^#+/\s]{1,64}$")


class MqttAuthError(ValueError):
    """A user name or topic that cannot go into a password file or an ACL."""


def _name(value: str, what: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(value):
        raise MqttAuthError(f"{what}: {value!r} must be 1-64 of letters, digits, . _ -")
    return value


def new_password() -> str:
    return secrets.token_urlsafe(24)


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """One line of mosquitto's password file (``mosquitto_passwd`` format, no newline)."""
    _name(user, "user", USER_RE)
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"{user}:$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def node_acl(user: str, topic: str) -> str:
    """The ACL block of one node: publish its own telemetry and ACKs, read its own commands."""
    _name(user, "user", USER_RE)
    _name(topic, "topic", TOPIC_RE)
    return (
        f"user {user}\n"
        f"topic write tele/{topic}/#\n"
        f"topic write stat/{topic}/#\n"
        f"topic read cmnd/{topic}/#\n"
    )


def gateway_acl(
    user: str, gateway_id: str, base_topic: str = "wattmesh",
    discovery_prefix: str = "homeassistant",
) -> str:
    """The ACL block of one gateway: read node frames, ACKs and wills; send commands; publish
    its state, availability and Home Assistant discovery; read its demand-response topic."""
    _name(user, "user", USER_RE)
    for value, what in ((gateway_id, "gateway id"), (base_topic, "base topic"),
                        (discovery_prefix, "discovery prefix")):  # fmt: skip
        _name(value, what, TOPIC_RE)
    return (
        f"user {user}\n"
        "topic read tele/#\n"
        "topic read stat/#\n"
        "topic write cmnd/#\n"
        f"topic readwrite {base_topic}/{gateway_id}/#\n"
        f"topic write {discovery_prefix}/#\n"
    )


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_tls(
    folder: Path, name: str = "wattmesh test", hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> TlsFiles:
    """A new CA and a server certificate it signs for ``hosts`` (names or IP addresses), written
    to ``folder`` (keys mode 0600). For private brokers on loopback (tests, the demo)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    _write(files.ca_cert, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(
        files.server_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    return files


def read_ca(path: Path, now: datetime.datetime | None = None) -> bytes:
    """The broker's CA certificate(s) from a PEM file, checked and written out again as PEM: the
    trust anchor a node is provisioned with (``mqtt.ca``). ``MqttAuthError`` names what is
    wrong: unreadable, not PEM certificates, expired."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MqttAuthError(f"cannot read it ({exc})") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except (ValueError, x509.InvalidVersion):  # a certificate of an unknown X.509 version
        raise MqttAuthError(
            f"{path}: not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    now = now or datetime.datetime.now(datetime.UTC)
    for cert in certs:
        if cert.not_valid_after_utc < now:
            raise MqttAuthError(f"{path}: the certificate {cert.subject.rfc4514_string()} "
                                f"expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def mosquitto_conf(
    port: int, tls: TlsFiles, password_file: Path, acl_file: Path, extra: str = ""
) -> str:
    """A mosquitto 2.x config: one TLS listener on loopback (nodes and gateways alike), no
    anonymous clients, the password file and the ACL."""
    return (
        "per_listener_settings false\n"
        f"listener {port} 127.0.0.1\n"
        f"cafile {tls.ca_cert}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\n"
        "tls_version tlsv1.2\n"
        "allow_anonymous false\n"
        f"password_file {password_file}\n"
        f"acl_file {acl_file}\n"
        "persistence false\n"
        # mosquitto started as root would drop to user mosquitto, who cannot read our 0600 key
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n" + extra
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def provision_gateway(
    gateway_id: str, out: Path, user: str | None = None, base_topic: str = "wattmesh",
    discovery_prefix: str = "homeassistant",
) -> dict[str, str]:
    """A gateway's broker account: ``mqtt.password`` (0600, what ``[mqtt] password_file`` names)
    and the lines for mosquitto's password file and ACL."""
    user = user or f"gateway-{gateway_id}"
    acl = gateway_acl(user, gateway_id, base_topic, discovery_prefix)
    password = new_password()
    _write_private(out / "mqtt.password", password + "\n")
    _write_private(out / "mosquitto.passwd", password_line(user, password) + "\n")
    (out / "mosquitto.acl").write_text(acl, encoding="utf-8")
    return {"user": user, "password_file": str(out / "mqtt.password"),
            "passwd_lines": str(out / "mosquitto.passwd"), "acl_lines": str(out / "mosquitto.acl")}


def _cmd_provision_gateway(args: argparse.Namespace) -> int:
    try:
        done = provision_gateway(args.gateway_id, Path(args.out), args.user, args.base_topic,
                                 args.discovery_prefix)
    except (MqttAuthError, OSError) as exc:
        print(f"wattmesh: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(done))
    return 0


def register_provision(prov_sub: Any) -> None:
    """``wattmesh provision gateway``: the gateway's MQTT account."""
    g = prov_sub.add_parser("gateway", help="make a gateway's MQTT account (password, ACL)")
    g.add_argument("--gateway-id", required=True, help="the gateway's [gateway] id")
    g.add_argument("--out", required=True, help="directory for mqtt.password and the lines")
    g.add_argument("--user", help="broker user name (default gateway-<id>)")
    g.add_argument("--base-topic", default="wattmesh")
    g.add_argument("--discovery-prefix", default="homeassistant")
    g.set_defaults(func=_cmd_provision_gateway)
