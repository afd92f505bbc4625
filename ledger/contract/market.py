"""The hourly market (Section 4.3, Table 9, Figure 12): open, offer, bid, close, clear.

A listing record (``state.data["listings"][listing_id]``)::

    {"state": "AUTHORIZE_OFFERS" | "REVEAL" | "BIDS_CLOSED" | "SETTLED", "rule": clearing rule,
     "policy": "one" | "many", "sealed": bool, "opened_height": int,
     "offers": [[seq, seller, wh, price, res_id]],
     "bids": [[seq, buyer, wh, price]], "res_wh": {res_id: Wh offered},
     "sides": {id_grid: "offer" | "bid"}, "mine": {id_grid: seq or commitment} (policy one),
     "commits": {commitment: [member, side, revealed]}, "revealed": [...], "closed_ms": int,
     "kwh_available": Wh, "kwh_wanted": Wh, "mcp": int | None, "efficiency": [int, int],
     "trades": [[buyer, seller, res_id, wh, price, amount, bid_seq, offer_seq]],
     "settlement": ...}

Order policy (fixed when the listing opens, from ``params.order_policy``): ``one`` (the default)
keeps one order per member per listing: a new offer or bid replaces the member's previous one
(its escrow returned) until the bidding closes; ``many`` is the paper as published, any number of
orders per member. Why one order rather than a volume-weighted MCP: the paper's MCP is the mean
of the bid prices, so a member with several orders has several votes; it can drag the mean down
with a small (or, under volume weighting, a large) bid at the floor that goes unserved and costs
it nothing, and it can split one order into many to weigh more. With one order a member has one
vote, and the only way to move the price is to move its own bid, which risks its own purchase:
a buyer whose bid is served has a bid at or above the MCP, so it can only raise the mean.
Sealed listings (``params.sealed_bids``) take commitments instead of orders: sealed.py.

Orders and trades are stored as compact rows (a listing may hold tens of thousands; rows are
what the clearing functions take, without a conversion); queries turn them into objects with
the field names of ``OFFER_FIELDS``, ``BID_FIELDS`` and ``TRADE_FIELDS``. A bid's escrow is
``payment(wh, price)``, so it is not stored.

``seq`` is handed out in the order the ledger accepts orders: it is "first in" in an open book
(where the primary, who orders the blocks, decides who is first). In a sealed listing ``seq`` is
the rank of each revealed order by a key nobody could choose (sealed.py). The rule is fixed when
the listing opens, so a later change of parameters cannot re-price an open book.
"""

from __future__ import annotations

from bisect import bisect_left
from operator import itemgetter
from typing import Any

from ledger.contract import fields as f
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.clearing import Order, clear, efficiency, payment
from ledger.contract.codes import (
    BOTH_SIDES,
    INSUFFICIENT_FUNDS,
    LISTING_CLOSED,
    LISTING_EXISTS,
    NOT_RES_OWNER,
    PRICE_OUT_OF_BAND,
    RES_CAPACITY_EXCEEDED,
    ROLE_FORBIDDEN,
    SEALED_LISTING,
    UNKNOWN_LISTING,
    UNKNOWN_RES,
    Rejected,
)
from ledger.contract.params import retail_price
from ledger.contract.registry import BUYER_ROLES, SELLER_ROLES, sender_member, sender_operator
from ledger.contract.state import ContractState

OFFER_FIELDS = ("seq", "seller", "wh", "price", "res_id")
BID_FIELDS = ("seq", "buyer", "wh", "price")
TRADE_FIELDS = (
    "buyer", "seller", "res_id", "wh", "price", "amount", "bid_seq", "offer_seq",
    "seller_price", "proceeds",
)  # fmt: skip

_first = itemgetter(0)

AUTHORIZE_OFFERS = "AUTHORIZE_OFFERS"
REVEAL = "REVEAL"  # a sealed listing's bidding is closed (Bid_Closed); orders are being revealed
BIDS_CLOSED = "BIDS_CLOSED"  # cleared
SETTLED = "SETTLED"


def trade_dict(row: list[Any]) -> dict[str, Any]:
    buyer, seller, res_id, wh, price, amount, bid_seq, offer_seq, seller_price, proceeds = row
    return {
        "buyer": buyer,
        "seller": seller,
        "res_id": res_id,
        "wh": wh,
        "price": price,
        "amount": amount,
        "bid_seq": bid_seq,
        "offer_seq": offer_seq,
        "seller_price": seller_price,
        "proceeds": proceeds,
    }


