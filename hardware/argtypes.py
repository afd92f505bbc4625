"""argparse types shared by the command lines of the emulators and the tools: one wording of
"not a whole number" and "out of range" for every command (tools import this; the emulators'
own commands may not import tools)."""

from __future__ import annotations

import argparse
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
