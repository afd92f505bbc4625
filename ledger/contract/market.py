"""The hourly market (Section 4.3, Table 9, Figure 12): open, offer, bid, close-and-clear.

A listing record (``state.data["listings"][listing_id]``)::

    {"state": "AUTHORIZE_OFFERS" | "BIDS_CLOSED" | "SETTLED", "rule": clearing rule,
     "opened_height": int, "offers": [[seq, seller, wh, price, res_id]],
     "bids": [[seq, buyer, wh, price]], "res_wh": {res_id: Wh offered},
     "sides": {id_grid: "offer" | "bid"},
     "kwh_available": Wh, "kwh_wanted": Wh, "mcp": int | None,
     "trades": [[buyer, seller, res_id, wh, price, amount, bid_seq, offer_seq]],
     "settlement": ...}

Orders and trades are stored as compact rows (a listing may hold tens of thousands; rows are
what the clearing functions take, without a conversion); queries turn them into objects with
the field names of ``OFFER_FIELDS``, ``BID_FIELDS`` and ``TRADE_FIELDS``. A bid's escrow is
``payment(wh, price)``, so it is not stored.

``seq`` is handed out in the order the ledger accepts orders: it is "first in". The rule is fixed
when the listing opens, so a later change of parameters cannot re-price an open book.
"""

from __future__ import annotations

from typing import Any

from ledger.contract import fields as f
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.clearing import Order, clear, payment
from ledger.contract.codes import (
    BOTH_SIDES,
    INSUFFICIENT_FUNDS,
    LISTING_CLOSED,
    LISTING_EXISTS,
    NOT_RES_OWNER,
    PRICE_OUT_OF_BAND,
    RES_CAPACITY_EXCEEDED,
    ROLE_FORBIDDEN,
    UNKNOWN_LISTING,
    UNKNOWN_RES,
    Rejected,
)
from ledger.contract.params import retail_price
from ledger.contract.registry import BUYER_ROLES, SELLER_ROLES, sender_member, sender_operator
from ledger.contract.state import State

OFFER_FIELDS = ("seq", "seller", "wh", "price", "res_id")
BID_FIELDS = ("seq", "buyer", "wh", "price")
TRADE_FIELDS = ("buyer", "seller", "res_id", "wh", "price", "amount", "bid_seq", "offer_seq")

AUTHORIZE_OFFERS = "AUTHORIZE_OFFERS"
BIDS_CLOSED = "BIDS_CLOSED"
SETTLED = "SETTLED"


def trade_dict(row: list[Any]) -> dict[str, Any]:
    buyer, seller, res_id, wh, price, amount, bid_seq, offer_seq = row
    return {
        "buyer": buyer,
        "seller": seller,
        "res_id": res_id,
        "wh": wh,
        "price": price,
        "amount": amount,
        "bid_seq": bid_seq,
        "offer_seq": offer_seq,
    }


def listing_of(st: State, listing_id: str) -> dict[str, Any]:
    listing = st.data["listings"].get(listing_id)
    if listing is None:
        raise Rejected(UNKNOWN_LISTING, f"no listing {listing_id}")
    return listing  # type: ignore[no-any-return]


def _open_listing(st: State, listing_id: str) -> dict[str, Any]:
    listing = listing_of(st, listing_id)
    if listing["state"] != AUTHORIZE_OFFERS:
        raise Rejected(LISTING_CLOSED, f"listing {listing_id} is {listing['state']}")
    return listing


def _in_band(st: State, name: str, price: int, listing_id: str) -> None:
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


def open_listing(st: State, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
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
        "opened_height": ctx.height,
        "offers": [],
        "bids": [],
        "res_wh": {},
        "sides": {},
        "kwh_available": 0,
        "kwh_wanted": 0,
        "mcp": None,
        "trades": [],
        "settlement": None,
    }
    return {"listing_id": listing_id, "state": AUTHORIZE_OFFERS}


