"""How a command that asks the ledger (``wattmesh operator ...``) ends: the answer printed as
JSON and exit 0 when the ledger said OK; exit 1, with one line on stderr, when it refused or
could not be reached. A user error (``CliError``) is not the ledger's: ``reporting`` makes it 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def print_answer(ask: Callable[[], Any]) -> int:
    """Run ``ask`` (it talks to the ledger), print what it returns, and say how it went."""
    from ledger_client.client import LedgerError

    try:
        out = ask()
    except (LedgerError, OSError, TimeoutError, ValueError) as exc:
        print(f"wattmesh: the ledger: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1, sort_keys=True))
    return 1 if isinstance(out, dict) and out.get("code", "OK") != "OK" else 0
