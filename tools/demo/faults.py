"""``wattmesh demo --faults``: what goes wrong, when, and how each part recovers.

Five faults, each inside a delivery hour on the simulated clock: a replica killed with SIGKILL
and restarted (it catches up from its store and its peers), a meter that stops answering Modbus
requests for a while, a plug's BLE link dropped, the whole ledger stopped and restarted while
the gateways' outboxes hold what they could not deliver, and a prosumer whose gateway
over-reports its export for a night hour (``tools.demo.feeder``: the feeder meter catches
it). Each fault is recorded with its time and
its recovery, and noted on the hour line it hit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.ems.timegrid import SLOT_MS, SLOTS_PER_HOUR
from tools.demo.day import DemoDay
from tools.demo.feeder import Liar
from tools.demo.ledger_port import ClusterLedger
from tools.demo.record import Fault

HOUR_MS = SLOT_MS * SLOTS_PER_HOUR
FaultAction = Callable[[int], Awaitable[None]]


def plan_faults(run: DemoDay) -> list[tuple[int, FaultAction]]:
    """Four faults spread over the run, each inside a delivery hour (simulated times)."""
    hours = run.opts.hours
    at = [run.day0_ms + h * HOUR_MS for h in (hours // 4, hours // 2, (3 * hours) // 4)]
    victim = 1  # a backup replica; the primary of view 0 is replica 0
    home = run.edges[min(1, len(run.edges) - 1)]
    ledger = run.ledger
    assert isinstance(ledger, ClusterLedger)
    faults: dict[str, Fault] = {}

    def fault(kind: str, t: int, detail: str) -> Fault:
        f = Fault(kind, (t - run.day0_ms) // HOUR_MS, run.sim_label(t), detail)
        run.record.faults.append(f)
        faults[kind] = f
        run.hour_notes.setdefault(f.hour_index, []).append(kind)
        return f

    async def kill(t: int) -> None:
        ledger.kill_replica(victim)
        fault("replica killed", t, f"replica {victim} killed with SIGKILL")

    async def restart(t: int) -> None:
        ledger.start_replica(victim)
        await ledger.wait_up([victim])
        faults["replica killed"].recovered = (
            f"restarted at {run.sim_label(t)}; it caught up from its SQLite store and "
            "its peers")

    async def silence(t: int) -> None:
        home.silence(True)
        fault("meter silenced", t, f"{home.meter_id} stopped answering Modbus requests")

    async def unsilence(t: int) -> None:
        home.silence(False)
        faults["meter silenced"].recovered = (
            f"answering again at {run.sim_label(t)}; the intervals it missed were reported "
            "as missing and the energy of the gap counted when it answered (flags gap)")

    # a plug whose relay the EMS switches, if any home has one: its commands must survive
    switched = [(e, p) for e in run.edges for p in e.plugs if p.appliance in run.relay_names(e)]
    anyplug = [(e, p) for e in run.edges for p in e.plugs]
    candidates = switched or anyplug
    plug_home, plug = candidates[0] if candidates else (None, None)

    async def drop_ble(t: int) -> None:
        if plug_home is None or plug is None:
            fault("BLE link dropped", t, "skipped: no home has a BLE plug")
            return
        await plug.emulator.drop_link()
        f = fault("BLE link dropped", t,
                  f"plug {plug.node_id} ({plug.appliance}, {plug_home.id_grid}) disconnected")
        await run.wait_for(lambda: not plug_home.ble_ready([plug.node_id]), 2.0,
                            "BLE drop seen")
        back = await run.wait_for(lambda: plug_home.ble_ready([plug.node_id]), 10.0,
                                   "BLE reconnect")
        f.recovered = ("the gateway reconnected through bleak and resubscribed" if back
                       else "the plug did not reconnect within 10 s")

    async def stop_ledger(t: int) -> None:
        ledger.stop_all()
        run.ledger_down = True
        fault("ledger stopped", t, "all 4 replicas stopped; reports wait in the outboxes")

    async def start_ledger(t: int) -> None:
        await ledger.start_all()
        run.ledger_down = False
        queued = sum(e.pending() for e in run.edges)
        faults["ledger stopped"].recovered = (
            f"restarted at {run.sim_label(t)}; the {queued} reports queued meanwhile "
            "are delivered from the outboxes")

    # a prosumer whose gateway lies about one night hour (the first eighth of the run)
    sellers = [(e, h) for e, h in zip(run.edges, run.homes, strict=True) if h.pv_w]
    lie_k = hours // 8

    async def over_report(t: int) -> None:
        if not sellers:
            fault("over-reporting gateway", t, "skipped: no home has PV")
            return
        edge, home = sellers[-1]
        run.liar = Liar(home.id_grid, edge.meter_id, run.meter_keys[home.id_grid], home.pv_w,
                        run.listing(lie_k)[0])
        edge.deliverer.tamper = run.liar.tamper
        fault("over-reporting gateway", t,
              f"{home.id_grid}'s gateway claims its {home.pv_w} W inverter exported at full "
              f"power all of {run.liar.hour} (re-signing its own reports)")

    # Minutes into each fault's hour; in runs under 4 hours the hours coincide, so the
    # faults then follow one another instead of overlapping.
    m = (10, 55, 10, 50, 25, 20, 45) if hours >= 4 else (5, 15, 20, 35, 25, 40, 50)
    minute = 60_000
    plan = [
        (run.day0_ms + lie_k * HOUR_MS, over_report),
        (at[0] + m[0] * minute, kill), (at[0] + m[1] * minute, restart),
        (at[1] + m[2] * minute, silence), (at[1] + m[3] * minute, unsilence),
        (at[1] + m[4] * minute, drop_ble),
        (at[2] + m[5] * minute, stop_ledger), (at[2] + m[6] * minute, start_ledger),
    ]
    return sorted(plan, key=lambda p: p[0])
