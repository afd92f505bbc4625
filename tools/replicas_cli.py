"""``wattmesh replicas show|add|remove|approve``: the ledger's replica set, changed by members.

A change is a quorum proposal (``quorum.propose`` with the action ``replicas``, see
ledger/contract/README.md) that names the whole new set; members approve it
(``quorum.approve``) and it executes when more than ``quorum_pct`` % of them have. The
replicas switch to the new set at a checkpoint after it (ledger/pbft/README.md,
"Reconfiguration"); a new replica is started with ``wattmesh ledger run --replica N --address
IP:PORT`` and its own key, and joins by state transfer.

* ``show``: the set ordering the ledger now (``ledger.replicas``, f+1 replicas agreeing).
* ``add --address IP:PORT --public-key HEX|FILE.pub [--id N]``: propose the current set plus
  one replica (the next id by default: ids are never reused).
* ``remove --replica N``: propose the current set without replica N.
* ``approve --proposal-id ID``: approve a proposal (a member's wallet key).

Keys are files (``--key``, mode 0600), never arguments. Output is JSON; a refusal by the ledger
is exit code 1 with its code and message, bad arguments exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from ledger.argtypes import int_in
from ledger.contract.api import MAX_REPLICA_ID, MIN_REPLICAS
from ledger.keys import KeyFileError, load_key
from ledger.setup import SetupError, parse_address, read_public_key
from tools.cli_error import CliError, reporting
from tools.ledger_answer import print_answer


class ReplicasError(CliError):
    """A usage error: one line, exit code 2."""


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text, "--address")
    except SetupError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _public_key(text: str) -> str:
    try:
        return read_public_key(text, "--public-key")
    except SetupError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_replica_id = int_in(0, MAX_REPLICA_ID, "a replica id")


def new_set(current: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The proposed set: the current one with a replica added or removed."""
    replicas = [dict(r) for r in current["replicas"]]
    if args.action == "remove":
        kept = [r for r in replicas if r["id"] != args.replica]
        if len(kept) == len(replicas):
            raise ReplicasError(f"--replica: {args.replica} is not in the set")
        if len(kept) < MIN_REPLICAS:
            raise ReplicasError(f"a set keeps at least {MIN_REPLICAS} replicas")
        return kept
    key = args.public_key
    rid = args.id if args.id is not None else max(r["id"] for r in replicas) + 1
    if rid in {r["id"] for r in replicas} or rid > MAX_REPLICA_ID:
        raise ReplicasError(f"--id: {rid} is taken or out of range")
    host, port = args.address
    return sorted(
        [*replicas, {"id": rid, "host": host, "port": port, "public_key": key}],
        key=lambda r: r["id"],
    )


async def _run(args: argparse.Namespace) -> Any:
    from ledger_client.client import LedgerClient

    try:
        key = load_key(Path(args.key)) if getattr(args, "key", None) else None
    except (KeyFileError, OSError) as exc:
        raise ReplicasError(f"--key: {exc}") from None
    async with LedgerClient.from_cluster_file(args.cluster, key, timeout_s=args.timeout) as c:
        await c.refresh_replicas()  # a cluster file older than the set still reaches it
        current = await c.query_agreed("ledger.replicas", c.f + 1, {})
        if args.action == "show":
            return current
        if args.action == "approve":
            receipt = await c.submit_new("quorum.approve", {"proposal_id": args.proposal_id})
        else:
            action = {"kind": "replicas", "replicas": new_set(current, args)}
            body = {"proposal_id": args.proposal_id, "action": action}
            receipt = await c.submit_new("quorum.propose", body)
    return {"code": receipt.code, "message": receipt.message, "result": dict(receipt.result)}


def cmd(args: argparse.Namespace) -> int:
    return print_answer(lambda: asyncio.run(_run(args)))


def register(subparsers: Any) -> None:
    top = subparsers.add_parser("replicas", help="the ledger's replica set, changed by members")
    sub = top.add_subparsers(dest="action", metavar="ACTION", required=True)
    parsers = {
        "show": sub.add_parser("show", help="the set ordering the ledger now"),
        "add": sub.add_parser("add", help="propose the set plus one replica"),
        "remove": sub.add_parser("remove", help="propose the set without one replica"),
        "approve": sub.add_parser("approve", help="approve a proposal (a member)"),
    }
    for name, p in parsers.items():
        p.add_argument("--cluster", required=True, help="the ledger's cluster.json")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds for the ledger")
        if name != "show":
            p.add_argument("--key", required=True, help="your wallet key file (mode 0600)")
            p.add_argument("--proposal-id", required=True)
    parsers["add"].add_argument("--address", required=True, type=_address, metavar="IP:PORT")
    parsers["add"].add_argument("--public-key", required=True, type=_public_key,
                                help="64 hex or a .pub file")  # fmt: skip
    parsers["add"].add_argument("--id", type=_replica_id, default=None)
    parsers["remove"].add_argument("--replica", required=True, type=_replica_id)
    top.set_defaults(func=reporting(cmd))
