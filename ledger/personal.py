"""Members' personal data, kept off the chain: the operator's register and the commitment.

The chain holds a member's id, role, keys and a commitment: SHA-256 over a domain tag, a random
32-byte salt and the canonical encoding of ``{name, email, address}``. The data and the salt stay
with the operator (this SQLite file, mode 0600) and with the member (``opening``: what the member
keeps to prove what the operator holds). Without the salt the commitment says nothing, not even
to someone guessing e-mail addresses; with it anyone can check that the data matches the chain.

A member who leaves asks for erasure: ``erase`` deletes the row and its salt (``secure_delete``
overwrites the freed pages, and the file is vacuumed). Nothing on the chain changes, so the hash
chain, every certificate and every replica's state digest stay as they were; the commitment
left on the chain can no longer be opened by anyone.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.contract import fields
from ledger.contract.codes import Rejected
from ledger.encoding import canonical
from ledger.secret_files import check_owner_only

DOMAIN = b"wattmesh/personal/v1\x00"
SALT_BYTES = 32
MAX_ADDRESS = 256
MAX_NAME = 128


class PersonalDataError(ValueError):
    """Personal data that is malformed, or a member the register does not hold."""


@dataclass(frozen=True, slots=True)
class Opening:
    """What opens a commitment: the data and its salt (hex)."""

    name: str
    email: str
    address: str
    salt: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "email": self.email, "address": self.address, "salt": self.salt}


def check(name: Any, email: Any, address: Any) -> dict[str, str]:
    """The data as the commitment encodes it; a clear error names the bad field."""
    record = {"name": name, "email": email, "address": address}
    try:
        return {
            "name": fields.text(record, "name", MAX_NAME),
            "email": fields.email(record, "email"),
            "address": fields.text(record, "address", MAX_ADDRESS),
        }
    except Rejected as exc:
        raise PersonalDataError(exc.message) from None


def commitment(opening: Opening) -> str:
    """The hex SHA-256 the chain holds for this data."""
    data = check(opening.name, opening.email, opening.address)
    try:
        salt = bytes.fromhex(opening.salt)
    except ValueError:
        raise PersonalDataError("salt must be hex") from None
    if len(salt) != SALT_BYTES:
        raise PersonalDataError(f"salt must be {SALT_BYTES} bytes")
    return hashlib.sha256(DOMAIN + salt + canonical(data)).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS personal (
    id_grid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    address TEXT NOT NULL,
    salt TEXT NOT NULL,
    commitment TEXT NOT NULL
) STRICT
"""


class PersonalStore:
    """The operator's register of personal data: one SQLite file, created with mode 0600."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        else:
            check_owner_only(path, "personal data register", PersonalDataError)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PersonalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, id_grid: str, name: str, email: str, address: str) -> tuple[str, Opening]:
        """Store a new member's data under a fresh salt; returns the commitment for
        ``registry.admit`` and the opening to hand to the member."""
        try:
            fields.ident({"id_grid": id_grid}, "id_grid")
        except Rejected as exc:
            raise PersonalDataError(exc.message) from None
        data = check(name, email, address)
        opening = Opening(salt=secrets.token_bytes(SALT_BYTES).hex(), **data)
        digest = commitment(opening)
        try:
            self._db.execute(
                "INSERT INTO personal VALUES (?, ?, ?, ?, ?, ?)",
                (id_grid, opening.name, opening.email, opening.address, opening.salt, digest),
            )
        except sqlite3.IntegrityError:
            raise PersonalDataError(f"{id_grid}: already registered") from None
        return digest, opening

    def get(self, id_grid: str) -> tuple[str, Opening] | None:
        row = self._db.execute(
            "SELECT name, email, address, salt, commitment FROM personal WHERE id_grid = ?",
            (id_grid,),
        ).fetchone()
        if row is None:
            return None
        return str(row[4]), Opening(*row[:4])

    def erase(self, id_grid: str) -> bool:
        """Delete a member's data and salt for good; True if there was any."""
        gone = self._db.execute("DELETE FROM personal WHERE id_grid = ?", (id_grid,)).rowcount
        self._db.execute("VACUUM")
        return bool(gone)
