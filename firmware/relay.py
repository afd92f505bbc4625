# A relay with a safe boot state, minimum on/off times and an over-current trip.
#
# Times are ticks_ms values from the HAL's clock, passed in by the caller (node.py), so tests drive
# them. Ticks wrap (2**30 ms on the ESP32), so they are only compared through hal.ticks_diff, and
# a minimum time once over is remembered as over (changed = None): ticks_diff of a switch older
# than half the tick period (about 6.2 days) would alias and make the relay wait again.
# Boot counts as a switching event: after a power cut a compressor still waits its minimum off
# time. A refused switch because of the minimum time is remembered and done when the time is up.
# The trip switches off at once (safety beats the minimum on time) and locks the relay out until
# an authenticated OFF command acknowledges it. The node keeps the lockout in its store, so a relay
# that boots locked out stays off (boot_on too) until that OFF.
import frame


class Relay:
    def __init__(self, hal, pin, active_high=True, boot_on=False, min_on_ms=0, min_off_ms=0,
                 trip_ma=0, channel=0, now=0, tripped=False):
        self.hal = hal
        if tripped:
            boot_on = False
        self.out = hal.Output(pin, active_high, boot_on)
        self.on = bool(boot_on)
        self.min_on = min_on_ms
        self.min_off = min_off_ms
        self.trip_ma = trip_ma
        self.channel = channel
        self.changed = now
        self.pending = None
        self.tripped = bool(tripped)
        self.trip_seen = False  # a trip happened since the last reading frame
        self.switches = 0

    def _switch(self, on, now):
        self.out.set(on)
        self.on = on
        self.changed = now
        self.switches += 1

    def _wait(self, now):
        """ms until a switch is allowed (<= 0: allowed now)."""
        if self.changed is None:
            return 0
        w = (self.min_on if self.on else self.min_off) - self.hal.ticks_diff(now, self.changed)
        if w <= 0:
            self.changed = None
        return w

    def command(self, action, now):
        """Apply an authenticated command; returns a frame.S_* status."""
        if action == frame.A_TOGGLE:
            want = not (self.on if self.pending is None else self.pending)  # toggles the target
        else:
            want = action == frame.A_ON
        if self.tripped:
            if want:
                return frame.S_TRIPPED
            self.tripped = False  # OFF acknowledges the trip; the relay is already off
        if want == self.on:
            self.pending = None
            return frame.S_OK
        if self._wait(now) > 0:
            self.pending = want
            return frame.S_MIN_TIME
        self.pending = None
        self._switch(want, now)
        return frame.S_OK

    def tick(self, now):
        """Carry out a switch deferred by the minimum time, once it has elapsed.

        Called every pass of the loop, also with nothing pending, so that an elapsed minimum
        time is noted well before the switch time could alias."""
        if self._wait(now) <= 0 and self.pending is not None:
            want = self.pending
            self.pending = None
            if want != self.on:
                self._switch(want, now)

    def check_current(self, current_ma, now):
        """Trip (switch off and lock out) when the measured current exceeds the limit."""
        if self.trip_ma and self.on and current_ma > self.trip_ma:
            self.pending = None
            self._switch(False, now)
            self.tripped = True
            self.trip_seen = True
            return True
        return False
