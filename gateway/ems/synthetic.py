"""A deterministic year (or any span) of household load and PV in 15-minute Wh, from a seed.

The forecaster's backtest, the benchmark and the community demo all draw households from here.
A value depends only on (kind, seed, date), never on the span asked for, so a profile of one day
equals the same day cut out of a year. Times are UTC, taken as local solar time (Portugal, 38.7 N).

The load is a daily shape (night base, morning and evening peaks, later mornings at weekends),
scaled by season (more in winter) and by household, with an AR(1) multiplicative noise and
short appliance spikes (kettle, microwave). PV is the clear-sky output of the sun's elevation on
that day, times a daily clearness with day-to-day persistence and intra-day cloud noise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt

from gateway.ems.timegrid import SLOT_MIN, SLOTS_PER_DAY

Kind = Literal["consumer", "prosumer", "producer"]
KINDS: tuple[Kind, ...] = ("consumer", "prosumer", "producer")
LATITUDE_DEG = 38.7
PV_KWP: dict[str, float] = {"consumer": 0.0, "prosumer": 3.0, "producer": 10.0}
LOAD_SCALE: dict[str, float] = {"consumer": 1.0, "prosumer": 1.0, "producer": 0.4}


@dataclass(frozen=True, slots=True, eq=False)
class Profile:
    start: date
    load_wh: npt.NDArray[np.int64]  # household consumption per slot
    pv_wh: npt.NDArray[np.int64]  # PV production per slot

    @property
    def days(self) -> int:
        return int(self.load_wh.shape[0]) // SLOTS_PER_DAY


def _rng(seed: int, kind: str, day: date, stream: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{kind}/{day.isoformat()}/{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


_HOURS = (np.arange(SLOTS_PER_DAY) + 0.5) * SLOT_MIN / 60


def _bump(centre: float, width: float) -> npt.NDArray[np.float64]:
    return np.exp(-0.5 * ((_HOURS - centre) / width) ** 2)


def _load_day(kind: str, seed: int, day: date, household: float) -> npt.NDArray[np.float64]:
    doy = day.timetuple().tm_yday
    weekend = day.weekday() >= 5
    season = 1.0 + 0.3 * math.cos(2 * math.pi * (doy - 15) / 365.25)
    morning = 8.5 if weekend else 7.25
    shape = (180.0 + 550 * _bump(morning, 1.0) + 900 * _bump(20.0, 1.6)
             + (350 * _bump(13.0, 1.5) if weekend else 120 * _bump(13.0, 1.0)))
    rng = _rng(seed, kind, day, "load")
    noise = np.empty(SLOTS_PER_DAY)
    level = rng.normal(0, 0.25)
    for i in range(SLOTS_PER_DAY):
        level = 0.8 * level + rng.normal(0, 0.15)
        noise[i] = level
    power_w = shape * season * household * np.exp(noise)
    for _ in range(rng.poisson(4)):  # short spikes: kettle, microwave, toaster
        slot = int(rng.integers(24, SLOTS_PER_DAY))
        power_w[slot] += rng.uniform(800, 2000)
    return power_w * SLOT_MIN / 60 * LOAD_SCALE[kind]


def clear_sky_w_per_kwp(day: date) -> npt.NDArray[np.float64]:
    doy = day.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365)
    lat = math.radians(LATITUDE_DEG)
    hour_angle = np.radians(15.0 * (_HOURS - 12.0))
    sin_elev = (math.sin(lat) * math.sin(decl)
                + math.cos(lat) * math.cos(decl) * np.cos(hour_angle))
    return 850.0 * np.clip(sin_elev, 0, None) ** 1.2


def _clearness(seed: int, kind: str, day: date) -> float:
    doy = day.timetuple().tm_yday
    sunny_season = 0.62 + 0.2 * math.cos(2 * math.pi * (doy - 196) / 365.25)
    today = _rng(seed, kind, day, "sky").uniform()
    before = _rng(seed, kind, day - timedelta(days=1), "sky").uniform()
    raw = 0.6 * today + 0.4 * before  # persistence: a day resembles the day before
    return float(np.clip(sunny_season + (raw - 0.5) * 0.9, 0.12, 1.0))


def _pv_day(kind: str, seed: int, day: date) -> npt.NDArray[np.float64]:
    kwp = PV_KWP[kind]
    if kwp == 0:
        return np.zeros(SLOTS_PER_DAY)
    k = _clearness(seed, kind, day)
    rng = _rng(seed, kind, day, "cloud")
    flicker = np.clip(1 + rng.normal(0, 0.35 * (1 - k), SLOTS_PER_DAY), 0.05, 1.3)
    return clear_sky_w_per_kwp(day) * kwp * k * flicker * SLOT_MIN / 60


def household_profile(kind: Kind, seed: int, start: date, days: int) -> Profile:
    """``days`` days of 15-minute load and PV (integer Wh) for a household of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"household kind {kind!r} is not one of {', '.join(KINDS)}")
    if not 1 <= days <= 3660:
        raise ValueError(f"days must be 1..3660, got {days}")
    household = 0.7 + 0.7 * _rng(seed, kind, date(2000, 1, 1), "household").uniform()
    load = np.empty(days * SLOTS_PER_DAY)
    pv = np.empty(days * SLOTS_PER_DAY)
    for d in range(days):
        day = start + timedelta(days=d)
        cut = slice(d * SLOTS_PER_DAY, (d + 1) * SLOTS_PER_DAY)
        load[cut] = _load_day(kind, seed, day, household)
        pv[cut] = _pv_day(kind, seed, day)
    return Profile(start=start, load_wh=np.rint(load).astype(np.int64),
                   pv_wh=np.rint(pv).astype(np.int64))
