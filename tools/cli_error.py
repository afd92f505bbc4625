"""The tools' user errors: a command that refuses its input raises ``CliError``; the handler
``reporting`` wraps prints it as one line on stderr and exits 2 (a traceback is for bugs).

The ledger's, the gateway's and the emulators' commands may not import ``tools``; they keep
their own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def reporting(func: Handler, prog: str = "wattmesh") -> Handler:
    """``func`` as a command's handler: a ``CliError`` it raises is ``prog: message`` on stderr
    and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except CliError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2

    return run
