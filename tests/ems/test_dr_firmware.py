"""The relay controller's commands replayed on the node firmware's relay (firmware/relay.py) in
the MicroPython VM: with the node's own minimum times configured, the node never has to refuse
or defer a command the gateway sends."""

from __future__ import annotations

from firmware import frame
from gateway.ems.dr import RelayController, RelaySpec
from gateway.ems.timegrid import SLOT_MS
from tools import mpvm

MIN = 60_000
NODE_MIN_ON, NODE_MIN_OFF = 30 * MIN, 45 * MIN
# a plan that wants to switch far more often than the relay may
PLAN = [True, False, True, True, False, True, False, False, False, True, False, True, True,
        True, False, False, True, False, True, False, True, True, False, False, True, False]

SCRIPT = """
import hal_host as hal, relay
r = relay.Relay(hal, 26, True, False, MIN_ON, MIN_OFF, 0, 0, -10000000)
out = []
for t, action in CMDS:
    r.tick(t)
    out.append([r.command(action, t), r.on])
emit(out)
"""


def commands(min_on_ms: int, min_off_ms: int) -> list[tuple[int, int]]:
    """What the controller sends for PLAN, at slot edges and at its deferred wake-ups, with every
    command acknowledged as the node would if it agrees."""
    c = RelayController([RelaySpec("heater", 5, 0, 1500, min_on_ms, min_off_ms)])
    sent: list[tuple[int, int]] = []
    times = sorted({i * SLOT_MS for i in range(len(PLAN))})
    t_index = 0
    while t_index < len(times):
        now = times[t_index]
        want = PLAN[min(now // SLOT_MS, len(PLAN) - 1)]
        for cmd in c.step(now, {"heater": want}):
            sent.append((now, frame.A_ON if cmd.on else frame.A_OFF))
            c.on_ack(cmd, frame.S_OK, now)
        wake = c.next_wakeup_ms()
        if wake is not None and wake not in times:
            times = sorted({*times, wake})
        t_index += 1
    return sent


def replay(cmds: list[tuple[int, int]]) -> list[list[int]]:
    script = f"CMDS = {cmds!r}\nMIN_ON = {NODE_MIN_ON}\nMIN_OFF = {NODE_MIN_OFF}\n" + SCRIPT
    out: list[list[int]] = mpvm.run_job(script).results[0]
    return out


def test_the_node_accepts_every_command_when_minimum_times_agree():
    cmds = commands(NODE_MIN_ON, NODE_MIN_OFF)
    assert len(cmds) >= 6  # the plan really makes the relay work
    for (t, action), (status, on) in zip(cmds, replay(cmds), strict=True):
        assert status == frame.S_OK, f"node refused at {t // MIN} min"
        assert bool(on) == (action == frame.A_ON)


def test_a_gateway_that_ignores_the_minimum_times_is_refused_by_the_node():
    """The same check catches a controller whose minimum times are too short."""
    cmds = commands(SLOT_MS, SLOT_MS)
    statuses = [status for status, _ in replay(cmds)]
    assert frame.S_MIN_TIME in statuses
