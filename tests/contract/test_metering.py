"""Signed meter reports: checked inside the contract, duplicates and forgeries refused."""

from __future__ import annotations

from ledger.contract import REPORT_DOMAIN, REPORT_FLAGS, report_signing_bytes, sign_report
from ledger.encoding import canonical
from tests.contract.harness import HOUR, Community, key, rejected


def _community() -> Community:
    c = Community()
    c.admit("P1", "producer", 10)
    c.meter("M1", "P1", 50)
    c.meter("M2", "P1", 51)
    return c


def test_signing_bytes_are_the_documented_ones() -> None:
    expected = REPORT_DOMAIN + canonical(
        {"meter_id": "M1", "interval": "2026-11-24T13:15", "import_wh": 1, "export_wh": 2}
    )
    assert expected.startswith(b"wattmesh/report/v1\x00{")
    assert report_signing_bytes("M1", "2026-11-24T13:15", 1, 2) == expected
    assert expected.endswith(
        b'"export_wh":2,"import_wh":1,"interval":"2026-11-24T13:15","meter_id":"M1"}'
    )


def test_flags_are_signed_and_a_report_without_them_signs_what_it_always_did() -> None:
    plain = report_signing_bytes("M1", f"{HOUR}:15", 1, 2)
    assert report_signing_bytes("M1", f"{HOUR}:15", 1, 2, ()) == plain
    flagged = report_signing_bytes("M1", f"{HOUR}:15", 1, 2, ["gap", "clipped"])
    assert flagged == REPORT_DOMAIN + canonical(
        {
            "meter_id": "M1",
            "interval": f"{HOUR}:15",
            "import_wh": 1,
            "export_wh": 2,
            "flags": ["gap", "clipped"],
        }
    )
    assert "flags" not in sign_report(key(50), "M1", f"{HOUR}:15", 1, 2)


def test_flagged_reports_are_stored_answered_and_settle_like_any_other() -> None:
    c = _community()
    gw = c.gateways["M1"]
    body = sign_report(gw, "M1", f"{HOUR}:00", 10, 200, ["gap", "clipped"])
    receipt = c.tx(gw, "meter.report", body)
    assert receipt.code == "OK" and receipt.result["flags"] == ["gap", "clipped"]
    assert c.report("M1", f"{HOUR}:15", 5, 100).code == "OK"
    assert [r["flags"] for r in c.q("reports", meter_id="M1")] == [["gap", "clipped"], []]
    # the flagged report's Wh count as any other's: both intervals' exports are minted
    assert c.q("energy", listing_id=HOUR)[0]["minted_wh"] == 300


def test_flags_are_checked_and_covered_by_the_signature() -> None:
    c = _community()
    gw = c.gateways["M1"]
    good = sign_report(gw, "M1", f"{HOUR}:00", 10, 200, ["clipped"])
    # changing, dropping or adding a flag breaks the signature
    rejected(c, gw, "meter.report", good | {"flags": ["gap"]}, "BAD_SIGNATURE")
    rejected(
        c, gw, "meter.report", {k: v for k, v in good.items() if k != "flags"}, "BAD_SIGNATURE"
    )
    plain = sign_report(gw, "M1", f"{HOUR}:00", 10, 200)
    rejected(c, gw, "meter.report", plain | {"flags": ["clipped"]}, "BAD_SIGNATURE")
    # one encoding per report: no empty list, no unknown name, no repeats, the one order
    for flags in ([], ["clipped", "gap"], ["gap", "gap"], ["glitch"], "clipped", [1], None):
        body = sign_report(gw, "M1", f"{HOUR}:00", 10, 200) | {"flags": flags}
        rejected(c, gw, "meter.report", body, "BAD_BODY")
    assert c.tx(gw, "meter.report", good).code == "OK"
    # appended only, never reordered: a flag's bit is its place
    assert REPORT_FLAGS[8:] == ("clipped", "behind", "sign_unknown")
    assert len(set(REPORT_FLAGS)) == len(REPORT_FLAGS)


