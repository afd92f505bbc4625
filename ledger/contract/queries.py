"""Read-only queries: ``query(path, params)``. Results are fresh JSON-like values (copies), so a
caller can never change the state through them."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from ledger.contract import fields as f
from ledger.contract.api import QueryError
from ledger.contract.audit import PAGE
from ledger.contract.clearing import payment
from ledger.contract.codes import Rejected
from ledger.contract.market import AUTHORIZE_OFFERS, BID_FIELDS, OFFER_FIELDS, REVEAL, trade_dict
from ledger.contract.sealed import held
from ledger.contract.state import ContractState

MAX_HISTORY = 10_000


def _params(
    params: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    if not isinstance(params, Mapping):
        raise QueryError("query params must be an object")
    missing = [k for k in required if k not in params]
    extra = sorted(str(k) for k in params if k not in required and k not in optional)
    if missing or extra:
        raise QueryError(
            f"params must be {list(required)} (optional {list(optional)}); "
            f"missing {missing}, unknown {extra}"
        )


def _read(
    reader: Callable[[Mapping[str, Any], str], str], params: Mapping[str, Any], name: str
) -> str:
    try:
        return reader(params, name)
    except Rejected as exc:
        raise QueryError(exc.message) from None


def _member(st: ContractState, params: Mapping[str, Any]) -> str:
    _params(params, ("id_grid",))
    id_grid = _read(f.ident, params, "id_grid")
    if id_grid not in st.data["members"]:
        raise QueryError(f"no member {id_grid}")
    return id_grid


def _listing(st: ContractState, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    _params(params, ("listing_id",))
    listing_id = _read(f.listing_id, params, "listing_id")
    listing = st.data["listings"].get(listing_id)
    if listing is None:
        raise QueryError(f"no listing {listing_id}")
    return listing_id, listing


def _escrow(st: ContractState, id_grid: str) -> int:
    """What the member has held in listings not yet cleared: bids' escrow and unrevealed sealed
    orders' deposits."""
    deposit = st.data["params"]["commit_deposit"]
    total = 0
    for listing in st.data["listings"].values():
        if listing["state"] not in (AUTHORIZE_OFFERS, REVEAL):
            continue
        bids = listing["bids"]
        total += sum(payment(wh, price) for _s, buyer, wh, price in bids if buyer == id_grid)
        commits = listing["commits"].values()
        total += deposit * sum(1 for e in commits if e[0] == id_grid and not e[2])
    return total


def balance(st: ContractState, params: Mapping[str, Any]) -> Any:
    id_grid = _member(st, params)
    return {
        "id_grid": id_grid,
        "balance": st.balance(id_grid),
        "escrow": _escrow(st, id_grid),
        "debt": st.data["debts"].get(id_grid, 0),
    }


def member(st: ContractState, params: Mapping[str, Any]) -> Any:
    id_grid = _member(st, params)
    return {"id_grid": id_grid, **st.data["members"][id_grid], "balance": st.balance(id_grid)}


def members(st: ContractState, params: Mapping[str, Any]) -> Any:
    _params(params, ())
    return [
        {"id_grid": i, **st.data["members"][i], "balance": st.balance(i)}
        for i in sorted(st.data["members"])
    ]


def res(st: ContractState, params: Mapping[str, Any]) -> Any:
    _params(params, ("res_id",))
    res_id = _read(f.ident, params, "res_id")
    record = st.data["res"].get(res_id)
    if record is None:
        raise QueryError(f"no RES {res_id}")
    return {"res_id": res_id, **record}


def meters(st: ContractState, params: Mapping[str, Any]) -> Any:
    _params(params, ())
    pending = st.data["unconfirmed_meters"]
    return [
        {"meter_id": m, **st.data["meters"][m], "confirmed": m not in pending}
        for m in sorted(st.data["meters"])
    ]


def listing(st: ContractState, params: Mapping[str, Any]) -> Any:
    listing_id, record = _listing(st, params)
    return {
        "listing_id": listing_id,
        "state": record["state"],
        "rule": record["rule"],
        "kwh_available": record["kwh_available"],
        "kwh_wanted": record["kwh_wanted"],
        "mcp": record["mcp"],
        "offers": len(record["offers"]),
        "bids": len(record["bids"]),
        "traded_wh": sum(row[3] for row in record["trades"]),
        "policy": record["policy"],
        "sealed": record["sealed"],
        "commitments": len(record["commits"]),
        "revealed": len(record["revealed"]),
        "efficiency": _efficiency(record["efficiency"]),
    }


def _efficiency(gains: list[int] | None) -> dict[str, int] | None:
    if gains is None:
        return None
    return {"traded_gains": gains[0], "efficient_gains": gains[1]}


def listings(st: ContractState, params: Mapping[str, Any]) -> Any:
    _params(params, ())
    return [
        {"listing_id": i, "state": st.data["listings"][i]["state"]}
        for i in sorted(st.data["listings"])
    ]


def order_book(st: ContractState, params: Mapping[str, Any]) -> Any:
    listing_id, record = _listing(st, params)
    offers = [dict(zip(OFFER_FIELDS, row, strict=True)) for row in record["offers"]]
    bids = [
        dict(zip(BID_FIELDS, row, strict=True), escrow=payment(row[2], row[3]))
        for row in record["bids"]
    ]
    return {"listing_id": listing_id, "offers": offers, "bids": bids}


