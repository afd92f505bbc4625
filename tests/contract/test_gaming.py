"""Orders that cannot be gamed (issue 18): one order per member per listing by default.

The paper's MCP is the mean of the bid prices, one vote per order. On the paper's market as
published a buyer who adds a 1 Wh bid at 39,000 drags the MCP from 95,000 to 76,333 and pays
19.6 % less for the same kWh, and a buyer that splits its order into many weighs as many times.
New communities keep one order per member per listing (a new one replaces the old): these tests
fail on the paper's market, which stays available (``PAPER_MARKET``) and reproducible exactly.
"""

from __future__ import annotations

from typing import Any

from ledger.contract.params import PAPER_MARKET
from tests.contract.harness import HOUR, Community, check_invariants, rejected


def _community(**params: Any) -> Community:
    c = Community(**params)
    c.admit("S1", "producer", 10)
    c.res("PV1", "S1", 10_000)
    for n, who in enumerate(("B1", "B2", "B3"), start=11):
        c.admit(who, "consumer", n)
        c.mint(who, 10_000_000)
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    c.ok("S1", "auction.offer", {"listing_id": HOUR, "res_id": "PV1", "wh": 5000,
                                 "reserve_price": 39_000})  # fmt: skip
    return c


def _bid(c: Community, who: str, wh: int, price: int) -> dict[str, Any]:
    return c.ok(who, "auction.bid", {"listing_id": HOUR, "wh": wh, "bid_price": price})


def _close(c: Community) -> dict[str, Any]:
    result = c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    check_invariants(c.contract)
    return result


def _paid_per_kwh(result: dict[str, Any], who: str) -> tuple[int, int]:
    mine = [t for t in result["trades"] if t["buyer"] == who]
    return sum(t["wh"] for t in mine), sum(t["amount"] for t in mine)


def test_a_1_wh_bid_at_the_floor_does_not_buy_the_same_kwh_cheaper() -> None:
    c = _community()
    _bid(c, "B1", 1000, 95_000)
    _bid(c, "B2", 1000, 95_000)
    _bid(c, "B1", 1, 39_000)  # replaces B1's 1000 Wh bid: B1 has one vote, this one
    result = _close(c)
    wh, paid = _paid_per_kwh(result, "B1")
    # B1 either buys at the honest price or not at all: never its kWh at 76,333
    assert result["mcp"] == (95_000 + 39_000) // 2 and wh == 0 and paid == 0
    assert all(t["price"] >= 67_000 for t in result["trades"])
    book = c.q("order_book", listing_id=HOUR)
    assert [(b["buyer"], b["wh"]) for b in book["bids"]] == [("B2", 1000), ("B1", 1)]


def test_splitting_into_1_wh_orders_gives_no_more_weight() -> None:
    c = _community()
    _bid(c, "B2", 1000, 95_000)
    _bid(c, "B3", 1000, 95_000)
    for _ in range(20):  # B1 bids 60,000: alone it is below the mean and goes unserved
        _bid(c, "B1", 1, 60_000)
    result = _close(c)
    assert result["mcp"] == (60_000 + 2 * 95_000) // 3  # one vote for B1, not twenty
    assert _paid_per_kwh(result, "B1") == (0, 0)
    assert len(c.q("order_book", listing_id=HOUR)["bids"]) == 3


def test_the_paper_market_is_still_there_exactly_as_published() -> None:
    c = _community(**PAPER_MARKET)
    _bid(c, "B1", 1000, 95_000)
    _bid(c, "B2", 1000, 95_000)
    _bid(c, "B1", 1, 39_000)
    result = _close(c)
    assert result["mcp"] == 76_333  # the figure: the gaming works there
    assert _paid_per_kwh(result, "B1") == (1000, 76_333)


def test_a_replacement_returns_the_escrow_and_the_capacity() -> None:
    c = _community()
    first = _bid(c, "B1", 1000, 95_000)
    assert c.q("balance", id_grid="B1")["escrow"] == 95_000
    second = _bid(c, "B1", 2000, 50_000)
    assert second["replaced_seq"] == first["seq"]
    assert c.q("balance", id_grid="B1") == {
        "id_grid": "B1", "balance": 10_000_000 - 100_000, "escrow": 100_000, "debt": 0}  # fmt: skip
    # the seller's replacement frees the RES's capacity of the offer it replaces
    offer = {"listing_id": HOUR, "res_id": "PV1", "wh": 10_000, "reserve_price": 40_000}
    assert c.ok("S1", "auction.offer", offer)["replaced_seq"] == 1
    assert c.q("listing", listing_id=HOUR)["kwh_available"] == 10_000
    # a replacement that cannot be afforded leaves the old bid in place
    rejected(c, "B1", "auction.bid", {"listing_id": HOUR, "wh": 10**6, "bid_price": 95_000},
             "INSUFFICIENT_FUNDS")  # fmt: skip
    assert [b["wh"] for b in c.q("order_book", listing_id=HOUR)["bids"]] == [2000]
    check_invariants(c.contract)
    _close(c)
    rejected(c, "B1", "auction.bid", {"listing_id": HOUR, "wh": 1, "bid_price": 95_000},
             "LISTING_CLOSED")  # fmt: skip
