# CSE7766 plug metering chip: a 24-byte frame every 50 ms on a 4800-baud 8E1 UART.
#
# Frame: header, 0x5A, voltage parameter (3 bytes) and cycle (3), current parameter and cycle,
# power parameter and cycle, adjustment (valid bits), CF pulse count (2), checksum = low byte of
# the sum of bytes 2..22. Values are parameter / cycle, times a per-plug scale (datasheet 2.2).
# Header 0x55: normal; 0xAA: chip not calibrated; 0xF?: status bits (cycle overflow, 0x01 = bad
# coefficients). The parser resynchronises on any byte and never raises on line noise.

FRAME_LEN = 24
HEADER_OK = 0x55
HEADER_UNCAL = 0xAA
CHECK = 0x5A
ADJ_V = 0x40
ADJ_I = 0x20
ADJ_P = 0x10
STALE_MS = 2000


def _u24(b, i):
    return (b[i] << 16) | (b[i + 1] << 8) | b[i + 2]


def parse(f):
    """(volts, amps, watts, cf pulses) from one 24-byte frame; raises ValueError(reason)."""
    if len(f) != FRAME_LEN or f[1] != CHECK:
        raise ValueError("framing")
    if sum(f[2:23]) & 0xFF != f[23]:
        raise ValueError("checksum")
    h = f[0]
    if h == HEADER_UNCAL:
        raise ValueError("uncalibrated")
    if h != HEADER_OK and (h & 0xF0 != 0xF0 or h & 0x01 or h & 0xFC == 0xFC):
        raise ValueError("header")
    status = 0 if h == HEADER_OK else h  # 0x08 / 0x04 / 0x02: V / I / P cycle overflow
    adj = f[20]
    vc, ic, pc = _u24(f, 5), _u24(f, 11), _u24(f, 17)
    v = 0.0
    i = 0.0
    p = 0.0
    if adj & ADJ_V and vc and not status & 0x08:
        v = _u24(f, 2) / vc
    if adj & ADJ_P and pc and not status & 0x02:
        p = _u24(f, 14) / pc
    # with no load the current cycle is stale; the chip's makers read current only with power
    if adj & ADJ_I and ic and p > 0 and not status & 0x04:
        i = _u24(f, 8) / ic
    return v, i, p, (f[21] << 8) | f[22]


class Parser:
    """Feed it UART bytes in any chunking; it yields each valid frame's values."""

    def __init__(self):
        self.buf = bytearray()
        self.errors = 0

    def feed(self, data):
        out = []
        self.buf.extend(data)
        b = self.buf
        while len(b) >= FRAME_LEN:
            if b[1] != CHECK or not (b[0] in (HEADER_OK, HEADER_UNCAL) or b[0] & 0xF0 == 0xF0):
                b = b[1:]
                continue
            try:
                out.append(parse(bytes(b[:FRAME_LEN])))
                b = b[FRAME_LEN:]
            except ValueError:
                self.errors += 1
                b = b[1:]
        self.buf = bytearray(b)
        return out


class Cse7766:
    def __init__(self, hal, uart_id, rx_pin, v_scale=1.0, i_scale=1.0, p_scale=1.0):
        self.hal = hal
        self.uart = hal.Uart(uart_id, 4800, None, rx_pin, 0)
        self.parser = Parser()
        self.scale = (v_scale, i_scale, p_scale)
        self.last = (0.0, 0.0, 0.0)
        self.seen = hal.ticks_ms()

    def measure(self):
        now = self.hal.ticks_ms()
        data = self.uart.read()
        if data:
            vals = self.parser.feed(data)
            if vals:
                v, i, p, _cf = vals[-1]
                self.last = (v * self.scale[0], i * self.scale[1], p * self.scale[2])
                self.seen = now
        # ticks wrap: compared through ticks_diff, and forgotten once stale (an old tick would
        # alias after half the tick period)
        if self.seen is not None and self.hal.ticks_diff(now, self.seen) > STALE_MS:
            self.last = (0.0, 0.0, 0.0)
            self.seen = None
        v, i, p = self.last
        s = v * i
        pf = p / s if s > 0 else 0.0
        return v, i, p, s, (pf if pf < 1.0 else 1.0)