def offer(st: State, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """RESOffer: Wh from one RES at a reserve price, from the RES's owner."""
    body = tx.body
    f.exact(body, ("listing_id", "res_id", "wh", "reserve_price"))
    listing_id = f.listing_id(body)
    res_id = f.ident(body, "res_id")
    wh = f.positive(body, "wh", f.MAX_WH)
    price = f.integer(body, "reserve_price")
    seller = sender_member(st, tx)
    listing = _open_listing(st, listing_id)
    res = st.data["res"].get(res_id)
    if res is None:
        raise Rejected(UNKNOWN_RES, f"no RES {res_id}")
    if res["owner"] != seller:
        raise Rejected(NOT_RES_OWNER, f"RES {res_id} belongs to {res['owner']}, not {seller}")
    if st.role(seller) not in SELLER_ROLES:
        raise Rejected(ROLE_FORBIDDEN, f"a {st.role(seller)} may not sell")
    _in_band(st, "reserve_price", price, listing_id)
    _one_side(listing, seller, "offer")
    committed = listing["res_wh"].get(res_id, 0)
    if committed + wh > res["rated_power_w"]:  # rated W for one hour = Wh
        raise Rejected(
            RES_CAPACITY_EXCEEDED,
            f"RES {res_id} rated {res['rated_power_w']} Wh/h, already offered {committed}",
        )
    seq = st.next_seq()
    listing["offers"].append([seq, seller, wh, price, res_id])
    listing["res_wh"][res_id] = committed + wh
    listing["sides"][seller] = "offer"
    listing["kwh_available"] += wh
    return {"listing_id": listing_id, "seq": seq}


def bid(st: State, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """BuyOffer: escrows wh x bid_price / 1000 micro-tokens (rounded down) until clearing."""
    body = tx.body
    f.exact(body, ("listing_id", "wh", "bid_price"))
    listing_id = f.listing_id(body)
    wh = f.positive(body, "wh", f.MAX_WH)
    price = f.integer(body, "bid_price")
    buyer = sender_member(st, tx)
    listing = _open_listing(st, listing_id)
    if st.role(buyer) not in BUYER_ROLES:
        raise Rejected(ROLE_FORBIDDEN, f"a {st.role(buyer)} may not buy")
    _in_band(st, "bid_price", price, listing_id)
    _one_side(listing, buyer, "bid")
    escrow = payment(wh, price)
    have = st.balance(buyer)
    if have < escrow:
        raise Rejected(
            INSUFFICIENT_FUNDS, f"bid needs {escrow} micro-tokens in escrow, have {have}"
        )
    st.debit(buyer, escrow)
    seq = st.next_seq()
    listing["bids"].append([seq, buyer, wh, price])
    listing["sides"][buyer] = "bid"
    listing["kwh_wanted"] += wh
    return {"listing_id": listing_id, "seq": seq, "escrow": escrow}


def close(st: State, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """Bid_Closed: close the listing and clear it in the same transaction."""
    body = tx.body
    f.exact(body, ("listing_id",))
    listing_id = f.listing_id(body)
    sender_operator(st, tx)
    listing = _open_listing(st, listing_id)
    offers = list(map(Order._make, listing["offers"]))
    bids = [Order(*row) for row in listing["bids"]]
    result = clear(listing["rule"], offers, bids)
    # Commit: nothing below can fail. Escrow pays each trade; the rest goes back to the buyer.
    paid: dict[int, int] = {}
    income: dict[str, int] = {}
    rows: list[list[Any]] = []
    append = rows.append
    for t in result.trades:  # runs once per trade: kept to plain local operations
        amount = t.wh * t.price // 1000  # clearing.payment, inlined
        paid[t.bid_seq] = paid.get(t.bid_seq, 0) + amount
        income[t.seller] = income.get(t.seller, 0) + amount
        append([t.buyer, t.seller, t.res_id, t.wh, t.price, amount, t.bid_seq, t.offer_seq])
    refund: dict[str, int] = {}
    for seq, buyer, wh, price in listing["bids"]:
        left = payment(wh, price) - paid.get(seq, 0)
        if left:
            refund[buyer] = refund.get(buyer, 0) + left
    # one credit per member, in id order (credit pays debts first, so the order is fixed)
    for member in sorted(income.keys() | refund.keys()):
        st.credit(member, income.get(member, 0) + refund.get(member, 0))
    listing["state"] = BIDS_CLOSED
    listing["mcp"] = result.mcp
    listing["trades"] = rows
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
        "trades": [trade_dict(row) for row in rows],  # fresh objects: never alias the state
    }
