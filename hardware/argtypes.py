"""argparse types shared by the command lines of the emulators and the tools: one wording of
"not a whole number", "not a number" and "out of range" for every command (tools import this;
the emulators' own commands may not import tools)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_in(lo: int, hi: int, name: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in [lo, hi] (decimal digits only)."""
    prefix = f"{name} {{!r}}: " if name else "{!r}: "

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(prefix.format(text) + "not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(prefix.format(text) + f"must be in {lo}..{hi}")
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
