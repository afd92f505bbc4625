# HLW8012 / BL0937 plug metering chip: pulse frequencies on CF (active power) and CF1 (current or
# voltage, chosen by the SEL pin), counted by pin interrupts in the HAL's PulseCounter.
#
# Frequency is measured from the span between the first and last edge of a window, not from the
# count alone, so a low load with a few pulses a second still reads well. SEL alternates each
# window; the CF1 window right after a switch belongs wholly to the newly selected quantity.
# Scale factors (W, A and V per Hz) are per board and calibrated per plug.

NO_PULSE_MS = 5000  # CF silent this long: no load


def freq(snapshot):
    """Hz from (edges, first us, last us); 0 when fewer than two edges were seen."""
    n, first, last = snapshot
    if n < 2 or last <= first:
        return 0.0
    return (n - 1) * 1000000 / (last - first)


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
        self.power = 0.0
        self.irms = 0.0
        self.vrms = 0.0
        self.last_pulse = hal.ticks_ms()

    def measure(self):
        """(vrms, irms, power W, apparent VA, pf) from the pulses since the last call."""
        now = self.hal.ticks_ms()
        f = freq(self.cf.snapshot())
        if f > 0:
            self.power = self.k_w * f
            self.last_pulse = now
        elif now - self.last_pulse > NO_PULSE_MS:
            self.power = 0.0
        f1 = freq(self.cf1.snapshot())
        if self.current_mode:
            self.irms = self.k_a * f1
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
