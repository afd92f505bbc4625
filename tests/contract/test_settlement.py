"""Settlement after the delivery hour: worked examples on the paper's tariffs, energy tokens."""

from __future__ import annotations

from ledger.contract import sign_report
from tests.contract.harness import AFTER, HOUR, OFFPEAK, Community, check_invariants, rejected

END_OF_HOUR_MS = 1_795_528_800_000  # 2026-11-24T14:00Z, the end of the delivery hour HOUR


def _traded(listing: str = HOUR, price: int = 80_000) -> Community:
    """P1 sells 2000 Wh to C1 at MCP ``price`` (one offer, one bid at that price)."""
    c = Community()
    c.members(("P1", "producer", 10), ("C1", "consumer", 11), ("C2", "consumer", 12))
    c.res("PV1", "P1", 5000)
    c.meter("MP1", "P1", 50)
    c.meter("MC1", "C1", 51)
    c.meter("MC2", "C2", 52)
    c.mint("C1", 1_000_000)
    c.ok("OPERATOR", "auction.open", {"listing_id": listing})
    c.offer("P1", listing, "PV1", 3000, 40_000)
    c.bid("C1", listing, 2000, price)
    close = c.ok("OPERATOR", "auction.close", {"listing_id": listing})
    assert close["mcp"] == price and close["trades"][0]["amount"] == 2 * price
    return c


def _lines(result: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {line["id_grid"]: line for line in result["lines"]}


def test_worked_example_on_the_paper_tariffs() -> None:
    c = _traded()
    # P1 exports 1500 Wh of the 2000 sold; C1 imports 2500 Wh (500 more than bought);
    # C2 (no trade) imports 400 Wh.
    for quarter, (p1_exp, c1_imp) in zip(
        ("00", "15", "30", "45"), ((500, 600), (500, 600), (500, 600), (0, 700)), strict=True
    ):
        assert c.report("MP1", f"{HOUR}:{quarter}", 0, p1_exp).code == "OK"
        assert c.report("MC1", f"{HOUR}:{quarter}", c1_imp, 0).code == "OK"
    assert c.report("MC2", f"{HOUR}:00", 400, 0).code == "OK"
    result = c.ok("OPERATOR", "auction.settle", {"listing_id": HOUR}, ts=END_OF_HOUR_MS)
    assert (result["retail_price"], result["feed_in_price"]) == (95_000, 39_000)  # peak hour 13
    lines = _lines(result)
    # P1 delivered 1500, shortfall 500 Wh bought at retail: 500 x 0.095 = 47_500 micro-tokens
    p1 = lines["P1"]
    assert (p1["delivered_wh"], p1["shortfall_wh"], p1["feed_in_wh"]) == (1500, 500, 0)
    assert (p1["charge"], p1["refund"], p1["net_to_grid"]) == (47_500, 0, 47_500)
    # C1 took its 2000 and 500 more from the grid at retail: 47_500
    c1 = lines["C1"]
    assert (c1["taken_wh"], c1["excess_wh"], c1["grid_import_wh"]) == (2000, 0, 500)
    assert c1["charge"] == 47_500
    # C2 bought everything from the grid: 400 x 0.095 = 38_000
    assert lines["C2"]["charge"] == 38_000 and lines["C2"]["debt"] == 38_000  # C2 had nothing
    assert c.balance("P1") == 160_000 - 47_500
    assert c.balance("C1") == 1_000_000 - 160_000 - 47_500
    assert c.q("balance", id_grid="C2") == {
        "id_grid": "C2",
        "balance": 0,
        "escrow": 0,
        "debt": 38_000,
    }
    grid = c.q("grid")
    assert grid["balance"] == 47_500 * 2 and grid["sold_wh"] == 500 + 500 + 400
    assert grid["debts"] == {"C2": 38_000}
    check_invariants(c.contract)
    # a later credit pays the debt first
    c.mint("C2", 50_000)
    assert c.q("balance", id_grid="C2")["balance"] == 12_000
    assert c.q("grid")["debts"] == {}
    check_invariants(c.contract)


def test_excess_export_and_unused_purchase_go_to_feed_in_off_peak() -> None:
    c = _traded(OFFPEAK, 60_000)  # at most the off-peak retail price (65_000)
    assert c.report("MP1", f"{OFFPEAK}:00", 0, 3000).code == "OK"  # 1000 Wh beyond what it sold
    assert c.report("MC1", f"{OFFPEAK}:30", 1200, 0).code == "OK"  # 800 Wh less than bought
    result = c.ok("OPERATOR", "auction.settle", {"listing_id": OFFPEAK}, ts=AFTER)
    assert result["retail_price"] == 65_000  # the off-peak retail parameter
    lines = _lines(result)
    # P1: 1000 Wh fed in at 0.039 = 39_000; C1: 800 Wh sold back at 0.039 = 31_200
    assert (lines["P1"]["feed_in_wh"], lines["P1"]["refund"]) == (1000, 39_000)
    assert (lines["C1"]["excess_wh"], lines["C1"]["refund"]) == (800, 31_200)
    assert c.balance("P1") == 120_000 + 39_000
    assert c.balance("C1") == 1_000_000 - 120_000 + 31_200
    assert c.q("grid")["balance"] == -(39_000 + 31_200)
    check_invariants(c.contract)


def test_settlement_timing_and_once_only() -> None:
    c = _traded()
    rejected(
        c, "OPERATOR", "auction.settle", {"listing_id": HOUR}, "TOO_EARLY", ts=END_OF_HOUR_MS - 1
    )
    rejected(c, "C1", "auction.settle", {"listing_id": HOUR}, "NOT_OPERATOR", ts=AFTER)
    rejected(c, "OPERATOR", "auction.settle", {"listing_id": OFFPEAK}, "UNKNOWN_LISTING", ts=AFTER)
    c.ok("OPERATOR", "auction.open", {"listing_id": OFFPEAK})
    rejected(c, "OPERATOR", "auction.settle", {"listing_id": OFFPEAK}, "LISTING_OPEN", ts=AFTER)
    assert c.report("MP1", f"{HOUR}:00", 0, 2000).code == "OK"
    c.ok("OPERATOR", "auction.settle", {"listing_id": HOUR}, ts=END_OF_HOUR_MS)
    rejected(c, "OPERATOR", "auction.settle", {"listing_id": HOUR}, "LISTING_SETTLED", ts=AFTER)
    # the hour's energy tokens are spent: no new report can mint more for it
    gw = c.gateways["MP1"]
    rejected(
        c, gw, "meter.report", sign_report(gw, "MP1", f"{HOUR}:15", 0, 999), "REPORT_TOO_LATE"
    )
    assert c.q("energy", listing_id=HOUR) == [
        {
            "id_grid": "P1",
            "minted_wh": 2000,
            "spent_on_trades_wh": 2000,
            "spent_to_grid_wh": 0,
            "voided_wh": 0,
            "unspent_wh": 0,
        }
    ]
    settled = c.q("settlement", listing_id=HOUR)
    p1 = _lines(settled)["P1"]
    assert (p1["exported_wh"], p1["delivered_wh"], p1["feed_in_wh"]) == (2000, 2000, 0)
    assert c.q("listing", listing_id=HOUR)["state"] == "SETTLED"
    check_invariants(c.contract)
