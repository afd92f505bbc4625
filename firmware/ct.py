# Current clamp (SCT-013) and optional voltage sensor (ZMPT101B) on the ADC: Irms, Vrms, P, S, PF.
#
# The method is OpenEnergyMonitor's emonLib calcVI: sample whole mains cycles, remove the DC bias,
# apply ICAL/VCAL ratios and the PHASECAL interpolation that aligns the voltage sample with the
# current sample taken just after it. Two choices differ from emonLib, both for MicroPython speed:
#
# * Integer sums, floats only per block. ESP32 MicroPython boxes every float on the heap, so a
#   per-sample float filter would allocate thousands of objects a second. Samples are integer mV
#   (the calibrated read_uv() reading); the loop keeps sums of d, d*d and v*i of small integers,
#   where d = sample - integer offset, and folds them into floats every FOLD samples, before a sum
#   can leave the small-int range (2**30): 64 * 3300**2 < 2**30. Sampling allocates nothing.
# * The DC offset is tracked by a low-pass filter across windows (emonLib's offset filter, run once
#   per window instead of once per sample) and used to find the zero crossings; within the
#   whole-cycle window the exact mean is removed, which is the ideal high-pass for whole cycles.
#   The filter starts from the first window's mean, not from a nominal bias: the board's bias
#   divider sits wherever the ADC's usable window needs it (and moves with the 3.3 V rail), and a
#   start far off it would find no crossings for the first windows of a small current.
# * A window with any sample at or beyond the ADC's usable limits (hal.ADC_MIN_MV/ADC_MAX_MV) is
#   flagged clipped: its peaks were cut, so its readings are low, and the node says so in the frame.
import math
from array import array

FOLD = 64  # samples per integer block (see above)
HYST_MV = 8  # zero-crossing hysteresis against ADC noise
OFFSET_ALPHA = 0.25  # low-pass weight of each window's mean in the tracked offset


class Result:
    __slots__ = ("irms", "vrms", "power", "apparent", "pf", "n", "cycles", "clipped")

    def __init__(self):
        self.irms = self.vrms = self.power = self.apparent = self.pf = 0.0
        self.n = self.cycles = 0
        self.clipped = False


def crossings(buf, n, offset, min_gap):
    """Indices of upward crossings of offset (with hysteresis), at least min_gap samples apart."""
    out = []
    armed = False
    last = -min_gap
    lo = offset - HYST_MV
    for k in range(n):
        x = buf[k]
        if x < lo:
            armed = True
        elif armed and x >= offset and k - last >= min_gap:
            out.append(k)
            last = k
            armed = False
    return out


