"""BLE bonds: the gateway's bond store (the long-term keys of the nodes it paired with, one JSON
file) and the pairing both ends use (``passkey_pairing``).

bumble's ``JsonKeyStore`` keeps the format (``{namespace: {peer address: keys}}``, namespace = the
gateway's own address); this subclass adds what a secret needs: the file is written owner-only
(0600, through a temporary file of the same mode, fsynced, then renamed), a file that others may
read is refused, and a file that is not a bond store (bad JSON, wrong shapes, keys of the wrong
length, too big) is a ``BondStoreError`` naming the file and the entry, never a traceback or a
silently empty store (which would make the gateway pair again and the node refuse it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bumble import hci
from bumble.keys import JsonKeyStore, PairingKeys
from bumble.pairing import PairingConfig, PairingDelegate

from ledger.secret_files import check_owner_only

MAX_BYTES = 1 << 20  # a store for a few hundred nodes is a few hundred kB
KEY_FIELDS = ("ltk", "ltk_central", "ltk_peripheral", "irk", "csrk", "link_key")


class BondStoreError(ValueError):
    """A bond store file that cannot be used; the message names the file and what is wrong."""


def _check_keys(where: str, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise BondStoreError(f"{where}: must be an object")
    for name, key in entry.items():
        if name in ("address_type", "link_key_type"):
            if not isinstance(key, int) or isinstance(key, bool):
                raise BondStoreError(f"{where}.{name}: must be an integer")
            continue
        if name not in KEY_FIELDS:
            raise BondStoreError(f"{where}.{name}: unknown key")
        if not isinstance(key, dict) or not isinstance(key.get("value"), str):
            raise BondStoreError(f"{where}.{name}: must be an object with a hex 'value'")
        try:
            value = bytes.fromhex(key["value"])
            rand = key.get("rand")
            if rand is not None:
                bytes.fromhex(rand)
        except (ValueError, TypeError):
            raise BondStoreError(f"{where}.{name}: not hex") from None
        if len(value) != 16:
            raise BondStoreError(f"{where}.{name}: must be 16 bytes, got {len(value)}")
        if not isinstance(key.get("authenticated", False), bool):
            raise BondStoreError(f"{where}.{name}.authenticated: must be true or false")
        ediv = key.get("ediv")
        if ediv is not None and (not isinstance(ediv, int) or not 0 <= ediv <= 0xFFFF):
            raise BondStoreError(f"{where}.{name}.ediv: must be an integer 0..65535")
    try:
        PairingKeys.from_dict(entry)
    except (KeyError, ValueError, TypeError) as exc:
        raise BondStoreError(f"{where}: {exc}") from None


def parse_bond_store(text: str, path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The content of a bond store file, checked entry by entry."""
    if len(text) > MAX_BYTES:
        raise BondStoreError(f"bond store {path}: larger than {MAX_BYTES} bytes")
    try:
        db = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BondStoreError(f"bond store {path}: not JSON ({exc})") from None
    if not isinstance(db, dict):
        raise BondStoreError(f"bond store {path}: expected an object of namespaces")
    for namespace, peers in db.items():
        if not isinstance(peers, dict):
            raise BondStoreError(f"bond store {path}: {namespace}: expected an object of peers")
        for peer, entry in peers.items():
            where = f"bond store {path}: {namespace}.{peer}"
            try:
                hci.Address(peer)
            except (ValueError, TypeError, IndexError):
                raise BondStoreError(f"{where}: not a BLE address") from None
            _check_keys(where, entry)
    return db


def read_bond_store(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Read and check a bond store file; a missing file is an empty store. A file that others
    may read or write is refused: it holds the keys that let anyone decrypt the node links."""
    if not check_owner_only(path, "bond store", BondStoreError, missing_ok=True):
        return {}
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
        text = raw.decode("utf-8")
    except OSError as exc:
        raise BondStoreError(f"bond store {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BondStoreError(f"bond store {path}: not UTF-8 text") from None
    return parse_bond_store(text, path)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically, owner-only from the first byte on."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older temporary file keeps its mode through O_CREAT
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class BondStore(JsonKeyStore):
    """bumble's JSON key store, owner-only and checked (see the module's docstring)."""

    def __init__(self, path: Path, namespace: str) -> None:
        super().__init__(namespace, str(path))
        self.path = Path(self.filename)

    async def load(
        self,
    ) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
        db = read_bond_store(self.path)
        key_map = db.setdefault(self.namespace, {})
        return db, key_map

    async def save(self, db: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(db, sort_keys=True, indent=2).encode("utf-8"))

    async def delete(self, name: str) -> None:
        db, key_map = await self.load()
        if key_map.pop(name, None) is not None:
            await self.save(db)


def same_address(a: str, b: str) -> bool:
    """Whether two address strings name one device (``AA:..`` and ``AA:../P`` alike)."""
    return a.split("/")[0].upper() == b.split("/")[0].upper()


class PasskeyEntry(PairingDelegate):
    """LE Secure Connections Passkey Entry where this end "types" a passkey it already knows
    (``firmware.ble_guard.passkey`` of the node's key): neither a node nor a gateway has a keypad
    or a display. ``accept`` (for a node) decides whether a pairing request is taken at all."""

    def __init__(self, passkey: int | None, accept: Callable[[], bool] | None = None) -> None:
        super().__init__(io_capability=PairingDelegate.KEYBOARD_INPUT_ONLY)
        self.passkey = passkey
        self._accept = accept

    async def accept(self) -> bool:
        return True if self._accept is None else self._accept()

    async def get_number(self) -> int | None:
        return self.passkey  # None: a negative reply, the pairing fails


def passkey_pairing(passkey: int | None, accept: Callable[[], bool] | None = None) -> PairingConfig:
    """LE Secure Connections, MITM protection (Passkey Entry), bonding."""
    return PairingConfig(
        sc=True, mitm=True, bonding=True, delegate=PasskeyEntry(passkey, accept)
    )
