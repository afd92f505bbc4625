"""Appliances as data (the paper's Table 8), validated with errors that name the row and field.

A spec file is JSON: ``{"appliances": [{...}, ...]}``; each row has ``name``, ``flexible``,
``start`` and ``end`` ("HH:MM" on the 15-minute grid, ``end`` may be "24:00"; an ``end`` not after
``start`` means the window runs past midnight, as the EV's 19:00 to 06:00), ``working_min`` and
``power_w``. Storage-like loads (EV, water heater) add ``"storage": true`` and the ``energy_wh``
they need; their charge may be split into runs of at least ``min_on_min`` separated by at least
``min_off_min``. Optional ``node``, ``relay`` and ``meter`` bind the appliance to a smart relay and
the meter (or plug) that measures it.

The paper's own Table 8 has two rows whose working time does not fit their window (Air
Conditioner: 7 h in 19:00 to 24:00; Dish Washer: 1.5 h in 22:00 to 23:00). ``load_appliances``
never truncates silently: with ``repair="strict"`` it raises ``SpecError`` naming them; the other
policies (``clip``, ``widen``, ``exclude``) change them explicitly and return a note per change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from gateway.ems.timegrid import SLOT_MIN, SLOTS_PER_DAY, slot_energy_mwh

Repair = Literal["strict", "clip", "widen", "exclude"]
REPAIRS: tuple[Repair, ...] = ("strict", "clip", "widen", "exclude")
DAY_MIN = 24 * 60
MAX_POWER_W = 100_000  # anything above is a typo (kW for W), not a household appliance

_KNOWN_KEYS = {
    "name", "flexible", "start", "end", "working_min", "power_w", "storage", "energy_wh",
    "min_on_min", "min_off_min", "node", "relay", "meter",
}


@dataclass(frozen=True, slots=True)
class Appliance:
    name: str
    flexible: bool
    start_min: int  # minutes after midnight, on the slot grid
    end_min: int  # 1..1440; not after start_min means the window wraps past midnight
    working_min: int
    power_w: int
    storage: bool = False
    energy_wh: int = 0  # storage-like loads: energy needed in the window
    min_on_min: int = SLOT_MIN
    min_off_min: int = SLOT_MIN
    node: int | None = None
    relay: int | None = None
    meter: str | None = None

    @property
    def window_min(self) -> int:
        span = (self.end_min - self.start_min) % DAY_MIN
        return DAY_MIN if span == 0 else span

    @property
    def window_slots(self) -> int:
        return self.window_min // SLOT_MIN

    @property
    def run_slots(self) -> int:
        """Slots of operation: the working time, or for storage the slots its energy needs."""
        if self.storage:
            return math.ceil(self.energy_wh * 1000 / slot_energy_mwh(self.power_w))
        return self.working_min // SLOT_MIN

    @property
    def start_slot(self) -> int:
        return self.start_min // SLOT_MIN

    def window_positions(self) -> list[int]:
        """Slot-of-day indices of the window in time order (wrapping past midnight)."""
        return [(self.start_slot + i) % SLOTS_PER_DAY for i in range(self.window_slots)]


@dataclass(frozen=True, slots=True)
class Problem:
    row: int  # 1-based row of the spec
    name: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} ({self.name}): {self.field}: {self.reason}"


class SpecError(ValueError):
    """An appliance spec that cannot be used; ``problems`` names every bad row and field."""

    def __init__(self, problems: Sequence[Problem], hint: str = "") -> None:
        self.problems = list(problems)
        text = "; ".join(str(p) for p in self.problems)
        super().__init__(text + (f" ({hint})" if hint else ""))


def _parse_time(value: Any, *, allow_24: bool) -> int:
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":":
        raise ValueError(f"{value!r} is not HH:MM")
    hh, mm = value[:2], value[3:]
    if not (hh.isdigit() and mm.isdigit()):
        raise ValueError(f"{value!r} is not HH:MM")
    minutes = int(hh) * 60 + int(mm)
    if int(mm) >= 60 or minutes > DAY_MIN or (minutes == DAY_MIN and not allow_24):
        raise ValueError(f"{value!r} is not a time of day")
    if minutes % SLOT_MIN:
        raise ValueError(f"{value!r} is not on the {SLOT_MIN}-minute grid")
    return minutes


def _int_field(row: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None) -> int:
    value = row.get(key, default)
    if value is None:
        raise ValueError("missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    if not lo <= value <= hi:
        raise ValueError(f"{value} is outside {lo}..{hi}")
    return value


def _parse_row(index: int, row: Any, problems: list[Problem]) -> Appliance | None:
    if not isinstance(row, Mapping):
        problems.append(Problem(index, "?", "row", "is not an object"))
        return None
    name = row.get("name")
    label = name if isinstance(name, str) else "?"
    before = len(problems)

    def bad(field: str, reason: str) -> None:
        problems.append(Problem(index, label, field, reason))

    if not isinstance(name, str) or not name.strip():
        bad("name", "must be a non-empty string")
    for key in sorted(set(row) - _KNOWN_KEYS, key=str):
        bad(str(key), "unknown key")
    flexible = row.get("flexible")
    if not isinstance(flexible, bool):
        bad("flexible", "must be true or false")
    storage = row.get("storage", False)
    if not isinstance(storage, bool):
        bad("storage", "must be true or false")
    values: dict[str, int] = {}
    for key, allow_24 in (("start", False), ("end", True)):
        try:
            values[key] = _parse_time(row.get(key), allow_24=allow_24)
        except ValueError as exc:
            bad(key, str(exc))
    for key, lo, hi, default in (
        ("working_min", 1, DAY_MIN, None),
        ("power_w", 1, MAX_POWER_W, None),
        ("energy_wh", 0, 10_000_000, 0),
        ("min_on_min", SLOT_MIN, DAY_MIN, SLOT_MIN),
        ("min_off_min", SLOT_MIN, DAY_MIN, SLOT_MIN),
    ):
        try:
            values[key] = _int_field(row, key, lo, hi, default)
        except ValueError as exc:
            bad(key, str(exc))
    for key in ("working_min", "min_on_min", "min_off_min"):
        if key in values and values[key] % SLOT_MIN:
            bad(key, f"{values[key]} is not a multiple of {SLOT_MIN} minutes")
    node = row.get("node")
    relay = row.get("relay")
    meter = row.get("meter")
    if node is not None and (isinstance(node, bool) or not isinstance(node, int)
                             or not 0 <= node <= 0xFFFF):
        bad("node", "must be a node id 0..65535")
    if relay is not None and (isinstance(relay, bool) or not isinstance(relay, int)
                              or not 0 <= relay <= 255):
        bad("relay", "must be a relay index 0..255")
    if meter is not None and not isinstance(meter, str):
        bad("meter", "must be a string")
    if storage is True and values.get("energy_wh", 0) <= 0:
        bad("energy_wh", "a storage-like load needs the energy it must receive (> 0)")
    if len(problems) > before:
        return None
    return Appliance(
        name=str(name), flexible=bool(flexible), start_min=values["start"], end_min=values["end"],
        working_min=values["working_min"], power_w=values["power_w"], storage=bool(storage),
        energy_wh=values["energy_wh"], min_on_min=values["min_on_min"],
        min_off_min=values["min_off_min"], node=node, relay=relay, meter=meter,
    )


def fit_problem(index: int, a: Appliance) -> Problem | None:
    """Why an appliance's working time (or energy) does not fit its window, or None."""
    if a.run_slots > a.window_slots:
        what = (f"needs {a.energy_wh} Wh = {a.run_slots * SLOT_MIN} min at {a.power_w} W"
                if a.storage else f"working time {a.working_min} min")
        return Problem(index, a.name, "working_min",
                       f"{what} does not fit its window {_hhmm(a.start_min)} to "
                       f"{_hhmm(a.end_min)} ({a.window_min} min)")
    return None


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _repair(a: Appliance, policy: Repair) -> tuple[Appliance | None, str]:
    if policy == "exclude":
        return None, f"{a.name}: excluded (working time does not fit its window)"
    if policy == "clip":
        if a.storage:
            energy = a.window_slots * slot_energy_mwh(a.power_w) // 1000
            fixed = replace(a, energy_wh=energy, working_min=a.window_min)
            return fixed, f"{a.name}: energy clipped from {a.energy_wh} Wh to {energy} Wh"
        return (replace(a, working_min=a.window_min),
                f"{a.name}: working time clipped from {a.working_min} to {a.window_min} min")
    # widen: keep the energy, move the end of the window so the working time fits
    need_min = a.run_slots * SLOT_MIN
    if need_min >= DAY_MIN:
        return (replace(a, start_min=0, end_min=DAY_MIN),
                f"{a.name}: window widened to the whole day")
    end = (a.start_min + need_min) % DAY_MIN or DAY_MIN
    return (replace(a, end_min=end),
            f"{a.name}: window end moved from {_hhmm(a.end_min)} to {_hhmm(end)}")


