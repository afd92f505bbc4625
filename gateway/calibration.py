"""Calibrate a node's CT channel against the home's own Modbus meter. Sans-IO.

A node's clamp and its voltage sensor each have a gain error (parts' tolerance: the burden, the
CT's ratio, the ZMPT101B's trim, the ESP32's ADC reference) and the pair a phase error; a
certified meter on the same circuit (an SDM120 at the consumer unit, read over Modbus) knows the
truth. The gateway pairs the two over several intervals at different loads and fits:

* the voltage gain ``gv`` = the reference's mean voltage over the node's;
* the power gain ``g`` and the phase error ``e`` from ``ref_p = g (node_p cos e + node_q sin e)``,
  a linear least-squares fit in ``(g cos e, g sin e)``. ``node_q`` is the node's reactive power,
  ``sqrt(S**2 - P**2)``, taken as lagging: a home's reactive loads (motors, compressors,
  transformers) are inductive; where the node's angle is too small to tell (within twice the
  phase error), the sign that fits is taken. The phase is fitted only when the intervals'
  reactive powers spread enough (``MIN_Q_SPREAD`` of the apparent power); with only resistive
  loads it stays as it was.
* the current gain ``gi = g / gv``.

New constants are the node's constants times the gains (``ical * gi``, ``vcal * gv``, ``phase_deg
+ e``): the caller gives the constants the node read the intervals with (its board's, or the last
the gateway sent). The result goes to the node as an authenticated ``T_CALIBRATE`` frame with
absolute constants (``M_CONSTANTS``), so a retried command cannot apply twice; the node checks
them against its board's (within x0.5..x2, +-20 deg), keeps them in flash with its counters and
answers with an ACK.

Pairs come from :class:`PairCollector`: node readings and reference readings in, means per
interval (only intervals with enough of both, and a steady load) out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from firmware import frame

MIN_PAIRS = 3
MIN_P_SPREAD = 0.2  # the loads must differ: max - min of the reference P over its max
MIN_Q_SPREAD = 0.15  # reactive spread (of the largest S) needed to fit the phase
MIN_SAMPLES = 3  # readings of each side in an interval
MAX_RESIDUAL = 0.05  # a fit that leaves more than 5 % of the largest power unexplained is refused
UNIT = 1_000_000  # M_CONSTANTS: millionths


class CalibrationError(ValueError):
    """The pairs cannot give a trustworthy calibration; ``args[0]`` says why."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One interval's means: the node's V, P and S and the reference meter's V and P."""

    node_v: float
    node_p: float
    node_s: float
    ref_v: float
    ref_p: float


@dataclass(frozen=True, slots=True)
class Constants:
    """A CT channel's calibration as the node applies it (``firmware/ct.py``): ``ical`` A per V
    at the ADC, ``vcal`` V per V at the ADC, ``phase_deg`` the voltage-to-current phase
    correction in degrees."""

    ical: float
    vcal: float
    phase_deg: float


@dataclass(frozen=True, slots=True)
class Fit:
    """What :func:`fit` found: the factors to multiply ``vcal`` and ``ical`` by, the phase to
    add, how well the model explains the pairs, and whether the phase could be told."""

    gain_v: float
    gain_i: float
    phase_deg: float  # to add to the node's phase_deg
    residual: float  # rms of ref_p - model, relative to the largest |ref_p|
    pairs: int
    phase_fitted: bool

    def apply(self, c: Constants) -> Constants:
        return Constants(c.ical * self.gain_i, c.vcal * self.gain_v, c.phase_deg + self.phase_deg)