def test_reports_accumulate_per_owner_and_hour() -> None:
    c = _community()
    assert c.report("M1", f"{HOUR}:00", 10, 200).code == "OK"
    assert c.report("M1", f"{HOUR}:15", 0, 300).code == "OK"
    assert c.report("M2", f"{HOUR}:15", 5, 1).code == "OK"
    assert c.q("reports", meter_id="M1") == [
        {
            "meter_id": "M1",
            "interval": f"{HOUR}:00",
            "import_wh": 10,
            "export_wh": 200,
            "flags": [],
        },
        {"meter_id": "M1", "interval": f"{HOUR}:15", "import_wh": 0, "export_wh": 300, "flags": []},
    ]
    assert c.q("reports", meter_id="M1", interval=f"{HOUR}:15")[0]["export_wh"] == 300
    assert c.q("reports", meter_id="M1", interval=f"{HOUR}:45") == []


def test_forged_duplicate_and_unknown_reports_are_refused() -> None:
    c = _community()
    gw = c.gateways["M1"]
    body = sign_report(gw, "M1", f"{HOUR}:00", 10, 200)
    assert c.tx(gw, "meter.report", body).code == "OK"
    rejected(c, gw, "meter.report", body, "DUPLICATE_REPORT")
    # a different value for the same interval is a duplicate too: first report wins
    rejected(
        c, gw, "meter.report", sign_report(gw, "M1", f"{HOUR}:00", 10, 999), "DUPLICATE_REPORT"
    )
    tampered = sign_report(gw, "M1", f"{HOUR}:15", 10, 200) | {"export_wh": 2000}
    rejected(c, gw, "meter.report", tampered, "BAD_SIGNATURE")
    other = key(60)  # a key that is not the meter's gateway, signing both report and tx
    rejected(c, other, "meter.report", sign_report(other, "M1", f"{HOUR}:15", 1, 1), "NOT_GATEWAY")
    # the right body sent by someone else is refused too (the tx must come from the gateway)
    rejected(c, other, "meter.report", sign_report(gw, "M1", f"{HOUR}:15", 1, 1), "NOT_GATEWAY")
    # M2's gateway cannot report for M1
    rejected(
        c,
        c.gateways["M2"],
        "meter.report",
        sign_report(c.gateways["M2"], "M1", f"{HOUR}:15", 1, 1),
        "NOT_GATEWAY",
    )
    rejected(c, gw, "meter.report", sign_report(gw, "M9", f"{HOUR}:15", 1, 1), "UNKNOWN_METER")
    for interval in (f"{HOUR}:10", HOUR, "2026-02-30T10:00", f"{HOUR}:15:00"):
        rejected(c, gw, "meter.report", sign_report(gw, "M1", interval, 1, 1), "BAD_BODY")
    rejected(c, gw, "meter.report", sign_report(gw, "M1", f"{HOUR}:15", -1, 1), "BAD_AMOUNT")
    rejected(c, gw, "meter.report", body | {"signature": "00" * 63}, "BAD_BODY")


def test_hours_and_intervals_are_named_in_ascii_digits_only() -> None:
    """``\\d`` would take any script's digits, so the same hour could be opened (and the same
    interval reported) a second time under another spelling."""
    c = _community()
    gw = c.gateways["M1"]
    for other in ("\uff12\uff10\uff12\uff16-11-24T13", "\u0662\u0660\u0662\u0666-11-24T13"):
        rejected(c, "OPERATOR", "auction.open", {"listing_id": other}, "BAD_BODY")
        body = sign_report(gw, "M1", f"{other}:00", 10, 200)
        rejected(c, gw, "meter.report", body, "BAD_BODY")
    assert c.report("M1", f"{HOUR}:00", 10, 200).code == "OK"
