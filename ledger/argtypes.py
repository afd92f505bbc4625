"""argparse types shared by every command line (the ledger's, the EMS's, the emulators', the
tools'): one wording of "not a whole number", "not a number" and "out of range" for every
command. It sits in the ledger, the lowest part each of those may import."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_in(lo: int, hi: int | None = None, name: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in [lo, hi], or at least lo without hi (decimal digits
    only)."""
    prefix = f"{name} {{!r}}: " if name else "{!r}: "

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(prefix.format(text) + "not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            span = f"in {lo}..{hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(prefix.format(text) + f"must be {span}")
        return value

    return parse



def float_in(
    lo: float, hi: float, name: str = "", *, above_lo: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi], or in (lo, hi] with ``above_lo`` (nan and
    inf refused)."""
    prefix = f"{name} {{!r}}: " if name else "{!r}: "
    span = f"({lo:g}, {hi:g}]" if above_lo else f"[{lo:g}, {hi:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(prefix.format(text) + "not a number") from None
        above = lo < value if above_lo else lo <= value
        if not (math.isfinite(value) and above and value <= hi):
            raise argparse.ArgumentTypeError(prefix.format(text) + f"must be in {span}")
        return value

    return parse