def fit(pairs: Sequence[Pair]) -> Fit:
    """Gains and phase from paired intervals; ``CalibrationError`` if they cannot tell."""
    if len(pairs) < MIN_PAIRS:
        raise CalibrationError(f"{len(pairs)} paired intervals, at least {MIN_PAIRS}")
    for p in pairs:
        values = (p.node_v, p.node_p, p.node_s, p.ref_v, p.ref_p)
        if not all(math.isfinite(x) for x in values) or p.node_v <= 0 or p.ref_v <= 0:
            raise CalibrationError("a pair without a voltage or with a value that is no number")
    top = max(abs(p.ref_p) for p in pairs)
    if top <= 0 or (max(p.ref_p for p in pairs) - min(p.ref_p for p in pairs)) < MIN_P_SPREAD * top:
        raise CalibrationError("the loads do not differ enough (at least 20 % of the largest)")
    gv = sum(p.ref_v for p in pairs) / sum(p.node_v for p in pairs)
    qs = [math.sqrt(max(p.node_s * p.node_s - p.node_p * p.node_p, 0.0)) for p in pairs]
    s_top = max(p.node_s for p in pairs)
    phase_fitted = s_top > 0 and (max(qs) - min(qs)) >= MIN_Q_SPREAD * s_top
    xs = [p.node_p for p in pairs]
    ys = [p.ref_p for p in pairs]
    if phase_fitted:
        a, b = _fit2(xs, qs, ys)
        # A node angle near zero has no sign in P and S: a current that the sensors make lead a
        # little reads as the same |Q| as one that lags. Where the angle is within twice the
        # phase error just found, take the sign that fits, and fit again.
        for _ in range(2):
            near = 2 * abs(math.atan2(b, a)) + math.radians(1)
            for k, p in enumerate(pairs):
                if p.node_s > 0 and math.asin(min(qs[k] / p.node_s, 1.0)) <= near:
                    q = abs(qs[k])
                    qs[k] = q if abs(a * xs[k] + b * q - ys[k]) <= abs(a * xs[k] - b * q - ys[k]) \
                        else -q
            a, b = _fit2(xs, qs, ys)
        model = [a * x + b * q for x, q in zip(xs, qs, strict=True)]
    else:
        sxx = sum(x * x for x in xs)
        if sxx <= 0:
            raise CalibrationError("the node read no power")
        a = sum(x * y for x, y in zip(xs, ys, strict=True)) / sxx
        b = 0.0
        model = [a * x for x in xs]
    g = math.hypot(a, b)
    e = math.atan2(b, a)
    residual = math.sqrt(sum((y - m) ** 2 for y, m in zip(ys, model, strict=True)) / len(ys)) / top
    if residual > MAX_RESIDUAL:
        raise CalibrationError(f"the fit leaves {residual:.1%} of the largest power unexplained "
                               "(not the same circuit, or the load changed within intervals)")
    return Fit(gv, g / gv, math.degrees(e), residual, len(pairs), phase_fitted)


