"""Relay rules on the VM, one step at a time on a driven clock: the table of expected outcomes
is written out here, independent of the code."""

from __future__ import annotations

from firmware import frame
from tools import mpvm

ON, OFF, TOG = frame.A_ON, frame.A_OFF, frame.A_TOGGLE
OK, MIN, TRIP = frame.S_OK, frame.S_MIN_TIME, frame.S_TRIPPED

# (time ms, event, argument, expected status or None, relay on after the event)
# min on 10 s, min off 5 s, trip above 8000 mA, boot at t=0 in the off state
STEPS = [
    (0, "cmd", ON, MIN, False),  # boot counts as a switch: off for 5 s first
    (4999, "tick", None, None, False),
    (5000, "tick", None, None, True),  # the deferred ON happens at expiry
    (6000, "cmd", OFF, MIN, True),  # min on time: OFF deferred
    (7000, "cmd", TOG, OK, True),  # toggle flips the pending OFF back to ON: nothing pending
    (16000, "tick", None, None, True),  # and so nothing happens at expiry
    (16000, "cmd", TOG, OK, False),  # min on elapsed: toggle switches off now
    (17000, "cmd", TOG, MIN, False),  # min off not elapsed: ON deferred
    (17500, "cmd", TOG, OK, False),  # toggle again: target back to off, nothing pending
    (30000, "tick", None, None, False),
    (30000, "cmd", ON, OK, True),
    (31000, "amps", 7999, None, True),  # at the limit: no trip
    (32000, "amps", 8001, None, False),  # over: off at once despite the min on time
    (33000, "cmd", ON, TRIP, False),  # locked out
    (33000, "cmd", TOG, TRIP, False),
    (34000, "cmd", OFF, OK, False),  # acknowledges the trip
    (36000, "cmd", ON, MIN, False),  # min off counts from the trip
    (37000, "tick", None, None, True),
    (38000, "amps", 9000, None, False),
]

SCRIPT = """
import hal_host as hal, relay
r = relay.Relay(hal, 26, False, False, 10000, 5000, 8000, 0, 0)
out = [hal.pins[26]]
for t, ev, arg in STEPS:
    st = None
    if ev == 'cmd':
        st = r.command(arg, t)
    elif ev == 'tick':
        r.tick(t)
    else:
        r.check_current(arg, t)
    out.append([st, r.on, hal.pins[26]])
emit(out)
"""


def test_relay_rules_step_by_step() -> None:
    steps = [(t, ev, arg) for t, ev, arg, _s, _on in STEPS]
    out = mpvm.run_job(f"STEPS = {steps!r}\n" + SCRIPT).results[0]
    assert out[0] == 1  # active-low board: off at boot means the pin is high
    for (t, ev, _arg, status, on), (got_status, got_on, pin) in zip(STEPS, out[1:], strict=True):
        assert (got_status, got_on) == (status, on), (t, ev)
        assert pin == (0 if on else 1)


WRAP_SCRIPT = """
import hal_host as hal, relay
P = hal.TICKS_PERIOD
out = []
# booted 2 s before ticks_ms wraps, min off 5 s: the deferred ON falls 3 s after the wrap
r = relay.Relay(hal, 26, False, False, 10000, 5000, 8000, 0, P - 2000)
out.append(r.command(ON, P - 1000))
r.tick(2999)
out.append(r.on)
r.tick(3000)
out.append(r.on)
# idle for longer than half the tick period (about 6.2 days) with the loop ticking: a switch
# that old is not "recent" again when ticks_diff aliases
r2 = relay.Relay(hal, 27, False, False, 10000, 5000, 8000, 0, 0)
t = 0
while t < P // 2 + 60000:
    r2.tick(t % P)
    t += 3600000
out.append(r2.command(ON, t % P))
emit(out)
"""


def test_minimum_times_across_the_ticks_wrap_and_after_a_long_idle() -> None:
    out = mpvm.run_job(f"ON = {ON}\n" + WRAP_SCRIPT).results[0]
    assert out == [MIN, False, True, OK]
