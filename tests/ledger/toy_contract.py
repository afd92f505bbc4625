"""A small deterministic contract for the ledger's IO tests: a counter per sender and a list of
notes. It exists so the replica processes can be tested independently of the real contract."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from ledger.contract.api import BlockContext, QueryError, Receipt, Transaction
from ledger.encoding import EncodingError, canonical, decode


class ToyContract:
    def __init__(self, genesis: Mapping[str, Any]) -> None:
        self.state: dict[str, Any] = {"counts": {}, "notes": [], "genesis": dict(genesis)}

    def apply(self, tx: Transaction, ctx: BlockContext) -> Receipt:
        if tx.kind == "toy.add":
            amount = tx.body.get("amount")
            if isinstance(amount, bool) or not isinstance(amount, int):
                return Receipt(code="BAD_AMOUNT", message="amount must be an integer")
            who = tx.sender.hex()
            counts = self.state["counts"]
            counts[who] = counts.get(who, 0) + amount
            return Receipt(result={"total": counts[who], "height": ctx.height})
        if tx.kind == "toy.note":
            self.state["notes"].append(str(tx.body.get("text", "")))
            return Receipt(result={"n": len(self.state["notes"])})
        return Receipt(code="UNKNOWN_KIND", message=tx.kind)

    def query(self, path: str, params: Mapping[str, Any]) -> Any:
        if path == "count":
            who = params.get("sender")
            if not isinstance(who, str):
                raise QueryError("sender must be hex")
            return self.state["counts"].get(who, 0)
        if path == "notes":
            return list(self.state["notes"])
        raise QueryError(f"unknown query {path!r}")

    def state_digest(self) -> bytes:
        return hashlib.sha256(canonical(self.state)).digest()

    def snapshot(self) -> bytes:
        return canonical(self.state)

    def restore(self, data: bytes) -> None:
        try:
            value = decode(data)
        except EncodingError as exc:
            raise ValueError(str(exc)) from exc
        self.state = value


def make_contract(genesis: Mapping[str, Any]) -> ToyContract:
    return ToyContract(genesis)
