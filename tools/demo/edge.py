"""Each home's edge: an emulated Modbus meter on a real pymodbus TCP server (loopback), and the
gateway's metering pipeline polling it over Modbus TCP: ``gateway.sources.modbus.ModbusBus`` →
``gateway.intervals.IntervalAggregator`` (15-minute intervals) → ``gateway.report`` (Ed25519
signed report) → ``gateway.store.Store`` (SQLite, intervals and outbox in one transaction) →
``gateway.outbox.deliver_due`` (exactly once to the ledger).

Time is the demo's ``ManualClock``: the meter integrates its power profile on it and the gateway
stamps readings with it, so an hour of metering takes a fraction of a second. The demo drives the
poll cycles itself (``poll``) right after moving the clock, instead of each bus sleeping on the
clock, so every poll reads the meter at exactly the simulated instant it is due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.clock import ManualClock
from gateway.intervals import Interval, IntervalAggregator, flag_names
from gateway.outbox import Backoff, deliver_due
from gateway.report import REPORT_KIND, report_body
from gateway.sources.modbus import BusConfig, MeterConfig, MeterReading, ModbusBus
from gateway.store import Store
from hardware.emulators.modbus_meter import EmulatedMeter, Faults, serve_tcp
from ledger.tx import SignedTx
from tools.demo.procs import free_port

METER_MODEL = "sdm120"
UNIT = 1
SUBMIT_TIMEOUT_S = 3.0  # a ledger that does not answer within this is down: retry later
OUTBOX_BACKOFF = Backoff(initial_ms=60_000, max_ms=300_000)  # simulated time


class Deliverer:
    """The outbox's view of the ledger: a submit that fails fast when the ledger is away."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    async def submit(self, tx: SignedTx) -> Any:
        return await asyncio.wait_for(self.ledger.submit(tx), SUBMIT_TIMEOUT_S)


@dataclass
class HomeEdge:
    id_grid: str
    meter_id: str
    key: Ed25519PrivateKey
    clock: ManualClock
    store: Store
    meter: EmulatedMeter
    server: Any
    bus: ModbusBus
    agg: IntervalAggregator
    intervals: list[Interval] = field(default_factory=list)
    samples: int = 0
    rejected_samples: int = 0

    def on_reading(self, r: MeterReading) -> None:
        if self.agg.sample(r.meter_id, r.t_ms, r.import_mwh, r.export_mwh):
            self.samples += 1
        else:
            self.rejected_samples += 1

    async def poll(self) -> None:
        await self.bus.poll_cycle()

    def close_intervals(self, now_ms: int) -> list[Interval]:
        closed = self.agg.tick(now_ms)
        if not closed:
            return []
        reports: dict[tuple[str, int], tuple[str, Mapping[str, Any], int]] = {}
        for i in closed:
            # One nonce per interval, fixed when the report is queued: retries are the same tx.
            reports[(i.meter_id, i.start_ms)] = (REPORT_KIND, report_body(self.key, i),
                                                 i.start_ms // 1000)
        self.store.close_intervals(closed, reports, {"aggregator": self.agg.snapshot()}, now_ms)
        self.intervals.extend(closed)
        return closed

    async def deliver(self, ledger: Any, now_ms: int) -> tuple[int, int]:
        return await deliver_due(self.store, self.key, Deliverer(ledger), now_ms, OUTBOX_BACKOFF)

    def pending(self) -> int:
        return sum(1 for r in self.store.outbox_all() if r.state == "pending")

    def rejected(self) -> list[str]:
        return [f"{r.kind} {r.code} {r.message}" for r in self.store.outbox_all()
                if r.state == "rejected"]

    def silence(self, on: bool) -> None:
        self.meter.faults = Faults("silence", 1.0) if on else Faults()

    async def close(self) -> None:
        self.bus.close()
        await self.server.shutdown()
        self.store.close()


def slot_profile(import_wh: list[int], export_wh: list[int], day_start_ms: int,
                 slot_ms: int) -> Any:
    """The meter's power (W, export negative) from the world's energy per slot, repeating daily."""
    slots = len(import_wh)

    def power(t_ms: int) -> float:
        s = ((t_ms - day_start_ms) // slot_ms) % slots
        return (import_wh[s] - export_wh[s]) * 3_600_000 / slot_ms

    return power


async def start_edge(id_grid: str, meter_id: str, key: Ed25519PrivateKey, clock: ManualClock,
                     db: Path, profile: Any, poll_s: float) -> HomeEdge:
    meter = EmulatedMeter(METER_MODEL, profile, clock=clock.now_ms)
    port = free_port()
    server = await serve_tcp({UNIT: meter}, "127.0.0.1", port)
    agg = IntervalAggregator()
    agg.add_meter(meter_id)
    edge: HomeEdge
    holder: dict[str, HomeEdge] = {}
    bus = ModbusBus(
        BusConfig(name=f"bus-{id_grid}", meters=(MeterConfig(meter_id, METER_MODEL, UNIT),),
                  tcp=("127.0.0.1", port), poll_s=poll_s, timeout_s=0.5, retries=0,
                  backoff_initial_s=poll_s, backoff_max_s=poll_s),
        lambda r: holder["edge"].on_reading(r),
        clock,
    )
    edge = HomeEdge(id_grid, meter_id, key, clock, Store(db), meter, server, bus, agg)
    holder["edge"] = edge
    for _ in range(100):  # the server binds in the background: wait until it accepts
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.01)
    return edge


def describe_flags(i: Interval) -> str:
    return ",".join(flag_names(i.flags))
