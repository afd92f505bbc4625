"""One demo run: a community day from registration to settlement, and its self-checks.

The run drives simulated time hour by hour (the paper's hourly cycle): AuthorizeOfferCom
(``auction.open``), the homes' RESOffers and BuyOffers from their EMS plans, Bid_Closed
(``auction.close``, which clears), the relay actions of the plan, four 15-minute signed meter
reports per home, and settlement of the delivered hour against those reports.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.clock import ManualClock
from gateway.ems.agent import TradingAgent
from gateway.ems.timegrid import SLOT_MS, SLOTS_PER_DAY, SLOTS_PER_HOUR
from gateway.sources.mqtt import MqttNodeSource
from ledger.contract import default_genesis
from ledger.contract.api import Receipt
from ledger.contract.clearing import Order
from ledger.keys import public_hex
from tools.demo.checks import self_checks
from tools.demo.economics import HourBook, Tariffs
from tools.demo.edge import METER_MODEL, EdgeSpec, HomeEdge, start_edge
from tools.demo.faults import plan_faults
from tools.demo.feeder import FEEDER_ID, FEEDER_MODEL, Liar, feeder_power
from tools.demo.ledger_port import LedgerPort, open_ledger
from tools.demo.options import DemoOptions
from tools.demo.plan import (
    FORECAST_MODEL,
    HISTORY_DAYS,
    DemandResponse,
    HomePlan,
    ems_tariff,
    forecast_error,
    plan_home,
)
from tools.demo.procs import DemoBroker, Supervisor, start_mosquitto
from tools.demo.progress import ProgressBar
from tools.demo.record import DayRecord, HourResult
from tools.demo.registration import (
    OPERATOR,
    START_TOKENS,
    Actor,
    CommunityKeys,
    register,
    report_window_ms,
    submit,
)
from tools.demo.supply import HomeSupply, RelayLog, home_supply, plug_draw, relay_draw
from tools.demo.vmnode import VM_NODE_BASE, VmNode
from tools.demo.world import Home, build_community, run_slots

AGENT_MARGINS = (0.02, 0.4)  # share of the tariff band each home's agent asks below / bids above
HOUR_MS = SLOT_MS * SLOTS_PER_HOUR
POLL_MS = 300_000  # the gateways poll their meters every 5 simulated minutes
CLOSE_GRACE_MS = 31_000  # just past the aggregator's grace: the hour's last interval closes
VM_CHANNELS = 2  # the CT board's two clamps, each with its relay
METERED_REGULAR = ("Television", "Personal Computer", "Refrigerator")


PLUGGED_IN_MS = 3_600_000  # the plugs went into their sockets an hour before the day began


class DemoRun:
    def __init__(self, opts: DemoOptions, progress: ProgressBar, sup: Supervisor,
                 run_dir: Path) -> None:
        self.opts = opts
        self.progress = progress
        self.rng = random.Random(opts.seed)
        self.homes: list[Home] = build_community(opts.households, opts.seed)
        self.operator = Actor(OPERATOR, Ed25519PrivateKey.generate())
        # each home's keys: the member's wallet key (transfers, votes, key changes; it stays
        # with the member, here the demo), and on its gateway the meter key (reports only) and
        # the order key the member delegates to the gateway's trading agent (offers, bids only)
        self.wallet_keys = {h.id_grid: Ed25519PrivateKey.generate() for h in self.homes}
        self.meter_keys = {h.id_grid: Ed25519PrivateKey.generate() for h in self.homes}
        self.order_keys = {h.id_grid: Ed25519PrivateKey.generate() for h in self.homes}
        self.feeder_key = Ed25519PrivateKey.generate()  # the operator's gateway at the feeder
        self.feeder: HomeEdge | None = None
        self.liar: Liar | None = None  # --faults: the home whose gateway over-reports
        # the whole supply, fixed in the genesis: the operator's treasury, sold to the homes
        self.minted = START_TOKENS * len(self.homes)
        self.genesis = default_genesis(public_hex(self.operator.key), clearing_rule=opts.rule,
                                       treasury=self.minted,
                                       report_window_ms=report_window_ms(opts.date))
        self.tariffs = Tariffs.from_params(self.genesis["params"])
        # Each home's agent trades with its own margin around the expected price (seeded), so
        # the hourly books have the spread of real supply and demand curves.
        params = self.genesis["params"]
        self.agents = {
            h.id_grid: TradingAgent(
                h.id_grid, ems_tariff(self.tariffs), res_id=h.res_id if h.pv_w else None,
                res_rated_w=h.pv_w, margin=round(self.rng.uniform(*AGENT_MARGINS), 3),
                sealed=params["sealed_bids"], commit_deposit=params["commit_deposit"])
            for h in self.homes}
        self.record = DayRecord(date=opts.date.isoformat(), rule=opts.rule)
        self.dr = DemandResponse(*opts.dr) if opts.dr else None  # the grid operator's request
        self.ledger: LedgerPort | None = None
        self.sup = sup
        self.run_dir = run_dir
        self.edges: list[HomeEdge] = []
        self.ledger_down = False
        self.day0_ms = 0
        self.clock = ManualClock(0)
        self.fault_plan: list[tuple[int, Any]] = []
        self.relay_state: dict[tuple[str, str], bool] = {}  # the plan's relays, as confirmed
        self.relays: dict[tuple[str, str], RelayLog] = {}  # every relay switched, with its log
        self.metering_plugs: dict[str, str] = {}  # home -> regular appliance on a plug
        self.supply: dict[str, HomeSupply] = {}
        self.results: dict[str, HourResult] = {}
        self.hour_notes: dict[int, list[str]] = {}
        self.habit_loads: dict[int, set[int]] = {}
        self.vm: VmNode | None = None
        self.broker: DemoBroker | None = None
        self.listings: list[str] = []
        self.unsettled: list[str] = []

    # -- ledger helpers ---------------------------------------------------------------------

    async def tx(self, actor: Actor, kind: str, body: Mapping[str, Any], *,
                 must: bool = True) -> Receipt:
        assert self.ledger is not None
        return await submit(self.ledger, actor, kind, body, must=must)

    async def register(self) -> None:
        assert self.ledger is not None
        keys = CommunityKeys(self.wallet_keys, self.meter_keys, self.order_keys, self.feeder_key)
        await register(self.ledger, self.operator, self.homes, keys, self.run_dir)

    # -- the day ----------------------------------------------------------------------------

    async def run(self) -> DayRecord:
        t0 = time.monotonic()
        self.progress.set_status("starting the ledger cluster (4 replica processes)")
        self.ledger = await open_ledger(
            self.sup, self.run_dir / "ledger", self.genesis, self.operator.key
        )
        self.record.parts["ledger"] = self.ledger.kind
        try:
            return await self._run(t0)
        finally:
            await self.ledger.close()

    async def _run(self, t0: float) -> DayRecord:
        opts = self.opts
        self.progress.set_status("forecasting and planning every home's day (EMS, MILP)")
        plans = [plan_home(h, opts.date, self.tariffs, opts.seed, self.dr) for h in self.homes]
        self.plans = plans
        self._record_homes(plans)
        self.progress.set_status("registering homes, RES and meters on the ledger")
        await self.register()
        self.progress.set_status("starting emulated meters and gateways")
        await self.start_edges()
        try:
            return await self._day(t0)
        finally:
            if self.vm is not None:
                self.record.counters.update({f"vm_{k}": v for k, v in self.vm.stats().items()})
                await self.vm.close()
            for e in self.metered_edges():
                await e.close()

    async def start_edges(self) -> None:
        self.day0_ms = int(dt.datetime.combine(self.opts.date, dt.time(0), tzinfo=dt.UTC)
                           .timestamp() * 1000)
        self.clock = ManualClock(self.day0_ms)
        gw_dir = self.run_dir / "gateways"
        rng = random.Random(self.opts.seed ^ 0x5EED)
        plug_keys: dict[int, bytes] = {}
        try:
            self.broker = start_mosquitto(self.sup, self.run_dir)
        except RuntimeError as exc:  # no broker: the firmware node (on MQTT) sits this one out
            self.record.parts["mqtt"] = f"not run: {exc}"
            vm_home = None
        else:
            self.record.parts["mqtt"] = ("mosquitto, started by the demo on free loopback ports: "
                                         "TLS for gateways, an account and ACL per client")
            vm_home = self.vm_home()
        for h in self.homes:
            plugs = []
            mqtt_nodes: list[tuple[int, str, bytes]] = []
            node_relays: dict[str, tuple[int, int]] = {}
            on_vm = h.flexible[:VM_CHANNELS] if h is vm_home else []
            if on_vm:
                vm_id = VM_NODE_BASE + h.index
                try:
                    self.vm = self.start_vm(h, vm_id, on_vm)
                except Exception as exc:  # no node.js or no VM package: run without it
                    self.record.parts["firmware node"] = f"not run: {exc}"
                    on_vm = []
                else:
                    mqtt_nodes.append((vm_id, self.vm.name, self.vm.key))
                    for relay, a in enumerate(on_vm):
                        node_relays[a.name] = (vm_id, relay)
            # Every relay boots off (the boards' boot_on): the plan switches the flexible ones
            # on, the demo the metering plug's, and only a confirmed switch counts.
            for a in h.flexible:
                self.relay_state[(h.id_grid, a.name)] = False
                self.relays[(h.id_grid, a.name)] = RelayLog(h.id_grid, a.name, a.power_w,
                                                         [(self.day0_ms, False)])
            for k, a in enumerate(h.flexible):
                if a in on_vm:
                    continue
                nid = (h.index + 1) * 16 + k
                plug_keys[nid] = os.urandom(32)
                plugs.append((nid, a.name, a.power_w))
            # One regular appliance per home on a metering plug (paper 4.2: smart plugs measure
            # regular appliances' use); its relay is switched on and its owner's habits drive it.
            regular = next((a for name in METERED_REGULAR for a in h.appliances
                            if a.name == name), None)
            if regular is not None:
                nid = (h.index + 1) * 16 + 15
                plug_keys[nid] = os.urandom(32)
                plugs.append((nid, regular.name, regular.power_w))
                self.habit_loads[nid] = set(run_slots(regular, h.habit_start.get(regular.name, 0)))
                self.metering_plugs[h.id_grid] = regular.name
                self.relays[(h.id_grid, regular.name)] = RelayLog(
                    h.id_grid, regular.name, regular.power_w, [(self.day0_ms, False)])
            supply = home_supply(self.plans[h.index], rng, self.day0_ms,
                                 {regular.name} if regular is not None else set())
            self.supply[h.id_grid] = supply
            spec = EdgeSpec(h.id_grid, h.meter_id, self.meter_keys[h.id_grid],
                            supply.power_w, plugs, mqtt_nodes, node_relays,
                            order_key=self.order_keys[h.id_grid])
            edge = await start_edge(
                spec, self.clock, gw_dir / h.id_grid.lower(), POLL_MS // 1000,
                self.current_ledger, plug_keys, self.plug_load, self.broker,
                plug_boot_ms=self.day0_ms - PLUGGED_IN_MS)
            self.edges.append(edge)
            # what the billing meter sees of each switched appliance: through a plug, what the
            # plug's relay really passed; on the firmware node, what its confirmed relay passed
            supply.switched += [plug_draw(p.emulator.core) for p in edge.plugs]
            supply.switched += [relay_draw(self.relays[(h.id_grid, name)])
                                for name in node_relays]
        # the operator's gateway at the community's connection: the feeder meter sees every
        # home's billing meter's power at once, plus the lines' losses
        self.feeder = await start_edge(
            EdgeSpec(OPERATOR, FEEDER_ID, self.feeder_key,
                     feeder_power(self.supply[h.id_grid].power_w for h in self.homes), [],
                     model=FEEDER_MODEL),
            self.clock, gw_dir / "operator", POLL_MS // 1000, self.current_ledger, {},
            self.plug_load, None)
        if self.vm is not None:
            vm_edge = next(e for e in self.edges if e.id_grid == vm_home.id_grid)  # type: ignore[union-attr]
            mqtt_src = [src for src in vm_edge.gateway.sources
                        if isinstance(src, MqttNodeSource)]
            await self.wait_for(lambda: all(src.connected.is_set() for src in mqtt_src), 10.0,
                                "gateway on MQTT")
        n_plugs = sum(len(e.plugs) for e in self.edges)
        self.record.parts["meters"] = (f"{len(self.edges)} emulated {METER_MODEL} meters on "
                                       "pymodbus TCP servers (loopback)")
        self.record.parts["feeder meter"] = (
            f"an emulated {FEEDER_MODEL} at the community's grid connection on a pymodbus TCP "
            "server, read by the operator's gateway daemon and registered as the feeder")
        self.record.parts["gateways"] = (f"{len(self.edges)} gateway daemons (gateway.daemon), "
                                         "one SQLite store each, on the demo's clock")
        self.record.parts["plugs"] = (f"{n_plugs} emulated BLE plugs on bumble virtual links, "
                                      "reached through the bleak API")
        await self.wait_for(lambda: all(e.ble_ready() for e in self.edges), 20.0,
                            "plugs connected")
        await self.wait_for(lambda: all(e.cycles() >= 1 for e in self.metered_edges()), 10.0,
                            "first Modbus polls")
        for e in self.edges:
            for p in e.plugs:
                await p.emulator.tick()  # a first reading at midnight: the counters' baseline
                p.task = asyncio.create_task(p.emulator.run(POLL_MS / 1000, self.clock.sleep))
        await self.switch_on_metering_plugs()
        await self.switch_relays(0)
        if self.opts.faults:
            self.plan_faults()

    def plug_load(self, node_id: int, watts: int) -> Callable[[int], int]:
        """What an appliance draws through its plug while the relay is on (dW): a flexible one
        its rated power (the relay is the switch), a regular one when its owner uses it."""
        habit = self.habit_loads.get(node_id)
        if habit is None:
            return lambda _ms: watts * 10
        day0 = self.day0_ms

        def load(t_ms: int) -> int:
            return watts * 10 if ((t_ms - day0) // SLOT_MS) % SLOTS_PER_DAY in habit else 0

        return load

    def relay_names(self, edge: HomeEdge) -> set[str]:
        """The appliances of a home whose relays the EMS plan switches."""
        return {name for (home, name) in self.relay_state if home == edge.id_grid}

    def current_ledger(self) -> LedgerPort | None:
        """What the gateways deliver to: nothing while the whole ledger is stopped."""
        return None if self.ledger_down else self.ledger

    def vm_home(self) -> Home | None:
        """The home whose flexible loads hang on the node running the real firmware: one with
        an electric vehicle if any (the paper's Figure 7 clamps an EV charger)."""
        with_flex = [h for h in self.homes if h.flexible]
        ev = [h for h in with_flex if any(a.name == "Electric Vehicle" for a in h.flexible)]
        found = ev or with_flex
        return found[0] if found else None

    def start_vm(self, home: Home, node_id: int, appliances: list[Any]) -> VmNode:
        plan = self.plans[home.index]
        days = (self.opts.hours + 23) // 24
        channels = []
        for a in appliances:
            on = set(plan.schedule.get(a.name, ()))
            channels.append([a.power_w if s in on else 0 for s in range(SLOTS_PER_DAY)] * days)
        assert self.broker is not None
        vm = VmNode.start(self.sup, self.run_dir / "vm-node", node_id, self.broker,
                          self.clock, self.day0_ms, channels, SLOT_MS // 1000)
        self.record.parts["firmware node"] = (
            f"node {node_id} of {home.id_grid}: the real firmware on the MicroPython VM "
            f"(node subprocess), CT clamps on {', '.join(a.name for a in appliances)}, on MQTT")
        return vm

    async def wait_for(self, cond: Any, timeout_s: float, what: str) -> bool:
        """Wait (real time) for the emulated devices and gateways to finish what the last clock
        step set off: network round trips over loopback and the virtual radio take real time."""
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                self.record.counters[f"waits_timed_out:{what}"] = (
                    self.record.counters.get(f"waits_timed_out:{what}", 0) + 1)
                return False
            await asyncio.sleep(0.002)
        return True

    async def switch_on_metering_plugs(self) -> None:
        """The metering-only plugs boot off like every plug: switch them on, so the appliances
        behind them can draw (a refused switch is left off, and the self-checks say so)."""
        jobs = [(e, self.metering_plugs[e.id_grid]) for e in self.edges
                if e.id_grid in self.metering_plugs]
        results = await asyncio.gather(*(e.relay(name, True) for e, name in jobs))
        for (e, name), ok in zip(jobs, results, strict=True):
            if ok:
                self.relays[(e.id_grid, name)].log.append((self.clock.now_ms(), True))

    async def switch_relays(self, slot: int) -> int:
        """Drive each flexible appliance's relay to the EMS plan for ``slot`` (of the day)."""
        jobs = []
        for e, p in zip(self.edges, self.plans, strict=True):
            for a in p.home.flexible:
                want = (slot % SLOTS_PER_DAY) in set(p.schedule.get(a.name, ()))
                if self.relay_state.get((e.id_grid, a.name)) != want:
                    jobs.append((e, a.name, want))
        results = await asyncio.gather(*(e.relay(name, want) for e, name, want in jobs))
        done = 0
        for (e, name, want), ok in zip(jobs, results, strict=True):
            if ok:
                self.relay_state[(e.id_grid, name)] = want
                self.relays[(e.id_grid, name)].log.append((self.clock.now_ms(), want))
                done += 1
        return done

    async def _day(self, t0: float) -> DayRecord:
        opts = self.opts
        self.record.timings["setup_s"] = round(time.monotonic() - t0, 2)
        await self.snapshot_balances("start")
        for part, how in sorted(self.record.parts.items()):
            self.progress.say(f"  {part}: {how}")
        self.progress.say("")
        self.progress.header()
        for k in range(opts.hours):
            self.progress.set_status(f"hour {k + 1} of {opts.hours}: auction, delivery, reports")
            await self.hour(k)
            self.progress.step()
        self.progress.set_status("settling and checking")
        await self.settle_pending()
        await self.snapshot_balances("end")
        await self.checks()
        self.record.timings["run_s"] = round(time.monotonic() - t0, 2)
        return self.record

    def listing(self, k: int) -> tuple[str, int, dt.date]:
        day = self.opts.date + dt.timedelta(days=k // 24)
        return f"{day.isoformat()}T{k % 24:02d}", k % 24, day

    async def hour(self, k: int) -> None:
        listing_id, hod, day = self.listing(k)
        op = self.operator
        await self.tx(op, "auction.open", {"listing_id": listing_id})
        # Each home's trading agent (gateway.ems.agent) turns its plan's net energy of the hour
        # into an offer or a bid; the gateway queues it in its outbox, which delivers it.
        balances = self.record.balances[-1][1] if self.record.balances else {}
        queued = []
        for e, p in zip(self.edges, self.plans, strict=True):
            order = self.agents[e.id_grid].decide(listing_id, p.net_wh(hod),
                                                  balances.get(e.id_grid))
            if order is not None:
                queued.append((e, e.gateway.enqueue_tx(order.kind, order.body)))
        await self.wait_for(lambda: all(self.outbox_state(e, oid) != "pending"
                                        for e, oid in queued), 15.0, "orders delivered")
        closed = await self.tx(op, "auction.close", {"listing_id": listing_id})
        if closed.result.get("state") == "REVEAL":  # sealed orders: each agent opens its own
            queued = []
            for e in self.edges:
                reveal = self.agents[e.id_grid].reveal(listing_id)
                if reveal is not None:
                    queued.append((e, e.gateway.enqueue_tx(reveal.kind, reveal.body)))
            await self.wait_for(lambda: all(self.outbox_state(e, oid) != "pending"
                                            for e, oid in queued), 15.0, "reveals delivered")
            closed = await self.tx(op, "auction.clear", {"listing_id": listing_id})
        res = closed.result
        for agent in self.agents.values():
            agent.read_clearing(res)
        book = await self.order_book(listing_id, hod)
        result = HourResult(book=book, mcp=res.get("mcp"), traded_wh=int(res.get("traded_wh", 0)),
                            trades=[dict(t) for t in res.get("trades", [])],
                            kwh_available=int(res.get("kwh_available", 0)),
                            kwh_wanted=int(res.get("kwh_wanted", 0)))
        if isinstance(res.get("efficiency"), Mapping):
            result.gains = (int(res["efficiency"]["traded_gains"]),
                            int(res["efficiency"]["efficient_gains"]))
        self.listings.append(listing_id)
        self.results[listing_id] = result
        result.relay_actions = await self.deliver(k, day, hod, book)
        self.unsettled.append(listing_id)
        await self.settle_pending()
        notes = []
        if self.dr is not None and self.dr.start_h <= hod < self.dr.end_h:
            notes.append(f"DR: import <= {self.dr.max_w / 1000:.1f} kW per home")
        if k in self.hour_notes:
            notes.append("fault: " + ", ".join(self.hour_notes[k]))
        result.note = "; ".join(notes)
        self.record.hours.append(result)
        await self.snapshot_balances(f"{hod:02d}:00" if k < 24 else listing_id[5:])
        self.progress.hour_line(
            f"{day.isoformat()} {hod:02d}:00", len(book.offers), len(book.bids), result.mcp,
            result.traded_wh, result.grid_import_wh if result.settled else None,
            result.grid_export_wh if result.settled else None, result.note)

    @staticmethod
    def outbox_state(edge: HomeEdge, oid: int) -> str:
        row = edge.gateway.outbox_status(oid)
        return "pending" if row is None else str(row.state)

    async def order_book(self, listing_id: str, hod: int) -> HourBook:
        """The listing's book as the replicas hold it, in acceptance order."""
        assert self.ledger is not None
        raw = await self.ledger.query("order_book", listing_id=listing_id)
        book = HourBook(listing_id, hod)
        book.offers = [Order(o["seq"], o["seller"], o["wh"], o["price"], o["res_id"])
                       for o in raw["offers"]]
        book.bids = [Order(b["seq"], b["buyer"], b["wh"], b["price"]) for b in raw["bids"]]
        return book

    async def deliver(self, k: int, day: dt.date, hod: int, book: HourBook) -> int:
        """The delivery hour on the simulated clock: the gateways poll their meters every
        ``POLL_MS``, the EMS plan switches relays at slot edges, intervals close and their signed
        reports leave the outboxes. Returns the relay commands acknowledged."""
        start = self.day0_ms + k * HOUR_MS
        relays = 0
        for t in range(start + POLL_MS, start + HOUR_MS + 1, POLL_MS):
            await self.step(t)
            # every slot edge, the top of the next hour included (the run's end excluded)
            if (t - self.day0_ms) % SLOT_MS == 0 and t < self.day0_ms + self.opts.hours * HOUR_MS:
                relays += await self.switch_relays((t - self.day0_ms) // SLOT_MS)
        await self.step(start + HOUR_MS + CLOSE_GRACE_MS, poll=False)
        await self.wait_for(lambda: self.hour_reported(start), 10.0, "reports delivered")
        for e in self.edges:
            mine = e.billing_intervals(start, start + HOUR_MS)
            book.metered[e.id_grid] = (sum(i.import_wh for i in mine),
                                       sum(i.export_wh for i in mine))
        return relays

    async def step(self, t_ms: int, *, poll: bool = True) -> None:
        while self.fault_plan and self.fault_plan[0][0] <= t_ms:
            t_fault, action = self.fault_plan.pop(0)
            await self.clock.set(t_fault)
            await action(t_fault)
        await self.clock.set(t_ms)
        if poll:
            due = (t_ms - self.day0_ms) // POLL_MS + 1
            await self.wait_for(lambda: all(e.cycles() >= due for e in self.metered_edges()),
                                5.0, "Modbus polls")
            if self.vm is not None:
                vm = self.vm
                await self.wait_for(lambda: vm.caught_up(t_ms), 20.0, "firmware node")

    def hour_reported(self, start_ms: int) -> bool:
        if self.ledger_down:
            return False
        return all(e.hour_reported(start_ms, start_ms + HOUR_MS, SLOTS_PER_HOUR)
                   for e in self.metered_edges())

    def metered_edges(self) -> list[HomeEdge]:
        """The homes' edges and the operator's at the feeder."""
        return [*self.edges, *([self.feeder] if self.feeder is not None else [])]

    # -- faults on request ------------------------------------------------------------------

    def sim_label(self, t_ms: int) -> str:
        return dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M")

    def plan_faults(self) -> None:
        self.fault_plan = plan_faults(self)

    async def settle_pending(self) -> None:
        for listing_id in list(self.unsettled):
            k = self.listings.index(listing_id)
            if not self.hour_reported(self.day0_ms + k * HOUR_MS):
                continue
            r = await self.tx(self.operator, "auction.settle", {"listing_id": listing_id},
                              must=False)
            if r.ok or r.code == "LISTING_SETTLED":
                self.unsettled.remove(listing_id)
                # what the grid billed: the ledger's lines (an earlier attempt's reply may have
                # been lost, so read them back rather than trust this reply)
                assert self.ledger is not None
                settled = await self.ledger.query("settlement", listing_id=listing_id)
                self.results[listing_id].settlement = [dict(ln) for ln in settled["lines"]]
                self.results[listing_id].balance = [dict(b) for b in settled.get("balance", [])]

    async def snapshot_balances(self, label: str) -> None:
        assert self.ledger is not None
        members = await self.ledger.query("members")
        self.record.balances.append(
            (label, {m["id_grid"]: int(m["balance"]) for m in members if m["id_grid"] != OPERATOR}))

    def _record_homes(self, plans: list[HomePlan]) -> None:
        n = SLOTS_PER_DAY
        self.record.slot_labels = [f"{s // 4:02d}:{(s % 4) * 15:02d}" for s in range(n)]
        self.record.load_before_w = [sum(p.load_before_mwh[s] for p in plans) * 4 // 1000
                                     for s in range(n)]
        self.record.load_after_w = [sum(p.load_after_mwh[s] for p in plans) * 4 // 1000
                                    for s in range(n)]
        self.record.pv_w = [sum(p.pv_mwh[s] for p in plans) * 4 // 1000 for s in range(n)]
        self.record.forecast = {"model": FORECAST_MODEL, "history_days": HISTORY_DAYS,
                                "error": forecast_error(plans)}
        for p in plans:
            h = p.home
            self.record.households.append({
                "id_grid": h.id_grid, "role": "prosumer" if h.pv_w else "consumer",
                "pv_w": h.pv_w, "meter_id": h.meter_id,
                "appliances": [a.name for a in h.appliances],
                "flexible": [a.name for a in h.flexible],
                "ems_solve_s": round(p.solve_s, 3), "ems_note": p.note,
                "dr_limit_w": p.dr_limit_w,
            })
        if self.dr is None:
            return
        window = self.dr.slots()
        self.record.demand_response = {
            "window": f"{self.dr.start_h:02d}:00-{self.dr.end_h:02d}:00",
            "request_max_w_per_home": self.dr.max_w,
            "home_limits_w": {p.home.id_grid: p.dr_limit_w for p in plans},
            "peak_in_window_before_ems_w": max(self.record.load_before_w[s] for s in window),
            "peak_in_window_after_ems_w": max(self.record.load_after_w[s] for s in window),
        }

    # -- self-checks ------------------------------------------------------------------------

    async def checks(self) -> None:
        await self_checks(self)