def trades(st: ContractState, params: Mapping[str, Any]) -> Any:
    _, record = _listing(st, params)
    return [trade_dict(row) for row in record["trades"]]


def settlement(st: ContractState, params: Mapping[str, Any]) -> Any:
    _, record = _listing(st, params)
    return copy.deepcopy(record["settlement"])


def energy(st: ContractState, params: Mapping[str, Any]) -> Any:
    """Energy tokens of an hour per member: minted (Wh exported, from signed reports), spent on
    the community's trades and to the grid at settlement, voided by the feeder balance check,
    and still unspent (before settlement)."""
    _params(params, ("listing_id",))
    listing_id = _read(f.listing_id, params, "listing_id")
    metered = st.data["hourly"].get(listing_id, {})
    record = st.data["listings"].get(listing_id)
    lines = {}
    if record is not None and record["settlement"] is not None:
        lines = {line["id_grid"]: line for line in record["settlement"]["lines"]}
    out = []
    for member in sorted(metered):
        minted = metered[member][1]
        line = lines.get(member)
        to_trades = line["delivered_wh"] if line else 0
        to_grid = line["feed_in_wh"] if line else 0
        voided = line["export_cut_wh"] if line else 0
        out.append(
            {
                "id_grid": member,
                "minted_wh": minted,
                "spent_on_trades_wh": to_trades,
                "spent_to_grid_wh": to_grid,
                "voided_wh": voided,  # cut by the feeder balance check: never backed by energy
                "unspent_wh": minted - to_trades - to_grid - voided,
            }
        )
    return out


def mcp_history(st: ContractState, params: Mapping[str, Any]) -> Any:
    _params(params, (), ("limit",))
    limit = params.get("limit", MAX_HISTORY)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_HISTORY:
        raise QueryError(f"limit must be an integer in 1..{MAX_HISTORY}")
    return copy.deepcopy(st.data["mcp_history"][-limit:])


def reports(st: ContractState, params: Mapping[str, Any]) -> Any:
    _params(params, ("meter_id",), ("interval",))
    meter_id = _read(f.ident, params, "meter_id")
    if meter_id not in st.data["meters"]:
        raise QueryError(f"no meter {meter_id}")
    seen = st.data["reports"].get(meter_id, {})
    wanted = sorted(seen)
    if "interval" in params:
        one = _read(f.interval, params, "interval")
        wanted = [one] if one in seen else []
    return [
        {
            "meter_id": meter_id,
            "interval": i,
            "import_wh": seen[i][0],
            "export_wh": seen[i][1],
            "flags": list(seen[i][2]) if len(seen[i]) > 2 else [],
        }
        for i in wanted
    ]


def grid(st: ContractState, params: Mapping[str, Any]) -> Any:
    _params(params, ())
    deposit = st.data["params"]["commit_deposit"]
    return {
        **st.data["grid"],
        "supply": st.data["supply"],
        "debts": dict(st.data["debts"]),
        # escrow and deposits held by listings not yet cleared
        "held": sum(held(listing, deposit) for listing in st.data["listings"].values()),
    }


def params_(st: ContractState, params: Mapping[str, Any]) -> Any:
    _params(params, ())
    return copy.deepcopy(st.data["params"])


def applications(st: ContractState, params: Mapping[str, Any]) -> Any:
    _params(params, ())
    apps = st.data["applications"]
    return [{"public_key": k, **apps[k]} for k in sorted(apps)]


def registry_log(st: ContractState, params: Mapping[str, Any]) -> Any:
    """The registry's audit log from entry ``start`` (default 0), at most ``audit.PAGE`` entries."""
    _params(params, (), ("start",))
    start = params.get("start", 0)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise QueryError("start must be a non-negative integer")
    return copy.deepcopy(st.data["registry_log"][start : start + PAGE])


def proposals(st: ContractState, params: Mapping[str, Any]) -> Any:
    """Every quorum proposal (mint, rekey) with its approvals, by id: what members vote on."""
    _params(params, ())
    return [
        {"proposal_id": pid, **copy.deepcopy(st.data["proposals"][pid])}
        for pid in sorted(st.data["proposals"])
    ]


QUERIES: dict[str, Callable[[ContractState, Mapping[str, Any]], Any]] = {
    "balance": balance,
    "member": member,
    "members": members,
    "res": res,
    "meters": meters,
    "listing": listing,
    "listings": listings,
    "order_book": order_book,
    "trades": trades,
    "settlement": settlement,
    "energy": energy,
    "mcp_history": mcp_history,
    "reports": reports,
    "grid": grid,
    "params": params_,
    "applications": applications,
    "proposals": proposals,
    "registry_log": registry_log,
}


def run(st: ContractState, path: str, params: Mapping[str, Any]) -> Any:
    handler = QUERIES.get(path) if isinstance(path, str) else None
    if handler is None:
        raise QueryError(f"unknown query {path!r}; known: {sorted(QUERIES)}")
    return handler(st, params)