def parse_appliances(doc: Any, repair: Repair = "strict") -> tuple[list[Appliance], list[str]]:
    """Validate a spec document; returns the appliances and a note per explicit repair."""
    if repair not in REPAIRS:
        raise ValueError(f"repair policy {repair!r} is not one of {', '.join(REPAIRS)}")
    if not isinstance(doc, Mapping) or not isinstance(doc.get("appliances"), list):
        raise SpecError([Problem(0, "-", "appliances", 'the file must hold {"appliances": [...]}')])
    rows: list[Any] = doc["appliances"]
    if not rows:
        raise SpecError([Problem(0, "-", "appliances", "no appliances")])
    problems: list[Problem] = []
    parsed: list[tuple[int, Appliance]] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows, start=1):
        a = _parse_row(i, row, problems)
        if a is None:
            continue
        if a.name in seen:
            problems.append(Problem(i, a.name, "name", f"duplicate of row {seen[a.name]}"))
            continue
        seen[a.name] = i
        parsed.append((i, a))
    if problems:
        raise SpecError(problems)
    misfits = [(i, a, p) for i, a in parsed if (p := fit_problem(i, a)) is not None]
    if misfits and repair == "strict":
        raise SpecError([p for _, _, p in misfits],
                        hint="fix the rows, or choose a repair policy: clip, widen or exclude")
    notes: list[str] = []
    out: list[Appliance] = []
    bad_rows = {i for i, _, _ in misfits}
    for i, a in parsed:
        if i in bad_rows:
            fixed, note = _repair(a, repair)
            notes.append(f"row {i} {note}")
            if fixed is not None:
                out.append(fixed)
        else:
            out.append(a)
    if not out:
        raise SpecError([Problem(0, "-", "appliances", "no appliance left after repair")])
    return out, notes


def load_appliances(
    path: str | Path, repair: Repair = "strict"
) -> tuple[list[Appliance], list[str]]:
    """Read and validate a spec file; ``SpecError`` (a ``ValueError``) names what is wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem(0, "-", "file", f"cannot read {p.name}: {exc}")]) from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError([Problem(0, "-", "file", f"not JSON: {exc}")]) from exc
    return parse_appliances(doc, repair)


def table8(repair: Repair = "strict") -> tuple[list[Appliance], list[str]]:
    """The paper's Table 8 as shipped in ``table8.json``."""
    text = resources.files("gateway.ems").joinpath("table8.json").read_text(encoding="utf-8")
    return parse_appliances(json.loads(text), repair)


def table8_path() -> Path:
    return Path(str(resources.files("gateway.ems").joinpath("table8.json")))
