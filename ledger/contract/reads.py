"""The read policy: what each reader may see of the contract's state (README, "Read policy").

A reader is the key a client connection proved it holds (``None``: an anonymous connection).
That key is the operator's, a member's live wallet key, a member's order key, a meter's live
reporting key, or nobody's (a revoked or rotated-away key is nobody's). Every member reads the
public market record (listings, order books once the bidding has closed, MCP, trades, RES,
community totals), its own records (balance, member record, meters, reports, orders, its
settlement and energy lines) and audits the registry (``registry_log``, ``proposals``: every
registry change, key change and quorum vote, commitments and keys only); a meter's key reads the
public market record (but not the order books or anyone's money) and its own meter's reports; an
order key (held by a gateway's trading agent) reads the public market record and, while a
listing takes orders, its member's own orders in the book, nothing of the member's money or
records; the operator reads what billing and the registry need (every member, meter, report,
settlement line and debt, the applications); an anonymous reader reads only the community
parameters. A query the policy does not grant raises ``QueryError`` starting
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
    member: str | None = None  # id_grid of the reader's member record (its live wallet key)
    meters: frozenset[str] = frozenset()  # the meter whose key it holds; a member: its meters
    orderer: str | None = None  # id_grid of the member whose order key the reader holds


def reader_of(st: ContractState, key: bytes | None) -> Reader:
    if key is None:
        return Reader()
    who = st.member_of(key)
    if who is None:
        meter = st.meter_of(key)  # live keys only: a revoked one reads as nobody's
        return Reader(
            meters=frozenset(() if meter is None else (meter,)), orderer=st.orderer_of(key)
        )
    own = frozenset(m for m, rec in st.data["meters"].items() if rec["owner"] == who)
    return Reader(st.role(who) == "operator", who, own)


def _refuse(path: str) -> QueryError:
    return QueryError(f"{NOT_PERMITTED}: the read policy does not grant {path!r} to this reader")


def _anyone(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    return queries.run(st, path, params)


def _members_only(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    if r.member is None:
        raise _refuse(path)
    return queries.run(st, path, params)


def _community(st: ContractState, path: str, params: Mapping[str, Any], r: Reader) -> Any:
    """The public market record: for members, the community's meters and order keys (a gateway
    that holds only its meter key, or an order key, still follows the market for its EMS)."""
    if r.member is None and not r.meters and r.orderer is None:
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
    """Sealed while the listing takes orders: each member (or its order key) sees its own
    orders only."""
    who = r.member if r.member is not None else r.orderer
    if who is None:
        raise _refuse(path)
    book = queries.run(st, path, params)
    if st.data["listings"][book["listing_id"]]["state"] != AUTHORIZE_OFFERS:
        return book
    return {
        "listing_id": book["listing_id"],
        "offers": [o for o in book["offers"] if o["seller"] == who],
        "bids": [b for b in book["bids"] if b["buyer"] == who],
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
    "registry_log": _members_only,  # every member audits the registry
    "proposals": _members_only,  # and what it votes on
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
