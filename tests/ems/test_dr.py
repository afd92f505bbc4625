import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import frame
from gateway.ems.appliances import table8
from gateway.ems.dr import (
    RETRY_MAX_MS,
    RETRY_MS,
    MismatchKind,
    RelayController,
    RelayHealth,
    RelaySpec,
    reconcile,
    relay_specs,
)
from gateway.ems.timegrid import SLOT_MS

MIN = 60_000


def controller(min_on=30 * MIN, min_off=15 * MIN):
    return RelayController([RelaySpec("ev", 7, 0, 3650, min_on, min_off, "plug-ev"),
                            RelaySpec("heater", 7, 1, 1500, min_on, min_off, None)])


def ack_all(c, cmds, now, status=frame.S_OK):
    for cmd in cmds:
        c.on_ack(cmd, status, now)


def test_first_command_then_minimum_on_time_defers_switching_off():
    c = controller()
    cmds = c.step(0, {"ev": True, "heater": False})
    assert [(x.name, x.node_id, x.relay, x.on) for x in cmds] == [
        ("ev", 7, 0, True), ("heater", 7, 1, False)]
    ack_all(c, cmds, 0)
    assert c.step(SLOT_MS, {"ev": False, "heater": False}) == []
    assert c.deferred == {"ev": 30 * MIN}
    assert c.next_wakeup_ms() == 30 * MIN
    cmds = c.step(30 * MIN, {"ev": False, "heater": False})
    assert [(x.name, x.on) for x in cmds] == [("ev", False)]
    ack_all(c, cmds, 30 * MIN)
    # and the minimum off time before switching back on
    assert c.step(40 * MIN, {"ev": True}) == [] and c.deferred == {"ev": 45 * MIN}
    assert c.step(45 * MIN, {"ev": True})[0].on is True


def test_no_duplicate_command_while_one_is_in_flight():
    c = controller()
    assert len(c.step(0, {"ev": True})) == 1
    assert c.step(1, {"ev": True}) == []  # no ack yet


def test_faults_are_isolated_per_relay():
    c = controller()
    cmds = c.step(0, {"ev": True, "heater": True})
    ev, heater = cmds
    c.on_ack(ev, frame.S_TRIPPED, 0)
    c.on_failure(heater, 0)
    assert c.health("ev") is RelayHealth.TRIPPED and c.state("ev") is False
    assert c.state("heater") is None
    retry = c.step(SLOT_MS, {"ev": True, "heater": True})
    assert [x.name for x in retry] == ["heater"]  # the tripped relay is left alone
    c.on_ack(retry[0], frame.S_BAD_RELAY, SLOT_MS)
    assert c.step(2 * SLOT_MS, {"ev": True, "heater": True}) == []
    c.reset("ev")
    assert [x.name for x in c.step(3 * SLOT_MS, {"ev": True})] == ["ev"]


def test_node_minimum_time_refusal_is_retried_later():
    c = controller()
    (cmd,) = c.step(0, {"ev": True})
    c.on_ack(cmd, frame.S_MIN_TIME, 0, state_after=False)
    assert c.state("ev") is False
    assert c.step(MIN, {"ev": True}) == []  # our own off timer restarted at the refusal
    assert c.step(15 * MIN, {"ev": True})[0].on


def test_duplicate_bindings_are_refused():
    with pytest.raises(ValueError, match="bound twice"):
        RelayController([RelaySpec("a", 1, 0, 1, 1, 1), RelaySpec("b", 1, 0, 1, 1, 1)])


def test_relay_specs_come_from_bound_appliances():
    apps, _ = table8("widen")
    assert relay_specs(apps) == []  # Table 8 binds no relays
    from dataclasses import replace
    bound = [replace(apps[1], node=3, relay=0, meter="plug-ev")]
    (spec,) = relay_specs(bound)
    assert (spec.node_id, spec.relay, spec.min_on_ms, spec.min_off_ms) == (3, 0, 30 * MIN,
                                                                           15 * MIN)


def test_reconcile_flags_what_the_meter_contradicts():
    slots = [i * SLOT_MS for i in range(5)]
    commanded = dict(zip(slots, [True, True, False, False, True], strict=True))
    measured = {slots[0]: 910, slots[1]: 40, slots[2]: 3, slots[3]: 600}  # slot 4 missing
    out = reconcile("ev", 3650, commanded, measured)
    assert [(m.start_ms, m.kind) for m in out] == [
        (slots[1], MismatchKind.NO_DRAW), (slots[3], MismatchKind.DRAW_WHILE_OFF)]
    over = reconcile("ev", 3650, {0: True}, {0: 2000})
    assert over[0].kind is MismatchKind.OVERDRAW and over[0].expected_wh == 912


@settings(max_examples=100, deadline=None)
@given(plan=st.lists(st.booleans(), min_size=1, max_size=60),
       statuses=st.lists(st.sampled_from([frame.S_OK] * 6 + [frame.S_MIN_TIME, frame.S_REPLAY]),
                         min_size=60, max_size=60),
       min_on=st.integers(1, 4), min_off=st.integers(1, 4))
def test_relays_never_switch_inside_their_minimum_times(plan, statuses, min_on, min_off):
    """Any plan, any mix of refusals: the confirmed state never changes sooner than allowed."""
    c = RelayController([RelaySpec("x", 1, 0, 1000, min_on * SLOT_MS, min_off * SLOT_MS)])
    last_change = None
    state = None
    for t, want in enumerate(plan):
        now = t * SLOT_MS
        for cmd in c.step(now, {"x": want}):
            c.on_ack(cmd, statuses[t], now)
        new = c.state("x")
        if state is not None and new is not state:
            held = now - last_change
            assert held >= (min_on if state else min_off) * SLOT_MS
        if new is not state:
            last_change = now
            state = new


def test_a_command_without_answer_is_sent_again_soon_with_backoff():
    """No ack (the broker link not up yet, a node off for a moment): the command goes again
    after RETRY_MS, then twice as long, not only at the next slot edge."""
    c = controller()
    (cmd,) = c.step(0, {"ev": True})
    c.on_failure(cmd, 0)
    assert c.next_wakeup_ms() == RETRY_MS  # the adapter wakes up for it
    assert c.step(RETRY_MS - 1, {"ev": True}) == []
    assert c.next_wakeup_ms() == RETRY_MS
    (again,) = c.step(RETRY_MS, {"ev": True})
    c.on_ack(again, frame.S_REPLAY, RETRY_MS)  # refused as a replay: not final either
    assert c.step(RETRY_MS + 2 * RETRY_MS - 1, {"ev": True}) == []
    (third,) = c.step(3 * RETRY_MS, {"ev": True})
    c.on_ack(third, frame.S_OK, 3 * RETRY_MS)
    assert c.state("ev") is True and c.next_wakeup_ms() is None
    for n in range(12):  # the wait stops growing at RETRY_MAX_MS
        (cmd,) = c.step(10**9 * (n + 1), {"ev": False})
        c.on_failure(cmd, 10**9 * (n + 1))
    assert c.relays["ev"].retry_at == 10**9 * 12 + RETRY_MAX_MS
