"""Automatic calibration from the config: each ``[[calibration]]`` entry becomes a session
(``gateway.calibration.Session``) that the ingest path feeds; when enough paired intervals fit
within the entry's bounds, the constants go to the node (with ``apply = true``) and the outcome
is kept in the gateway's store, so a restart does not calibrate the channel again unless the
entry's ``round`` is raised.

``Calibrator`` is sans-IO (time passed in, the store's records passed in and handed back as
``Save``); ``run`` is the thin asyncio loop the daemon spawns: it sends through the relay
commander and writes the records through a callable.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from firmware import frame
from gateway.calibration import CalibrationError, Constants, Fit, Session
from gateway.clock import Clock
from gateway.config import CalibrationConfig
from gateway.sources.base import SourceError

log = logging.getLogger(__name__)

KEY_PREFIX = "calibration:"  # store key of a channel's record: "calibration:<node>.<channel>"
KEEP_INTERVALS = 8  # paired intervals kept per point asked for: older ones are dropped
APPLIED, REFUSED, FITTED = "applied", "refused", "fitted"  # a record's outcomes
COLLECTING, SENDING = "collecting", "sending"  # and a run's states while under way


def store_key(node_id: int, channel: int) -> str:
    return f"{KEY_PREFIX}{node_id}.{channel}"


@dataclass(frozen=True, slots=True)
class SendCalibration:
    """Send ``payload`` (``T_CALIBRATE``) to ``node_id``; report with ``sent``/``send_failed``."""

    key: str
    node_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Save:
    """Keep ``record`` under ``key`` in the store."""

    key: str
    record: dict[str, Any]


def _number(x: Any) -> bool:
    return (type(x) is float and math.isfinite(x)) or (type(x) is int and abs(x) < 10**9)


def _valid(record: Any) -> bool:
    """A record as ``Calibrator`` writes it (one the store mangled is left aside, logged)."""
    return (isinstance(record, Mapping) and record.get("state") in (APPLIED, REFUSED, FITTED)
            and type(record.get("round")) is int
            and all(_number(record.get(k)) for k in ("ical", "vcal", "phase_deg")))  # fmt: skip


class _Run:
    """One configured channel: its session while under way, its record once done."""

    def __init__(self, cfg: CalibrationConfig, record: Mapping[str, Any] | None) -> None:
        if record is not None and not _valid(record):
            log.warning("calibration record of node %d channel %d is not readable: ignored",
                        cfg.node_id, cfg.channel)
            record = None
        self.cfg = cfg
        self.key = store_key(cfg.node_id, cfg.channel)
        self.record = dict(record) if record else None
        self.session: Session | None = None
        self.state = str(record["state"]) if record else COLLECTING
        self.error = ""
        self.pending: tuple[Fit, Constants, bytes] | None = None
        self.retry_ms = 0
        done = record is not None and record["round"] >= cfg.round and (
            record["state"] in (APPLIED, REFUSED) or not cfg.apply
        )
        if done:
            return
        start = Constants(cfg.ical, cfg.vcal, cfg.phase_deg)
        if record is not None and record.get("state") == APPLIED:
            # a new round starts from what the node reads with now: what was sent last time
            start = Constants(float(record["ical"]), float(record["vcal"]),
                              float(record["phase_deg"]))  # fmt: skip
        self.state = COLLECTING
        self.session = Session(cfg.node_id, cfg.channel, cfg.reference, start,
                               interval_ms=cfg.interval_s * 1000, voltage=cfg.voltage)

    def out_of_bounds(self, f: Fit) -> str:
        c = self.cfg
        for name, gain in (("current", f.gain_i), ("voltage", f.gain_v)):
            if abs(gain - 1) > c.max_gain_change:
                return f"{name} gain {gain:.4f} is beyond max_gain_change {c.max_gain_change}"
        if abs(f.phase_deg) > c.max_phase_deg:
            return f"phase change {f.phase_deg:.2f} deg is beyond max_phase_deg {c.max_phase_deg}"
        return ""


class Calibrator:
    """The configured calibrations. ``records`` are what the store kept (by ``store_key``)."""

    def __init__(
        self,
        cfgs: tuple[CalibrationConfig, ...],
        records: Mapping[str, Mapping[str, Any]],
        feed: list[Session],
    ) -> None:
        """``feed``: the list of sessions being fed (``Ingest.calibrations``); a run's session
        is in it until the run is done."""
        self.runs = [_Run(c, records.get(store_key(c.node_id, c.channel))) for c in cfgs]
        self.feed = feed
        feed.extend(r.session for r in self.runs if r.session is not None)

    def _record(self, run: _Run, state: str, fit: Fit, new: Constants, now_ms: int,
                status: int | None = None) -> Save:
        if run.session in self.feed:
            self.feed.remove(run.session)
        run.state, run.session, run.pending = state, None, None
        run.record = {
            "round": run.cfg.round, "state": state, "t_ms": now_ms, "reference": run.cfg.reference,
            "ical": new.ical, "vcal": new.vcal, "phase_deg": new.phase_deg,
            "gain_i": fit.gain_i, "gain_v": fit.gain_v, "phase_change_deg": fit.phase_deg,
            "residual": fit.residual, "pairs": fit.pairs, "phase_fitted": fit.phase_fitted,
            "status": status,
        }  # fmt: skip
        return Save(run.key, run.record)

    def due(self, now_ms: int) -> list[SendCalibration | Save]:
        """Fit every session that has enough intervals; what to send and what to keep."""
        out: list[SendCalibration | Save] = []
        for run in self.runs:
            if run.session is not None:  # fed while it collects and while its command is out
                collector = run.session.collector
                collector.prune(now_ms - KEEP_INTERVALS * run.cfg.points * collector.interval_ms)
            if run.state == SENDING and run.pending is not None and now_ms >= run.retry_ms:
                out.append(SendCalibration(run.key, run.cfg.node_id, run.pending[2]))
                run.retry_ms = now_ms + run.cfg.interval_s * 1000
                continue
            if run.session is None or run.state != COLLECTING:
                continue
            if len(run.session.collector.pairs()) < run.cfg.points:
                if run.session.no_voltage:
                    run.error = "the node's channel sends no voltage (no voltage sensor)"
                continue
            try:
                f, new, payload = run.session.command()
            except CalibrationError as exc:
                run.error = str(exc)
                continue
            run.error = run.out_of_bounds(f)
            if run.error:
                continue
            log.info("calibration of node %d channel %d: gains I %.4f V %.4f, phase %+.2f deg "
                     "over %d intervals (residual %.2f %%)", run.cfg.node_id, run.cfg.channel,
                     f.gain_i, f.gain_v, f.phase_deg, f.pairs, 100 * f.residual)  # fmt: skip
            if not run.cfg.apply:
                out.append(self._record(run, FITTED, f, new, now_ms))
                continue
            run.state, run.pending = SENDING, (f, new, payload)
            out.append(SendCalibration(run.key, run.cfg.node_id, payload))
            run.retry_ms = now_ms + run.cfg.interval_s * 1000
        return out

    def _run(self, key: str) -> _Run:
        return next(r for r in self.runs if r.key == key)

    def sent(self, key: str, status: int, now_ms: int) -> Save:
        """The node's answer to the calibration sent for ``key``."""
        run = self._run(key)
        assert run.pending is not None
        f, new, _ = run.pending
        return self._record(run, APPLIED if status == frame.S_OK else REFUSED, f, new, now_ms,
                            status)  # fmt: skip

    def send_failed(self, key: str, error: str) -> None:
        """No answer (or no way to the node): sent again ``interval_s`` later (the constants are
        absolute, so a command that did arrive is harmless to repeat)."""
        self._run(key).error = error

    def next_ms(self, now_ms: int) -> int:
        """When ``due`` is next worth calling: the shortest interval of the runs under way."""
        steps = [r.cfg.interval_s * 1000 for r in self.runs if r.state in (COLLECTING, SENDING)]
        return now_ms + min(steps) if steps else now_ms + 3_600_000

    def status(self) -> dict[str, Any]:
        """Per channel (``"<node>.<channel>"``): state, pairs so far, last refusal, record."""
        out: dict[str, Any] = {}
        for r in self.runs:
            entry: dict[str, Any] = {"state": r.state, "reference": r.cfg.reference,
                                     "apply": r.cfg.apply, "round": r.cfg.round}
            if r.session is not None:
                entry["pairs"] = len(r.session.collector.pairs())
                entry["needed"] = r.cfg.points
            if r.error:
                entry["error"] = r.error
            if r.record is not None:
                entry["record"] = dict(r.record)
            out[r.key.removeprefix(KEY_PREFIX)] = entry
        return out


