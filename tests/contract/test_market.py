"""The hourly listing through the contract: open, RESOffer, BuyOffer with escrow, close, clear."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.contract import book_orders, clear
from tests.contract.harness import (
    HOUR,
    OFFPEAK,
    TWO_SELLERS_TWO_BUYERS,
    Community,
    check_invariants,
    rejected,
)


def _community(**params: Any) -> Community:
    c = Community(**params)
    c.members(*TWO_SELLERS_TWO_BUYERS)
    c.res("PV1", "P1", 5000)
    c.res("PV2", "P2", 3000)
    for who in ("C1", "C2", "P2"):
        c.mint(who, 1_000_000)
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    return c


def _offer(c: Community, who: str, res_id: str, wh: int, price: int) -> dict[str, Any]:
    body = {"listing_id": HOUR, "res_id": res_id, "wh": wh, "reserve_price": price}
    return c.ok(who, "auction.offer", body)


def _bid(c: Community, who: str, wh: int, price: int) -> dict[str, Any]:
    return c.ok(who, "auction.bid", {"listing_id": HOUR, "wh": wh, "bid_price": price})


def test_listing_life_cycle_with_the_paper_rule() -> None:
    c = _community()
    assert c.q("listing", listing_id=HOUR)["state"] == "AUTHORIZE_OFFERS"
    assert _offer(c, "P1", "PV1", 3000, 50_000)["seq"] == 1
    _offer(c, "P2", "PV2", 2000, 40_000)
    assert _bid(c, "C1", 2000, 90_000) == {"listing_id": HOUR, "seq": 3, "escrow": 180_000}
    _bid(c, "C2", 4000, 60_000)
    assert c.q("balance", id_grid="C1") == {
        "id_grid": "C1",
        "balance": 820_000,
        "escrow": 180_000,
        "debt": 0,
    }
    info = c.q("listing", listing_id=HOUR)
    assert (info["kwh_available"], info["kwh_wanted"], info["mcp"]) == (5000, 6000, None)
    check_invariants(c.contract)

    result = c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    # MCP = (90k + 60k) / 2 = 75k: both sellers qualify, only C1 (90k) does; FIFO gives P1.
    assert result["mcp"] == 75_000 and result["state"] == "BIDS_CLOSED"
    assert [(t["buyer"], t["seller"], t["wh"], t["amount"]) for t in result["trades"]] == [
        ("C1", "P1", 2000, 150_000)
    ]
    assert (result["kwh_available"], result["kwh_wanted"]) == (5000, 6000)
    assert (result["grid_demand_wh"], result["grid_supply_wh"]) == (4000, 3000)
    assert (result["retail_price"], result["feed_in_price"]) == (95_000, 39_000)
    # C1 paid 150k of its 180k escrow and got 30k back; C2's whole escrow came back
    assert (c.balance("C1"), c.balance("C2"), c.balance("P1")) == (850_000, 1_000_000, 150_000)
    assert c.q("trades", listing_id=HOUR) == result["trades"]
    assert c.q("mcp_history") == [
        {"listing_id": HOUR, "rule": "paper", "mcp": 75_000, "height": c.height}
    ]
    assert c.q("listing", listing_id=HOUR)["traded_wh"] == 2000
    check_invariants(c.contract)


@pytest.mark.parametrize("rule", ["uniform", "pay_as_bid"])
def test_rule_is_chosen_per_community(rule: str) -> None:
    c = _community(clearing_rule=rule)
    _offer(c, "P1", "PV1", 3000, 50_000)
    _offer(c, "P2", "PV2", 2000, 40_000)
    _bid(c, "C1", 2000, 90_000)
    _bid(c, "C2", 4000, 60_000)
    result = c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    flows = [(t["buyer"], t["seller"], t["wh"], t["price"]) for t in result["trades"]]
    if rule == "uniform":
        # asks P2 40k, P1 50k; bids C1 90k, C2 60k: all 5000 Wh trade; C2 is unserved for
        # 1000 Wh at 60k and the supply is gone: price in [60k, 60k]
        assert result["mcp"] == 60_000
        assert flows == [("C1", "P2", 2000, 60_000), ("C2", "P1", 3000, 60_000)]
    else:
        assert flows == [("C1", "P2", 2000, 90_000), ("C2", "P1", 3000, 60_000)]
        assert result["mcp"] == (2000 * 90_000 + 3000 * 60_000) // 5000
    assert result["rule"] == rule
    check_invariants(c.contract)


def test_offer_rules() -> None:
    c = _community(order_policy="many")  # several offers of one RES add up
    body = {"listing_id": HOUR, "res_id": "PV1", "wh": 1000, "reserve_price": 50_000}
    rejected(c, "P2", "auction.offer", body, "NOT_RES_OWNER")
    rejected(c, "P1", "auction.offer", body | {"res_id": "PV9"}, "UNKNOWN_RES")
    rejected(c, "P1", "auction.offer", body | {"wh": 0}, "BAD_AMOUNT")
    rejected(c, "P1", "auction.offer", body | {"wh": -1}, "BAD_AMOUNT")
    rejected(c, "P1", "auction.offer", body | {"reserve_price": 38_999}, "PRICE_OUT_OF_BAND")
    rejected(c, "P1", "auction.offer", body | {"reserve_price": 95_001}, "PRICE_OUT_OF_BAND")
    rejected(c, "P1", "auction.offer", body | {"listing_id": "2026-11-24T14"}, "UNKNOWN_LISTING")
    rejected(c, "P1", "auction.offer", body | {"listing_id": "2026-11-24"}, "BAD_BODY")
    # rated 5000 W for one hour: 5000 Wh in total over all offers of the RES in the listing
    _offer(c, "P1", "PV1", 4000, 50_000)
    rejected(c, "P1", "auction.offer", body | {"wh": 1001}, "RES_CAPACITY_EXCEEDED")
    _offer(c, "P1", "PV1", 1000, 50_000)
    c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    rejected(c, "P2", "auction.offer", body | {"res_id": "PV2"}, "LISTING_CLOSED")


def test_bid_rules() -> None:
    c = _community(order_policy="many")
    body = {"listing_id": HOUR, "wh": 1000, "bid_price": 60_000}
    rejected(c, "P1", "auction.bid", body, "ROLE_FORBIDDEN")  # a producer does not buy
    rejected(c, "C1", "auction.bid", body | {"wh": 0}, "BAD_AMOUNT")
    rejected(c, "C1", "auction.bid", body | {"bid_price": 100_000}, "PRICE_OUT_OF_BAND")
    rejected(c, "C1", "auction.bid", body | {"wh": 16_667}, "INSUFFICIENT_FUNDS")  # 1_000_020
    _bid(c, "C1", 16_666, 60_000)  # escrow 999_960 fits the 1_000_000 balance
    rejected(c, "C1", "auction.bid", body, "INSUFFICIENT_FUNDS")
    rejected(c, "OPERATOR", "auction.open", {"listing_id": HOUR}, "LISTING_EXISTS")
    rejected(c, "C1", "auction.close", {"listing_id": HOUR}, "NOT_OPERATOR")
    rejected(c, "C1", "auction.open", {"listing_id": "2026-11-24T14"}, "NOT_OPERATOR")
    c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    rejected(c, "C2", "auction.bid", body, "LISTING_CLOSED")
    rejected(c, "OPERATOR", "auction.close", {"listing_id": HOUR}, "LISTING_CLOSED")
    rejected(c, "OPERATOR", "auction.close", {"listing_id": "2026-11-24T15"}, "UNKNOWN_LISTING")


def test_prosumer_sells_or_buys_but_not_both_in_one_hour() -> None:
    c = _community()
    _offer(c, "P2", "PV2", 1000, 40_000)
    _offer(c, "P2", "PV2", 500, 41_000)  # more offers on the same side are fine
    rejected(
        c, "P2", "auction.bid", {"listing_id": HOUR, "wh": 500, "bid_price": 80_000}, "BOTH_SIDES"
    )
    c.ok("OPERATOR", "auction.open", {"listing_id": "2026-11-24T14"})
    c.ok("P2", "auction.bid", {"listing_id": "2026-11-24T14", "wh": 500, "bid_price": 80_000})
    body = {"listing_id": "2026-11-24T14", "res_id": "PV2", "wh": 10, "reserve_price": 40_000}
    rejected(c, "P2", "auction.offer", body, "BOTH_SIDES")
    check_invariants(c.contract)


def test_close_of_an_empty_listing_records_no_price() -> None:
    c = _community()
    result = c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    assert result["mcp"] is None and result["trades"] == []
    assert c.q("mcp_history", limit=1)[0]["mcp"] is None


def test_order_book_is_a_copy() -> None:
    c = _community()
    _offer(c, "P1", "PV1", 3000, 50_000)
    book = c.q("order_book", listing_id=HOUR)
    book["offers"][0]["wh"] = 1
    assert c.q("order_book", listing_id=HOUR)["offers"][0]["wh"] == 3000


@pytest.mark.parametrize("rule", ["paper", "uniform", "pay_as_bid"])
def test_what_if_on_the_queried_book_matches_the_ledger(rule: str) -> None:
    c = _community(clearing_rule=rule)
    for who, res_id, wh, price in [
        ("P1", "PV1", 1200, 45_000),
        ("P2", "PV2", 900, 70_000),
        ("P1", "PV1", 700, 39_000),
    ]:
        _offer(c, who, res_id, wh, price)
    for who, wh, price in [
        ("C1", 800, 90_000),
        ("C2", 1500, 50_000),
        ("C2", 400, 72_000),
        ("C1", 300, 90_000),
    ]:
        _bid(c, who, wh, price)
    book = c.q("order_book", listing_id=HOUR)
    closed = c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    what_if = clear(rule, *book_orders(book))
    assert closed["mcp"] == what_if.mcp and closed["traded_wh"] == what_if.traded_wh
    assert [
        (t["buyer"], t["seller"], t["wh"], t["price"], t["amount"]) for t in closed["trades"]
    ] == [(t.buyer, t.seller, t.wh, t.price, t.amount) for t in what_if.trades]
    assert what_if.traded_wh > 0


def test_the_band_is_capped_by_the_retail_price_of_the_hour() -> None:
    """Off-peak the grid charges 65_000 (the default off-peak retail): neither side may price
    a neighbour's energy above that then, while 95_000 stays allowed in a peak hour."""
    c = _community()
    c.ok("OPERATOR", "auction.open", {"listing_id": OFFPEAK})
    offer = {"listing_id": OFFPEAK, "res_id": "PV1", "wh": 1000, "reserve_price": 65_001}
    rejected(c, "P1", "auction.offer", offer, "PRICE_OUT_OF_BAND")
    bid = {"listing_id": OFFPEAK, "wh": 1000, "bid_price": 80_000}
    rejected(c, "C1", "auction.bid", bid, "PRICE_OUT_OF_BAND")
    c.ok("P1", "auction.offer", offer | {"reserve_price": 65_000})
    c.ok("C1", "auction.bid", bid | {"bid_price": 65_000})
    _bid(c, "C2", 1000, 95_000)  # the peak hour's band is unchanged
    check_invariants(c.contract)
