"""The read policy: what each reader may see of the contract's state (README, "Read policy").

A reader is the key a client connection proved it holds (``None``: an anonymous connection).
That key is the operator's, a member's, a meter's reporting key, or nobody's. Every member reads
the public market record (listings, order books once the bidding has closed, MCP, trades, RES,
community totals) and its own records (balance, member record, meters, reports, orders, its
settlement and energy lines); a meter's key reads the public market record (but not the order
books or anyone's money) and its own meters' reports; the operator reads what billing and the
registry need (every member, meter, report, settlement line and debt); an anonymous reader reads
only the community parameters. A query the policy does not grant raises ``QueryError`` starting
with ``NOT_PERMITTED``. The policy is a function of the state and the reader only, so 2f+1
replicas at one height give one answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.contract import queries
from ledger.contract.api import QueryError
from ledger.contract.codes import NOT_PERMITTED
from ledger.contract.market import AUTHORIZE_OFFERS
from ledger.contract.state import ContractState


@dataclass(frozen=True, slots=True)
class Reader:
    operator: bool = False
    member: str | None = None  # id_grid of the reader's member record
    meters: frozenset[str] = frozenset()  # meters whose reporting key the reader holds


def reader_of(st: ContractState, key: bytes | None) -> Reader:
    if key is None:
        return Reader()
    key_hex = key.hex()
    meters = frozenset(m for m, rec in st.data["meters"].items() if rec["gateway_key"] == key_hex)
    who = st.member_of(key)
    if who is None:
        return Reader(meters=meters)
    own = frozenset(m for m, rec in st.data["meters"].items() if rec["owner"] == who)
    return Reader(st.role(who) == "operator", who, meters | own)


def _refuse(path: str) -> QueryError:
    return QueryError(f"{NOT_PERMITTED}: the read policy does not grant {path!r} to this reader")


def _anyone(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    return queries.run(st, path, params)


def _members_only(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    if r.member is None:
        raise _refuse(path)
    return queries.run(st, path, params)


def _community(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    """The public market record: for members and for the community's meters (a gateway that
    holds only its meter key still follows the market for its EMS)."""
    if r.member is None and not r.meters:
        raise _refuse(path)
    return queries.run(st, path, params)


def _own_member(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    if r.operator or (r.member is not None and params.get("id_grid") == r.member):
        return queries.run(st, path, params)
    raise _refuse(path)


def _members(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    rows = _members_only(st, path, params, r)
    if r.operator:
        return rows
    return [{"id_grid": m["id_grid"], "role": m["role"]} for m in rows]  # the roster


def _meters(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    rows = queries.run(st, path, params)
    if r.operator:
        return rows
    if r.member is None and not r.meters:
        raise _refuse(path)
    return [row for row in rows if row["meter_id"] in r.meters]


def _reports(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    if r.operator or params.get("meter_id") in r.meters:
        return queries.run(st, path, params)
    raise _refuse(path)


def _order_book(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    """Sealed while the listing takes orders: each member sees its own orders only."""
    book = _members_only(st, path, params, r)
    if st.data["listings"][book["listing_id"]]["state"] != AUTHORIZE_OFFERS:
        return book
    return {
        "listing_id": book["listing_id"],
        "offers": [o for o in book["offers"] if o["seller"] == r.member],
        "bids": [b for b in book["bids"] if b["buyer"] == r.member],
    }


def _settlement(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    """Members: the community's totals and their own line; the operator: every line."""
    result = _members_only(st, path, params, r)
    if result is None or r.operator:
        return result
    lines = result["lines"]
    totals: dict[str, int] = {}
    for line in lines:
        for name, value in line.items():
            if name != "id_grid" and isinstance(value, int) and not isinstance(value, bool):
                totals[name] = totals.get(name, 0) + value
    mine = [line for line in lines if line["id_grid"] == r.member]
    return {**{k: v for k, v in result.items() if k != "lines"}, "lines": mine, "totals": totals}


def _energy(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    rows = _members_only(st, path, params, r)
    return rows if r.operator else [row for row in rows if row["id_grid"] == r.member]


def _grid(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    result = _members_only(st, path, params, r)
    if r.operator:
        return result
    debts = result.pop("debts")
    result["debt"] = debts.get(r.member, 0)  # the reader's own debt, not its neighbours'
    return result


def _operator(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    if not r.operator:
        raise _refuse(path)
    return queries.run(st, path, params)


Rule = Callable[[ContractState, str, Mapping[str, Any], Reader], Any]

POLICY: dict[str, Rule] = {
    "params": _anyone,
    "listings": _community,
    "listing": _community,
    "mcp_history": _community,
    "trades": _community,
    "res": _community,
    "order_book": _order_book,
    "settlement": _settlement,
    "energy": _energy,
    "grid": _grid,
    "balance": _own_member,
    "member": _own_member,
    "members": _members,
    "meters": _meters,
    "reports": _reports,
    "applications": _operator,
}


def run(st: ContractState, path: str, params: Mapping[str, Any], key: bytes | None) -> Any:
    rule = POLICY.get(path) if isinstance(path, str) else None
    if rule is None:
        if isinstance(path, str) and path in queries.QUERIES:
            raise _refuse(path)  # a query added without a rule is nobody's to read
        raise QueryError(f"unknown query {path!r}; known: {sorted(POLICY)}")
    return rule(st, path, params, reader_of(st, key))


def may_read_chain(st: ContractState, key: bytes | None) -> bool:
    """Whole blocks carry every transaction (reports, registry records): the operator's."""
    return reader_of(st, key).operator
