"""The thin asyncio adapter that runs the EMS inside the gateway daemon (or the demo).

It knows the daemon only through plain callables: ``send_relay(node_id, relay, on)`` (awaitable
``firmware.frame`` S_* status), ``enqueue_tx(kind, body)`` (outbox id; delivered exactly once),
``interval_history(meter_id, since_ms, until_ms)`` (rows with ``start_ms``, ``import_wh``,
``export_wh``), an optional ``clearing(listing_id)`` (awaitable ``auction.close`` result or None
while the listing is open; a sealed listing in state ``REVEAL`` makes the runner queue the
agent's reveal) and a clock with ``now_ms()`` and ``async sleep_until(ms)``.

At every slot edge ``step`` does, in order: read clearings of listings it traded (the traded
quantities enter the plan), record what ran in the slot just ended, forecast load and PV from the
meters' history, re-plan the horizon (every ``replan_slots``, and at once when a request, a
clearing or a relay that did not follow the plan changed its inputs; runs already begun are
kept; when the limits leave no room for every job, the flexible ones are shed as far as needed
and the report says which), switch relays for the new slot within their minimum times, place
orders for listings about to close, and reconcile what it commanded with what the appliances'
meters measured. A fault in one relay, one order or one clearing is recorded in the step's
report and never stops the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from firmware import frame
from gateway.ems.agent import TradingAgent
from gateway.ems.appliances import Appliance
from gateway.ems.dr import Mismatch, RelayCommand, RelayController, reconcile, relay_specs
from gateway.ems.forecast import MIN_HISTORY, ForecastError, Model, forecast
from gateway.ems.horizon import (
    HorizonState,
    advance,
    group_listing_ids,
    horizon_input,
    occurrence_span,
    uncontrolled_on,
)
from gateway.ems.milp import solve, solve_shedding
from gateway.ems.plan import DEFAULT_LIMIT_W, Commitment, DrRequest, hourly_net_wh
from gateway.ems.problem import BoolArray, IntArray, PlanError, PlanInput, Schedule, evaluate
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import (
    SLOT_MS,
    SLOTS_PER_DAY,
    SLOTS_PER_HOUR,
    dt_to_ms,
    slot_energy_mwh,
)


class IntervalRow(Protocol):
    @property
    def start_ms(self) -> int: ...
    @property
    def import_wh(self) -> int: ...
    @property
    def export_wh(self) -> int: ...


class ClockLike(Protocol):
    def now_ms(self) -> int: ...
    async def sleep_until(self, ms: int) -> None: ...


SendRelay = Callable[[int, int, bool], Awaitable[int]]
EnqueueTx = Callable[[str, dict[str, Any]], object]
History = Callable[[str, int, int], Sequence[IntervalRow]]
ClearingFetch = Callable[[str], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class DaemonHooks:
    """The daemon's plain callables and clock the runner works through (see the module's
    docstring); without ``clearing`` (no ledger) the runner reads no clearings."""

    clock: ClockLike
    send_relay: SendRelay
    enqueue_tx: EnqueueTx
    interval_history: History
    clearing: ClearingFetch | None = None


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    site_meter: str  # the home's grid meter: import and export
    pv_meter: str | None = None  # the PV inverter's meter (its export is the production)
    horizon_slots: int = SLOTS_PER_DAY
    history_days: int = 28
    limit_w: int = DEFAULT_LIMIT_W
    model: Model = "ridge"
    order_lead_ms: int = 60 * 60_000  # place the order for hour H from H - lead
    replan_slots: int = SLOTS_PER_HOUR  # re-plan at least this often; at once on any change
    relay_timeout_s: float = 10.0


@dataclass(slots=True)
class StepReport:
    slot_ms: int
    planned: bool = False
    cost_utok: int | None = None
    commands: list[tuple[str, bool, int | None]] = field(default_factory=list)  # name, on, status
    deferred: dict[str, int] = field(default_factory=dict)
    orders: list[tuple[str, object]] = field(default_factory=list)  # (kind, outbox id)
    commitments: list[Commitment] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class EmsRunner:
    def __init__(self, appliances: Sequence[Appliance], tariff: Tariff, config: RunnerConfig,
                 hooks: DaemonHooks, agent: TradingAgent | None = None) -> None:
        self.appliances = list(appliances)
        self.tariff = tariff
        self.config = config
        self.hooks = hooks
        self.clock = hooks.clock
        self.agent = agent
        self.relays = RelayController(relay_specs(self.appliances))
        self.state = HorizonState()
        self.requests: list[DrRequest] = []
        self.commitments: dict[str, Commitment] = {}
        self.ordered: set[str] = set()
        self.plan: Schedule | None = None
        self.plan_input: PlanInput | None = None
        self.plan_t0: int | None = None
        self.keys: dict[str, str] = {}
        self.commanded: dict[str, dict[int, bool]] = {}  # name -> slot start ms -> on
        # appliances without a relay: name -> slot start ms -> on, as the plan assumed
        self.assumed: dict[str, dict[int, bool]] = {}
        self.reports: list[StepReport] = []
        self._last_step_slot: int | None = None
        self._dirty = True  # something the plan depends on changed: re-plan at the next step
        self._unplanned = False  # the last re-plan failed: the plan in hand is out of date

    # --- inputs that trigger a re-plan -------------------------------------------------------
    def request_demand_response(self, req: DrRequest) -> None:
        self.requests.append(req)
        self._dirty = True

    def set_tariff(self, tariff: Tariff) -> None:
        """New community prices (e.g. from the ledger's ``params``): re-plan at the next step."""
        self.tariff = tariff
        if self.agent is not None:
            self.agent.tariff = tariff
        self._dirty = True

    def add_commitment(self, c: Commitment) -> None:
        self.commitments[c.listing_id] = c
        self._dirty = True

    # --- the slot edge ----------------------------------------------------------------------
    async def step(self) -> StepReport:
        now = self.clock.now_ms()
        t0 = now // SLOT_MS
        # a demand-response request that has ended is dropped (its span is over)
        self.requests = [r for r in self.requests if _end_ms(r) > now]
        report = StepReport(slot_ms=t0 * SLOT_MS)
        await self._read_clearings(report)
        if self._last_step_slot is not None and self._last_step_slot < t0:
            self._record_slot(self._last_step_slot, report)
        self._last_step_slot = t0
        due = self.plan_t0 is None or t0 - self.plan_t0 >= self.config.replan_slots
        if self._dirty or due:
            self._replan(t0, report)
        await self._drive_relays(now, t0, report)
        self._place_orders(now, t0, report)
        self._reconcile(t0, report)
        self.reports.append(report)
        return report

    async def replan_now(self) -> StepReport:
        """Re-plan mid-slot (new request, prices or forecast) without advancing the slot."""
        now = self.clock.now_ms()
        t0 = now // SLOT_MS
        # a demand-response request that has ended is dropped (its span is over)
        self.requests = [r for r in self.requests if _end_ms(r) > now]
        report = StepReport(slot_ms=t0 * SLOT_MS)
        self._replan(t0, report)
        await self._drive_relays(now, t0, report)
        self.reports.append(report)
        return report

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            next_edge = (self.clock.now_ms() // SLOT_MS + 1) * SLOT_MS
            wake = self.relays.next_wakeup_ms()
            while wake is not None and wake < next_edge and not stop.is_set():
                await self.clock.sleep_until(wake)
                await self._drive_relays(self.clock.now_ms(), self.clock.now_ms() // SLOT_MS,
                                         StepReport(slot_ms=wake))
                wake = self.relays.next_wakeup_ms()
            if not stop.is_set():
                await self.clock.sleep_until(next_edge)

    # --- parts ------------------------------------------------------------------------------
    async def _read_clearings(self, report: StepReport) -> None:
        clearing = self.hooks.clearing
        if clearing is None or self.agent is None:
            return
        for lid in sorted(self.ordered - set(self.commitments)):
            try:
                result = await clearing(lid)
                if result is None:
                    continue
                if result.get("state") == "REVEAL":  # a sealed listing: open our order now
                    reveal = self.agent.reveal(lid)
                    if reveal is not None:
                        report.orders.append((reveal.kind,
                                              self.hooks.enqueue_tx(reveal.kind, reveal.body)))
                    continue
                c = self.agent.read_clearing(result)
            except Exception as exc:  # one bad listing never stops the others
                report.errors.append(f"clearing {lid}: {exc}")
                continue
            self.commitments[lid] = c
            report.commitments.append(c)
            self._dirty = True

    def _record_slot(self, slot: int, report: StepReport) -> None:
        if self.plan is None or self.plan_t0 is None:
            return
        pos = slot - self.plan_t0
        if self.plan_input is None or not 0 <= pos < self.plan_input.n:
            return
        by_name = {a.name: a for a in self.appliances}
        ran: dict[str, bool] = {}
        for key, name in self.keys.items():
            # a relay's state belongs to the one occurrence whose window holds the slot: the
            # plan also holds the same appliance's later days, which have not begun
            start, end = occurrence_span(by_name[name], key)
            if not start <= slot < end:
                continue
            planned = bool(self.plan[key][pos])
            if name in self.relays.relays:
                state = self.commanded.get(name, {}).get(slot * SLOT_MS)
                ran[key] = bool(state) if state is not None else planned
            else:
                ran[key] = planned
                self.assumed.setdefault(name, {})[slot * SLOT_MS] = planned
            if ran[key] != planned:
                self._dirty = True  # a relay did not follow the plan: plan from what happened
        advance(self.state, self.appliances, slot, ran)

    def _series(self, meter: str, since: int, until: int) -> tuple[IntArray, BoolArray]:
        """Net import (import - export) per slot of a meter, and which slots were present."""
        n = (until - since) // SLOT_MS
        out = np.zeros(n, dtype=np.int64)
        present = np.zeros(n, dtype=np.bool_)
        for row in self.hooks.interval_history(meter, since, until):
            start = int(row.start_ms)
            i = (start - since) // SLOT_MS
            if 0 <= i < n and start % SLOT_MS == 0:
                out[i] = int(row.import_wh) - int(row.export_wh)
                present[i] = True
        return out, present

    def _forecasts(self, t0: int, report: StepReport) -> tuple[IntArray, IntArray]:
        cfg = self.config
        until = t0 * SLOT_MS
        since = until - cfg.history_days * SLOTS_PER_DAY * SLOT_MS
        try:
            net, have = self._series(cfg.site_meter, since, until)
            if cfg.pv_meter is not None:
                pv_net, have_pv = self._series(cfg.pv_meter, since, until)
                pv = np.maximum(-pv_net, 0)
            else:
                pv, have_pv = np.zeros_like(net), np.ones_like(have)
        except Exception as exc:  # the store is unreadable: plan without history
            report.errors.append(f"history: {exc}")
            net, have = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_)
            pv, have_pv = net.copy(), have.copy()
        load = net + pv
        # the history holds the planned appliances too: take out what they drew, so the
        # forecast is of the rest of the home and the plan does not count them twice. Relay-
        # bound ones drew what their relays were commanded; the others (ours only to plan
        # around) what the plan assumed of them, and before any plan what they draw without an
        # EMS, running from each window's start
        for name, slots in self.commanded.items():
            slot_wh = slot_energy_mwh(self.relays.relays[name].spec.power_w) // 1000
            for slot_start, on in slots.items():
                i = (slot_start - since) // SLOT_MS
                if on and 0 <= i < load.shape[0]:
                    load[i] -= slot_wh
        for records in (*self.commanded.values(), *self.assumed.values()):
            for slot_start in [k for k in records if k < since]:
                del records[slot_start]  # older than any history read: keep memory bounded
        for a in self.appliances:
            if a.name in self.relays.relays or load.shape[0] == 0:
                continue
            drew = uncontrolled_on(a, since // SLOT_MS, load.shape[0])
            for slot_start, was_on in self.assumed.get(a.name, {}).items():
                i = (slot_start - since) // SLOT_MS
                if 0 <= i < load.shape[0]:
                    drew[i] = was_on
            load -= drew.astype(np.int64) * (slot_energy_mwh(a.power_w) // 1000)
        load = np.maximum(load, 0)
        missing = ~(have & have_pv)
        # fill gaps with the same slot a day earlier (or 0 when there is none)
        for gap in np.nonzero(missing)[0]:
            load[gap] = load[gap - SLOTS_PER_DAY] if gap >= SLOTS_PER_DAY else 0
            pv[gap] = pv[gap - SLOTS_PER_DAY] if gap >= SLOTS_PER_DAY else 0
        start = datetime.fromtimestamp(until / 1000, tz=UTC)
        n = cfg.horizon_slots
        if int(missing.sum()) > len(load) // 2:
            report.notes.append("little meter history: forecasting from what there is")
        model: Model = cfg.model if load.shape[0] >= MIN_HISTORY else "naive"
        # a model that cannot train (or an optional one not installed) falls back to the
        # seasonal-naive baseline, which needs only a day: yesterday beats planning with nothing
        for m in dict.fromkeys((model, "naive")):
            try:
                return (forecast(load, start, n, m).astype(np.int64),
                        forecast(pv, start, n, m).astype(np.int64))
            except ForecastError as exc:
                report.notes.append(f"no {m} forecast ({exc})")
        report.notes.append("planning with zero load and PV")
        zero = np.zeros(n, dtype=np.int64)
        return zero, zero.copy()

    def _replan(self, t0: int, report: StepReport) -> None:
        base, pv = self._forecasts(t0, report)
        prices = self._expected_prices(t0)
        try:
            inp, keys, notes = horizon_input(
                self.appliances, t0, base, pv, self.tariff, self.state,
                limit_w=self.config.limit_w, requests=self.requests,
                commitments=self.commitments, community_price=prices)
            report.notes.extend(notes)
            try:
                sol = solve(inp)
            except PlanError as exc:
                # the limits (a demand-response request, the contracted power) leave no room
                # for every job: serve what fits and say what is shed, rather than keep
                # driving the loads by a plan made before the limit
                report.errors.append(f"plan: {exc}")
                shed = solve_shedding(inp)
                report.notes.extend(shed.notes)
                sol, inp = shed.solution, shed.inp
        except PlanError as exc:
            report.errors.append(f"plan: {exc}")
            self._unplanned = True
            return
        self._unplanned = False
        self._dirty = False
        self.plan, self.plan_input, self.plan_t0, self.keys = sol.schedule, inp, t0, keys
        report.planned = True
        report.cost_utok = evaluate(inp, sol.schedule).cost_utok

    def _expected_prices(self, t0: int) -> dict[str, int]:
        if self.agent is None:
            return {}
        groups = self.config.horizon_slots // SLOTS_PER_HOUR + 1
        out = {}
        for lid in group_listing_ids(t0, groups):
            out[lid] = self.agent.expected_price(int(lid[-2:]))
        return out

    def _desired(self, t0: int) -> dict[str, bool]:
        if self.plan is None or self.plan_t0 is None or self.plan_input is None:
            return {}
        pos = t0 - self.plan_t0
        if not 0 <= pos < self.plan_input.n:
            return {}
        desired = {name: False for name in self.relays.relays}
        for key, name in self.keys.items():
            if name in desired and bool(self.plan[key][pos]):
                desired[name] = True
        if self._unplanned and self._requested(t0 * SLOT_MS):
            # no plan honours the request (not even by shedding): the plan in hand predates
            # it, so it may not switch flexible loads on while the request lasts
            for a in self.appliances:
                if a.flexible and a.name in desired:
                    desired[a.name] = False
        return desired

    def _requested(self, ms: int) -> bool:
        """Whether a demand-response request covers the instant ``ms``."""
        for req in self.requests:
            s = dt_to_ms(req.start if req.start.tzinfo else req.start.replace(tzinfo=UTC))
            e = dt_to_ms(req.end if req.end.tzinfo else req.end.replace(tzinfo=UTC))
            if s <= ms < e:
                return True
        return False

    async def _drive_relays(self, now: int, t0: int, report: StepReport) -> None:
        commands = self.relays.step(now, self._desired(t0))
        report.deferred.update(self.relays.deferred)
        results = await asyncio.gather(*(self._send(c) for c in commands))
        for cmd, status in zip(commands, results, strict=True):
            if status is None:
                self.relays.on_failure(cmd, self.clock.now_ms())
            else:
                self.relays.on_ack(cmd, status, self.clock.now_ms())
            report.commands.append((cmd.name, cmd.on, status))
        for name in self.relays.relays:
            state = self.relays.state(name)
            if state is not None:
                self.commanded.setdefault(name, {})[t0 * SLOT_MS] = state

    async def _send(self, cmd: RelayCommand) -> int | None:
        try:
            async with asyncio.timeout(self.config.relay_timeout_s):
                status = await self.hooks.send_relay(cmd.node_id, cmd.relay, cmd.on)
        except Exception:  # a dead node or link: unknown state, retried at the next step
            return None
        return status if isinstance(status, int) else frame.S_REPLAY

    def _place_orders(self, now: int, t0: int, report: StepReport) -> None:
        if (self.agent is None or self.plan is None or self.plan_input is None
                or self.plan_t0 is None):
            return
        nets = hourly_net_wh(self.plan_input, self.plan)
        ids = group_listing_ids(self.plan_t0, len(nets))
        for g, lid in enumerate(ids):
            hour_start = (self.plan_t0 // SLOTS_PER_HOUR + g) * SLOTS_PER_HOUR * SLOT_MS
            if lid in self.ordered or not hour_start - self.config.order_lead_ms <= now:
                continue
            if now >= hour_start or int((self.plan_input.group == g).sum()) < SLOTS_PER_HOUR:
                continue  # too late for this hour, or the hour is not wholly in the plan
            order = self.agent.decide(lid, nets[g])
            self.ordered.add(lid)
            if order is None:
                continue
            try:
                outbox_id = self.hooks.enqueue_tx(order.kind, order.body)
            except Exception as exc:
                self.ordered.discard(lid)
                report.errors.append(f"order {lid}: {exc}")
                continue
            report.orders.append((order.kind, outbox_id))

    def _reconcile(self, t0: int, report: StepReport) -> None:
        prev = (t0 - 1) * SLOT_MS
        for name, r in self.relays.relays.items():
            meter = r.spec.meter
            commanded = self.commanded.get(name, {})
            if meter is None or prev not in commanded:
                continue
            try:
                rows = self.hooks.interval_history(meter, prev, prev + SLOT_MS)
            except Exception as exc:
                report.errors.append(f"history {meter}: {exc}")
                continue
            measured = {int(row.start_ms): int(row.import_wh) for row in rows}
            report.mismatches.extend(
                reconcile(name, r.spec.power_w, {prev: commanded[prev]}, measured))


def _end_ms(req: DrRequest) -> int:
    return dt_to_ms(req.end if req.end.tzinfo else req.end.replace(tzinfo=UTC))
