"""The node's BLE GATT profile, read from ``hardware/node_profile.json`` (the one definition that
the firmware, the gateway and the emulators share)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

# Random static addresses (the two top bits set) derived from the node id, so that an installer's
# config and the emulator agree on a plug's address without a scan. Real ESP32 nodes use their
# public address instead; the gateway config names whichever address the node has.
PLUG_ADDRESS_PREFIX = "D0:57:A7:00"
GATEWAY_ADDRESS = "C0:57:A7:FF:FF:01"


@dataclass(frozen=True, slots=True)
class BleProfile:
    service_uuid: str
    readings_uuid: str
    command_uuid: str
    ack_uuid: str
    name_prefix: str
    min_mtu: int


def _text(section: dict[str, Any], key: str) -> str:
    value = section.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"node_profile.json: ble.{key} must be a non-empty string")
    return value.lower()


def load_profile() -> BleProfile:
    raw = json.loads(resources.files("hardware").joinpath("node_profile.json").read_text("utf-8"))
    ble = raw["ble"]
    mtu = ble.get("min_mtu")
    if not isinstance(mtu, int) or mtu < 23:
        raise ValueError("node_profile.json: ble.min_mtu must be an integer >= 23")
    return BleProfile(
        service_uuid=_text(ble, "service_uuid"),
        readings_uuid=_text(ble, "readings_uuid"),
        command_uuid=_text(ble, "command_uuid"),
        ack_uuid=_text(ble, "ack_uuid"),
        name_prefix=ble.get("advertised_name_prefix", "wattmesh-"),
        min_mtu=mtu,
    )


PROFILE = load_profile()


def plug_address(node_id: int) -> str:
    """The emulator's BLE address for a node id (0..65535)."""
    if not 0 <= node_id <= 0xFFFF:
        raise ValueError(f"node id {node_id} out of range 0..65535")
    return f"{PLUG_ADDRESS_PREFIX}:{node_id >> 8:02X}:{node_id & 0xFF:02X}"


def plug_name(node_id: int) -> str:
    return f"{PROFILE.name_prefix}{node_id}"
