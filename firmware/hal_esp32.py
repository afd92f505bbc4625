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


class Adc:
    """An ADC1 pin at 11 dB attenuation, read in mV through the eFuse calibration (read_uv)."""

    def __init__(self, pin):
        self.pin = pin
        self.adc = machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)

    def read_mv(self):
        return self.adc.read_uv() // 1000


LAG_READS = 4  # voltage reads timed before each window: the lag of the current read after it


def sample(adc_v, adc_i, buf_v, buf_i, n, period_us):
    """Fill buf_v/buf_i with n readings (mV) period_us apart: voltage first, then current.

    Returns (lag_us, span_us, late): the current read's lag after the voltage read (the time one
    voltage read and its store take, timed over LAG_READS reads before the window), the time the
    n samples took (span_us / n is the period the loop achieved) and how many samples found their
    time already past (the loop fell behind: an interrupt, or a period the chip cannot hold).
    A busy-wait on ticks_us paces the loop: a Timer callback every 500 us would be scheduled, not
    run at once, and jitter more than this loop. Nothing here allocates but the returned tuple.
    """
    ri = adc_i.adc.read_uv
    rv = adc_v.adc.read_uv if adc_v is not None else None
    ticks_us = time.ticks_us
    diff = time.ticks_diff
    lag = 0.0
    if rv is not None:
        t = ticks_us()
        for k in range(LAG_READS):
            buf_v[k] = rv() // 1000
        lag = diff(ticks_us(), t) / LAG_READS
    late = 0
    t0 = t = ticks_us()
    for k in range(n):
        if rv is not None:
            buf_v[k] = rv() // 1000
        buf_i[k] = ri() // 1000
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


def read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