def window(buf, n, offset, spc):
    """(start, end, cycles): the whole-cycle span of buf, or the nominal span if no crossings."""
    xs = crossings(buf, n, offset, (spc * 3) // 4)
    if len(xs) >= 2:
        cycles = len(xs) - 1
        return xs[0], xs[-1], cycles
    cycles = int(n // spc)
    return 0, int(cycles * spc) if cycles else n, cycles


def sums(buf_v, buf_i, a, b, ov, oi):
    """Integer-block sums over [a, b): (sv, svv, si, sii, svi, spi, spv) as floats.

    ov/oi are integer offsets subtracted from every sample; spi = sum(v[k-1] * i[k]) and
    spv = sum(v[k-1]) for the PHASECAL interpolation. buf_v may be None (current only).
    """
    fv = fvv = fi = fii = fvi = fpi = fpv = 0.0
    k = a
    while k < b:
        e = k + FOLD
        if e > b:
            e = b
        si = sii = 0
        if buf_v is None:
            for j in range(k, e):
                d = buf_i[j] - oi
                si += d
                sii += d * d
        else:
            sv = svv = svi = spi = spv = 0
            pv = buf_v[k - 1] - ov if k > 0 else buf_v[k] - ov
            for j in range(k, e):
                d = buf_i[j] - oi
                v = buf_v[j] - ov
                si += d
                sii += d * d
                sv += v
                svv += v * v
                svi += v * d
                spi += pv * d
                spv += pv
                pv = v
            fv += sv
            fvv += svv
            fvi += svi
            fpi += spi
            fpv += spv
        fi += si
        fii += sii
        k = e
    return fv, fvv, fi, fii, fvi, fpi, fpv


class Clamp:
    """One CT channel, with or without a voltage channel, holding its buffers and offsets.

    ical: A per V at the ADC (SCT-013-030: 30; SCT-013-000 with burden R ohm: 2000 / R);
    vcal: V per V at the ADC for the ZMPT101B (0 when there is no voltage channel);
    phasecal: emonLib PHASECAL (1 + ADC read lag / sample period, plus the sensors' phase error).
    """

    def __init__(self, hal, adc_i, adc_v, ical, vcal, phasecal, rate_hz, mains_hz, cycles):
        self.hal = hal
        self.adc_i = adc_i
        self.adc_v = adc_v
        self.ical = ical
        self.vcal = vcal
        self.phasecal = phasecal
        self.period_us = int(1000000 // rate_hz)
        self.spc = rate_hz / mains_hz  # samples per cycle
        self.n = int(self.spc * (cycles + 1.5))  # enough for `cycles` whole cycles after trimming
        self.buf_i = array("H", bytes(2 * self.n))
        self.buf_v = array("H", bytes(2 * self.n)) if adc_v is not None else None
        self.adc_lo = hal.ADC_MIN_MV
        self.adc_hi = hal.ADC_MAX_MV
        self.off_i = self.off_v = 0.0  # the tracked DC offsets...
        self.seeded = False  # ...set from the first window's mean

    def measure(self):
        self.hal.sample(self.adc_v, self.adc_i, self.buf_v, self.buf_i, self.n, self.period_us)
        return self.compute()

    def _clipped(self, buf):
        # min/max run in C over the array: two cheap passes, no per-sample Python code
        return min(buf) <= self.adc_lo or max(buf) >= self.adc_hi

    def compute(self):
        n = self.n
        bv = self.buf_v
        if not self.seeded:
            # n * 3300 stays a small int (n <= config.MAX_WINDOW_SAMPLES): no big-int sum
            self.off_i = sum(self.buf_i) / n
            if bv is not None:
                self.off_v = sum(bv) / n
            self.seeded = True
        ref, ref_off = (bv, self.off_v) if bv is not None else (self.buf_i, self.off_i)
        a, b, cycles = window(ref, n, int(ref_off), self.spc)
        ov = int(self.off_v)
        oi = int(self.off_i)
        sv, svv, si, sii, svi, spi, spv = sums(bv, self.buf_i, a, b, ov, oi)
        m = b - a
        r = Result()
        r.n = m
        r.cycles = cycles
        r.clipped = self._clipped(self.buf_i) or (bv is not None and self._clipped(bv))
        mi = si / m
        var_i = sii / m - mi * mi
        r.irms = self.ical * math.sqrt(var_i if var_i > 0 else 0.0) / 1000
        self.off_i += OFFSET_ALPHA * (oi + mi - self.off_i)
        if bv is None:
            return r
        mv = sv / m
        var_v = svv / m - mv * mv
        r.vrms = self.vcal * math.sqrt(var_v if var_v > 0 else 0.0) / 1000
        pc = self.phasecal
        # sum((vs_k - mean vs)(i_k - mean i)) with vs_k = v[k-1] + pc (v[k] - v[k-1])
        svs = (1 - pc) * spv + pc * sv
        p = (1 - pc) * spi + pc * svi - mi * svs
        r.power = self.vcal * self.ical * p / m / 1000000
        r.apparent = r.vrms * r.irms
        r.pf = r.power / r.apparent if r.apparent > 0 else 0.0
        if r.pf > 1.0:
            r.pf = 1.0
        elif r.pf < -1.0:
            r.pf = -1.0
        self.off_v += OFFSET_ALPHA * (ov + mv - self.off_v)
        return r
