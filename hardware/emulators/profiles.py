"""Load profiles: real power over time for emulated meters and nodes, deterministic in time.

Power is in watts, export negative. ``EnergyCounters`` integrates a profile into cumulative
import and export counters in integer mWh, as a meter's registers or a node's NVS would hold them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

DAY_MS = 86_400_000

Profile = Callable[[int], float]


def wall_ms() -> int:
    """The wall clock in ms: the time an emulator reads its profile at, unless a test drives it."""
    return time.time_ns() // 1_000_000


def constant(watts: float) -> Profile:
    return lambda t_ms: watts


def house(base_w: float = 250.0, peak_w: float = 2_500.0) -> Profile:
    """A household: base load with a morning (7-8 h) and a larger evening (18-21 h) peak, UTC."""

    def power(t_ms: int) -> float:
        h = (t_ms % DAY_MS) / 3_600_000
        morning = math.exp(-(((h - 7.5) / 0.8) ** 2)) * 0.5
        evening = math.exp(-(((h - 19.5) / 1.5) ** 2))
        return base_w + peak_w * (morning + evening)

    return power


def pv(peak_w: float = 4_000.0) -> Profile:
    """A PV array seen from its meter: export (negative) between 6 h and 18 h, UTC."""

    def power(t_ms: int) -> float:
        h = (t_ms % DAY_MS) / 3_600_000
        if not 6.0 < h < 18.0:
            return 0.0
        return -peak_w * math.sin(math.pi * (h - 6.0) / 12.0)

    return power


def prosumer(base_w: float = 300.0, peak_w: float = 2_000.0, pv_w: float = 4_000.0) -> Profile:
    h, p = house(base_w, peak_w), pv(pv_w)
    return lambda t_ms: h(t_ms) + p(t_ms)


PROFILES: dict[str, Callable[[], Profile]] = {
    "house": house,
    "pv": pv,
    "prosumer": prosumer,
}


def parse_profile(spec: str) -> Profile:
    """``house``, ``pv``, ``prosumer`` or ``constant:<watts>``."""
    if spec.startswith("constant:"):
        try:
            return constant(float(spec.split(":", 1)[1]))
        except ValueError:
            raise ValueError(f"profile {spec!r}: constant needs a number of watts") from None
    if spec not in PROFILES:
        raise ValueError(f"unknown profile {spec!r}: use {', '.join(PROFILES)} or constant:<W>")
    return PROFILES[spec]()


@dataclass
class EnergyCounters:
    """Cumulative counters driven by a profile; ``at(t_ms)`` advances them to ``t_ms``."""

    profile: Profile
    import_mwh: int = 0
    export_mwh: int = 0
    t_ms: int | None = None
    step_ms: int = 10_000  # integration step: the profile is sampled at least this often

    def at(self, t_ms: int) -> tuple[int, int]:
        if self.t_ms is None or t_ms <= self.t_ms:
            self.t_ms = t_ms if self.t_ms is None else self.t_ms
            return self.import_mwh, self.export_mwh
        t = self.t_ms
        while t < t_ms:
            dt = min(self.step_ms, t_ms - t)
            p = self.profile(t + dt // 2)
            mwh = round(abs(p) * dt / 3_600)  # W * ms / 3600 = mWh
            if p >= 0:
                self.import_mwh += mwh
            else:
                self.export_mwh += mwh
            t += dt
        self.t_ms = t_ms
        return self.import_mwh, self.export_mwh
