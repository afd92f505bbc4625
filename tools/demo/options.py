"""The demo's options: parsed by argparse, validated once, with errors that name the option."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from ledger.contract.params import RULES
from tools.cli_error import CliError

MAX_HOUSEHOLDS = 60  # each home is a gateway, a Modbus server and its plugs in one process
MAX_HOURS = 24 * 7
DEFAULT_HOUSEHOLDS = 10
DEFAULT_HOURS = 24
DEFAULT_SEED = 7
DEFAULT_DR = "18-20:1500"  # the grid operator's request: hours (UTC) and W per home
MAX_DR_W = 100_000
MIDSUMMER = (6, 21)  # the default day: the longest one, when the community has PV to trade


class OptionError(CliError, ValueError):
    """A demo option that cannot be used; the message names the option."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    households: int
    hours: int
    out: Path | None
    faults: bool
    seed: int
    date: dt.date
    rule: str
    quiet: bool = False
    dr: tuple[int, int, int] | None = (18, 20, 1500)  # start hour, end hour, W per home


def parse_dr(text: str) -> tuple[int, int, int] | None:
    """``--dr START-END:W`` (hours of the day, UTC, and W per home) or ``none``."""
    if text.strip().lower() == "none":
        return None
    hours, sep, watts = text.partition(":")
    start, dash, end = hours.partition("-")
    if not sep or not dash:
        raise OptionError(f"--dr: expected START-END:W (e.g. {DEFAULT_DR}) or none, got {text!r}")
    lo = _int_in("--dr start hour", start.strip(), 0, 23)
    hi = _int_in("--dr end hour", end.strip(), 1, 24)
    if hi <= lo:
        raise OptionError(f"--dr: the window must end after it starts, got {lo}-{hi}")
    return lo, hi, _int_in("--dr W", watts.strip(), 0, MAX_DR_W)


def _int_in(name: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text, 10)
    except (TypeError, ValueError):
        raise OptionError(f"{name}: expected a whole number, got {text!r}") from None
    if not lo <= value <= hi:
        raise OptionError(f"{name}: must be between {lo} and {hi}, got {value}")
    return value


def _check_out_dir(out: Path) -> None:
    """``--out`` must be a directory this user can write, or one it can create: checked before
    the run, so a bad path never costs a whole run and its results."""
    try:
        exists, is_dir = out.exists(), out.is_dir()
        parent = out.absolute().parent
        while not parent.exists():
            parent = parent.parent
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL
        raise OptionError(f"--out: unusable path {str(out)!r} ({exc})") from None
    if exists:
        if not is_dir:
            raise OptionError(f"--out: {out} exists and is not a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OptionError(f"--out: no permission to write in {out}")
        return
    if not parent.is_dir():
        raise OptionError(f"--out: cannot create {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(f"--out: cannot create {out}: no permission to write in {parent}")


def parse_options(args: argparse.Namespace) -> DemoOptions:
    """Turn argparse's strings into ``DemoOptions``; raises ``OptionError`` naming the option."""
    households = _int_in("--households", str(args.households), 2, MAX_HOUSEHOLDS)
    hours = _int_in("--hours", str(args.hours), 1, MAX_HOURS)
    seed = _int_in("--seed", str(args.seed), 0, 2**32 - 1)
    try:
        date = dt.date.fromisoformat(str(args.date))
    except ValueError:
        raise OptionError(f"--date: expected YYYY-MM-DD, got {args.date!r}") from None
    if not 2000 <= date.year <= 2100:
        raise OptionError(f"--date: year must be between 2000 and 2100, got {date.year}")
    end = dt.datetime.combine(date, dt.time(0), tzinfo=dt.UTC) + dt.timedelta(hours=hours)
    if end > dt.datetime.now(dt.UTC):
        # The replicas stamp blocks with real time and settle an hour only once it has ended.
        raise OptionError(
            f"--date: the {hours} simulated hours from {date} must already be over "
            "(the ledger settles an hour only after it has ended)")
    rule = str(args.rule)
    if rule not in RULES:
        raise OptionError(f"--rule: must be one of {', '.join(RULES)}, got {rule!r}")
    out: Path | None = None
    if args.out is not None:
        if str(args.out).strip() == "":
            raise OptionError("--out: must name a directory")
        out = Path(args.out)
        _check_out_dir(out)
    return DemoOptions(
        households=households,
        hours=hours,
        out=out,
        faults=bool(args.faults),
        seed=seed,
        date=date,
        rule=rule,
        quiet=bool(getattr(args, "quiet", False)),
        dr=parse_dr(str(getattr(args, "dr", DEFAULT_DR))),
    )


def default_date(today: dt.date | None = None) -> str:
    """The most recent 21 June that is already over (the ledger settles only ended hours)."""
    today = today or dt.datetime.now(dt.UTC).date()
    day = dt.date(today.year, *MIDSUMMER)
    if day >= today:
        day = dt.date(today.year - 1, *MIDSUMMER)
    return day.isoformat()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Values are taken as strings and validated by ``parse_options`` so every error reads the same.
    parser.add_argument(
        "--households", default=str(DEFAULT_HOUSEHOLDS), metavar="N",
        help=f"homes in the community, 2..{MAX_HOUSEHOLDS} (default {DEFAULT_HOUSEHOLDS})",
    )
    parser.add_argument(
        "--hours", default=str(DEFAULT_HOURS), metavar="H",
        help=f"hours of community life to run, 1..{MAX_HOURS} (default {DEFAULT_HOURS})",
    )
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write report.html and summary.json here")
    parser.add_argument("--faults", action="store_true",
                        help="kill a replica, drop a BLE link, silence a meter, stop the ledger")
    parser.add_argument("--seed", default=str(DEFAULT_SEED), metavar="S",
                        help=f"seed of the homes, habits and weather (default {DEFAULT_SEED})")
    parser.add_argument("--date", default=default_date(), metavar="YYYY-MM-DD",
                        help="the day to simulate, already over (default: the last 21 June)")
    parser.add_argument("--rule", default="paper", metavar="RULE",
                        help=f"clearing rule: {', '.join(RULES)} (default paper)")
    parser.add_argument("--dr", default=DEFAULT_DR, metavar="START-END:W",
                        help="the grid operator's demand-response request: import at most W per "
                        f"home between these hours (UTC), or none (default {DEFAULT_DR})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only the hour lines")
