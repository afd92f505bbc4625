"""``wattmesh demo``: a renewable-energy community run end to end on this machine.

See ``tools/demo/README.md`` for what runs where. ``register(subparsers)`` adds the command.
"""

from __future__ import annotations

import argparse

from tools.cli_error import reporting
from tools.demo.options import add_arguments, parse_options


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a whole community for a day on emulated hardware",
        description=(
            "Run a renewable-energy community end to end: a 4-replica ledger, N homes with "
            "gateways, emulated meters and plugs and a node on the real firmware, through the "
            "paper's hourly market, with a report and self-checks at the end."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=reporting(_handler, "wattmesh demo"))


def _handler(args: argparse.Namespace) -> int:
    opts = parse_options(args)  # an OptionError is a CliError: one line, exit 2
    from tools.demo.main import run_demo

    return run_demo(opts)
