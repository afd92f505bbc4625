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

# 2 (one bump for issue 17's admission and keys, and issue 18's market as merged with them):
# commitments and order keys in members, retired keys, proposals, the registry log, unconfirmed
# meters, applications; meters' limits and roles, sealed listings. 3: replica_sets.
MAX_SNAPSHOT_BYTES = 1 << 30  # a contract snapshot, read back from the replica's own store
STATE_VERSION = 3


def empty_state(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "params": dict(params),
        # id_grid -> {commitment, public_key, role, order_key}: personal data stays off the
        # chain, only its salted hash is here; public_key is None once revoked; order_key (None:
        # none) is the key the member delegated for its offers and bids (see credentials.py)
        "members": {},
        "balances": {},  # id_grid -> micro-tokens
        "debts": {},  # id_grid -> micro-tokens owed to the grid (only entries > 0)
        "supply": 0,  # micro-tokens allocated in the genesis plus minted by quorum proposals
        "grid": {"balance": 0, "sold_wh": 0, "bought_wh": 0},
        "res": {},  # res_id -> {owner, kind, rated_power_w}
        # meter_id -> {owner, gateway_key, import_limit_w, export_limit_w, role}
        "meters": {},
        "listings": {},  # listing_id -> listing record (see market.py)
        "reports": {},  # meter_id -> {interval -> [import_wh, export_wh(, [flags])]}
        "hourly": {},  # listing_id -> {id_grid -> [import_wh, export_wh]} from members' reports
        "mcp_history": [],  # [{listing_id, rule, mcp, height}] in order of clearing
        "seq": 0,  # last order sequence number handed out (FIFO across all listings)
        "applications": {},  # public key hex -> {id_grid, role, commitment, at_ms} (admission.py)
        "retired_keys": {},  # key hex -> height it was rotated away or revoked: never reused
        "proposals": {},  # proposal_id -> quorum proposal (see quorum.py)
        "registry_log": [],  # every accepted registry change, in order (see audit.py)
        # meter_id -> height registered: meters the operator registered that their owner has
        # not confirmed yet (meter.confirm); their reports are refused (see credentials.py)
        "unconfirmed_meters": {},
        # the ledger's replica sets members decided (replicas.py): [{height, replicas}]
        "replica_sets": [],
    }


class ContractState:
    __slots__ = ("_by_key", "_meter_keys", "_order_keys", "data")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._by_key: dict[str, str] = {}
        self._meter_keys: dict[str, str] = {}
        self._order_keys: dict[str, str] = {}
        self.reindex()

    def reindex(self) -> None:
        self._by_key = {
            m["public_key"]: i for i, m in self.data["members"].items() if m["public_key"]
        }
        self._meter_keys = {
            m["gateway_key"]: i for i, m in self.data["meters"].items() if m["gateway_key"]
        }
        self._order_keys = {
            m["order_key"]: i for i, m in self.data["members"].items() if m["order_key"]
        }

    # identities: a member's (wallet) key and a meter's reporting key are never the same key,
    # so a key that can report can never spend, and the reverse
    def member_of(self, sender: bytes) -> str | None:
        return self._by_key.get(sender.hex())

    def orderer_of(self, sender: bytes) -> str | None:
        """The member whose order key this is: it may sign that member's offers and bids only."""
        return self._order_keys.get(sender.hex())

    def meter_of(self, sender: bytes) -> str | None:
        """The meter whose reporting key this is (None: no live meter key)."""
        return self._meter_keys.get(sender.hex())

    def key_in_use(self, key_hex: str) -> bool:
        """Held by a member or a meter now, or retired (rotated away, revoked): never reused."""
        return (
            key_hex in self._by_key
            or key_hex in self._meter_keys
            or key_hex in self._order_keys
            or key_hex in self.data["retired_keys"]
        )

    def set_member_key(self, id_grid: str, key_hex: str | None, height: int) -> None:
        """Replace (or, with None, revoke) a member's key; the old one is retired."""
        self._set_key(self._by_key, "members", id_grid, "public_key", key_hex, height)

    def set_order_key(self, id_grid: str, key_hex: str | None, height: int) -> None:
        """Set, replace or (with None) clear a member's order key; an old one is retired."""
        self._set_key(self._order_keys, "members", id_grid, "order_key", key_hex, height)

    def set_meter_key(self, meter_id: str, key_hex: str | None, height: int) -> None:
        """Set, replace or (with None) revoke a meter's reporting key; an old one is retired."""
        self._set_key(self._meter_keys, "meters", meter_id, "gateway_key", key_hex, height)

    def _set_key(
        self,
        index: dict[str, str],
        table: str,
        owner: str,
        slot: str,
        key_hex: str | None,
        height: int,
    ) -> None:
        """Put ``key_hex`` in ``owner``'s ``slot`` of ``table`` and in its ``index`` (key ->
        owner); the key it replaces leaves the index and is retired at ``height``."""
        record = self.data[table][owner]
        old = record[slot]
        if old:
            index.pop(old, None)
            self.data["retired_keys"][old] = height
        record[slot] = key_hex
        if key_hex:
            index[key_hex] = owner

    def role(self, id_grid: str) -> str:
        return str(self.data["members"][id_grid]["role"])

    def add_member(self, id_grid: str, record: dict[str, Any]) -> None:
        self.data["members"][id_grid] = record
        self.data["balances"][id_grid] = 0
        self._by_key[record["public_key"]] = id_grid

    def add_meter(self, meter_id: str, record: dict[str, Any]) -> None:
        self.data["meters"][meter_id] = record
        self._meter_keys[record["gateway_key"]] = meter_id

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
        # a replica's own snapshot, read from its store: larger than any message may be (a
        # community of 10,000 members with its registry log is past 16 MiB)
        data = decode(raw, max_bytes=MAX_SNAPSHOT_BYTES)
        if (
            not isinstance(data, dict)
            or data.get("version") != STATE_VERSION
            or set(data) != set(empty_state({}))
        ):
            raise ValueError("not a snapshot of this contract's state")
        return cls(data)
