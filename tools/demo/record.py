"""What a demo run records: the day's books, loads, balances, faults and checks.

Plain data, filled in by the run and read by the report; nothing here does IO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools.demo.economics import HourBook


@dataclass
class HourResult:
    book: HourBook
    mcp: int | None = None
    traded_wh: int = 0
    trades: list[dict[str, Any]] = field(default_factory=list)
    kwh_available: int = 0
    kwh_wanted: int = 0
    relay_actions: int = 0
    note: str = ""
    settlement: list[dict[str, Any]] | None = None  # the ledger's settlement lines of the hour
    gains: tuple[int, int] | None = None  # the clearing's (traded, efficient) gains, micro-tokens
    balance: list[dict[str, Any]] | None = None  # the feeder balance check of each interval

    @property
    def listing_id(self) -> str:
        return self.book.listing_id

    @property
    def settled(self) -> bool:
        return self.settlement is not None

    @property
    def grid_import_wh(self) -> int:
        """What the grid sold the homes at retail, as the ledger settled the hour: each home's
        import the market did not cover plus each seller's shortfall (0 until settled)."""
        return sum(int(ln["grid_import_wh"]) + int(ln["shortfall_wh"])
                   for ln in self.settlement or [])

    @property
    def grid_export_wh(self) -> int:
        """What the grid bought from the homes at feed-in, as settled: each home's export the
        market did not take plus what buyers bought and did not use (0 until settled)."""
        return sum(int(ln["feed_in_wh"]) + int(ln["excess_wh"]) for ln in self.settlement or [])

    @property
    def net_import_wh(self) -> int:
        """The community's net flow at its boundary: what the homes imported beyond what the
        others exported (one home's export offsets another's import physically, not in the
        bills: those are ``grid_import_wh``/``grid_export_wh``)."""
        imp = sum(i for i, _ in self.book.metered.values())
        exp = sum(e for _, e in self.book.metered.values())
        return max(0, imp - exp)

    @property
    def net_export_wh(self) -> int:
        imp = sum(i for i, _ in self.book.metered.values())
        exp = sum(e for _, e in self.book.metered.values())
        return max(0, exp - imp)


@dataclass
class Fault:
    kind: str
    hour_index: int
    sim_time: str  # e.g. "2026-06-21T10:30"
    detail: str
    recovered: str = ""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DayRecord:
    date: str
    rule: str
    households: list[dict[str, Any]] = field(default_factory=list)
    slot_labels: list[str] = field(default_factory=list)
    load_before_w: list[int] = field(default_factory=list)  # community, per 15-min slot
    load_after_w: list[int] = field(default_factory=list)
    pv_w: list[int] = field(default_factory=list)
    metered_net_w: list[int] = field(default_factory=list)  # from the signed reports, per slot
    balances: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    hours: list[HourResult] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    parts: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    sub_metered_wh: dict[str, dict[str, int]] = field(default_factory=dict)  # home -> load -> Wh
    sub_planned_wh: dict[str, dict[str, int]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    forecast: dict[str, Any] = field(default_factory=dict)  # model and error of the day
    demand_response: dict[str, Any] = field(default_factory=dict)  # the request and its effect

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)
