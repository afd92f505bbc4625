"""What ``gateway run`` relies on before it opens anything, checked once by ``gateway check``
and ``gateway run`` alike, so a fault is one named line, not a traceback from inside ``run``:
the data folder (exists or can be made, writable), the key file and the keystore (owner-only
when they exist), the MQTT password file (owner-only, not empty), the broker's CA file
(loads), the BLE bond store of the bumble backend (owner-only, well-formed), the ledger's
cluster file and the EMS's appliance spec (already read by the config).
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config import GatewayConfig, GatewayConfigError
from gateway.credentials import check_private, mqtt_password, tls_context


def _writable_dir(path: Path, what: str) -> None:
    probe = path
    while not probe.exists():  # the daemon makes the folder: its first existing parent counts
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise GatewayConfigError(f"{what}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise GatewayConfigError(
            f"{what}: {probe} is not writable by this user (uid {os.getuid()}); the daemon "
            "keeps its SQLite store and key there"
        )


def _bond_store(cfg: GatewayConfig) -> None:
    """The BLE bond store: owner-only and well-formed if it exists, else its folder writable."""
    from hardware.ble.bonds import BondStoreError, read_bond_store

    path = cfg.ble_bond_store
    try:
        read_bond_store(path)
    except BondStoreError as exc:
        raise GatewayConfigError(f"ble.bond_store: {exc}") from None
    if not path.exists():
        _writable_dir(path.parent, "ble.bond_store")


def preflight(cfg: GatewayConfig) -> None:
    """Raise ``GatewayConfigError`` naming the first thing ``run`` would fail on."""
    _writable_dir(cfg.data_dir, "gateway.data_dir")
    db = cfg.data_dir / "gateway.db"
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise GatewayConfigError(f"gateway.data_dir: {db} is not writable by this user")
    if cfg.key_file.exists():
        check_private(cfg.key_file, "gateway.key_file")
    else:
        _writable_dir(cfg.key_file.parent, "gateway.key_file")
    if cfg.keystore is not None and cfg.keystore.exists():
        check_private(cfg.keystore, "gateway.keystore")
    if cfg.ble_backend.startswith("bumble:") and any(n.transport == "ble" for n in cfg.nodes):
        _bond_store(cfg)
    if cfg.mqtt is not None:
        mqtt_password(cfg.mqtt)
        tls_context(cfg.mqtt)
    if cfg.ledger is not None and not os.access(cfg.ledger.cluster, os.R_OK):
        raise GatewayConfigError(f"ledger.cluster: cannot read {cfg.ledger.cluster}")
