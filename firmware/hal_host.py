# The emulated HAL: the same names as hal_esp32, driven by a simulated clock and synthetic signals.
#
# Runs under MicroPython on the host (the WebAssembly VM) and under CPython. Tests and the host
# runner set the scene (signals on ADC pins, pulse frequencies, UART peers) and advance the clock;
# the firmware above the HAL cannot tell it from an ESP32. Module-level state, because the real
# HAL wraps module-level hardware too.
import math

_now = [0]  # microseconds since boot: the emulator's own time, never wraps
_tick0 = [0]  # microseconds the tick counters showed at boot (see reset)

# MicroPython's ticks_ms/ticks_us wrap at 2**30 on the ESP32 (about 12.4 days in ms, 17.9 minutes
# in us), and so do these: firmware that compares or subtracts ticks directly instead of using
# ticks_diff/ticks_add breaks here as it would on the device. reset(start_ms=...) starts a run just
# before a wrap, so a test need not simulate 12 days to get there.
TICKS_PERIOD = 1 << 30
_TICKS_MAX = TICKS_PERIOD - 1
_TICKS_HALF = TICKS_PERIOD // 2


def ticks_us():
    return (_now[0] + _tick0[0]) & _TICKS_MAX


def ticks_ms():
    return ((_now[0] + _tick0[0]) // 1000) & _TICKS_MAX


def ticks_diff(a, b):
    return ((a - b + _TICKS_HALF) & _TICKS_MAX) - _TICKS_HALF


def ticks_add(a, d):
    return (a + d) & _TICKS_MAX


def elapsed_ms():
    """Emulator only: ms since boot, unwrapped (the time axis of load profiles)."""
    return _now[0] // 1000


def advance_ms(ms):
    _now[0] += int(ms) * 1000


def sleep_ms(ms):
    advance_ms(ms)


def reset(start_ms=0):
    """A reboot: the clock restarts, pins and peers are forgotten; files stay.

    start_ms: what ticks_ms() shows at boot (0 on a real boot; a value just below
    TICKS_PERIOD runs the node across the wrap soon after boot).
    """
    _now[0] = 0
    _tick0[0] = (start_ms % TICKS_PERIOD) * 1000
    signals.clear()
    pulse_freq.clear()
    pins.clear()
    uart_rx.clear()
    uart_tx.clear()
    uart_peer.clear()
    _wdt[0] = None


# ---- ADC: signals in mV at the ADC pin ------------------------------------------------------

# The usable input window of the ESP32's ADC at 11 dB attenuation (what hal_esp32 sets): ESP-IDF's
# ADC documentation gives 150..2450 mV as the range its calibration (esp_adc_cal, which read_uv()
# uses) holds for at 11 dB. Outside it the chip's readings bend and then stop moving, so a board
# must keep its signals inside; the emulator clips there so that a signal which leaves the window
# reads low in tests exactly as on the chip. hal_esp32 exports the same two names (a test keeps
# them equal); ct.py flags a window that touched either limit.
ADC_MIN_MV = 150
ADC_MAX_MV = 2450


class Signal:
    """dc_mv + drift_mv_s * t + sum(amp_mv * sin(2 pi order freq t + phase)) + uniform noise,
    clipped to the ADC's usable window (ADC_MIN_MV..ADC_MAX_MV) and quantised to the ADC's step
    (lsb_mv; 0: 1 mV codes). The calibration line of a pin that carries it is mv = lsb_mv * code
    (Adc.line)."""

    def __init__(self, dc_mv, freq_hz, parts, noise_mv=0, seed=1, lsb_mv=0, drift_mv_s=0,
                 bell=False):
        self.dc = dc_mv
        self.w = 2 * math.pi * freq_hz
        self.parts = parts  # [(amp_mv, order, phase_rad), ...]
        self.noise = noise_mv
        # bell: the sum of three uniforms of the same sigma as uniform +-noise_mv (an ADC's noise is
        # bell-shaped); else uniform +-noise_mv
        self.bell = bell
        self.lsb = lsb_mv
        self.drift = drift_mv_s
        self._rng = seed & 0x7FFFFFFF or 1

    def _uniform(self):
        # Park-Miller LCG: deterministic and identical under MicroPython and CPython.
        self._rng = (self._rng * 48271) % 0x7FFFFFFF
        return self._rng / 0x7FFFFFFF * 2 - 1

    def mv(self, t_us):
        """The reading in whole mV, as read_uv() // 1000 gives it: the code, then rounded."""
        lsb = self.lsb or 1
        return int(self.code(t_us) * lsb + 0.5)

    def code(self, t_us):
        """The ADC's raw code (of lsb_mv each; lsb_mv 0: 1 mV codes), as read() gives it."""
        t = t_us / 1000000
        x = self.dc + self.drift * t
        for amp, order, phase in self.parts:
            x += amp * math.sin(self.w * order * t + phase)
        if self.noise:
            if self.bell:
                x += self.noise / 3 * (self._uniform() + self._uniform() + self._uniform())
            else:
                x += self.noise * self._uniform()
        x = ADC_MIN_MV if x < ADC_MIN_MV else (ADC_MAX_MV if x > ADC_MAX_MV else x)
        return int(x / (self.lsb or 1) + 0.5)


signals = {}  # type: dict  # pin -> Signal
# The emulated ADC loop's timing, as hal_esp32.sample runs it on a chip: a read takes adc_read_us
# (the current read of a pair starts that long after the voltage read: the lag ct.py corrects) and
# the loop's own bytecode loop_us more per sample. A period shorter than one pass falls behind.
adc_read_us = [40]
loop_us = [20]


class Adc:
    def __init__(self, pin):
        self.pin = pin

    def read_mv(self):
        s = signals.get(self.pin)
        return s.mv(_now[0]) if s else 0

    def line(self):
        """(mv_per_code, mv_at_code_0): the calibration line that turns this pin's raw codes into
        mV (on the chip, the line of read_uv()'s calibration)."""
        s = signals.get(self.pin)
        return (float(s.lsb or 1) if s else 1.0), 0.0


def sample(adc_v, adc_i, buf_v, buf_i, n, period_us):
    """Fill buf_v/buf_i with n raw ADC codes period_us apart: voltage first, then current.

    Returns (lag_us, span_us, late) as hal_esp32.sample measures them: the voltage-to-current
    read lag, the time the n samples took, and how many found their time already past."""
    sv = signals.get(adc_v.pin) if adc_v else None
    si = signals.get(adc_i.pin)
    d = adc_read_us[0] if adc_v else 0
    busy = d + adc_read_us[0] + loop_us[0]  # one pass of the loop
    t0 = t = due = _now[0]
    late = 0
    for k in range(n):
        if sv:
            buf_v[k] = sv.code(t)
        buf_i[k] = si.code(t + d) if si else 0
        due += period_us
        done = t + busy
        if done >= due:
            late += 1
            t = done
        else:
            t = due
    _now[0] = t
    return d, t - t0, late


# ---- digital pins --------------------------------------------------------------------------

pins = {}  # type: dict  # pin -> level last driven


class Output:
    def __init__(self, pin, active_high=True, on=False):
        self.pin = pin
        self.active_high = active_high
        self.set(on)

    def set(self, on):
        pins[self.pin] = 1 if bool(on) == bool(self.active_high) else 0


pulse_freq = {}  # type: dict  # pin -> Hz of the square wave on that pin, or a function returning it


class PulseCounter:
    """Counts rising edges: snapshot() -> (edges, first edge, last edge) since the last call, the
    edge times in ticks_us (wrapping); (0, 0, 0) when there was no edge."""

    def __init__(self, pin):
        self.pin = pin
        self._since = _now[0]

    def snapshot(self):
        f = pulse_freq.get(self.pin, 0)
        if callable(f):  # a frequency that depends on other pins (HLW8012 SEL)
            f = f()
        start, self._since = self._since, _now[0]
        if f <= 0:
            return 0, 0, 0
        period = 1000000 / f
        m0 = int(start // period) + 1
        m1 = int(_now[0] // period)
        if m1 < m0:
            return 0, 0, 0
        t0 = _tick0[0]
        return (m1 - m0 + 1, (int(m0 * period) + t0) & _TICKS_MAX,
                (int(m1 * period) + t0) & _TICKS_MAX)


# ---- UART ------------------------------------------------------------------------------------

uart_rx = {}  # type: dict  # uart id -> bytearray waiting to be read
uart_tx = {}  # type: dict  # uart id -> bytearray written
uart_peer = {}  # type: dict  # uart id -> function(bytes written) -> bytes the peer answers


class Uart:
    def __init__(self, uid, baudrate, tx, rx, parity=None):
        self.uid = uid
        uart_rx.setdefault(uid, bytearray())
        uart_tx.setdefault(uid, bytearray())

    def read(self):
        buf = uart_rx.get(self.uid)
        if not buf:
            return None
        data = bytes(buf)
        uart_rx[self.uid] = bytearray()
        return data

    def write(self, data):
        uart_tx[self.uid].extend(data)
        peer = uart_peer.get(self.uid)
        if peer:
            uart_rx[self.uid].extend(peer(bytes(data)))
        return len(data)


# ---- watchdog ----------------------------------------------------------------------------

_wdt = [None]  # type: list  # [timeout ms, last feed ms] once a Wdt exists


class Wdt:
    def __init__(self, timeout_ms):
        _wdt[0] = [timeout_ms, ticks_ms()]

    def feed(self):
        _wdt[0][1] = ticks_ms()


def wdt_expired():
    w = _wdt[0]
    return w is not None and ticks_diff(ticks_ms(), w[1]) > w[0]


# ---- flash file system, with power cuts --------------------------------------------------

class PowerCut(Exception):
    pass


power_cut_after = [None]  # bytes a write may still put down before the power fails


def write_file(path, data):
    """Rewrite a file in place; a power cut leaves the new bytes' prefix over the old content."""
    budget = power_cut_after[0]
    if budget is not None and len(data) > budget:
        try:
            with open(path, "rb") as f:
                old = f.read()
        except OSError:
            old = b""
        torn = data[:budget] + old[budget:]
        power_cut_after[0] = None
        with open(path, "wb") as f:
            f.write(torn)
        raise PowerCut()
    if budget is not None:
        power_cut_after[0] = budget - len(data)
    with open(path, "wb") as f:
        f.write(data)