def listing_of(st: ContractState, listing_id: str) -> dict[str, Any]:
    listing = st.data["listings"].get(listing_id)
    if listing is None:
        raise Rejected(UNKNOWN_LISTING, f"no listing {listing_id}")
    return listing  # type: ignore[no-any-return]


def _open_listing(st: ContractState, listing_id: str) -> dict[str, Any]:
    listing = listing_of(st, listing_id)
    if listing["state"] != AUTHORIZE_OFFERS:
        raise Rejected(LISTING_CLOSED, f"listing {listing_id} is {listing['state']}")
    return listing


def _in_band(st: ContractState, name: str, price: int, listing_id: str) -> None:
    """The community's band, capped by the grid's retail price of the listing's hour: nobody
    buys from a neighbour above what the grid charges then (off-peak retail is lower)."""
    params = st.data["params"]
    low = params["price_min"]
    high = min(params["price_max"], retail_price(params, f.hour_of(listing_id)))
    if not low <= price <= high:
        raise Rejected(PRICE_OUT_OF_BAND, f"{name} {price} outside the band {low}..{high}")


def _one_side(listing: dict[str, Any], member: str, side: str) -> None:
    """A member is a seller or a buyer in one hour, not both: a prosumer nets its own production
    and consumption behind the meter, and a trade with itself would be settled as a shortfall
    plus an excess at the grid's tariffs."""
    other = listing["sides"].get(member)
    if other is not None and other != side:
        raise Rejected(BOTH_SIDES, f"{member} already placed an {other} in this listing")


