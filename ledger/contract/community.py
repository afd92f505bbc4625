"""The community contract: registry, tokens, hourly market, meter reports and settlement.

``CommunityContract`` implements ``api.Contract``: ``apply`` dispatches on the transaction kind
to a handler that validates first and then commits, so a rejected transaction leaves the state
unchanged; an unexpected exception (a bug) becomes an ``INTERNAL_ERROR`` receipt rather than a
crash of the replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from ledger.contract import (
    admission,
    audit,
    credentials,
    market,
    metering,
    queries,
    quorum,
    reads,
    registry,
    sealed,
    settlement,
)
from ledger.contract.api import BlockContext, Receipt, Transaction, Value
from ledger.contract.codes import INTERNAL_ERROR, UNKNOWN_KIND, Rejected
from ledger.contract.params import GenesisError, check_params
from ledger.contract.state import ContractState, empty_state

GENESIS_VERSION = 1

Handler = Callable[[ContractState, Transaction, BlockContext], dict[str, Any]]

HANDLERS: dict[str, Handler] = {
    "registry.admit": registry.admit,
    "registry.add_res": registry.add_res,
    "registry.add_meter": registry.add_meter,
    "token.mint": registry.mint,
    "token.transfer": registry.transfer,
    "auction.open": market.open_listing,
    "auction.offer": market.offer,
    "auction.bid": market.bid,
    "auction.close": market.close,
    "auction.commit": sealed.commit,
    "auction.reveal": sealed.reveal,
    "auction.clear": sealed.clear,
    "auction.settle": settlement.settle,
    "meter.report": metering.report,
    admission.APPLY: admission.apply,
    admission.DISMISS: admission.dismiss,
    "member.rotate_key": credentials.rotate_member_key,
    "member.revoke_key": credentials.revoke_member_key,
    "member.set_order_key": credentials.set_order_key,
    "meter.confirm": credentials.confirm_meter,
    "meter.rotate_key": credentials.rotate_meter_key,
    "meter.revoke": credentials.revoke_meter,
    "quorum.propose": quorum.propose,
    "quorum.approve": quorum.approve,
}


def state_from_genesis(genesis: Mapping[str, Value]) -> ContractState:
    if not isinstance(genesis, Mapping):
        raise GenesisError("genesis must be an object")
    unknown = sorted(set(genesis) - {"version", "params", "members", "allocations"})
    if unknown:
        raise GenesisError(f"unknown genesis keys {unknown}")
    if genesis.get("version") != GENESIS_VERSION:
        raise GenesisError(f"genesis.version must be {GENESIS_VERSION}")
    st = ContractState(empty_state(check_params(genesis.get("params", {}))))
    members = genesis.get("members")
    if not isinstance(members, list) or not members:
        raise GenesisError("genesis.members must be a non-empty list")
    for n, record in enumerate(members):
        if not isinstance(record, Mapping):
            raise GenesisError(f"genesis.members[{n}] must be an object")
        try:
            id_grid, member = registry.member_record(record)
        except Rejected as exc:
            raise GenesisError(f"genesis.members[{n}]: {exc.message}") from None
        if id_grid in st.data["members"] or st.key_in_use(member["public_key"]):
            raise GenesisError(f"genesis.members[{n}]: duplicate id_grid or public_key")
        st.add_member(id_grid, member)
    if not any(m["role"] == "operator" for m in st.data["members"].values()):
        raise GenesisError("genesis needs at least one member with role operator")
    allocate(st, genesis.get("allocations", {}))
    return st


def allocate(st: ContractState, allocations: Value) -> None:
    """The genesis supply: ``{id_grid: micro-tokens}``, each to a genesis member (typically the
    operator's treasury, which sells tokens to members off the ledger). It is all the supply
    there is until a quorum of members mints more (quorum.py)."""
    if not isinstance(allocations, Mapping):
        raise GenesisError("genesis.allocations must be an object {id_grid: micro-tokens}")
    if not all(isinstance(k, str) for k in allocations):
        raise GenesisError("genesis.allocations: keys must be id_grid strings")
    for id_grid in sorted(allocations):
        amount = allocations[id_grid]
        if id_grid not in st.data["members"]:
            raise GenesisError(f"genesis.allocations.{id_grid}: not a genesis member")
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int)
            or not 0 < amount <= quorum.MAX_SUPPLY - st.data["supply"]
        ):
            raise GenesisError(
                f"genesis.allocations.{id_grid}: must be a positive integer, "
                f"{quorum.MAX_SUPPLY} micro-tokens in all at most"
            )
        st.data["supply"] += amount
        st.credit(id_grid, amount)


class CommunityContract:
    """Registry + tokens + hourly auction + metering + settlement, as one deterministic state."""

    def __init__(self, genesis: Mapping[str, Value]) -> None:
        self._state = state_from_genesis(genesis)
        self._replica_sets: list[tuple[int, list[dict[str, Any]]]] = []

    def admit(self, sender: bytes, kind: str, size: int, now_ms: int) -> tuple[str, str] | None:
        """None if a transaction of ``kind`` signed by ``sender`` (``size`` canonical unsigned
        bytes) may be ordered on this state, else (code, message); see ``admission``. Who holds
        which key comes from the state's own key indexes, which the key-changing handlers keep
        current: no cache here that a key change could leave stale."""
        return admission.admit(self._state, HANDLERS, sender, kind, size, now_ms)

    def limits(self) -> tuple[int, int, int]:
        """(max_pending_per_signer, max_bytes_per_signer_hour, max_applications)."""
        params = self._state.data["params"]
        return (
            params["max_pending_per_signer"],
            params["max_bytes_per_signer_hour"],
            params["max_applications"],
        )

    def open_applications(self, now_ms: int) -> int:
        """Applications still open at block time ``now_ms``."""
        return admission.open_applications(self._state, now_ms)

    def read(self, path: str, params: Mapping[str, Value], reader: bytes | None) -> Value:
        """A query as ``reader`` (the key a client connection proved, None: anonymous) may see
        it under the read policy (``reads``); ``QueryError`` if it may not."""
        return reads.run(self._state, path, params, reader)

    def may_read_chain(self, reader: bytes | None) -> bool:
        """Whether ``reader`` may read whole blocks and any receipt (the operator only)."""
        return reads.may_read_chain(self._state, reader)

    def reconfigurations(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """The replica sets members decided, in order: (height, replicas) (``replicas.py``).
        Asked after every block, so the list is built again only when it grew."""
        sets = self._state.data["replica_sets"]
        if len(sets) != len(self._replica_sets):
            self._replica_sets = [(c["height"], c["replicas"]) for c in sets]
        return self._replica_sets

    def apply(self, tx: Transaction, ctx: BlockContext) -> Receipt:
        handler = HANDLERS.get(tx.kind)
        if handler is None:
            return Receipt(UNKNOWN_KIND, {}, f"unknown transaction kind {tx.kind!r}")
        try:
            if type(tx.body) is not dict and not isinstance(tx.body, Mapping):  # dict: fast
                raise Rejected("BAD_BODY", "body must be an object")
            if tx.kind in audit.AUDITED:
                by = self._state.member_of(tx.sender)  # before a key change in this transaction
                result = handler(self._state, tx, ctx)
                audit.record(self._state, tx, ctx, by)
                return Receipt("OK", result, "")
            return Receipt("OK", handler(self._state, tx, ctx), "")
        except Rejected as exc:
            return Receipt(exc.code, {}, exc.message)
        except Exception as exc:  # a bug must not take the replica down; it is made visible
            return Receipt(INTERNAL_ERROR, {}, f"{type(exc).__name__}: {exc}")

    def query(self, path: str, params: Mapping[str, Value]) -> Value:
        return queries.run(self._state, path, params)

    def snapshot(self) -> bytes:
        return self._state.snapshot()

    def state_digest(self) -> bytes:
        return hashlib.sha256(self.snapshot()).digest()

    def restore(self, data: bytes) -> None:
        self._state = ContractState.from_snapshot(data)
        self._replica_sets = []
