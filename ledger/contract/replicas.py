"""The ledger's replica set as members decide it: the quorum action ``replicas``.

A proposal ``{"kind": "replicas", "replicas": [{"id", "host", "port", "public_key"}, ...]}``
names the whole new set (4 to 64 replicas, ids increasing). Executed by a quorum of members
(``quorum.py``, the same approvals as a mint), it is appended to ``replica_sets`` with the
height of its block; the consensus core reads that list after every block
(``reconfigurations``) and switches to the new set at a checkpoint after it
(``ledger/pbft/epochs.py``). The contract checks the form and the rules it can see: a replica
keeps its key, an id once used is never given to another key (the first set, in the cluster
file, is the core's to compare with; a change that breaks the rules against it is ignored by
every replica alike).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ledger.contract import fields as f
from ledger.contract.api import MAX_REPLICA_ID, MAX_REPLICAS, MIN_REPLICAS
from ledger.contract.codes import BAD_BODY, BAD_REPLICA_SET, Rejected
from ledger.contract.state import ContractState

FIELDS = ("host", "id", "port", "public_key")


def read_replicas(action: Any) -> list[dict[str, Any]]:
    """The action's replica list, checked for form; ``Rejected(BAD_BODY)`` names the fault."""
    raw = action.get("replicas")
    if not isinstance(raw, list) or not MIN_REPLICAS <= len(raw) <= MAX_REPLICAS:
        raise Rejected(BAD_BODY, f"replicas must be a list of {MIN_REPLICAS}-{MAX_REPLICAS}")
    out: list[dict[str, Any]] = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict):
            raise Rejected(BAD_BODY, f"replicas[{n}] must be an object")
        f.exact(item, FIELDS)
        rid, port = f.integer(item, "id"), f.integer(item, "port")
        if not 0 <= rid <= MAX_REPLICA_ID or not 0 < port < 65536:
            raise Rejected(BAD_BODY, f"replicas[{n}]: id in 0..{MAX_REPLICA_ID}, port in 1..65535")
        host = item["host"]
        try:
            ipaddress.ip_address(host if isinstance(host, str) else "")
        except ValueError:
            raise Rejected(BAD_BODY, f"replicas[{n}].host must be an IP address") from None
        if out and rid <= out[-1]["id"]:
            raise Rejected(BAD_BODY, "replicas: ids must increase")
        key = f.key_hex(item, "public_key")
        out.append({"host": host, "id": rid, "port": port, "public_key": key})
    if len({r["public_key"] for r in out}) != len(out):
        raise Rejected(BAD_REPLICA_SET, "replicas: a key is named twice")
    if len({(r["host"], r["port"]) for r in out}) != len(out):
        raise Rejected(BAD_REPLICA_SET, "replicas: an address is named twice")
    return out


def check(st: ContractState, replicas: list[dict[str, Any]]) -> None:
    """Against the sets recorded before: an id keeps its key, and a key its id."""
    by_id: dict[int, str] = {}
    for change in st.data["replica_sets"]:
        for r in change["replicas"]:
            by_id[r["id"]] = r["public_key"]
    by_key = {key: rid for rid, key in by_id.items()}
    for r in replicas:
        if by_id.get(r["id"], r["public_key"]) != r["public_key"]:
            raise Rejected(BAD_REPLICA_SET, f"replica {r['id']} had another key")
        if by_key.get(r["public_key"], r["id"]) != r["id"]:
            raise Rejected(BAD_REPLICA_SET, f"that key was replica {by_key[r['public_key']]}'s")


def execute(st: ContractState, replicas: list[dict[str, Any]], height: int) -> dict[str, Any]:
    st.data["replica_sets"].append({"height": height, "replicas": replicas})
    return {"replica_sets": len(st.data["replica_sets"])}
