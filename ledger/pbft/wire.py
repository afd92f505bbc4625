"""Strict field readers for wire dicts: hostile input raises ``WireError`` and nothing else."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ledger.hexbytes import parse_hex

MAX_INT = 2**63 - 1


class WireError(ValueError):
    """A consensus message, batch or block that is malformed."""


def exact_keys(wire: Any, keys: Iterable[str], what: str) -> None:
    if not isinstance(wire, dict):
        raise WireError(f"{what}: must be an object")
    expected = set(keys)
    if set(wire) != expected:
        raise WireError(f"{what}: fields must be {sorted(expected)}, got {sorted(map(str, wire))}")


def nat(wire: dict[str, Any], key: str, limit: int = MAX_INT) -> int:
    value = wire[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise WireError(f"{key}: must be an integer in [0, {limit}]")
    return value


def hex_bytes(wire: dict[str, Any], key: str, size: int) -> bytes:
    try:
        return parse_hex(wire[key], size)
    except ValueError as exc:
        raise WireError(f"{key}: {exc}") from None


def listed(wire: dict[str, Any], key: str, limit: int) -> list[Any]:
    value = wire[key]
    if not isinstance(value, list) or len(value) > limit:
        raise WireError(f"{key}: must be a list of at most {limit} items")
    return value
