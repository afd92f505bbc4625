"""``python -m ledger ACTION ...``: the same commands as ``wattmesh ledger ACTION``. Replica
processes are started this way so a child needs nothing but the ledger package."""

from __future__ import annotations

import argparse
import sys

from ledger.cli import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ledger", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
