# Current clamp (SCT-013) and optional voltage sensor (ZMPT101B) on the ADC: Irms, Vrms, P, S, PF.
#
# The method is OpenEnergyMonitor's emonLib calcVI (sample whole mains cycles, remove the DC bias,
# scale by ICAL/VCAL, align the voltage with the current read after it), with these differences:
#
# * Integer sums, floats only per block. ESP32 MicroPython boxes every float on the heap, so a
#   per-sample float filter would allocate thousands of objects a second. Samples are the ADC's
#   raw 12-bit codes; the loop keeps sums of small integers, d = sample - integer offset, and folds
#   them into floats every FOLD samples, before a sum can leave the small-int range (2**30):
#   64 * 4095**2 stays below it (only a current that swings rail to rail every sample could push
#   the second-difference sum past it, and MicroPython would then use a big int: right, but
#   allocating). Sampling allocates nothing.
# * The board's calibration (hal Adc.line(): mV per code, the line read_uv() applies) scales the
#   window's RMS and power once, not every sample: read_uv() rounds each 0.8 mV code to whole mV,
#   a ripple of 0.25 mV with a 4 mV period that noise of +-2 codes does not smooth, and P at 1 %
#   of range read up to 1.7 % of S wrong through it. Offsets, hysteresis and the clipping limits
#   are held in codes.
# * The DC offset is tracked by a low-pass filter across windows (emonLib's offset filter, run once
#   per window) and used to find the zero crossings; within the whole-cycle window the exact mean
#   is removed, the ideal high-pass for whole cycles (a straight-line fit would also remove part of
#   a sine, about 1/cycles of it). The filter starts from the first window's mean: a board's bias
#   sits wherever the ADC's usable window needs it.
# * A bias that drifts during the window is a ramp, and a ramp is not orthogonal to the mains
#   (sum(t sin t) over whole cycles is not 0): 10 mV/s on the current's bias moves P by 0.8 % of S
#   at 1 % of range. Each channel's slope is taken from the means of the window's two halves, each
#   of whole cycles (the mains leaves their means alone), and the ramp's share is removed from the
#   mean squares and from P.
# * The noise floor is estimated in every window and removed from the current's mean square. ADC
#   noise and quantisation are white, a mains current is not: the mean square of the second
#   difference x[k] - 2 x[k-1] + x[k-2] is 6 sigma**2 for white noise, and a sine of angle theta per
#   sample contributes only (2 - 2 cos theta)**2 of its power (6e-4 at 50 Hz and 40 samples a
#   cycle, 0.34 for the 5th harmonic), so sigma**2 = mean(d2**2) / 6 over-estimates the noise by a
#   negligible share of the signal. At 1 % of range the noise would otherwise read 1-3 % high.
# * Below the starting current (`start_a`, the meter's no-load condition) the channel reads 0: what
#   is left of the noise after its removal never books energy on an idle channel.
# * Timing is measured, not assumed: the HAL returns the lag between the voltage and the current
#   read of a pair and the period the loop achieved (ticks_us), and a window whose loop fell behind
#   its period is flagged. The voltage is aligned with the current by the exact correction for the
#   fundamental: with theta the angle per sample and delta the angle the current is read after the
#   voltage (the measured read lag, less the delay of the current's signal in the sensors that
#   calibration finds: phase_deg), vs[k] = a v[k] + b v[k-1], a = sin(delta + theta) / sin theta,
#   b = -sin(delta) / sin(theta); emonLib's PHASECAL = 1 + lag / period is its first order.
# * A window with any sample at or beyond the ADC's usable limits (hal.ADC_MIN_MV/ADC_MAX_MV) is
#   flagged clipped: its peaks were cut, so its readings are low, and the node says so in the frame.
import math
from array import array

FOLD = 64  # samples per integer block (see above)
HYST_MV = 8.0  # zero-crossing hysteresis until the noise is known
MIN_HYST_MV = 3.0
OFFSET_ALPHA = 0.25  # low-pass weight of each window's mean in the tracked offset
SKIP = 2  # samples before a window may start: the second difference needs two behind it


