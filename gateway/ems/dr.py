"""Demand response at the relays: a sans-IO controller that turns the plan's on/off state of
each appliance into relay commands at slot edges, never switching a relay before its minimum on
or off time, and a reconciliation of what was commanded with what the meters then measured.

The controller holds no clock and sends nothing: ``step(now_ms, desired)`` returns the commands
to send; the adapter reports each outcome with ``on_ack`` (a ``firmware.frame`` S_* status) or
``on_failure`` (no answer). A fault on one relay never blocks the others. A command that got
no answer, or a refusal that is not final, is sent again after ``RETRY_MS`` (doubling with each
failure up to ``RETRY_MAX_MS``), not only at the next slot edge: a gateway that starts before its
broker link is up, or a node that was off for a moment, switches minutes late, not a slot late.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from firmware import frame
from gateway.ems.appliances import Appliance
from gateway.ems.timegrid import MWH_PER_W_SLOT, SLOT_MS

RETRY_MS = 30_000
RETRY_MAX_MS = 5 * 60_000


@dataclass(frozen=True, slots=True)
class RelaySpec:
    name: str
    node_id: int
    relay: int
    power_w: int
    min_on_ms: int
    min_off_ms: int
    meter: str | None = None


def relay_specs(appliances: Iterable[Appliance]) -> list[RelaySpec]:
    """Relays of the appliances that are bound to one (``node`` and ``relay`` in the spec)."""
    out = []
    for a in appliances:
        if a.node is not None and a.relay is not None:
            out.append(RelaySpec(a.name, a.node, a.relay, a.power_w, a.min_on_min * 60_000,
                                 a.min_off_min * 60_000, a.meter))
    return out


class RelayHealth(Enum):
    OK = "ok"
    TRIPPED = "tripped"  # the node's over-current guard locked the relay out
    BAD_RELAY = "bad_relay"  # the node has no such relay: a configuration fault


@dataclass(frozen=True, slots=True)
class RelayCommand:
    name: str
    node_id: int
    relay: int
    on: bool


@dataclass(slots=True)
class _Relay:
    spec: RelaySpec
    state: bool | None = None  # last state the node confirmed; None = unknown
    since_ms: int | None = None  # when it entered that state (None: long enough ago)
    health: RelayHealth = RelayHealth.OK
    in_flight: bool = False
    failures: int = 0
    retry_at: int | None = None  # after a failure: not before this time


@dataclass(slots=True)
class RelayController:
    specs: Sequence[RelaySpec]
    relays: dict[str, _Relay] = field(init=False)
    deferred: dict[str, int] = field(init=False, default_factory=dict)  # name -> earliest ms

    def __post_init__(self) -> None:
        seen: set[tuple[int, int]] = set()
        self.relays = {}
        for s in self.specs:
            if (s.node_id, s.relay) in seen or s.name in self.relays:
                raise ValueError(f"{s.name}: node {s.node_id} relay {s.relay} is bound twice")
            seen.add((s.node_id, s.relay))
            self.relays[s.name] = _Relay(s)

    def state(self, name: str) -> bool | None:
        return self.relays[name].state

    def health(self, name: str) -> RelayHealth:
        return self.relays[name].health

    def earliest_switch_ms(self, name: str) -> int | None:
        r = self.relays[name]
        if r.since_ms is None or r.state is None:
            return None
        hold = r.spec.min_on_ms if r.state else r.spec.min_off_ms
        return r.since_ms + hold

    def step(self, now_ms: int, desired: Mapping[str, bool]) -> list[RelayCommand]:
        """Commands to send now so each relay follows ``desired``, within its minimum times.
        A relay that may not switch yet is recorded in ``deferred`` with the earliest time."""
        out: list[RelayCommand] = []
        self.deferred = {}
        for name, want in sorted(desired.items()):
            r = self.relays.get(name)
            if r is None or r.health is not RelayHealth.OK or r.in_flight or r.state is want:
                continue
            earliest = self.earliest_switch_ms(name)
            if r.retry_at is not None and (earliest is None or r.retry_at > earliest):
                earliest = r.retry_at
            if earliest is not None and now_ms < earliest:
                self.deferred[name] = earliest
                continue
            r.in_flight = True
            out.append(RelayCommand(name, r.spec.node_id, r.spec.relay, want))
        return out

    def next_wakeup_ms(self) -> int | None:
        return min(self.deferred.values()) if self.deferred else None

    def on_ack(self, cmd: RelayCommand, status: int, now_ms: int,
               state_after: bool | None = None) -> None:
        r = self.relays[cmd.name]
        r.in_flight = False
        if status == frame.S_OK:
            if r.state is not cmd.on:
                r.since_ms = now_ms
            r.state = cmd.on if state_after is None else state_after
            r.failures = 0
            r.retry_at = None
        elif status == frame.S_MIN_TIME:
            # the node's own timer disagrees with ours (e.g. it rebooted): try again later
            r.since_ms = now_ms
            if state_after is not None:
                r.state = state_after
        elif status == frame.S_TRIPPED:
            r.health = RelayHealth.TRIPPED
            r.state = False
        elif status == frame.S_BAD_RELAY:
            r.health = RelayHealth.BAD_RELAY
        else:  # S_REPLAY or unknown: the command did not take effect; retry soon
            self._retry_later(r, now_ms)

    def on_failure(self, cmd: RelayCommand, now_ms: int) -> None:
        """No ack (timeout, link down): the relay's state is unknown until the next ack."""
        r = self.relays[cmd.name]
        r.in_flight = False
        self._retry_later(r, now_ms)

    def _retry_later(self, r: _Relay, now_ms: int) -> None:
        r.failures += 1
        r.retry_at = now_ms + min(RETRY_MS << min(r.failures - 1, 8), RETRY_MAX_MS)
        self.deferred[r.spec.name] = r.retry_at  # a wake-up for the adapter (next_wakeup_ms)

    def reset(self, name: str) -> None:
        """An installer cleared a trip or fixed the binding."""
        self.relays[name].health = RelayHealth.OK


class MismatchKind(Enum):
    NO_DRAW = "no_draw"  # commanded on, the meter saw (almost) nothing
    DRAW_WHILE_OFF = "draw_while_off"  # commanded off, the meter saw consumption
    OVERDRAW = "overdraw"  # on, but far above the rated power


@dataclass(frozen=True, slots=True)
class Mismatch:
    name: str
    start_ms: int
    kind: MismatchKind
    expected_wh: int
    measured_wh: int


def reconcile(name: str, power_w: int, commanded: Mapping[int, bool],
              measured_wh: Mapping[int, int], *, low: float = 0.25, high: float = 1.5,
              standby_wh: int = 5) -> list[Mismatch]:
    """Compare, slot by slot (keyed by slot start ms), what the relay was commanded with what
    its meter measured. Slots without a measurement are skipped (the gateway flags gaps)."""
    expected = power_w * MWH_PER_W_SLOT // 1000
    out: list[Mismatch] = []
    for start in sorted(commanded):
        if start % SLOT_MS or start not in measured_wh:
            continue
        got = measured_wh[start]
        if commanded[start]:
            if got < low * expected:
                out.append(Mismatch(name, start, MismatchKind.NO_DRAW, expected, got))
            elif got > high * expected:
                out.append(Mismatch(name, start, MismatchKind.OVERDRAW, expected, got))
        elif got > max(standby_wh, low * expected):
            out.append(Mismatch(name, start, MismatchKind.DRAW_WHILE_OFF, 0, got))
    return out
