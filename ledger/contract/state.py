"""The contract's whole state as plain JSON-like data, with its token-moving primitives.

Everything a replica must agree on lives in ``ContractState.data`` (so ``snapshot`` is one canonical
encoding of it); ``_by_key`` is an index rebuilt from it. Balances are micro-tokens.

Accounts: every member has a balance (never negative); open bids hold escrow; the grid is one
more account whose balance may go negative (it is the outside world: the utility that buys
feed-in and sells retail, settled with the operator off the ledger). A member who owes the grid
more than it holds pays what it has and the rest is recorded as debt, paid first out of any
later credit. Invariant, checked by the tests:
``sum(balances) + sum(open escrows) + grid.balance == supply`` (tokens minted by the operator).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger.encoding import canonical, decode

STATE_VERSION = 1


def empty_state(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "params": dict(params),
        "members": {},  # id_grid -> {name, email, public_key, role}
        "balances": {},  # id_grid -> micro-tokens
        "debts": {},  # id_grid -> micro-tokens owed to the grid (only entries > 0)
        "supply": 0,  # micro-tokens minted
        "grid": {"balance": 0, "sold_wh": 0, "bought_wh": 0},
        "res": {},  # res_id -> {owner, kind, rated_power_w}
        # meter_id -> {owner, gateway_key, import_limit_w, export_limit_w, role}
        "meters": {},
        "listings": {},  # listing_id -> listing record (see market.py)
        "reports": {},  # meter_id -> {interval -> [import_wh, export_wh(, [flags])]}
        "hourly": {},  # listing_id -> {id_grid -> [import_wh, export_wh]} from members' reports
        "mcp_history": [],  # [{listing_id, rule, mcp, height}] in order of clearing
        "seq": 0,  # last order sequence number handed out (FIFO across all listings)
        "applications": {},  # public key hex -> {id_grid, role, at_ms} (admission.py)
    }


class ContractState:
    __slots__ = ("_by_key", "data")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._by_key: dict[str, str] = {}
        self.reindex()

    def reindex(self) -> None:
        self._by_key = {m["public_key"]: i for i, m in self.data["members"].items()}

    # identities
    def member_of(self, sender: bytes) -> str | None:
        return self._by_key.get(sender.hex())

    def key_in_use(self, key_hex: str) -> bool:
        return key_hex in self._by_key

    def role(self, id_grid: str) -> str:
        return str(self.data["members"][id_grid]["role"])

    def add_member(self, id_grid: str, record: dict[str, Any]) -> None:
        self.data["members"][id_grid] = record
        self.data["balances"][id_grid] = 0
        self._by_key[record["public_key"]] = id_grid

    # tokens
    def balance(self, id_grid: str) -> int:
        return int(self.data["balances"][id_grid])

    def credit(self, id_grid: str, amount: int) -> None:
        """Add to a member's balance, paying any debt to the grid first."""
        debts = self.data["debts"]
        if debts and id_grid in debts:
            paid = min(debts[id_grid], amount)
            if paid == debts[id_grid]:
                del debts[id_grid]
            else:
                debts[id_grid] -= paid
            self.data["grid"]["balance"] += paid
            amount -= paid
        self.data["balances"][id_grid] += amount

    def debit(self, id_grid: str, amount: int) -> None:
        """Take from a member's balance; the caller has checked it is enough."""
        balances = self.data["balances"]
        assert balances[id_grid] >= amount, "debit beyond balance"
        balances[id_grid] -= amount

    def next_seq(self) -> int:
        self.data["seq"] += 1
        return int(self.data["seq"])

    # persistence
    def snapshot(self) -> bytes:
        return canonical(self.data, checked=False)

    @classmethod
    def from_snapshot(cls, raw: bytes) -> ContractState:
        data = decode(raw)
        if (
            not isinstance(data, dict)
            or data.get("version") != STATE_VERSION
            or set(data) != set(empty_state({}))
        ):
            raise ValueError("not a snapshot of this contract's state")
        return cls(data)
