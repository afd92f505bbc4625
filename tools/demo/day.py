"""``DemoDay``: what the self-checks (``checks.py``) and the fault plan (``faults.py``) read of a
running demo. ``run.DemoRun`` is the one implementation; naming its shape here lets those two
modules take a run without importing ``run.py``, which imports them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tools.demo.edge import HomeEdge
from tools.demo.feeder import Liar
from tools.demo.ledger_port import LedgerPort
from tools.demo.options import DemoOptions
from tools.demo.plan import HomePlan
from tools.demo.record import DayRecord
from tools.demo.supply import HomeSupply, RelayLog
from tools.demo.world import Home


class DemoDay(Protocol):
    opts: DemoOptions
    record: DayRecord
    ledger: LedgerPort | None
    ledger_down: bool  # the whole ledger is stopped (a fault)
    day0_ms: int
    homes: list[Home]
    plans: list[HomePlan]
    edges: list[HomeEdge]
    minted: int
    unsettled: list[str]
    hour_notes: dict[int, list[str]]
    relays: dict[tuple[str, str], RelayLog]
    metering_plugs: dict[str, str]
    habit_loads: dict[int, set[int]]
    supply: dict[str, HomeSupply]
    meter_keys: dict[str, Ed25519PrivateKey]  # each home's meter-reporting key (its gateway's)
    liar: Liar | None  # --faults: the home whose gateway over-reports

    def listing(self, k: int) -> tuple[str, int, dt.date]: ...

    def sim_label(self, t_ms: int) -> str: ...

    def relay_names(self, edge: HomeEdge) -> set[str]: ...

    async def wait_for(self, cond: Callable[[], bool], timeout_s: float, what: str) -> bool: ...
