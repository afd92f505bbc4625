"""The simulated community: who lives there, what they own, and what physically happens.

This is the demo's stand-in for the physical world (sun, habits, appliances drawing power), not
part of the edge stack: the meters and plugs the gateways read are driven from it. It is pure and
seeded: the same ``seed`` and date give the same homes, weather and habits.

Homes are a mix of consumers and prosumers with PV; each owns a seeded subset of the appliances of
the paper's Table 8 (``gateway.ems.appliances.table8``). Non-flexible appliances run when their
owners use them (a seeded start inside their window); flexible ones run where the schedule puts
them: "before EMS" is the habit (start as soon as the window opens), "after EMS" is the EMS plan.
Energies are integer mWh per 15-minute slot, powers integer W.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field, replace

from gateway.ems.appliances import Appliance, table8
from gateway.ems.timegrid import SLOT_MIN, SLOTS_PER_DAY, SLOTS_PER_HOUR, slot_energy_mwh

LATITUDE_DEG = 38.7  # Lisbon: the paper's community is Portuguese
LONGITUDE_DEG = -9.1
STANDBY_W = (80, 220)  # always-on load of a home, drawn per home
PV_SIZES_W = (3000, 4000, 5000, 6000, 7000, 8000)
PROSUMER_SHARE = 0.6

# How likely a home owns each appliance of Table 8 (not in the paper: a plausible mix).
OWNERSHIP = {
    "Refrigerator": 1.0, "Electric Vehicle": 0.3, "Air Conditioner": 0.35, "Cloth Dryer": 0.35,
    "Dish Washer": 0.7, "Hair Dryer": 0.6, "Pool Pump": 0.15, "Television": 0.9,
    "Water Heater": 0.5, "Electric Stove": 0.7, "Light": 1.0, "Personal Computer": 0.6,
    "Vacuum Cleaner": 0.4, "Iron": 0.4,
}


@dataclass
class Home:
    index: int
    id_grid: str
    name: str
    role: str  # "consumer" | "prosumer"
    pv_w: int
    standby_w: int
    appliances: list[Appliance]
    habit_start: dict[str, int] = field(default_factory=dict)  # non-flexible: window offset slot
    cloud: list[float] = field(default_factory=list)  # per hour of the day, 0..1 of clear sky
    noise: list[float] = field(default_factory=list)  # per slot, multiplies the standby load

    @property
    def res_id(self) -> str:
        return f"RES-{self.id_grid}"

    @property
    def meter_id(self) -> str:
        return f"meter-{self.id_grid}"

    @property
    def flexible(self) -> list[Appliance]:
        return [a for a in self.appliances if a.flexible]


def build_community(households: int, seed: int) -> list[Home]:
    rng = random.Random(seed)
    catalogue, _notes = table8(repair="widen")  # the repair the EMS names for the demo
    n_pro = max(1, min(households - 1, round(households * PROSUMER_SHARE)))
    roles = ["prosumer"] * n_pro + ["consumer"] * (households - n_pro)
    rng.shuffle(roles)
    weather = [0.55 + 0.45 * rng.random() for _ in range(24)]  # one sky over the whole community
    homes = []
    for i in range(households):
        owned = [a for a in catalogue if rng.random() < OWNERSHIP.get(a.name, 0.5)]
        if not any(a.flexible for a in owned):
            owned.append(next(a for a in catalogue if a.name == "Water Heater"))
        habit = {}
        for a in owned:
            if not a.flexible:
                spare = max(0, a.window_slots - a.run_slots)
                habit[a.name] = rng.randint(0, spare)
        role = roles[i]
        homes.append(Home(
            index=i,
            id_grid=f"PT{i + 1:04d}",
            name=f"Home {i + 1}",
            role=role,
            pv_w=rng.choice(PV_SIZES_W) if role == "prosumer" else 0,
            standby_w=rng.randint(*STANDBY_W),
            appliances=owned,
            habit_start=habit,
            cloud=[min(1.0, w * (0.9 + 0.2 * rng.random())) for w in weather],
            noise=[0.8 + 0.4 * rng.random() for _ in range(SLOTS_PER_DAY)],
        ))
    return homes


def sun_factor(date: dt.date, slot: int) -> float:
    """Clear-sky PV output (0..1 of rated power) at the middle of a slot of ``date`` (UTC)."""
    doy = date.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365)
    utc_h = (slot + 0.5) * SLOT_MIN / 60
    solar_h = utc_h + LONGITUDE_DEG / 15
    hour_angle = math.radians(15 * (solar_h - 12))
    lat = math.radians(LATITUDE_DEG)
    sin_elev = (math.sin(lat) * math.sin(decl)
                + math.cos(lat) * math.cos(decl) * math.cos(hour_angle))
    return max(0.0, sin_elev) * 0.82  # module and inverter losses


def pv_mwh(home: Home, date: dt.date) -> list[int]:
    return [
        int(slot_energy_mwh(home.pv_w) * sun_factor(date, s) * home.cloud[s // SLOTS_PER_HOUR])
        for s in range(SLOTS_PER_DAY)
    ]


def run_slots(a: Appliance, offset: int) -> list[int]:
    """Slot-of-day indices of a run starting ``offset`` slots into the appliance's window."""
    window = a.window_positions()
    return [window[(offset + k) % len(window)] for k in range(min(a.run_slots, len(window)))]


def fixed_mwh(home: Home) -> list[int]:
    """The load nobody moves: standby and the non-flexible appliances at their habitual times."""
    load = [int(slot_energy_mwh(home.standby_w) * home.noise[s]) for s in range(SLOTS_PER_DAY)]
    for a in home.appliances:
        if not a.flexible:
            for s in run_slots(a, home.habit_start.get(a.name, 0)):
                load[s] += slot_energy_mwh(a.power_w)
    return load


def habit_schedule(home: Home) -> dict[str, list[int]]:
    """Flexible appliances as people run them without an EMS: as soon as the window opens."""
    return {a.name: run_slots(a, 0) for a in home.flexible}


def load_mwh(home: Home, schedule: dict[str, list[int]]) -> list[int]:
    load = fixed_mwh(home)
    power = {a.name: a.power_w for a in home.appliances}
    for name, slots in schedule.items():
        for s in slots:
            load[s] += slot_energy_mwh(power[name])
    return load


HABIT_KEPT = 0.6  # how often a non-flexible appliance starts at its usual time on a past day


def past_day(home: Home, seed: int, date: dt.date) -> tuple[list[int], list[int]]:
    """What a day before the demo looked like for ``home``: its fixed load (standby and
    non-flexible appliances) and its PV, mWh per slot. That day has its own sky, noise and
    habits (seeded by ``seed`` and the date), so a forecast learnt from these days is not the
    demo day's truth."""
    sky = random.Random(f"{seed}:sky:{date.isoformat()}")
    weather = [0.55 + 0.45 * sky.random() for _ in range(24)]  # one sky over the community
    rng = random.Random(f"{seed}:{home.index}:{date.isoformat()}")
    habit = {}
    for a in home.appliances:
        if not a.flexible:
            usual = home.habit_start.get(a.name, 0)
            spare = max(0, a.window_slots - a.run_slots)
            habit[a.name] = usual if rng.random() < HABIT_KEPT else rng.randint(0, spare)
    day = replace(
        home, habit_start=habit,
        cloud=[min(1.0, w * (0.9 + 0.2 * rng.random())) for w in weather],
        noise=[0.8 + 0.4 * rng.random() for _ in range(SLOTS_PER_DAY)])
    return fixed_mwh(day), pv_mwh(day, date)