class Result:
    __slots__ = ("irms", "vrms", "power", "apparent", "pf", "n", "cycles", "clipped", "behind",
                 "idle", "noise_a", "lag_us", "rate_hz", "hz")

    def __init__(self):
        self.irms = self.vrms = self.power = self.apparent = self.pf = 0.0
        self.noise_a = self.lag_us = self.rate_hz = self.hz = 0.0
        self.n = self.cycles = 0
        self.clipped = self.behind = self.idle = False


def crossings(buf, n, offset, min_gap, hyst=HYST_MV):
    """Indices of upward crossings of offset (with hysteresis), at least min_gap samples apart.

    The detector arms when the signal goes below offset - hyst and fires on the next sample at or
    above offset. A crossing too close to the last one (a harmonic's) is not taken, and it disarms
    the detector like a taken one: the next crossing must again come from below, never from a
    level that merely stayed high until min_gap had passed.
    """
    out = []
    armed = False
    last = -min_gap
    lo = offset - hyst
    for k in range(SKIP, n):
        x = buf[k]
        if x < lo:
            armed = True
        elif armed and x >= offset:
            armed = False
            if k - last >= min_gap:
                out.append(k)
                last = k
    return out


def window(buf, n, offset, spc, hyst=HYST_MV):
    """(start, end, cycles): the whole-cycle span of buf, or the nominal span if no crossings."""
    xs = crossings(buf, n, offset, (spc * 3) // 4, hyst)
    if len(xs) >= 3:
        # the cycle in samples: the median gap (a crossing lost in noise doubles one gap)
        gaps = sorted([xs[k + 1] - xs[k] for k in range(len(xs) - 1)])
        g = gaps[len(gaps) // 2]
        # The buffer starts anywhere in a cycle: with a current that crosses zero several times
        # a cycle, the first crossing taken may be another one than the rest, a fraction early.
        while len(xs) > 2 and abs(xs[1] - xs[0] - g) > g / 8:
            xs.pop(0)
        # whole cycles between the first and the last crossing, counted from the span
        cycles = int((xs[-1] - xs[0]) / g + 0.5)
        if cycles:
            return xs[0], xs[-1], cycles
    elif len(xs) == 2:
        cycles = int((xs[1] - xs[0]) / spc + 0.5)
        if cycles:
            return xs[0], xs[1], cycles
    cycles = int((n - SKIP) // spc)
    return SKIP, (SKIP + int(cycles * spc)) if cycles else n, cycles


def sums(buf_v, buf_i, a, b, ov, oi, mid=0):
    """Integer-block sums over [a, b) (a >= SKIP), as floats:
    (sv, svv, si, sii, svi, spi, s2, stv, sti, sv1, si1).

    ov/oi are integer offsets subtracted from every sample; spi = sum(v[k-1] * i[k]) for the phase
    correction, s2 = sum of the current's squared second differences (the noise estimate);
    stv/sti = sum((k - a) * x[k]) (the drift correction); sv1/si1 = the sums over [a, mid) (a
    block ends at mid). buf_v may be None (current only).
    """
    fv = fvv = fi = fii = fvi = fpi = f2 = ftv = fti = fv1 = fi1 = 0.0
    p1 = buf_i[a - 1] - oi
    p2 = buf_i[a - 2] - oi
    pv = buf_v[a - 1] - ov if buf_v is not None else 0
    k = a
    while k < b:
        if k == mid:
            fv1 = fv
            fi1 = fi
        e = k + FOLD
        if e > b:
            e = b
        if k < mid < e:
            e = mid
        si = sii = s2 = sti = 0
        for j in range(k, e):
            d = buf_i[j] - oi
            si += d
            sii += d * d
            sti += (j - k) * d
            x = d - p1 - p1 + p2
            s2 += x * x
            p2 = p1
            p1 = d
        if buf_v is not None:  # the voltage's sums, and its products with the current
            sv = svv = svi = spi = stv = 0
            for j in range(k, e):
                d = buf_i[j] - oi
                v = buf_v[j] - ov
                sv += v
                svv += v * v
                stv += (j - k) * v
                svi += v * d
                spi += pv * d
                pv = v
            ftv += stv + sv * float(k - a)  # float: (k - a) * sv may leave the small ints
            fv += sv
            fvv += svv
            fvi += svi
            fpi += spi
        fti += sti + si * float(k - a)
        fi += si
        fii += sii
        f2 += s2
        k = e
    return fv, fvv, fi, fii, fvi, fpi, f2, ftv, fti, fv1, fi1


def _slope(s, s1, a, mid, b):
    """A channel's drift in codes a sample: the difference of the means of the window's two
    halves over the distance of their centres. Each half is whole cycles, so the mains and its
    harmonics leave its mean alone (a straight-line fit over the window would take a share of
    the sine as slope); 0 for a window under 2 cycles."""
    if mid <= a:
        return 0.0
    m1 = mid - a
    m2 = b - mid
    return ((s - s1) / m2 - s1 / m1) / ((m1 + m2) / 2)


class Clamp:
    """One CT channel, with or without a voltage channel, holding its buffers and offsets.

    ical: A per V at the ADC (SCT-013-000 with burden R ohm: 2000 / R); vcal: V per V at the ADC
    for the ZMPT101B (0 when there is no voltage channel); phase_deg: how many degrees the sensors
    delay the current's signal against the voltage's at mains frequency (calibration; the read lag
    is measured apart); start_a: the starting current, below which the channel reads 0.
    """

    def __init__(self, hal, adc_i, adc_v, ical, vcal, phase_deg, rate_hz, mains_hz, cycles,
                 start_a=0.0):
        self.hal = hal
        self.adc_i = adc_i
        self.adc_v = adc_v
        self.ical = ical
        self.vcal = vcal
        self.phase = phase_deg * math.pi / 180
        self.start_a = start_a
        self.mains_hz = mains_hz
        self.period_us = int(1000000 // rate_hz)
        self.spc = rate_hz / mains_hz  # samples per cycle
        self.n = int(self.spc * (cycles + 1.5))  # enough for `cycles` whole cycles after trimming
        self.buf_i = array("H", bytes(2 * self.n))
        self.buf_v = array("H", bytes(2 * self.n)) if adc_v is not None else None
        self.adc_lo_mv = hal.ADC_MIN_MV
        self.adc_hi_mv = hal.ADC_MAX_MV
        self.off_i = self.off_v = 0.0  # the tracked DC offsets, in codes...
        self.seeded = False  # ...set from the first window's mean
        self.hyst = HYST_MV  # mV
        # the last window's timing, from the HAL: V-to-I read lag, whole loop span, late samples
        self.lag_us = 0.0
        self.span_us = self.period_us * self.n
        self.late = 0

    def calibrate(self, ical=None, vcal=None, phase_deg=None):
        """New constants (a calibration); None keeps one."""
        if ical is not None:
            self.ical = ical
        if vcal is not None:
            self.vcal = vcal
        if phase_deg is not None:
            self.phase = phase_deg * math.pi / 180

    def measure(self):
        t = self.hal.sample(self.adc_v, self.adc_i, self.buf_v, self.buf_i, self.n,
                            self.period_us)
        self.lag_us, self.span_us, self.late = t
        return self.compute()

    def _clipped(self, buf, line):
        # min/max run in C over the array: two cheap passes, no per-sample Python code
        g, b = line
        lo = int((self.adc_lo_mv - b) / g + 0.5)
        hi = int((self.adc_hi_mv - b) / g + 0.5)
        return min(buf) <= lo or max(buf) >= hi

    def compute(self):
        n = self.n
        bv = self.buf_v
        if not self.seeded:
            # n * 4095 stays a small int (n <= config.MAX_WINDOW_SAMPLES): no big-int sum
            self.off_i = sum(self.buf_i) / n
            if bv is not None:
                self.off_v = sum(bv) / n
            self.seeded = True
        line_i = self.adc_i.line()
        line_v = self.adc_v.line() if bv is not None else line_i
        gi = line_i[0]  # mV per code
        gv = line_v[0]
        ref, ref_off = (bv, self.off_v) if bv is not None else (self.buf_i, self.off_i)
        period = self.span_us / n  # the period the loop achieved, us
        spc = 1000000 / (period * self.mains_hz)
        a, b, cycles = window(ref, n, int(ref_off), spc, self.hyst / gv)
        ov = int(self.off_v)
        oi = int(self.off_i)
        # the two halves of the window, each of whole cycles, for the drift (see _drift)
        mid = a + int((cycles // 2) * (b - a) / cycles + 0.5) if cycles >= 2 else 0
        sv, svv, si, sii, svi, spi, s2, tv, ti, sv1, si1 = sums(bv, self.buf_i, a, b, ov, oi, mid)
        m = b - a
        # drift: each channel's slope (codes a sample) and sum((k - centre) x[k])
        kc = (m - 1) / 2
        q = m * (m * m - 1) / 12  # sum((k - centre)**2)
        di = _slope(si, si1, a, mid, b)
        ti -= kc * si
        r = Result()
        r.n = m
        r.cycles = cycles
        r.clipped = self._clipped(self.buf_i, line_i) or (bv is not None
                                                          and self._clipped(bv, line_v))
        r.behind = self.late > 0
        r.lag_us = self.lag_us
        r.rate_hz = 1000000 / period
        # angle per sample of the fundamental: from the whole cycles found, else nominal
        theta = 2 * math.pi * (cycles / m if cycles else 1 / spc)
        r.hz = theta * r.rate_hz / (2 * math.pi)
        mi = si / m
        noise = s2 / (6 * m)  # codes**2 of white noise per sample
        var_i = sii / m - mi * mi - noise - (2 * di * ti - di * di * q) / m
        r.irms = self.ical * gi * math.sqrt(var_i if var_i > 0 else 0.0) / 1000
        r.noise_a = self.ical * gi * math.sqrt(noise) / 1000
        h = 3 * gi * math.sqrt(noise)  # mV
        self.hyst = MIN_HYST_MV if h < MIN_HYST_MV else (HYST_MV if h > HYST_MV else h)
        self.off_i += OFFSET_ALPHA * (oi + mi - self.off_i)
        if r.irms < self.start_a:
            r.irms = 0.0
            r.idle = True
        if bv is None:
            return r
        mv = sv / m
        dv = _slope(sv, sv1, a, mid, b)
        tv -= kc * sv
        var_v = svv / m - mv * mv - (2 * dv * tv - dv * dv * q) / m
        r.vrms = self.vcal * gv * math.sqrt(var_v if var_v > 0 else 0.0) / 1000
        self.off_v += OFFSET_ALPHA * (ov + mv - self.off_v)
        if r.idle:
            return r
        delta = theta * self.lag_us / period - self.phase
        st = math.sin(theta)
        ca = math.sin(delta + theta) / st
        cb = -math.sin(delta) / st
        spv = sv + (bv[a - 1] - ov) - (bv[b - 1] - ov)  # sum(v[k-1]) over the window
        svs = ca * sv + cb * spv
        p = ca * svi + cb * spi - mi * svs  # sum((vs - mean vs)(i - mean i))
        # less the drifts' share: vs drifts as v does, by ca + cb; tv stands for vs's own sum
        # (vs differs from v by a fraction cb of a one-sample shift: 1e-4 of S at 1 % of range)
        dvs = (ca + cb) * dv
        p -= dvs * ti + di * (ca + cb) * tv - dvs * di * q
        r.power = self.vcal * gv * self.ical * gi * p / m / 1000000
        r.apparent = r.vrms * r.irms
        r.pf = r.power / r.apparent if r.apparent > 0 else 0.0
        if r.pf > 1.0:
            r.pf = 1.0
        elif r.pf < -1.0:
            r.pf = -1.0
        return r
