"""Modbus meter models as data: one JSON register map per model, read by both the gateway's
driver and the emulator, so a map fixed once is fixed for both.

A map names its quantities (address, type, scale, unit, optional role), the function code, the
largest read the device accepts, its readable address ranges and the meter's limits. Roles tell
the gateway which quantity is the real power and which are the energy counters.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS = ("sdm120", "sdm630", "pzem004t")
TYPES = {"float32": 2, "u16": 1, "u32": 2}
ROLES = ("power_w", "voltage_v", "current_a", "import_energy", "export_energy")
MODBUS_MAX_REGISTERS = 125  # largest read-registers request the protocol allows


class MapError(ValueError):
    """A register map or a register block that does not make sense."""


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    address: int
    type: str
    scale: float
    unit: str
    role: str | None

    @property
    def count(self) -> int:
        return TYPES[self.type]


@dataclass(frozen=True, slots=True)
class RegisterBlock:
    """One read request: ``count`` registers from ``address``."""

    address: int
    count: int


@dataclass(frozen=True, slots=True)
class RegisterMap:
    model: str
    description: str
    function: str  # "input" (code 0x04) or "holding" (code 0x03)
    max_per_request: int
    word_order: str  # "big": high word first; "little": low word first
    readable: tuple[tuple[int, int], ...]  # half-open [start, end) address ranges
    max_power_w: int
    energy_modulus_wh: int | None
    default_serial: Mapping[str, Any]
    quantities: Mapping[str, Quantity]
    # the line speeds the meter can be set to (its datasheet); on any other it hears garbage
    baudrates: tuple[int, ...] = ()
    # False for a meter whose power and energy registers are unsigned (PZEM-004T): it cannot tell
    # export from import, and the gateway flags its intervals sign_unknown
    power_signed: bool = True

    def by_role(self, role: str) -> Quantity | None:
        for q in self.quantities.values():
            if q.role == role:
                return q
        return None

    def is_readable(self, address: int, count: int) -> bool:
        return any(s <= address and address + count <= e for s, e in self.readable)

    # -- register <-> value -------------------------------------------------------------------
    def decode(self, q: Quantity, regs: Sequence[int]) -> float:
        """Value of ``q`` in its unit from its registers (``MapError`` if not a finite number)."""
        if len(regs) != q.count or any(not 0 <= r <= 0xFFFF for r in regs):
            raise MapError(f"{q.name}: expected {q.count} 16-bit registers")
        words = list(regs) if self.word_order == "big" else list(reversed(regs))
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        if q.type == "float32":
            value: float = struct.unpack(">f", raw)[0]
            if not math.isfinite(value):
                raise MapError(f"{q.name}: not a finite number")
        else:
            value = int.from_bytes(raw, "big")
        return value * q.scale

    def encode(self, q: Quantity, value: float) -> list[int]:
        """Registers that hold ``value`` (in the quantity's unit), as the meter would serve it."""
        if q.type == "float32":
            raw = struct.pack(">f", value / q.scale)
        else:
            n = round(value / q.scale)
            n = max(0, min(n, (1 << (16 * q.count)) - 1))
            raw = n.to_bytes(2 * q.count, "big")
        words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        return words if self.word_order == "big" else list(reversed(words))

    # -- request planning ---------------------------------------------------------------------
    def plan(self, names: Iterable[str] | None = None) -> list[RegisterBlock]:
        """The fewest read requests that fetch the given quantities (all if ``None``).

        Quantities sorted by address are covered greedily: each request starts at the first
        quantity not yet covered and extends over every following quantity that still fits in
        ``max_per_request`` registers and inside one readable range (reading the unused registers
        in between is allowed there). For intervals on a line this greedy cover is optimal.
        """
        chosen = sorted(
            (self.quantities[n] for n in (names if names is not None else self.quantities)),
            key=lambda q: q.address,
        )
        blocks: list[RegisterBlock] = []
        for q in chosen:
            if blocks:
                last = blocks[-1]
                end = max(last.address + last.count, q.address + q.count)
                if q.address + q.count <= last.address + last.count:
                    continue
                if end - last.address <= self.max_per_request and self.is_readable(
                    last.address, end - last.address
                ):
                    blocks[-1] = RegisterBlock(last.address, end - last.address)
                    continue
            blocks.append(RegisterBlock(q.address, q.count))
        return blocks

    def values(
        self, blocks: Sequence[RegisterBlock], regs: Sequence[Sequence[int]]
    ) -> dict[str, float]:
        """Decode every quantity covered by the blocks from their registers."""
        out: dict[str, float] = {}
        for block, got in zip(blocks, regs, strict=True):
            if len(got) != block.count:
                raise MapError(f"block at {block.address}: got {len(got)} of {block.count}")
            for q in self.quantities.values():
                off = q.address - block.address
                if off >= 0 and off + q.count <= block.count:
                    out[q.name] = self.decode(q, got[off : off + q.count])
        return out


def _req(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise MapError(f"{where}: missing {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MapError(f"{where}: {key!r} has the wrong type")
    return value


def parse_map(doc: Any, where: str = "register map") -> RegisterMap:
    if not isinstance(doc, dict):
        raise MapError(f"{where}: must be an object")
    function = _req(doc, "function", str, where)
    if function not in ("input", "holding"):
        raise MapError(f"{where}: function must be 'input' or 'holding'")
    word_order = _req(doc, "word_order", str, where)
    if word_order not in ("big", "little"):
        raise MapError(f"{where}: word_order must be 'big' or 'little'")
    max_per = _req(doc, "max_registers_per_request", int, where)
    if not 1 <= max_per <= MODBUS_MAX_REGISTERS:
        raise MapError(f"{where}: max_registers_per_request must be in [1, 125]")
    readable = []
    for r in _req(doc, "readable", list, where):
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r)):
            raise MapError(f"{where}: readable ranges are [start, end) pairs")
        if not 0 <= r[0] < r[1] <= 0x10000:
            raise MapError(f"{where}: readable range {r} is out of order or out of range")
        readable.append((r[0], r[1]))
    modulus = doc.get("energy_modulus_wh")
    if modulus is not None and (not isinstance(modulus, int) or modulus <= 0):
        raise MapError(f"{where}: energy_modulus_wh must be a positive integer or null")
    quantities: dict[str, Quantity] = {}
    for name, qd in _req(doc, "quantities", dict, where).items():
        qw = f"{where}: quantity {name!r}"
        if not isinstance(qd, dict):
            raise MapError(f"{qw}: must be an object")
        qtype = _req(qd, "type", str, qw)
        if qtype not in TYPES:
            raise MapError(f"{qw}: type must be one of {', '.join(TYPES)}")
        q = Quantity(
            name=name,
            address=_req(qd, "address", int, qw),
            type=qtype,
            scale=float(_req(qd, "scale", (int, float), qw)),
            unit=_req(qd, "unit", str, qw),
            role=qd.get("role"),
        )
        if q.role is not None and q.role not in ROLES:
            raise MapError(f"{qw}: role must be one of {', '.join(ROLES)}")
        if q.scale <= 0 or not any(
            s <= q.address and q.address + q.count <= e for s, e in readable
        ):
            raise MapError(f"{qw}: scale must be positive and the address readable")
        quantities[name] = q
    if not quantities:
        raise MapError(f"{where}: no quantities")
    roles = [q.role for q in quantities.values() if q.role]
    if len(roles) != len(set(roles)):
        raise MapError(f"{where}: a role is given to two quantities")
    for q in quantities.values():
        if q.role in ("import_energy", "export_energy") and q.unit not in ("Wh", "kWh"):
            raise MapError(f"{where}: quantity {q.name!r}: energy unit must be Wh or kWh")
    baudrates = doc.get("baudrates", [])
    if not isinstance(baudrates, list) or not all(
        type(b) is int and 300 <= b <= 4_000_000 for b in baudrates
    ):
        raise MapError(f"{where}: baudrates must be a list of line speeds (300..4000000)")
    power_signed = doc.get("power_signed", True)
    if not isinstance(power_signed, bool):
        raise MapError(f"{where}: power_signed must be true or false")
    max_power = _req(doc, "max_power_w", int, where)
    if max_power <= 0:
        raise MapError(f"{where}: max_power_w must be positive")
    return RegisterMap(
        model=_req(doc, "model", str, where),
        description=str(doc.get("description", "")),
        function=function,
        max_per_request=max_per,
        word_order=word_order,
        readable=tuple(readable),
        max_power_w=max_power,
        energy_modulus_wh=modulus,
        default_serial=dict(doc.get("default_serial", {})),
        quantities=quantities,
        baudrates=tuple(baudrates),
        power_signed=power_signed,
    )


def load_map(model: str) -> RegisterMap:
    """The register map of a shipped model (``sdm120``, ``sdm630``, ``pzem004t``)."""
    if model not in MODELS:
        raise MapError(f"unknown meter model {model!r}: expected one of {', '.join(MODELS)}")
    path = Path(__file__).with_name(f"{model}.json")
    return parse_map(json.loads(path.read_text()), f"{model}.json")


def energy_mwh(q: Quantity, value: float) -> int:
    """An energy counter value (in ``q.unit``, Wh or kWh) as integer mWh."""
    per = 1_000_000 if q.unit == "kWh" else 1_000
    return round(value * per)
