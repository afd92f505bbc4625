"""The runner against an in-memory home: the daemon's hooks (relays on nodes that enforce their
own minimum times as the firmware does, a grid meter, a PV meter, a plug meter on the EV, an
outbox) driven by an injected clock through a simulated day."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pytest

from firmware import frame
from gateway.clock import ManualClock
from gateway.ems.agent import TradingAgent
from gateway.ems.appliances import Appliance, parse_appliances
from gateway.ems.dr import MismatchKind
from gateway.ems.plan import DrRequest
from gateway.ems.runner import ClearingFetch, DaemonHooks, EmsRunner, RunnerConfig
from gateway.ems.synthetic import household_profile
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import SLOT_MS, SLOTS_PER_DAY
from ledger.contract.sealed import order_commitment

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

    def hooks(self, clearing: ClearingFetch | None = None) -> DaemonHooks:
        return DaemonHooks(self.clock, self.send_relay, self.enqueue_tx, self.history, clearing)

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


def make(home: Home, clock: ManualClock, agent: TradingAgent | None = None,
         clearing=None, **kw) -> EmsRunner:
    """A runner over ``home`` with the default trading agent (or ``agent``); ``kw`` go to its
    ``RunnerConfig``."""
    if agent is None:
        agent = TradingAgent(id_grid="home-1", tariff=Tariff(), res_id="pv-1", res_rated_w=3000)
    return EmsRunner(appliances(), Tariff(), RunnerConfig(site_meter="site", pv_meter="pv",
                                                         history_days=HISTORY_DAYS, **kw),
                     home.hooks(clearing), agent=agent)


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
    runner = make(home, clock, agent=agent, clearing=clearing)

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


async def test_a_sealed_market_gets_a_commitment_then_its_reveal_once():
    """A community with sealed orders: the runner sends each listing's commitment, and when the
    listing is closed (state REVEAL) the reveal that opens it, once; then reads the clearing."""
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())
    state: dict[str, dict] = {}

    async def clearing(listing_id: str):
        return state.get(listing_id)

    agent = TradingAgent(id_grid="home-1", tariff=Tariff(), res_id="pv-1", res_rated_w=3000,
                         sealed=True, commit_deposit=100_000)
    runner = make(home, clock, agent=agent, clearing=clearing)

    async def market(k: int, report) -> None:
        # the operator closes each committed listing; once revealed, it is cleared
        for kind, body in home.tx:
            lid = body["listing_id"]
            if kind == "auction.commit" and lid not in state:
                state[lid] = {"listing_id": lid, "state": "REVEAL", "mcp": None, "trades": []}
            elif kind == "auction.reveal" and state[lid]["state"] == "REVEAL":
                mine = {"buyer": "other", "seller": "home-1"} if body["side"] == "offer" else {
                    "buyer": "home-1", "seller": "other"}
                state[lid] = {"listing_id": lid, "state": "BIDS_CLOSED", "mcp": 60_000,
                              "trades": [mine | {"wh": body["wh"]}]}

    await live(home, clock, runner, 24, market)
    assert not any(r.errors for r in runner.reports)
    commits = [b for k, b in home.tx if k == "auction.commit"]
    reveals = [b for k, b in home.tx if k == "auction.reveal"]
    assert commits and len(reveals) == len({b["listing_id"] for b in reveals})
    assert all(set(b) == {"listing_id", "side", "commitment"} for b in commits)
    # each reveal opens its listing's commitment; the commitment alone shows no price
    for r in reveals:
        c = next(b for b in commits if b["listing_id"] == r["listing_id"])
        salt = bytes.fromhex(r["salt"])
        assert c["commitment"] == order_commitment(
            r["listing_id"], "home-1", r["side"], r["wh"], r["price"], r["res_id"], salt)
    assert {c.listing_id for c in runner.commitments.values()} == {
        b["listing_id"] for b in reveals if b["listing_id"] in runner.commitments}
    assert any(c.mcp == 60_000 for c in runner.commitments.values())


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
                       DaemonHooks(clock, home.send_relay, broken_outbox, home.history),
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
    assert report.errors and report.errors[0].startswith("plan:")
    # planned all the same: every flexible load shed, since none fits under 100 W
    assert report.planned and runner.plan is not None
    assert not any(runner.plan[k].any() for k in runner.keys if not k.startswith("fridge"))
    assert any("shed" in n for n in report.notes)


async def test_unreadable_history_and_a_new_tariff():
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())

    def broken_history(meter: str, since: int, until: int) -> list[Row]:
        raise OSError("database is locked")

    runner = EmsRunner(appliances(), Tariff(), RunnerConfig(site_meter="site", pv_meter="pv"),
                       DaemonHooks(clock, home.send_relay, home.enqueue_tx, broken_history))
    report = await runner.step()
    assert report.planned and any(e.startswith("history:") for e in report.errors)
    await clock.set(clock.now_ms() + SLOT_MS)
    assert not (await runner.step()).planned  # nothing changed: the hourly plan stands
    runner.set_tariff(Tariff(retail_offpeak=50_000))
    await clock.set(clock.now_ms() + SLOT_MS)
    assert (await runner.step()).planned


@pytest.mark.parametrize("days", [9, 12])
async def test_short_history_forecasts_with_the_naive_model_not_zeros(days):
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())
    runner = EmsRunner(appliances(), Tariff(), RunnerConfig(site_meter="site", pv_meter="pv",
                                                           history_days=days),
                       home.hooks())
    report = await runner.step()
    assert report.planned and runner.plan_input is not None
    # the naive forecast repeats the last day of the metered home, less the fridge: a plan job
    last_day = home.load[(HISTORY_DAYS - 1) * SLOTS_PER_DAY:HISTORY_DAYS * SLOTS_PER_DAY]
    base = runner.plan_input.base_mwh // 1000
    assert (base == np.maximum(last_day - 125 // 4, 0)).all()
    assert runner.plan_input.pv_mwh.sum() > 0
    assert not any("zero" in n for n in report.notes)


async def test_a_model_that_cannot_train_falls_back_to_the_naive_one(monkeypatch):
    import gateway.ems.runner as runner_module

    real = runner_module.forecast

    def flaky(history, start, horizon, model):
        if model != "naive":
            raise runner_module.ForecastError("singular matrix")
        return real(history, start, horizon, model)

    monkeypatch.setattr(runner_module, "forecast", flaky)
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())
    runner = make(home, clock)
    report = await runner.step()
    assert report.planned and runner.plan_input is not None
    assert runner.plan_input.base_mwh.sum() > 0 and runner.plan_input.pv_mwh.sum() > 0
    assert any("no ridge forecast (singular matrix)" in n for n in report.notes)


async def test_a_run_is_credited_to_its_own_day_only():
    # with a two-day horizon the plan holds tomorrow's TV and EV too: tonight's charge and
    # today's TV must not count for them
    apps, _ = parse_appliances({"appliances": [
        {"name": "tv", "flexible": False, "start": "07:00", "end": "24:00", "working_min": 240,
         "power_w": 250, "node": 3, "relay": 0},
        {"name": "ev", "flexible": True, "start": "19:00", "end": "06:00", "working_min": 360,
         "power_w": 3650, "storage": True, "energy_wh": 21900, "min_on_min": 30,
         "min_off_min": 30, "node": 1, "relay": 0, "meter": "plug-ev"}]})
    clock = ManualClock(START_MS)
    home = Home(clock, apps)
    runner = EmsRunner(apps, Tariff(), RunnerConfig(site_meter="site", pv_meter="pv",
                                                    history_days=HISTORY_DAYS,
                                                    horizon_slots=2 * SLOTS_PER_DAY),
                       home.hooks())
    await live(home, clock, runner, 92)  # to 2026-06-16 11:00, the TV has run today's 4 h
    await runner.step()
    assert len(home.on_log["ev"]) == 24 and len(home.on_log["tv"]) == 16
    assert runner.state.done >= {"ev@2026-06-15", "tv@2026-06-16"}
    assert not runner.state.done & {"ev@2026-06-16", "tv@2026-06-17"}
    assert "ev@2026-06-16" not in runner.state.progress
    assert "tv@2026-06-17" not in runner.state.progress
    assert runner.plan is not None and runner.plan_input is not None
    jobs = {j.name: j for j in runner.plan_input.jobs}
    assert jobs["ev@2026-06-16"].slots == 24 and runner.plan["ev@2026-06-16"].sum() == 24
    assert runner.plan["tv@2026-06-17"].sum() == 16


async def test_an_appliance_without_a_relay_is_counted_once():
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())
    # the home's only load is the fridge (125 W, no relay), which the site meter sees
    home.load = np.zeros_like(home.load)
    home.pv = np.zeros_like(home.pv)
    home.rows = {"site": [], "pv": [], "plug-ev": []}
    for i in range(HISTORY_DAYS * SLOTS_PER_DAY):
        home._meter(i, 125 // 4, 0)
    runner = make(home, clock)

    def planned_wh() -> np.ndarray:
        inp, plan = runner.plan_input, runner.plan
        assert inp is not None and plan is not None
        return (inp.base_mwh + sum(plan[j.name].astype(np.int64) * j.slot_mwh
                                   for j in inp.jobs if j.name.startswith("fridge"))) // 1000

    await runner.step()
    assert (planned_wh() == 125 // 4).all()
    await live(home, clock, runner, 9)  # the plan's own record of the fridge replaces the guess
    assert runner.reports[-1].planned
    assert (planned_wh() == 125 // 4).all()


async def _night_request(max_w: int) -> tuple[Home, EmsRunner, ManualClock]:
    """At 19:00 the operator asks for at most ``max_w`` until 06:00, the EV's whole window."""
    clock = ManualClock(START_MS)
    home = Home(clock, appliances())
    runner = make(home, clock)

    async def grid_operator(k: int, report) -> None:
        if k == 28:
            runner.request_demand_response(DrRequest(
                datetime(2026, 6, 15, 19, tzinfo=UTC), datetime(2026, 6, 16, 6, tzinfo=UTC),
                max_w))
            await runner.replan_now()

    await live(home, clock, runner, 76, grid_operator)
    return home, runner, clock


