# HLW8012 / BL0937 plug metering chip: pulse frequencies on CF (active power) and CF1 (current or
# voltage, chosen by the SEL pin), counted by pin interrupts in the HAL's PulseCounter.
#
# CF is measured across windows: the period runs from the last edge seen in an earlier window to
# the last edge of this one. At 12.53 W/Hz a 10 W load makes 0.8 edges a second, so a window of
# one second often holds a single edge or none; counting within one window (two edges needed, the
# count reset every window) read such a load as 0 W and counted none of its energy. A window with
# no edge can only lower the reading (no edge for longer than a period means a lower frequency),
# and CF silent for NO_PULSE_MS is no load. SEL alternates each window, so CF1 is measured within
# its window: the window right after a switch belongs wholly to the newly selected quantity.
# Scale factors (W, A and V per Hz) are per board and calibrated per plug.

NO_PULSE_MS = 10000  # CF silent this long: no load (the floor is w_per_hz / 10 s, 1.25 W)


def freq(snapshot, ticks_diff):
    """Hz from (edges, first, last edge in ticks_us) within one window; 0 below two edges."""
    n, first, last = snapshot
    if n < 2:
        return 0.0
    span = ticks_diff(last, first)
    if span <= 0:
        return 0.0
    return (n - 1) * 1000000 / span


class CrossWindow:
    """The frequency of a pulse train measured from edge to edge across window boundaries."""

    def __init__(self, hal, silence_ms):
        self.hal = hal
        self.silence_us = silence_ms * 1000
        self.last = None  # ticks_us of the newest edge, forgotten after the silence
        self.f = 0.0

    def update(self, snapshot, now_us):
        n, first, last = snapshot
        d = self.hal.ticks_diff
        if n:
            if self.last is not None:
                edges, span = n, d(last, self.last)
            else:
                edges, span = n - 1, d(last, first)
            if edges > 0 and span > 0:
                self.f = edges * 1000000 / span
            self.last = last
        elif self.last is not None:
            quiet = d(now_us, self.last)
            if quiet > self.silence_us:
                # no load; the edge is dropped too, before its tick could alias (ticks_us wraps
                # every 2**30 us, about 18 minutes on the ESP32)
                self.f = 0.0
                self.last = None
            elif quiet * self.f > 1000000:
                self.f = 1000000 / quiet  # more than a period without an edge: at most 1/quiet
        return self.f


class Hlw8012:
    def __init__(self, hal, cf_pin, cf1_pin, sel_pin, w_per_hz, a_per_hz, v_per_hz,
                 sel_current_high=True):
        self.hal = hal
        self.cf = hal.PulseCounter(cf_pin)
        self.cf1 = hal.PulseCounter(cf1_pin)
        self.sel = hal.Output(sel_pin, True, sel_current_high)
        self.sel_current_high = sel_current_high
        self.current_mode = True
        self.k_w = w_per_hz
        self.k_a = a_per_hz
        self.k_v = v_per_hz
        self.cf_freq = CrossWindow(hal, NO_PULSE_MS)
        self.power = 0.0
        self.irms = 0.0
        self.vrms = 0.0

    def measure(self):
        """(vrms, irms, power W, apparent VA, pf) from the pulses since the last call."""
        self.power = self.k_w * self.cf_freq.update(self.cf.snapshot(), self.hal.ticks_us())
        f1 = freq(self.cf1.snapshot(), self.hal.ticks_diff)
        if self.current_mode:
            self.irms = self.k_a * f1
            if f1 == 0.0 and self.power > 0.0 and self.vrms > 0.0:
                # Below about 7 W CF1 makes fewer than two edges in a window: take the least
                # current the real power needs (PF 1) rather than none.
                self.irms = self.power / self.vrms
        else:
            self.vrms = self.k_v * f1
        self.current_mode = not self.current_mode
        self.sel.set(self.current_mode == self.sel_current_high)
        if self.power == 0.0:
            self.irms = 0.0
        s = self.vrms * self.irms
        pf = self.power / s if s > 0 else 0.0
        if pf > 1.0:
            pf = 1.0
        return self.vrms, self.irms, self.power, s, pf