async def run(
    cal: Calibrator,
    clock: Clock,
    send: Callable[[int, int, bytes], Awaitable[int]],
    save: Callable[[str, dict[str, Any]], None],
) -> None:
    """The daemon's loop: fit when due, send through ``send`` (the relay commander), keep the
    outcome through ``save`` (a record the store refused is tried again next round)."""
    unsaved: list[Save] = []

    def keep(item: Save) -> None:
        unsaved.append(item)
        while unsaved:
            try:
                save(unsaved[0].key, unsaved[0].record)
            except Exception:  # the store refused (locked, full): keep it for the next round
                log.exception("calibration record %s not stored yet", unsaved[0].key)
                return
            unsaved.pop(0)

    while True:
        await clock.sleep_until(cal.next_ms(clock.now_ms()))
        for action in cal.due(clock.now_ms()):
            if isinstance(action, Save):
                keep(action)
                continue
            try:
                status = await send(action.node_id, frame.T_CALIBRATE, action.payload)
            except (SourceError, TimeoutError) as exc:
                log.warning("calibration of %s not delivered (%s); sending again later",
                            action.key, exc)
                cal.send_failed(action.key, str(exc))
                continue
            result = cal.sent(action.key, status, clock.now_ms())
            keep(result)
            if status == frame.S_OK:
                log.info("calibration %s applied: %s", action.key, result.record)
            else:
                log.warning("calibration %s refused by the node (status %d)", action.key, status)
