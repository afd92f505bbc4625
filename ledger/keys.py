"""Ed25519 key files of replicas and the operator.

A key file holds one line: the 32-byte private seed as lowercase hex. It is created with mode 0600
(never readable by others, even for a moment: the mode is set by ``os.open``) and refused on load
when the content is anything else, so a truncated or swapped file is an error that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.ed25519 import valid_public_key
from ledger.hexbytes import parse_hex
from ledger.secret_files import check_owner_only
from ledger.tx import public_bytes

SEED_BYTES = 32


class KeyFileError(ValueError):
    """A key file that is missing, malformed or too widely readable."""


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public_bytes(pub).hex()


def seed_bytes(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def write_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write a new key file with mode 0600; refuses to overwrite an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(seed_bytes(key).hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def load_key(path: Path) -> Ed25519PrivateKey:
    check_owner_only(path, "key file", KeyFileError)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from exc
    text = raw.decode("ascii", errors="replace").strip()
    if len(text) != 2 * SEED_BYTES:
        raise KeyFileError(f"{path}: expected {2 * SEED_BYTES} hex characters")
    try:
        seed = bytes.fromhex(text)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not hex") from exc
    return Ed25519PrivateKey.from_private_bytes(seed)


def parse_public_hex(value: object, where: str) -> Ed25519PublicKey:
    try:
        raw = parse_hex(value, SEED_BYTES)
    except ValueError as exc:
        raise KeyFileError(f"{where}: {exc}") from None
    if not valid_public_key(raw):  # a small-order point would verify nothing (or anything)
        raise KeyFileError(f"{where}: not a valid Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)
