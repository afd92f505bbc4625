"""The `wattmesh` command.

Each part of the project contributes its own sub-commands: a module listed in ``COMMAND_MODULES``
defines ``register(subparsers)`` and, for benchmarks, a module in ``BENCH_MODULES`` defines
``register_bench(bench_subparsers)``. Each sub-command sets ``func`` (returning an exit code) with
``parser.set_defaults(func=...)``. This file only wires them together, so parts never edit each
other's command code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

COMMAND_MODULES: tuple[str, ...] = (
    "ledger.cli",  # wattmesh ledger init|run|cluster|status|verify
    "gateway.gateway_cli",  # wattmesh gateway run|check|status|pubkey
    "gateway.ems.ems_cli",  # wattmesh ems plan
    "hardware.emulate_cli",  # wattmesh emulate meter|plug|node
    "tools.firmware_cli",  # wattmesh firmware build|flash, wattmesh provision node|gateway
    "tools.operator_cli",  # wattmesh operator member|meter|res|pubkey|dr
    "tools.replicas_cli",  # wattmesh replicas show|add|remove|approve
    "tools.node_cli",  # wattmesh node calibrate
    "tools.demo",  # wattmesh demo
)

BENCH_MODULES: tuple[str, ...] = (
    "tools.ledger_bench",  # wattmesh bench ledger
    "tools.ledger_abuse_bench",  # wattmesh bench ledger-abuse
    "ledger.contract.bench",  # wattmesh bench auction
    "gateway.bench",  # wattmesh bench ingest
    "gateway.ems.bench",  # wattmesh bench ems
    "tools.ble_bench",  # wattmesh bench ble
    "tools.firmware_cli",  # wattmesh bench firmware
)


def _load(name: str) -> ModuleType | None:
    """Import a command module; a part that is not installed yet is skipped, any other error is
    raised so a broken module is never silently hidden."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattmesh",
        description="Edge stack for renewable-energy communities trading energy peer to peer.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = _load(name)
        if module is not None:
            module.register(sub)
    bench = sub.add_parser("bench", help="benchmarks that print their figures as JSON")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    for name in BENCH_MODULES:
        module = _load(name)
        if module is not None:
            module.register_bench(bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