def open_listing(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """AuthorizeOfferCom."""
    body = tx.body
    f.exact(body, ("listing_id",))
    listing_id = f.listing_id(body)
    sender_operator(st, tx)
    if listing_id in st.data["listings"]:
        raise Rejected(LISTING_EXISTS, f"listing {listing_id} was already opened")
    st.data["listings"][listing_id] = {
        "state": AUTHORIZE_OFFERS,
        "rule": st.data["params"]["clearing_rule"],
        "policy": st.data["params"]["order_policy"],
        "sealed": st.data["params"]["sealed_bids"],
        "opened_height": ctx.height,
        "offers": [],
        "bids": [],
        "res_wh": {},
        "sides": {},
        "mine": {},
        "commits": {},
        "revealed": [],
        "closed_ms": 0,
        "kwh_available": 0,
        "kwh_wanted": 0,
        "mcp": None,
        "efficiency": None,
        "trades": [],
        "settlement": None,
    }
    return {"listing_id": listing_id, "state": AUTHORIZE_OFFERS}


def _previous(listing: dict[str, Any], rows: list[list[Any]], member: str) -> int | None:
    """Index in ``rows`` of the member's current order under policy ``one`` (rows are in seq
    order, so a binary search finds it), or None."""
    if listing["policy"] != "one":
        return None
    seq = listing["mine"].get(member)
    if not isinstance(seq, int):
        return None
    i = bisect_left(rows, seq, key=_first)
    return i if i < len(rows) and rows[i][0] == seq else None


def check_offer(
    st: ContractState, listing: dict[str, Any], listing_id: str, seller: str, res_id: str, wh: int,
    price: int, replaced_wh: int = 0,
) -> None:  # fmt: skip
    """Everything an offer must satisfy; ``replaced_wh``: Wh of the same RES it replaces."""
    res = st.data["res"].get(res_id)
    if res is None:
        raise Rejected(UNKNOWN_RES, f"no RES {res_id}")
    if res["owner"] != seller:
        raise Rejected(NOT_RES_OWNER, f"RES {res_id} belongs to {res['owner']}, not {seller}")
    if st.role(seller) not in SELLER_ROLES:
        raise Rejected(ROLE_FORBIDDEN, f"a {st.role(seller)} may not sell")
    _in_band(st, "reserve_price", price, listing_id)
    _one_side(listing, seller, "offer")
    committed = listing["res_wh"].get(res_id, 0) - replaced_wh
    if committed + wh > res["rated_power_w"]:  # rated W for one hour = Wh
        raise Rejected(
            RES_CAPACITY_EXCEEDED,
            f"RES {res_id} rated {res['rated_power_w']} Wh/h, already offered {committed}",
        )


def check_bid(
    st: ContractState, listing: dict[str, Any], listing_id: str, buyer: str, wh: int, price: int,
    returned: int = 0,
) -> int:  # fmt: skip
    """Everything a bid must satisfy; returns its escrow. ``returned``: escrow of the bid it
    replaces, which comes back first."""
    if st.role(buyer) not in BUYER_ROLES:
        raise Rejected(ROLE_FORBIDDEN, f"a {st.role(buyer)} may not buy")
    _in_band(st, "bid_price", price, listing_id)
    _one_side(listing, buyer, "bid")
    escrow = payment(wh, price)
    have = st.balance(buyer) + returned
    if have < escrow:
        raise Rejected(
            INSUFFICIENT_FUNDS, f"bid needs {escrow} micro-tokens in escrow, have {have}"
        )
    return escrow


def add_offer(
    listing: dict[str, Any], seq: int, seller: str, wh: int, price: int, res_id: str
) -> None:
    listing["offers"].append([seq, seller, wh, price, res_id])
    listing["res_wh"][res_id] = listing["res_wh"].get(res_id, 0) + wh
    listing["sides"][seller] = "offer"
    listing["kwh_available"] += wh


def add_bid(listing: dict[str, Any], seq: int, buyer: str, wh: int, price: int) -> None:
    listing["bids"].append([seq, buyer, wh, price])
    listing["sides"][buyer] = "bid"
    listing["kwh_wanted"] += wh


def _open_book(st: ContractState, listing_id: str) -> dict[str, Any]:
    listing = _open_listing(st, listing_id)
    if listing["sealed"]:
        raise Rejected(SEALED_LISTING, f"listing {listing_id} takes sealed orders: auction.commit")
    return listing


def _replacing(
    st: ContractState, tx: Transaction, listing_id: str, side: str
) -> tuple[str, dict[str, Any], int | None]:
    """The sender's member id, the open book of ``listing_id`` and the index in its ``side``
    (``offers`` or ``bids``) of the order a new one replaces under policy ``one`` (or None)."""
    member = sender_member(st, tx)
    listing = _open_book(st, listing_id)
    return member, listing, _previous(listing, listing[side], member)


def _placed(
    listing: dict[str, Any], member: str, old_row: list[Any] | None, result: dict[str, Any]
) -> dict[str, Any]:
    """``result`` of the order just placed (``result["seq"]``), noted as the member's one order
    under policy ``one``, naming the order it replaced."""
    if listing["policy"] == "one":
        listing["mine"][member] = result["seq"]
    if old_row is not None:
        result["replaced_seq"] = old_row[0]
    return result


def offer(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """RESOffer: Wh from one RES at a reserve price, from the RES's owner. Under policy ``one``
    it replaces the member's previous offer in the listing."""
    body = tx.body
    f.exact(body, ("listing_id", "res_id", "wh", "reserve_price"))
    listing_id = f.listing_id(body)
    res_id = f.ident(body, "res_id")
    wh = f.positive(body, "wh", f.MAX_WH)
    price = f.integer(body, "reserve_price")
    seller, listing, old = _replacing(st, tx, listing_id, "offers")
    old_row = listing["offers"][old] if old is not None else None
    replaced = old_row[2] if old_row is not None and old_row[4] == res_id else 0
    check_offer(st, listing, listing_id, seller, res_id, wh, price, replaced)
    if old_row is not None:  # commit: the replaced offer leaves the book
        del listing["offers"][old]
        listing["res_wh"][old_row[4]] -= old_row[2]
        listing["kwh_available"] -= old_row[2]
    seq = st.next_seq()
    add_offer(listing, seq, seller, wh, price, res_id)
    return _placed(listing, seller, old_row, {"listing_id": listing_id, "seq": seq})


def bid(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """BuyOffer: escrows wh x bid_price / 1000 micro-tokens (rounded down) until clearing. Under
    policy ``one`` it replaces the member's previous bid (whose escrow comes back)."""
    body = tx.body
    f.exact(body, ("listing_id", "wh", "bid_price"))
    listing_id = f.listing_id(body)
    wh = f.positive(body, "wh", f.MAX_WH)
    price = f.integer(body, "bid_price")
    buyer, listing, old = _replacing(st, tx, listing_id, "bids")
    old_row = listing["bids"][old] if old is not None else None
    returned = payment(old_row[2], old_row[3]) if old_row is not None else 0
    escrow = check_bid(st, listing, listing_id, buyer, wh, price, returned)
    if old_row is not None:  # commit: the replaced bid leaves the book, its escrow comes back
        del listing["bids"][old]
        listing["kwh_wanted"] -= old_row[2]
        st.credit(buyer, returned)
    st.debit(buyer, escrow)
    seq = st.next_seq()
    add_bid(listing, seq, buyer, wh, price)
    result = {"listing_id": listing_id, "seq": seq, "escrow": escrow}
    return _placed(listing, buyer, old_row, result)


def close(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """Bid_Closed: close the listing; an open book is cleared in the same transaction, a sealed
    one starts its reveal (``auction.clear`` clears it, sealed.py)."""
    body = tx.body
    f.exact(body, ("listing_id",))
    listing_id = f.listing_id(body)
    sender_operator(st, tx)
    listing = _open_listing(st, listing_id)
    if listing["sealed"]:
        listing["state"] = REVEAL
        listing["closed_ms"] = ctx.timestamp_ms
        return {"listing_id": listing_id, "state": REVEAL, "commitments": len(listing["commits"])}
    return clear_listing(st, listing, listing_id, ctx)


def _merged(a: dict[str, int], b: dict[str, int]) -> list[tuple[str, int]]:
    """The two amounts per member added, in member id order."""
    total = dict(b)
    for member, amount in a.items():
        total[member] = total.get(member, 0) + amount
    return sorted(total.items())


def clear_listing(
    st: ContractState,
    listing: dict[str, Any],
    listing_id: str,
    ctx: BlockContext,
) -> dict[str, Any]:
    """Clear the book with the listing's rule and move the tokens. Nothing here can fail."""
    offers = list(map(Order._make, listing["offers"]))
    bids = [Order(*row) for row in listing["bids"]]
    result = clear(listing["rule"], offers, bids)
    gains = efficiency(offers, bids, result)
    # Escrow pays each trade; the rest goes back to the buyer.
    paid: dict[int, int] = {}
    income: dict[str, int] = {}
    rows: list[list[Any]] = []
    append = rows.append
    for t in result.trades:  # runs once per trade: kept to plain local operations
        amount = payment(t.wh, t.price)
        proceeds = payment(t.wh, t.seller_price)
        paid[t.bid_seq] = paid.get(t.bid_seq, 0) + amount
        income[t.seller] = income.get(t.seller, 0) + proceeds
        append([t.buyer, t.seller, t.res_id, t.wh, t.price, amount, t.bid_seq, t.offer_seq,
                t.seller_price, proceeds])  # fmt: skip
    refund: dict[str, int] = {}
    for seq, buyer, wh, price in listing["bids"]:
        left = payment(wh, price) - paid.get(seq, 0)
        if left:
            refund[buyer] = refund.get(buyer, 0) + left
    # one credit per member, in id order (credit pays debts first, so the order is fixed); a
    # member without debt is credited in place (this loop runs once per member in the book)
    balances, debts = st.data["balances"], st.data["debts"]
    for member, amount in _merged(income, refund):
        if member in debts:
            st.credit(member, amount)
        else:
            balances[member] += amount
    # what buyers paid beyond what sellers received (McAfee's rule only) goes to the grid
    # account, the community's common purse
    surplus = sum(row[5] - row[9] for row in rows)
    st.data["grid"]["balance"] += surplus
    listing["state"] = BIDS_CLOSED
    listing["mcp"] = result.mcp
    listing["trades"] = rows
    listing["efficiency"] = list(gains)
    st.data["mcp_history"].append(
        {"listing_id": listing_id, "rule": result.rule, "mcp": result.mcp, "height": ctx.height}
    )
    params = st.data["params"]
    traded = result.traded_wh
    return {
        "listing_id": listing_id,
        "state": BIDS_CLOSED,
        "rule": result.rule,
        "mcp": result.mcp,
        "kwh_available": result.kwh_available,
        "kwh_wanted": result.kwh_wanted,
        "traded_wh": traded,
        "grid_demand_wh": result.kwh_wanted - traded,
        "grid_supply_wh": result.kwh_available - traded,
        "retail_price": retail_price(params, f.hour_of(listing_id)),
        "feed_in_price": params["feed_in"],
        "surplus": surplus,
        "efficiency": {"traded_gains": gains[0], "efficient_gains": gains[1]},
        "trades": [trade_dict(row) for row in rows],  # fresh objects: never alias the state
    }
