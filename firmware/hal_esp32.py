# The real HAL: the same names as hal_host, over MicroPython's `machine` on an ESP32.
#
# Everything above the HAL (ct, hlw8012, cse7766, pzem, relay, store, node) gets one of these two
# modules passed in and uses only the names both define.
import time

import machine

# The ADC's usable window at 11 dB, in mV: the values and their source are in hal_host, which
# emulates the window (a test keeps the two HALs equal). Readings at or beyond these are outside
# the calibrated range, and ct.py flags the window that holds them.
ADC_MIN_MV = 150
ADC_MAX_MV = 2450

ticks_us = time.ticks_us
ticks_ms = time.ticks_ms
ticks_diff = time.ticks_diff
ticks_add = time.ticks_add
sleep_ms = time.sleep_ms


FIT_READS = 256  # read_uv() readings that find a pin's calibration line at start
FIT_SPREAD = 64  # codes (standard deviation) of input a two-parameter fit needs


class Adc:
    """An ADC1 pin at 11 dB attenuation, 12-bit: raw codes (read) and the line of the eFuse
    calibration that read_uv() applies (line), found once at start.

    The sampling loop reads raw codes and ct.py applies the line once per window to its sums:
    read_uv() would round every 0.8 mV code to whole mV, a ripple that noise of a couple of codes
    does not smooth out and that reads 1-2 % wrong at 1 % of range. ESP-IDF's calibration is a
    straight line over the usable window at 11 dB (its lookup-table correction starts above
    it), and MicroPython exposes no call that returns it, so it is measured here: read_uv()
    between two raw reads, against their mean, by least squares. An input that hardly moves (an
    idle clamp at start) cannot separate gain from offset: then the line goes through 0, as the
    eFuse-Vref and default-Vref characterisations do.
    """

    def __init__(self, pin):
        self.pin = pin
        self.adc = machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)
        self.adc.width(machine.ADC.WIDTH_12BIT)
        self._line = self._fit()

    def read_mv(self):
        return self.adc.read_uv() // 1000

    def line(self):
        """(mv_per_code, mv_at_code_0): the calibration line from raw codes to mV."""
        return self._line

    def _fit(self):
        r = self.adc.read
        ruv = self.adc.read_uv
        sx = sy = sxx = sxy = 0.0
        for _ in range(FIT_READS):
            a = r()
            y = ruv() / 1000
            x = (a + r()) / 2
            sx += x
            sy += y
            sxx += x * x
            sxy += x * y
        m = FIT_READS
        mx = sx / m
        var = sxx / m - mx * mx
        if var >= FIT_SPREAD * FIT_SPREAD:
            g = (sxy / m - mx * sy / m) / var
            return g, sy / m - g * mx
        return (sy / sx if sx > 0 else 3300 / 4096), 0.0


LAG_READS = 4  # voltage reads timed before each window: the lag of the current read after it


def sample(adc_v, adc_i, buf_v, buf_i, n, period_us):
    """Fill buf_v/buf_i with n raw 12-bit codes period_us apart: voltage first, then current.

    Returns (lag_us, span_us, late): the current read's lag after the voltage read (the time one
    voltage read and its store take, timed over LAG_READS reads before the window), the time the
    n samples took (span_us / n is the period the loop achieved) and how many samples found their
    time already past (the loop fell behind: an interrupt, or a period the chip cannot hold).
    A busy-wait on ticks_us paces the loop: a Timer callback every 500 us would be scheduled, not
    run at once, and jitter more than this loop. Nothing here allocates but the returned tuple.
    """
    ri = adc_i.adc.read
    rv = adc_v.adc.read if adc_v is not None else None
    ticks_us = time.ticks_us
    diff = time.ticks_diff
    lag = 0.0
    if rv is not None:
        t = ticks_us()
        for k in range(LAG_READS):
            buf_v[k] = rv()
        lag = diff(ticks_us(), t) / LAG_READS
    late = 0
    t0 = t = ticks_us()
    for k in range(n):
        if rv is not None:
            buf_v[k] = rv()
        buf_i[k] = ri()
        t = time.ticks_add(t, period_us)
        if diff(t, ticks_us()) <= 0:
            late += 1
        while diff(t, ticks_us()) > 0:
            pass
    return lag, diff(ticks_us(), t0), late


class Output:
    def __init__(self, pin, active_high=True, on=False):
        self.active_high = active_high
        level = 1 if bool(on) == bool(active_high) else 0
        self.pin = machine.Pin(pin, machine.Pin.OUT, value=level)

    def set(self, on):
        self.pin.value(1 if bool(on) == bool(self.active_high) else 0)


class PulseCounter:
    """Rising edges counted by a pin interrupt: snapshot() -> (edges, first edge, last edge) since
    the last call, edge times in ticks_us; (0, 0, 0) when there was no edge."""

    def __init__(self, pin):
        self.count = 0
        self.first = time.ticks_us()
        self.last = self.first
        self.pin = machine.Pin(pin, machine.Pin.IN)
        self.pin.irq(trigger=machine.Pin.IRQ_RISING, handler=self._edge)

    def _edge(self, _pin):
        t = time.ticks_us()
        if self.count == 0:
            self.first = t
        self.last = t
        self.count += 1

    def snapshot(self):
        state = machine.disable_irq()
        n, first, last = self.count, self.first, self.last
        self.count = 0
        machine.enable_irq(state)
        if n == 0:
            return 0, 0, 0
        return n, first, last


class Uart:
    def __init__(self, uid, baudrate, tx, rx, parity=None):
        kw = {"baudrate": baudrate, "bits": 8, "parity": parity, "stop": 1, "timeout": 0}
        if tx is not None:
            kw["tx"] = tx
        if rx is not None:
            kw["rx"] = rx
        self.uart = machine.UART(uid, **kw)

    def read(self):
        return self.uart.read()

    def write(self, data):
        return self.uart.write(data)


class Wdt:
    def __init__(self, timeout_ms):
        self.wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        self.wdt.feed()


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
