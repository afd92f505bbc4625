"""Fold energy counter samples into fixed intervals (15 minutes) per meter. Sans-IO.

Input: samples ``(meter_id, t_ms, import_mwh, export_mwh)`` of a meter's cumulative counters.
Output: closed ``Interval`` records with imported and exported Wh.

- The energy between two samples is split over the interval boundaries it crosses in proportion
  to time (integer arithmetic; nothing is created or lost by the split).
- Wh are whole: the sub-Wh remainder of an interval is carried into the next one, so the sum of
  the reported Wh always equals the counter's advance (to within the last carry).
- A counter that goes backwards is a roll-over if it wrapped past its modulus (flag ``ROLLOVER``),
  else a reset (flag ``RESET``; the energy since the reset is its new value), unless the sample
  says the node restored its counters from flash after a reboot (flag ``RESTORED``): then it
  counts on from there, and the step back is no energy at all.
- An advance larger than the meter's maximum power allows is implausible: the sample is dropped
  and flagged; after ``REBASE_AFTER`` such samples in a row the counter is re-based (``REBASED``).
- A sample whose node saw its ADC clip flags the intervals its energy lands in ``CLIPPED``: a
  current past the clamp's range reads low, so that energy is a lower bound. Likewise ``BEHIND``
  (the node's sampling fell behind its period) and ``SIGN_UNKNOWN`` (a meter that reports
  unsigned power: exported energy was counted as import).
- An interval that closes without any sample is emitted with 0 Wh and ``MISSING``; the energy
  accrued over the gap is not zeroed but attributed to the interval where the counter is next
  read, flagged ``GAP``. Closed intervals are never changed afterwards (they may be reported).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ledger.contract.metering import REPORT_FLAGS

INTERVAL_MS = 15 * 60 * 1000
DEFAULT_GRACE_MS = 30 * 1000
DEFAULT_GAP_MS = 5 * 60 * 1000
REBASE_AFTER = 3

RESET = 1
ROLLOVER = 2
GAP = 4
MISSING = 8
IMPLAUSIBLE = 16
REBASED = 32
RESTORED = 64
LATE = 128
CLIPPED = 256  # the node's ADC clipped (current past the clamp's range): energy reads low
BEHIND = 512  # the node's CT sampling fell behind its period: that window's timing was off
SIGN_UNKNOWN = 1024  # the meter cannot tell export from import (PZEM-004T): all counted as import
SAMPLE_FLAGS = RESTORED | CLIPPED | BEHIND | SIGN_UNKNOWN  # those a sample brings with it
# The names are the ledger's (the flags a signed meter report carries): bit i is entry i.
FLAG_NAMES = {1 << i: name for i, name in enumerate(REPORT_FLAGS)}


def flag_names(flags: int) -> list[str]:
    """The flags' names in the ledger's order (as a meter report lists them)."""
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


def interval_name(start_ms: int) -> str:
    """Ledger name of the interval starting at ``start_ms``, e.g. ``"2026-11-24T13:15"`` (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(start_ms // 1000))


@dataclass(frozen=True, slots=True)
class Interval:
    meter_id: str
    start_ms: int
    import_wh: int
    export_wh: int
    flags: int
    samples: int

    @property
    def name(self) -> str:
        return interval_name(self.start_ms)


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """What the aggregator must know about a meter's counters. ``modulus`` is where the counter
    wraps (in mWh; ``None`` for counters that do not wrap); ``max_power_w`` bounds plausibility."""

    modulus_mwh: int | None = None
    max_power_w: int = 100_000


@dataclass(slots=True)
class _Bucket:
    imp_mwh: int = 0
    exp_mwh: int = 0
    flags: int = 0
    samples: int = 0


@dataclass(slots=True)
class _Meter:
    spec: MeterSpec
    open_start: int | None = None
    last_ts: int | None = None
    last_imp: int = 0
    last_exp: int = 0
    carry_imp: int = 0
    carry_exp: int = 0
    implausible_run: int = 0
    buckets: dict[int, _Bucket] = field(default_factory=dict)


class IntervalAggregator:
    def __init__(
        self,
        *,
        interval_ms: int = INTERVAL_MS,
        grace_ms: int = DEFAULT_GRACE_MS,
        gap_ms: int = DEFAULT_GAP_MS,
    ) -> None:
        if interval_ms <= 0 or grace_ms < 0 or gap_ms <= 0:
            raise ValueError("interval_ms and gap_ms must be positive, grace_ms not negative")
        self.interval_ms = interval_ms
        self.grace_ms = grace_ms
        self.gap_ms = gap_ms
        self._meters: dict[str, _Meter] = {}
        # Saved states of meters not added (yet): a node's channel meter appears with its first
        # frame after a restart. Kept in snapshots until then, so a save in between loses nothing.
        self._dormant: dict[str, Mapping[str, Any]] = {}
        self.rejected = 0

    def add_meter(self, meter_id: str, spec: MeterSpec | None = None) -> None:
        if meter_id not in self._meters:
            self._meters[meter_id] = _Meter(spec or MeterSpec())
            saved = self._dormant.pop(meter_id, None)
            if saved is not None:
                self._restore_one(self._meters[meter_id], saved)

    def meters(self) -> list[str]:
        return sorted(self._meters)

    def _start(self, t_ms: int) -> int:
        return t_ms - t_ms % self.interval_ms

    def _bucket(self, m: _Meter, start: int) -> _Bucket:
        b = m.buckets.get(start)
        if b is None:
            b = m.buckets[start] = _Bucket()
        return b

    def _advance(
        self, m: _Meter, prev: int, cur: int, dt_ms: int, restored: bool
    ) -> tuple[int, int] | None:
        """(energy in mWh, flags) for a counter moving from ``prev`` to ``cur``, or ``None`` if
        the move is implausible. ``restored``: the node rebooted and reloaded its counters from
        flash, which lag what it reported by up to its save step."""
        flags = 0
        if cur >= prev:
            delta = cur - prev
        elif restored:
            # Not a reset: the node counts on from its last save, and what it counted after
            # that save was reported before the reboot. Counting the whole counter as new
            # energy (the reset rule) would bill its lifetime again.
            return 0, 0
        elif (
            m.spec.modulus_mwh is not None
            and m.spec.modulus_mwh > prev > m.spec.modulus_mwh // 2 > cur
        ):
            delta, flags = cur + m.spec.modulus_mwh - prev, ROLLOVER
        else:
            delta, flags = cur, RESET
        # mWh = W * ms / 3600; allow one second of slack and 1 Wh for counter granularity.
        limit = m.spec.max_power_w * (max(dt_ms, 0) + 1000) // 3600 + 1000
        if delta > limit:
            return None
        return delta, flags

    def sample(
        self,
        meter_id: str,
        t_ms: int,
        import_mwh: int,
        export_mwh: int,
        flags: int = 0,
    ) -> bool:
        """Record one counter sample; ``False`` if it was rejected (unknown meter, stale time,
        negative or implausible counters). ``flags``: what the sample says of itself
        (``SAMPLE_FLAGS``), set on the intervals its energy lands in; ``CLIPPED``: the energy
        since the last sample is a lower bound."""
        m = self._meters.get(meter_id)
        if m is None or import_mwh < 0 or export_mwh < 0:
            self.rejected += 1
            return False
        if m.last_ts is not None and t_ms <= m.last_ts:
            self.rejected += 1
            return False
        if m.open_start is None:
            m.open_start = self._start(t_ms)
        extra = flags & SAMPLE_FLAGS
        restored = bool(flags & RESTORED)
        modulus = m.spec.modulus_mwh
        if m.last_ts is None and modulus is not None and max(import_mwh, export_mwh) >= modulus:
            self.rejected += 1
            return False
        if m.last_ts is None:
            m.last_ts, m.last_imp, m.last_exp = t_ms, import_mwh, export_mwh
            b = self._bucket(m, max(self._start(t_ms), m.open_start))
            b.samples += 1
            b.flags |= extra
            return True
        dt = t_ms - m.last_ts
        if modulus is not None and (import_mwh >= modulus or export_mwh >= modulus):
            # A counter beyond where it wraps cannot be real: never count it, never rebase on it.
            self._bucket(m, max(self._start(t_ms), m.open_start)).flags |= IMPLAUSIBLE
            self.rejected += 1
            return False
        imp = self._advance(m, m.last_imp, import_mwh, dt, restored)
        exp = self._advance(m, m.last_exp, export_mwh, dt, restored)
        if imp is None or exp is None:
            m.implausible_run += 1
            b = self._bucket(m, max(self._start(t_ms), m.open_start))
            if m.implausible_run < REBASE_AFTER:
                b.flags |= IMPLAUSIBLE
                self.rejected += 1
                return False
            # The counter really is somewhere else now: start again from here, counting nothing.
            m.implausible_run = 0
            b.flags |= IMPLAUSIBLE | REBASED | extra
            b.samples += 1
            m.last_ts, m.last_imp, m.last_exp = t_ms, import_mwh, export_mwh
            return True
        m.implausible_run = 0
        flags = imp[1] | exp[1] | extra
        if dt > self.gap_ms:
            flags |= GAP
        late = m.last_ts < m.open_start
        if late:
            flags |= GAP
        if t_ms < m.open_start:
            flags |= LATE
        self._spread(
            m, max(m.last_ts, m.open_start), max(t_ms, m.open_start), imp[0], exp[0], flags
        )
        m.last_ts, m.last_imp, m.last_exp = t_ms, import_mwh, export_mwh
        return True

    def _spread(self, m: _Meter, t0: int, t1: int, imp: int, exp: int, flags: int) -> None:
        """Split energy over [t0, t1] across interval buckets in proportion to time."""
        assert m.open_start is not None
        span = t1 - t0
        start = self._start(t0)
        if span <= 0 or self._start(t1 - 1) == start:
            b = self._bucket(m, max(start, m.open_start))
            b.imp_mwh += imp
            b.exp_mwh += exp
            b.flags |= flags
            b.samples += 1
            return
        done_imp = done_exp = 0
        s = start
        while s < t1:
            end = min(s + self.interval_ms, t1)
            upto = end - t0
            cum_imp = imp * upto // span
            cum_exp = exp * upto // span
            b = self._bucket(m, s)
            b.imp_mwh += cum_imp - done_imp
            b.exp_mwh += cum_exp - done_exp
            b.flags |= flags
            done_imp, done_exp = cum_imp, cum_exp
            s += self.interval_ms
        self._bucket(m, self._start(t1 - 1)).samples += 1

    def tick(self, now_ms: int) -> list[Interval]:
        """Close every interval whose end plus the grace period has passed; oldest first."""
        out: list[Interval] = []
        for meter_id in sorted(self._meters):
            m = self._meters[meter_id]
            if m.open_start is None:
                m.open_start = self._start(now_ms)
                continue
            while m.open_start + self.interval_ms + self.grace_ms <= now_ms:
                b = m.buckets.pop(m.open_start, None) or _Bucket(flags=MISSING)
                if b.samples == 0 and b.imp_mwh == 0 and b.exp_mwh == 0:
                    b.flags |= MISSING
                imp = b.imp_mwh + m.carry_imp
                exp = b.exp_mwh + m.carry_exp
                m.carry_imp, m.carry_exp = imp % 1000, exp % 1000
                out.append(
                    Interval(meter_id, m.open_start, imp // 1000, exp // 1000, b.flags, b.samples)
                )
                m.open_start += self.interval_ms
        out.sort(key=lambda i: (i.start_ms, i.meter_id))
        return out

    def next_close_ms(self) -> int | None:
        starts = [m.open_start for m in self._meters.values() if m.open_start is not None]
        return min(starts) + self.interval_ms + self.grace_ms if starts else None

    # Persistence: the state is small and JSON-friendly (ints only).
    def snapshot(self) -> dict[str, Any]:
        return dict(self._dormant) | {
            mid: {
                "open_start": m.open_start,
                "last": None if m.last_ts is None else [m.last_ts, m.last_imp, m.last_exp],
                "carry": [m.carry_imp, m.carry_exp],
                "run": m.implausible_run,
                "buckets": [
                    [s, b.imp_mwh, b.exp_mwh, b.flags, b.samples] for s, b in m.buckets.items()
                ],
            }
            for mid, m in self._meters.items()
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back a ``snapshot``. A meter not added yet gets its state when it is added."""
        for mid, s in state.items():
            m = self._meters.get(mid)
            if m is None:
                self._dormant[mid] = s
            else:
                self._restore_one(m, s)

    @staticmethod
    def _restore_one(m: _Meter, s: Mapping[str, Any]) -> None:
        m.open_start = s["open_start"]
        if s["last"] is not None:
            m.last_ts, m.last_imp, m.last_exp = s["last"]
        m.carry_imp, m.carry_exp = s["carry"]
        m.implausible_run = s["run"]
        m.buckets = {row[0]: _Bucket(row[1], row[2], row[3], row[4]) for row in s["buckets"]}

    def totals_mwh(self, meter_ids: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        """Energy held but not yet closed (buckets plus carries), per meter."""
        out = {}
        for mid in meter_ids or self._meters:
            m = self._meters[mid]
            out[mid] = (
                m.carry_imp + sum(b.imp_mwh for b in m.buckets.values()),
                m.carry_exp + sum(b.exp_mwh for b in m.buckets.values()),
            )
        return out
