"""What the homes of the demo draw, and what their relays did.

``RelayLog`` keeps every state a relay confirmed (ACK with S_OK) with its time; ``HomeSupply`` is
what a home's billing meter measures: the load on no relay, plus what each relay lets through,
minus PV. The self-checks (``checks.py``) compare the meters' intervals against these.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.ems.timegrid import SLOT_MS, SLOTS_PER_DAY, SLOTS_PER_HOUR, slot_energy_mwh
from hardware.ble.plug import PlugCore
from tools.demo.plan import HomePlan
from tools.demo.world import run_slots

HOUR_MS = SLOT_MS * SLOTS_PER_HOUR


@dataclass
class RelayLog:
    """A relay the demo switches, and every state it confirmed (ACK with S_OK) with its time."""

    home: str
    appliance: str
    power_w: int
    log: list[tuple[int, bool]] = field(default_factory=list)

    def on_at(self, t_ms: int) -> bool:
        state = False
        for at, on in self.log:
            if at > t_ms:
                break
            state = on
        return state

    def on_ms(self, since_ms: int, until_ms: int) -> int:
        """How long it was confirmed on within [since_ms, until_ms)."""
        total = 0
        marks = [(at, on) for at, on in self.log if at < until_ms]
        for k, (at, on) in enumerate(marks):
            end = marks[k + 1][0] if k + 1 < len(marks) else until_ms
            lo, hi = max(at, since_ms), min(end, until_ms)
            if on and hi > lo:
                total += hi - lo
        return total


@dataclass
class HomeSupply:
    """What a home's billing meter measures: the part of the home's load that hangs on no relay
    (standby and the appliances nobody switches, with the deviations of real life from the
    plan's world), plus what each appliance on a relay draws as that relay lets it, minus PV.
    The same current passes a plug's chip and the billing meter, so relays change the bill."""

    day0_ms: int
    base_mwh: list[int]  # per 15-minute slot of the day, repeating daily
    pv_mwh: list[int]
    switched: list[Callable[[int], float]] = field(default_factory=list)  # W at a time

    def slot(self, t_ms: int) -> int:
        return ((t_ms - self.day0_ms) // SLOT_MS) % SLOTS_PER_DAY

    def power_w(self, t_ms: int) -> float:
        s = self.slot(t_ms)
        per_slot = (self.base_mwh[s] - self.pv_mwh[s]) * HOUR_MS / SLOT_MS / 1000
        return per_slot + sum(f(t_ms) for f in self.switched)


def plug_draw(core: PlugCore) -> Callable[[int], float]:
    """W drawn through a plug at a time: what its relay really passed."""
    return lambda t_ms: core.power_at(t_ms) / 10


def relay_draw(relay: RelayLog) -> Callable[[int], float]:
    """W drawn through a relay of the firmware node: its appliance's power while the node
    confirmed it on."""
    return lambda t_ms: float(relay.power_w) if relay.on_at(t_ms) else 0.0


def home_supply(plan: HomePlan, rng: random.Random, day0_ms: int,
                on_plugs: set[str]) -> HomeSupply:
    """The home's load on no relay and its PV, per slot: the world's day with real life's
    deviations (a forecast is never exact). ``on_plugs``: the regular appliances metered through
    a plug, whose draw the plug's relay passes (so they are not part of the base)."""
    base, pv = [], []
    regular = [a for a in plan.home.appliances if a.name in on_plugs]
    for s in range(SLOTS_PER_DAY):
        fixed = plan.fixed_mwh[s] - sum(
            slot_energy_mwh(a.power_w) for a in regular
            if s in run_slots(a, plan.home.habit_start.get(a.name, 0)))
        base.append(int(fixed * rng.uniform(0.92, 1.08)))
        pv.append(int(plan.pv_mwh[s] * rng.uniform(0.9, 1.05)))
    return HomeSupply(day0_ms, base, pv)
