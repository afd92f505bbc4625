"""Settlement of a cleared listing against the signed meter reports of its delivery hour.

Energy tokens: every Wh a member's meters report as exported during hour H is one energy token
of that member for H (minted by ``meter.report``). Settlement spends each of them exactly once:
first against what the member sold in the listing (delivered to the buyers), the rest sold to the
grid at the feed-in tariff. After settlement the hour is closed to reports, so no token can be
minted for it again, and the listing cannot be settled twice.

Per member, for the listing's hour (all members with trades or reports, in id order):

* seller side: ``delivered = min(sold, exported)``; the shortfall ``sold - delivered`` is bought
  from the grid at retail (the buyers drew it from the grid); ``exported - delivered`` is sold to
  the grid at feed-in;
* buyer side: ``taken = min(bought, imported)``; ``bought - taken`` is sold back at feed-in;
  ``imported - taken`` (demand the market did not cover) is bought from the grid at retail.

Before that, the hour's exports are balanced against the feeder meter interval by interval
(balance.py): in an interval where the members claim more export than the feeder and their own
imports account for, the largest claims are cut first; ``exported_wh`` is what is credited,
``reported_export_wh`` what the reports said and ``export_cut_wh`` the difference, and the
result's ``balance`` lists each interval's check (flagged ``unbalanced`` or ``unchecked``).

Each of the two grid amounts rounds down (``clearing.payment``); a member's lines are netted
into one transfer with the grid account. If a member owes more than it holds, it pays what it
has and the rest is recorded as debt (state.py).
"""

from __future__ import annotations

from typing import Any

from ledger.contract import fields as f
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.balance import check_hour
from ledger.contract.clearing import payment
from ledger.contract.codes import LISTING_OPEN, LISTING_SETTLED, TOO_EARLY, Rejected
from ledger.contract.market import AUTHORIZE_OFFERS, REVEAL, SETTLED, listing_of
from ledger.contract.params import retail_price
from ledger.contract.registry import sender_operator
from ledger.contract.state import ContractState


def settle(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("listing_id",))
    listing_id = f.listing_id(body)
    sender_operator(st, tx)
    listing = listing_of(st, listing_id)
    if listing["state"] in (AUTHORIZE_OFFERS, REVEAL):
        raise Rejected(LISTING_OPEN, f"listing {listing_id} has not been cleared")
    if listing["state"] == SETTLED:
        raise Rejected(LISTING_SETTLED, f"listing {listing_id} is already settled")
    end = f.hour_end_ms(listing_id)
    if ctx.timestamp_ms < end:
        raise Rejected(TOO_EARLY, f"delivery hour {listing_id} ends at {end} ms, block is earlier")

    params = st.data["params"]
    retail = retail_price(params, f.hour_of(listing_id))
    feed_in = params["feed_in"]
    sold: dict[str, int] = {}
    bought: dict[str, int] = {}
    for buyer, seller, _res_id, wh, *_ in listing["trades"]:
        sold[seller] = sold.get(seller, 0) + wh
        bought[buyer] = bought.get(buyer, 0) + wh
    metered = st.data["hourly"].get(listing_id, {})
    credited, checks = check_hour(st, listing_id)
    lines = []
    for member in sorted(set(sold) | set(bought) | set(metered)):
        imported, reported_export = metered.get(member, (0, 0))
        exported = credited.get(member, reported_export)
        s, b = sold.get(member, 0), bought.get(member, 0)
        delivered = min(s, exported)
        taken = min(b, imported)
        shortfall = s - delivered
        feed_wh = exported - delivered
        excess = b - taken
        extra = imported - taken
        charge = payment(shortfall + extra, retail)
        refund = payment(feed_wh + excess, feed_in)
        lines.append(
            {
                "id_grid": member,
                "sold_wh": s,
                "exported_wh": exported,
                "reported_export_wh": reported_export,
                "export_cut_wh": reported_export - exported,
                "delivered_wh": delivered,
                "shortfall_wh": shortfall,
                "feed_in_wh": feed_wh,
                "bought_wh": b,
                "imported_wh": imported,
                "taken_wh": taken,
                "excess_wh": excess,
                "grid_import_wh": extra,
                "charge": charge,
                "refund": refund,
            }
        )
    # Commit: nothing below can fail.
    grid = st.data["grid"]
    for line in lines:
        member, net = line["id_grid"], line["refund"] - line["charge"]
        if net >= 0:
            grid["balance"] -= net
            st.credit(member, net)
            line["net_to_grid"], line["debt"] = -net, 0
        else:
            owed = -net
            pay = min(owed, st.balance(member))
            st.debit(member, pay)
            grid["balance"] += pay
            if owed > pay:
                st.data["debts"][member] = st.data["debts"].get(member, 0) + owed - pay
            line["net_to_grid"], line["debt"] = pay, owed - pay
        grid["sold_wh"] += line["shortfall_wh"] + line["grid_import_wh"]
        grid["bought_wh"] += line["feed_in_wh"] + line["excess_wh"]
    settlement = {
        "retail_price": retail,
        "feed_in_price": feed_in,
        "lines": lines,
        "balance": checks,
    }
    listing["state"] = SETTLED
    listing["settlement"] = settlement
    return {"listing_id": listing_id, "state": SETTLED, **settlement}