def _fit2(xs: Sequence[float], qs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares of y = a x + b q (the normal equations)."""
    sxx = sum(x * x for x in xs)
    sqq = sum(q * q for q in qs)
    sxq = sum(x * q for x, q in zip(xs, qs, strict=True))
    sxy = sum(x * y for x, y in zip(xs, ys, strict=True))
    sqy = sum(q * y for q, y in zip(qs, ys, strict=True))
    det = sxx * sqq - sxq * sxq
    if not det > 1e-9 * sxx * sqq:
        raise CalibrationError("the intervals' real and reactive powers are not independent")
    return (sxy * sqq - sqy * sxq) / det, (sqy * sxx - sxy * sxq) / det


def command_payload(channel: int, c: Constants) -> bytes:
    """The ``T_CALIBRATE`` payload setting ``c`` on ``channel`` (absolute: a retry is harmless)."""
    if not 0 <= channel <= 255:
        raise CalibrationError("channel: 0..255")
    if not (0 < c.ical < 4000 and 0 <= c.vcal < 4000 and abs(c.phase_deg) < 2000):
        raise CalibrationError("constants out of what the frame carries")
    payload: bytes = frame.pack_calibrate(channel, frame.M_CONSTANTS, round(c.ical * UNIT),
                                          round(c.vcal * UNIT), round(c.phase_deg * UNIT))
    return payload


def reference_payload(channel: int, voltage_v: float = 0.0, current_a: float = 0.0,
                      power_w: float = 0.0) -> bytes:
    """The ``T_CALIBRATE`` payload of a known load on ``channel`` now (Tasmota's VoltageSet,
    CurrentSet, PowerSet): the node scales its constants so that it reads these (0: not given)."""
    if not 0 <= channel <= 255:
        raise CalibrationError("channel: 0..255")
    if not all(math.isfinite(x) for x in (voltage_v, current_a, power_w)):
        raise CalibrationError("the known load's values must be numbers")
    if voltage_v < 0 or current_a < 0 or not (voltage_v or current_a or power_w):
        raise CalibrationError("give the known load's voltage, current or power")
    if voltage_v > 1000 or current_a > 1000 or abs(power_w) > 1_000_000:
        raise CalibrationError("a known load of at most 1000 V, 1000 A, 1 MW")
    payload: bytes = frame.pack_calibrate(channel, frame.M_REFERENCE, round(voltage_v * 1000),
                                          round(current_a * 1000), round(power_w * 10))
    return payload


_Row = tuple[float, ...]  # node: (V, P, S); reference: (V, P)


@dataclass
class _Bin:
    node: list[_Row] = field(default_factory=list)
    ref: list[_Row] = field(default_factory=list)


class PairCollector:
    """Readings of one node channel and of the reference meter in, paired interval means out.

    ``node(t_ms, v, p, s)`` and ``ref(t_ms, v, p)`` file a reading in the interval of ``t_ms``;
    ``pairs()`` gives the means of every interval with at least ``MIN_SAMPLES`` readings of each
    side at its steady load: readings whose real power is off the interval's median by more than
    ``steady`` of it are left out (a load switched inside the interval, a frame whose windows
    span the switch), and an interval where fewer than half are steady is left out whole."""

    def __init__(self, interval_ms: int = 60_000, steady: float = 0.03) -> None:
        if interval_ms <= 0 or not 0 < steady < 1:
            raise ValueError("interval_ms > 0 and 0 < steady < 1")
        self.interval_ms = interval_ms
        self.steady = steady
        self._bins: dict[int, _Bin] = {}

    def _bin(self, t_ms: int) -> _Bin:
        return self._bins.setdefault(t_ms - t_ms % self.interval_ms, _Bin())

    def node(self, t_ms: int, v: float, p: float, s: float) -> None:
        self._bin(t_ms).node.append((v, p, s))

    def ref(self, t_ms: int, v: float, p: float) -> None:
        self._bin(t_ms).ref.append((v, p))

    def prune(self, before_ms: int) -> None:
        """Drop the intervals that started before ``before_ms`` (bounds the memory a session
        holds while the loads do not vary enough)."""
        for start in [s for s in self._bins if s < before_ms]:
            del self._bins[start]

    def _steady(self, rows: list[_Row]) -> list[_Row]:
        ps = sorted(r[1] for r in rows)
        med = ps[len(ps) // 2]
        keep = [r for r in rows if abs(r[1] - med) <= self.steady * max(abs(med), 1.0)]
        return keep if 2 * len(keep) > len(rows) else []

    def pairs(self) -> list[Pair]:
        out = []
        for start in sorted(self._bins):
            b = self._bins[start]
            if not b.node or not b.ref:
                continue
            node = self._steady(b.node)
            ref = self._steady(b.ref)
            if len(node) < MIN_SAMPLES or len(ref) < MIN_SAMPLES:
                continue
            n, m = len(node), len(ref)
            out.append(Pair(sum(x[0] for x in node) / n, sum(x[1] for x in node) / n,
                            sum(x[2] for x in node) / n, sum(r[0] for r in ref) / m,
                            sum(r[1] for r in ref) / m))
        return out


@dataclass(eq=False)
class Session:
    """One calibration under way: node ``node_id``'s CT ``channel`` against the Modbus meter
    ``reference`` (its quantity ``voltage`` and its real power), starting from the constants the
    node reads with now. The daemon feeds it (``Gateway.calibrations``: ``node_frame``,
    ``meter_reading``); ``command()`` fits and gives the payload and the new constants, which
    ``Gateway.send_node_command(node_id, frame.T_CALIBRATE, payload, channel)`` delivers."""

    node_id: int
    channel: int
    reference: str
    constants: Constants
    interval_ms: int = 60_000
    voltage: str = "voltage"
    collector: PairCollector = field(init=False)
    # frames of the channel without a voltage (none can be paired)
    no_voltage: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.collector = PairCollector(self.interval_ms)

    def node_frame(self, t_ms: int, reading: dict[str, int]) -> None:
        """A verified READING of the node (``frame.unpack_reading``'s fields)."""
        if reading["channel"] == self.channel and reading["flags"] & frame.F_NO_VOLTAGE:
            self.no_voltage += 1
        elif reading["channel"] == self.channel and not reading["flags"] & (
            frame.F_ADC_CLIPPED | frame.F_SAMPLING_BEHIND | frame.F_NO_VOLTAGE
        ):
            self.collector.node(t_ms, reading["voltage_dv"] / 10, reading["power_dw"] / 10,
                                reading["apparent_dva"] / 10)

    def meter_reading(self, meter_id: str, t_ms: int, values: Mapping[str, float],
                      power_w: float) -> None:
        """A reading of a Modbus meter (its decoded quantities and its real power)."""
        if meter_id == self.reference and self.voltage in values:
            self.collector.ref(t_ms, values[self.voltage], power_w)

    def command(self) -> tuple[Fit, Constants, bytes]:
        """(fit, new constants, T_CALIBRATE payload); ``CalibrationError`` if it cannot tell."""
        f = fit(self.collector.pairs())
        new = f.apply(self.constants)
        return f, new, command_payload(self.channel, new)