def _after_request(runner: EmsRunner) -> list:
    """Reports of the plans made while the request lasts (the first is ``replan_now``'s)."""
    first = next(i for i, r in enumerate(runner.reports)
                 if r.slot_ms == START_MS + 7 * 3_600_000)
    return [r for r in runner.reports[first + 1:]
            if r.planned and r.slot_ms < START_MS + 18 * 3_600_000]


@pytest.mark.parametrize("max_w", [0, 1000])
async def test_a_request_that_cannot_be_fully_met_sheds_the_flexible_loads(max_w):
    # the EV (3.65 kW) never fits under the request, not even beside the PV: it is shed, and
    # the plan says so, instead of charging on by the plan made before the request
    home, runner, _ = await _night_request(max_w)
    assert home.refusals == 0
    assert not any(7 <= h < 18 for h in hours(home.on_log["ev"]))
    # the pump, switched on at 19:00 by the plan before the request, stops after its min on
    assert hours(home.on_log["pump"]) == [7.0]
    shed = _after_request(runner)
    assert shed and all(any(e.startswith("plan:") for e in r.errors) for r in shed)
    assert any("ev@2026-06-15: shed, 0 of" in n for r in shed for n in r.notes)


async def test_a_partly_met_request_keeps_imports_under_it_where_it_can():
    # 2 kW: the EV may charge only where the (shifted) PV of the test home carries most of it
    home, runner, _ = await _night_request(2000)
    ev = [s for s in home.on_log["ev"] if 7 <= (s - START_MS) / 3_600_000 < 18]
    assert 0 < len(ev) < 24
    plans = _after_request(runner)
    assert plans and all(any("ev@2026-06-15: shed" in n for n in r.notes) for r in plans)


async def test_without_any_plan_a_request_still_stops_flexible_loads(monkeypatch):
    import gateway.ems.runner as runner_module

    def fail(inp, **kw):
        raise runner_module.PlanError("solver crashed")

    monkeypatch.setattr(runner_module, "solve_shedding", fail, raising=False)
    home, runner, _ = await _night_request(1000)
    assert not any(7 <= h < 18 for h in hours(home.on_log["ev"]))
    assert any("solver crashed" in e for r in runner.reports for e in r.errors)
