"""The runner against an in-memory home: the daemon's hooks (relays on nodes that enforce their
own minimum times as the firmware does, a grid meter, a PV meter, a plug meter on the EV, an
outbox) driven by an injected clock through a simulated day."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pytest

from firmware import frame
from gateway.clock import ManualClock
from gateway.ems.agent import TradingAgent
from gateway.ems.appliances import Appliance, parse_appliances
from gateway.ems.dr import MismatchKind
from gateway.ems.plan import DrRequest
from gateway.ems.runner import EmsRunner, RunnerConfig
from gateway.ems.synthetic import household_profile
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import SLOT_MS, SLOTS_PER_DAY

START = datetime(2026, 6, 15, 12, tzinfo=UTC)
START_MS = int(START.timestamp() * 1000)
HISTORY_DAYS = 28


@dataclass(frozen=True)
class Row:
    start_ms: int
    import_wh: int
    export_wh: int


def appliances() -> list[Appliance]:
    apps, _ = parse_appliances({"appliances": [
        {"name": "ev", "flexible": True, "start": "19:00", "end": "06:00", "working_min": 360,
         "power_w": 3650, "storage": True, "energy_wh": 21900, "min_on_min": 30,
         "min_off_min": 30, "node": 1, "relay": 0, "meter": "plug-ev"},
        {"name": "pump", "flexible": True, "start": "12:00", "end": "21:00", "working_min": 120,
         "power_w": 2000, "node": 2, "relay": 0},
        {"name": "fridge", "flexible": False, "start": "00:00", "end": "24:00",
         "working_min": 1440, "power_w": 125},
    ]})
    return apps


class Home:
    def __init__(self, clock: ManualClock, apps: list[Appliance], *, plug_broken: bool = False,
                 dead_nodes: tuple[int, ...] = ()) -> None:
        self.clock = clock
        self.apps = {(a.node, a.relay): a for a in apps if a.node is not None}
        self.state: dict[tuple[int, int], tuple[bool, int | None]] = {
            k: (False, None) for k in self.apps}
        self.refusals = 0
        self.tx: list[tuple[str, dict]] = []
        self.on_log: dict[str, list[int]] = {a.name: [] for a in self.apps.values()}
        self.plug_broken = plug_broken
        self.dead_nodes = dead_nodes
        prof = household_profile("prosumer", 4, date(2026, 5, 18), HISTORY_DAYS + 2)
        self.load = prof.load_wh
        self.pv = prof.pv_wh
        self.first_ms = START_MS - HISTORY_DAYS * SLOTS_PER_DAY * SLOT_MS
        self.rows: dict[str, list[Row]] = {"site": [], "pv": [], "plug-ev": []}
        for i in range(HISTORY_DAYS * SLOTS_PER_DAY):
            self._meter(i, 0, 0)

    def _meter(self, i: int, appliance_wh: int, ev_wh: int) -> None:
        start = self.first_ms + i * SLOT_MS
        net = int(self.load[i]) + appliance_wh - int(self.pv[i])
        self.rows["site"].append(Row(start, max(net, 0), max(-net, 0)))
        self.rows["pv"].append(Row(start, 0, int(self.pv[i])))
        self.rows["plug-ev"].append(Row(start, 0 if self.plug_broken else ev_wh, 0))

    async def send_relay(self, node_id: int, relay: int, on: bool) -> int:
        if node_id in self.dead_nodes:
            raise ConnectionError("node unreachable")
        await asyncio.sleep(0)
        a = self.apps.get((node_id, relay))
        if a is None:
            return frame.S_BAD_RELAY
        now = self.clock.now_ms()
        state, since = self.state[(node_id, relay)]
        if state is not on:
            hold = (a.min_on_min if state else a.min_off_min) * 60_000
            if since is not None and now - since < hold:
                self.refusals += 1
                return frame.S_MIN_TIME
            self.state[(node_id, relay)] = (on, now)
        return frame.S_OK

    def enqueue_tx(self, kind: str, body: dict) -> int:
        self.tx.append((kind, body))
        return len(self.tx)

    def history(self, meter: str, since: int, until: int) -> list[Row]:
        return [r for r in self.rows[meter] if since <= r.start_ms < until]

    def close_slot(self, slot_ms: int) -> None:
        i = (slot_ms - self.first_ms) // SLOT_MS
        used = 125 // 4  # the fridge
        ev = 0
        for key, a in self.apps.items():
            if self.state[key][0]:
                wh = a.power_w // 4
                used += wh
                self.on_log[a.name].append(slot_ms)
                if a.name == "ev":
                    ev = wh
        self._meter(i, used, ev)


def make(home: Home, clock: ManualClock, **kw) -> EmsRunner:
    agent = TradingAgent(id_grid="home-1", tariff=Tariff(), res_id="pv-1", res_rated_w=3000)
    return EmsRunner(appliances(), Tariff(), RunnerConfig(site_meter="site", pv_meter="pv",
                                                         history_days=HISTORY_DAYS, **kw),
                     clock=clock, send_relay=home.send_relay, enqueue_tx=home.enqueue_tx,
                     interval_history=home.history, agent=agent, **(
                         {"clearing": kw.pop("clearing")} if "clearing" in kw else {}))


async def live(home: Home, clock: ManualClock, runner: EmsRunner, slots: int, on_step=None):
    for k in range(slots):
        report = await runner.step()
        if on_step is not None:
            await on_step(k, report)
        home.close_slot(clock.now_ms())
        await clock.set(clock.now_ms() + SLOT_MS)


def hours(slots_ms: list[int]) -> list[float]:
    return [(s - START_MS) / 3_600_000 for s in slots_ms]


async def test_a_day_of_plans_relays_and_orders():
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())
    cleared: dict[str, dict] = {}

    async def clearing(listing_id: str):
        return cleared.get(listing_id)

    agent = TradingAgent(id_grid="home-1", tariff=Tariff(), res_id="pv-1", res_rated_w=3000)
    runner = EmsRunner(appliances(), Tariff(), RunnerConfig(site_meter="site", pv_meter="pv",
                                                           history_days=HISTORY_DAYS),
                       clock=clock, send_relay=home.send_relay, enqueue_tx=home.enqueue_tx,
                       interval_history=home.history, clearing=clearing, agent=agent)

    async def market(k: int, report) -> None:
        # the ledger clears each ordered listing at once: every offer sells, every bid buys
        for kind, body in home.tx:
            lid = body["listing_id"]
            if lid in cleared:
                continue
            trade = ({"buyer": "other", "seller": "home-1", "wh": body["wh"]}
                     if kind == "auction.offer" else
                     {"buyer": "home-1", "seller": "other", "wh": body["wh"]})
            cleared[lid] = {"listing_id": lid, "mcp": 60_000, "trades": [trade]}

    await live(home, clock, runner, 76, market)  # 12:00 to 07:00
    assert home.refusals == 0, "the runner switched a relay inside a node's minimum time"
    ev = hours(home.on_log["ev"])
    assert len(ev) == 24 and all(7 <= h < 18 for h in ev)  # 19:00 to 06:00
    pump = hours(home.on_log["pump"])
    assert len(pump) == 8 and pump == [pump[0] + 0.25 * i for i in range(8)]
    assert pump[0] >= 0 and pump[-1] < 9
    assert not any(r.errors for r in runner.reports)
    listings = [b["listing_id"] for _, b in home.tx]
    assert len(listings) == len(set(listings)) >= 12  # one order per hour, never twice
    kinds = {k for k, _ in home.tx}
    assert kinds == {"auction.offer", "auction.bid"}
    for _, body in home.tx:
        price = body.get("reserve_price", body.get("bid_price"))
        hour = int(body["listing_id"][-2:])
        assert Tariff().feed_in <= price <= Tariff().retail(hour)
    assert len(runner.commitments) == len(listings)
    assert agent.expected != {}  # learnt from the clearing prices
    assert sum(len(r.mismatches) for r in runner.reports) == 0


async def test_demand_response_request_replans_and_the_broken_plug_is_flagged():
    clock = ManualClock(START_MS)
    home = Home(clock, appliances(), plug_broken=True)
    runner = make(home, clock)

    async def grid_operator(k: int, report) -> None:
        if k == 32:  # at 20:00 the operator asks for at most 2 kW from 21:00 to 23:00
            runner.request_demand_response(DrRequest(
                datetime(2026, 6, 15, 21, tzinfo=UTC), datetime(2026, 6, 15, 23, tzinfo=UTC),
                2000))
            await runner.replan_now()

    await live(home, clock, runner, 72, grid_operator)
    ev = hours(home.on_log["ev"])
    assert ev and not any(9 <= h < 11 for h in ev)
    mismatches = [m for r in runner.reports for m in r.mismatches]
    assert mismatches and all(m.kind is MismatchKind.NO_DRAW and m.name == "ev"
                              for m in mismatches)
    assert len(mismatches) == len([s for s in home.on_log["ev"] if s < clock.now_ms() - SLOT_MS])


async def test_a_dead_node_does_not_stop_the_other_relays():
    clock = ManualClock(START_MS)
    home = Home(clock, appliances(), dead_nodes=(1,))
    runner = make(home, clock, relay_timeout_s=0.5)
    await live(home, clock, runner, 48)
    assert len(home.on_log["pump"]) == 8
    assert home.on_log["ev"] == []
    ev_cmds = [c for r in runner.reports for c in r.commands if c[0] == "ev"]
    assert ev_cmds and all(status is None for _, _, status in ev_cmds)


async def test_runner_without_history_or_with_a_failing_outbox_keeps_going():
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())
    home.rows = {"site": [], "pv": [], "plug-ev": []}

    def broken_outbox(kind: str, body: dict) -> int:
        raise OSError("disk full")

    runner = EmsRunner(appliances(), Tariff(), RunnerConfig(site_meter="site", pv_meter="pv"),
                       clock=clock, send_relay=home.send_relay, enqueue_tx=broken_outbox,
                       interval_history=home.history,
                       agent=TradingAgent(id_grid="h", tariff=Tariff()))
    report = await runner.step()
    assert report.planned
    assert any("forecast" in n or "history" in n for n in report.notes)
    assert all(e.startswith("order") for e in report.errors)


async def test_run_loop_follows_the_clock():
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())
    runner = make(home, clock)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))

    async def reports(k: int) -> None:
        while len(runner.reports) < k:
            await asyncio.sleep(0)

    await asyncio.wait_for(reports(1), 5)
    for i in range(4):
        await clock.set(clock.now_ms() + SLOT_MS)
        await asyncio.wait_for(reports(i + 2), 5)
    stop.set()
    await clock.set(clock.now_ms() + SLOT_MS)
    await asyncio.wait_for(task, 5)
    assert [r.slot_ms for r in runner.reports] == [START_MS + i * SLOT_MS for i in range(5)]
    assert runner.reports[0].planned and not runner.reports[1].planned  # hourly re-plans


@pytest.mark.parametrize("bad", [{"limit_w": 100}])
async def test_impossible_limit_is_reported_not_raised(bad):
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())
    runner = make(home, clock, **bad)
    report = await runner.step()
    assert not report.planned and report.errors and report.errors[0].startswith("plan:")


async def test_unreadable_history_and_a_new_tariff():
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())

    def broken_history(meter: str, since: int, until: int) -> list[Row]:
        raise OSError("database is locked")

    runner = EmsRunner(appliances(), Tariff(), RunnerConfig(site_meter="site", pv_meter="pv"),
                       clock=clock, send_relay=home.send_relay, enqueue_tx=home.enqueue_tx,
                       interval_history=broken_history)
    report = await runner.step()
    assert report.planned and any(e.startswith("history:") for e in report.errors)
    await clock.set(clock.now_ms() + SLOT_MS)
    assert not (await runner.step()).planned  # nothing changed: the hourly plan stands
    runner.set_tariff(Tariff(retail_offpeak=50_000))
    await clock.set(clock.now_ms() + SLOT_MS)
    assert (await runner.step()).planned
