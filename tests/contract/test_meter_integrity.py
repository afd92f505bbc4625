"""Meter data that cannot mint (issue 18): physical limits, time bounds, the feeder's balance.

The attacks of the issue: a member's gateway holds its billing meter's key, so it can sign any
figure. 100,000,000 Wh of export in one interval was accepted and settled (3,900 tokens out of
the grid account); so was an interval in 2031.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger.contract.balance import cut_largest_first
from ledger.contract.metering import interval_start_ms
from tests.contract.harness import HOUR, Community, check_invariants, rejected, sign_report

END_OF_HOUR_MS = interval_start_ms(f"{HOUR}:45") + 15 * 60_000
QUARTERS = ("00", "15", "30", "45")


def _community(feeder: bool = False) -> Community:
    c = Community()
    c.admit("P1", "prosumer", 10)
    c.admit("P2", "prosumer", 11)
    c.admit("C1", "consumer", 12)
    # P1: 6.9 kW import, 3.68 kW inverter (920 Wh per 15 minutes); P2 a larger roof
    c.meter("MP1", "P1", 50, import_limit_w=6_900, export_limit_w=3_680)
    c.meter("MP2", "P2", 51, import_limit_w=6_900, export_limit_w=10_000)
    c.meter("MC1", "C1", 52, import_limit_w=6_900, export_limit_w=0)
    if feeder:
        c.meter("FEEDER", "OPERATOR", 53, import_limit_w=250_000, export_limit_w=250_000,
                role="feeder")
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    return c


def _settle(c: Community) -> dict[str, dict]:
    result = c.ok("OPERATOR", "auction.settle", {"listing_id": HOUR}, ts=END_OF_HOUR_MS)
    check_invariants(c.contract)
    return {line["id_grid"]: line for line in result["lines"]} | {"_": result}


def test_a_hundred_million_wh_in_one_interval_is_refused_with_a_code() -> None:
    c = _community()
    gw = c.gateways["MP1"]
    body = sign_report(gw, "MP1", f"{HOUR}:00", 0, 100_000_000)
    message = rejected(c, gw, "meter.report", body, "IMPLAUSIBLE_ENERGY")
    assert "3680 W" in message and "920 Wh" in message
    # the limit is power x 15 minutes, to the Wh, on both directions
    assert c.report("MP1", f"{HOUR}:00", 1725, 920).code == "OK"
    body = sign_report(gw, "MP1", f"{HOUR}:15", 0, 921)
    rejected(c, gw, "meter.report", body, "IMPLAUSIBLE_ENERGY")
    body = sign_report(gw, "MP1", f"{HOUR}:15", 1726, 0)
    rejected(c, gw, "meter.report", body, "IMPLAUSIBLE_ENERGY")
    # a consumer's connection with no export allowance cannot claim a single Wh of export
    rejected(c, c.gateways["MC1"], "meter.report",
             sign_report(c.gateways["MC1"], "MC1", f"{HOUR}:00", 10, 1), "IMPLAUSIBLE_ENERGY")
    # nothing beyond physics was minted: the grid pays feed-in for 920 Wh, not for 1e8
    lines = _settle(c)
    assert lines["P1"]["exported_wh"] == 920
    assert c.q("grid")["balance"] > -10**6


def test_an_interval_in_2031_or_before_the_window_is_refused() -> None:
    c = _community()
    gw = c.gateways["MP1"]
    now = END_OF_HOUR_MS
    body = sign_report(gw, "MP1", "2031-01-01T00:00", 0, 500)
    rejected(c, gw, "meter.report", body, "INTERVAL_IN_FUTURE", ts=now)
    # an interval may be reported once it has ended, with 5 minutes of clock tolerance
    last = f"{HOUR}:45"
    early = sign_report(gw, "MP1", last, 0, 500)
    rejected(c, gw, "meter.report", early, "INTERVAL_IN_FUTURE", ts=now - 5 * 60_000 - 1)
    assert c.tx(gw, "meter.report", early, ts=now - 5 * 60_000).code == "OK"
    # and up to the report window (7 days) after it started, not later
    week = 7 * 24 * 3_600_000
    old = sign_report(gw, "MP1", f"{HOUR}:00", 0, 500)
    start = interval_start_ms(f"{HOUR}:00")
    rejected(c, gw, "meter.report", old, "INTERVAL_TOO_OLD", ts=start + week + 1)
    assert c.tx(gw, "meter.report", old, ts=start + week).code == "OK"


def test_the_window_and_tolerance_are_genesis_parameters() -> None:
    c = Community(report_window_ms=3_600_000, report_clock_tolerance_ms=0)
    c.admit("P1", "prosumer", 10)
    c.meter("MP1", "P1", 50)
    gw = c.gateways["MP1"]
    body = sign_report(gw, "MP1", f"{HOUR}:00", 0, 500)
    start = interval_start_ms(f"{HOUR}:00")
    rejected(c, gw, "meter.report", body, "INTERVAL_IN_FUTURE", ts=start + 15 * 60_000 - 1)
    rejected(c, gw, "meter.report", body, "INTERVAL_TOO_OLD", ts=start + 3_600_000 + 1)
    assert c.tx(gw, "meter.report", body, ts=start + 3_600_000).code == "OK"


def _hour(c: Community, per_quarter: dict[str, tuple[int, int]], feeder_loss_permille: int = 20,
          liar: tuple[str, int] | None = None) -> None:
    """Every meter reports each quarter; the feeder reports what the honest figures imply plus
    the losses; ``liar`` (meter, extra Wh) adds export that never flowed."""
    for q in QUARTERS:
        m_imp = sum(imp for imp, _ in per_quarter.values())
        m_exp = sum(exp for _, exp in per_quarter.values())
        net = m_imp - m_exp
        loss = (m_imp + m_exp) * feeder_loss_permille // 1000
        f_imp, f_exp = (net + loss, 0) if net + loss >= 0 else (0, -(net + loss))
        for meter, (imp, exp) in per_quarter.items():
            extra = liar[1] if liar is not None and liar[0] == meter else 0
            assert c.report(meter, f"{HOUR}:{q}", imp, exp + extra).code == "OK"
        assert c.report("FEEDER", f"{HOUR}:{q}", f_imp, f_exp).code == "OK"


FIGURES = {"MP1": (0, 300), "MP2": (0, 250), "MC1": (900, 0)}


def test_an_over_reported_export_is_caught_and_honest_settlement_is_unchanged() -> None:
    honest = _community(feeder=True)
    _hour(honest, FIGURES)
    fair = _settle(honest)
    assert all(chk["status"] == "balanced" for chk in fair["_"]["balance"])
    assert all(line["export_cut_wh"] == 0 for k, line in fair.items() if k != "_")

    # P1 claims 600 Wh more per quarter than its inverter gave (within its 920 Wh limit)
    lying = _community(feeder=True)
    _hour(lying, FIGURES, liar=("MP1", 600))
    caught = _settle(lying)
    checks = caught["_"]["balance"]
    assert [chk["status"] for chk in checks] == ["unbalanced"] * 4
    assert all(chk["loss_wh"] > chk["allowed_wh"] for chk in checks)
    p1 = caught["P1"]
    assert p1["reported_export_wh"] == 4 * 900
    # the liar is cut back to its honest figure plus at most the allowance
    allowed = sum(chk["allowed_wh"] for chk in checks)
    assert 4 * 300 <= p1["exported_wh"] <= 4 * 300 + allowed
    assert p1["export_cut_wh"] == sum(chk["export_cut_wh"] for chk in checks)
    # the honest members are settled exactly as without the lie
    for member in ("P2", "C1"):
        assert caught[member] == fair[member]


def test_a_small_lie_among_the_honest_claims_costs_at_most_the_lie() -> None:
    fair = _community(feeder=True)
    _hour(fair, FIGURES)
    honest = _settle(fair)
    lying = _community(feeder=True)
    _hour(lying, {"MP1": (0, 100), "MP2": (0, 250), "MC1": (900, 0)}, liar=("MP1", 100))
    lines = _settle(lying)
    cut = sum(chk["export_cut_wh"] for chk in lines["_"]["balance"])
    assert cut > 0
    # exports paid never exceed what the members' imports and the feeder's export account for
    for chk in lines["_"]["balance"]:
        paid = chk["members_export_wh"] - chk["export_cut_wh"]
        assert paid <= chk["members_import_wh"] + chk["feeder_export_wh"] + chk["allowed_wh"]
    # P2, the largest honest claim, loses no more than the lie
    assert 0 < honest["P2"]["exported_wh"] - lines["P2"]["exported_wh"] <= 4 * 100


def test_balanced_within_tolerance_unchecked_without_the_feeder_report() -> None:
    c = _community(feeder=True)
    for q in QUARTERS[:3]:
        c.report("MP1", f"{HOUR}:{q}", 0, 300)
        c.report("MC1", f"{HOUR}:{q}", 320, 0)
        c.report("FEEDER", f"{HOUR}:{q}", 26, 0)  # 20 Wh net + 6 Wh of losses
    c.report("MP1", f"{HOUR}:45", 0, 300)  # the feeder's last report never came
    lines = _settle(c)
    assert [chk["status"] for chk in lines["_"]["balance"]] == ["balanced"] * 3 + ["unchecked"]
    assert all(chk["quarters"] == 1 for chk in lines["_"]["balance"])
    assert lines["P1"]["exported_wh"] == 1200 and lines["P1"]["export_cut_wh"] == 0


def test_an_over_reported_import_is_flagged_not_cut() -> None:
    c = _community(feeder=True)
    _hour(c, {"MP1": (0, 300), "MC1": (300, 0)})
    c2 = _community(feeder=True)
    for q in QUARTERS:
        c2.report("MP1", f"{HOUR}:{q}", 0, 300)
        c2.report("MC1", f"{HOUR}:{q}", 900, 0)  # the feeder saw none of this
        c2.report("FEEDER", f"{HOUR}:{q}", 12, 0)
    lines = _settle(c2)
    assert [chk["status"] for chk in lines["_"]["balance"]] == ["unbalanced"] * 4
    assert all(chk["loss_wh"] < 0 for chk in lines["_"]["balance"])
    assert lines["P1"]["exported_wh"] == 1200


def test_a_meter_gap_within_the_hour_is_balanced_over_the_hour() -> None:
    """C1's meter did not answer at :15 (reported missing, 0 Wh) and its next report carries the
    gap's energy (flagged gap): checked interval by interval, :15 would look like P1 claiming
    export the feeder never saw; over the hour it balances, and P1 is paid in full."""
    c = _community(feeder=True)
    for q in QUARTERS:
        c.report("MP1", f"{HOUR}:{q}", 0, 300)
        c.report("FEEDER", f"{HOUR}:{q}", 610, 0)  # C1 draws 900 Wh each quarter, 10 Wh lost
    gw = c.gateways["MC1"]
    for q, imp, flags in (("00", 900, []), ("15", 0, ["missing"]), ("30", 1800, ["gap"]),
                          ("45", 900, [])):  # fmt: skip
        assert c.tx(gw, "meter.report", sign_report(gw, "MC1", f"{HOUR}:{q}", imp, 0, flags)).ok
    # the gap's 1800 Wh is above 15 minutes at 6.9 kW (1725 Wh), not above 30 minutes: the
    # interval before it was reported missing (or not reported); after a reported interval the
    # same figure is refused, and so is more than 30 minutes' worth
    other = _community(feeder=True)
    ogw = other.gateways["MC1"]
    assert other.report("MC1", f"{HOUR}:00", 900, 0).code == "OK"
    rejected(other, ogw, "meter.report", sign_report(ogw, "MC1", f"{HOUR}:15", 1800, 0, ["gap"]),
             "IMPLAUSIBLE_ENERGY")  # fmt: skip
    rejected(other, ogw, "meter.report", sign_report(ogw, "MC1", f"{HOUR}:30", 3451, 0, ["gap"]),
             "IMPLAUSIBLE_ENERGY")  # fmt: skip
    assert other.tx(ogw, "meter.report",
                    sign_report(ogw, "MC1", f"{HOUR}:30", 3450, 0, ["gap"])).ok  # fmt: skip
    lines = _settle(c)
    assert [(chk["quarters"], chk["status"]) for chk in lines["_"]["balance"]] == [(4, "balanced")]
    assert lines["P1"]["exported_wh"] == 1200


def test_without_a_feeder_meter_there_is_no_check() -> None:
    c = _community()
    c.report("MP1", f"{HOUR}:00", 0, 300)
    lines = _settle(c)
    assert lines["_"]["balance"] == [] and lines["P1"]["exported_wh"] == 300


def test_feeder_reports_bill_nobody() -> None:
    c = _community(feeder=True)
    c.report("FEEDER", f"{HOUR}:00", 5_000, 0)
    lines = _settle(c)
    assert "OPERATOR" not in lines


@given(
    st.dictionaries(st.sampled_from("ABCDEFG"), st.integers(0, 5_000), min_size=1),
    st.integers(-10, 40_000),
)
def test_cut_largest_first(claims: dict[str, int], excess: int) -> None:
    kept = cut_largest_first(claims, excess)
    total = sum(claims.values())
    assert sum(kept.values()) == max(0, total - max(0, excess))
    assert all(0 <= kept[m] <= claims[m] for m in claims)
    cut = {m for m in claims if kept[m] < claims[m]}
    if cut:
        # everyone cut ends at one level (give or take the Wh of the remainder), and nobody
        # kept above it: the largest claims were cut first
        level = min(kept[m] for m in cut)
        assert all(kept[m] in (level, level + 1) for m in cut)
        assert all(kept[m] <= level + 1 for m in claims)
