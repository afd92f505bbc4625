"""The read policy (``reads.py``): for every query and every kind of reader (anonymous, a
stranger, members, a meter key, an order key, a revoked key, the operator), nothing private
reaches a reader the policy does not grant it to. Personal data is not on the chain at all (only
commitments), so what is private here is a member's consumption, its orders and its money."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.contract import queries, reads
from ledger.contract.api import QueryError
from ledger.encoding import canonical
from tests.contract.harness import AFTER, HOUR, OPERATOR, Community, commitment, hexkey, key
from tests.contract.test_hostile import json_values

STRANGER = key(99)
ORDER_KEY = key(60)  # P1's order key, held by its gateway's trading agent
REVOKED = key(12)  # R1's wallet key, revoked by the operator


def _community() -> Community:
    c = Community()
    c.admit("P1", "prosumer", 10)
    c.admit("C1", "consumer", 11)
    c.admit("R1", "consumer", 12)
    c.ok("OPERATOR", "member.revoke_key", {"id_grid": "R1"})
    c.ok("P1", "member.set_order_key", {"id_grid": "P1", "public_key": hexkey(ORDER_KEY)})
    c.res("PV1", "P1", 5000)
    c.meter("M1", "P1", 50)
    c.meter("M2", "C1", 51, import_limit_w=4_000_000)  # room for 777,001 Wh in 15 minutes
    c.mint("C1", 10**9)
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    c.offer("P1", HOUR, "PV1", 1000, 40_000)
    c.bid("C1", HOUR, 800, 60_000)
    c.report("M1", f"{HOUR}:00", 5, 700)
    c.report("M2", f"{HOUR}:00", 777_001, 0)
    return c


C = _community()
READERS = {
    "anonymous": None,
    "stranger": STRANGER,
    "P1": C.keys["P1"],
    "C1": C.keys["C1"],
    "M1-gateway": C.gateways["M1"],
    "P1-orders": ORDER_KEY,
    "R1-revoked": REVOKED,
    "operator": OPERATOR,
}
PARAMS: dict[str, dict[str, Any]] = {
    "balance": {"id_grid": "C1"},
    "member": {"id_grid": "C1"},
    "res": {"res_id": "PV1"},
    "listing": {"listing_id": HOUR},
    "order_book": {"listing_id": HOUR},
    "trades": {"listing_id": HOUR},
    "settlement": {"listing_id": HOUR},
    "energy": {"listing_id": HOUR},
    "reports": {"meter_id": "M2"},
}
# what only C1 (and the operator) may see about C1: its meter's import, its bid
C1_SECRETS = ("777001", '"buyer":"C1"', '"price":60000')


def _read(path: str, who: str) -> Any:
    raw = READERS[who]
    reader = None if raw is None else raw.public_key().public_bytes_raw()
    return C.contract.read(path, PARAMS.get(path, {}), reader)  # type: ignore[attr-defined]


def test_every_query_has_a_rule() -> None:
    assert set(reads.POLICY) == set(queries.QUERIES)


@pytest.mark.parametrize("path", sorted(queries.QUERIES))
@pytest.mark.parametrize(
    "who", ["anonymous", "stranger", "P1", "M1-gateway", "P1-orders", "R1-revoked"]
)
def test_nothing_of_c1_reaches_anyone_else(path: str, who: str) -> None:
    """Before BIDS_CLOSED and with C1's meter reported: no reader but C1 and the operator sees
    C1's consumption or bid."""
    try:
        answer = canonical(_read(path, who)).decode()
    except QueryError as exc:
        assert str(exc).startswith("NOT_PERMITTED"), exc
        return
    for secret in C1_SECRETS:
        assert secret not in answer, (path, who, secret)


def test_the_secrets_are_there_for_those_they_belong_to() -> None:
    """(So the test above can fail: C1 and the operator do see them.)"""
    mine = canonical([_read("member", "C1"), _read("reports", "C1"), _read("order_book", "C1")])
    everything = canonical([_read(path, "operator") for path in ("members", "reports")])
    for secret in C1_SECRETS:
        assert secret in mine.decode()
    assert commitment("C1") in everything.decode() and "777001" in everything.decode()


def test_anonymous_reads_only_the_parameters() -> None:
    for path in queries.QUERIES:
        if path == "params":
            assert _read(path, "anonymous")["clearing_rule"] == "paper"
            continue
        with pytest.raises(QueryError, match="NOT_PERMITTED"):
            _read(path, "anonymous")


def test_members_read_their_own_and_the_public_record() -> None:
    assert _read("balance", "C1")["balance"] == 10**9 - 48_000
    assert [r["import_wh"] for r in _read("reports", "C1")] == [777_001]
    book = _read("order_book", "C1")
    assert len(book["bids"]) == 1 and book["offers"] == []  # sealed: its own bid only
    assert _read("order_book", "P1")["bids"] == []
    assert {m["id_grid"] for m in _read("members", "P1")} == {"OPERATOR", "P1", "C1", "R1"}
    assert [m["meter_id"] for m in _read("meters", "M1-gateway")] == ["M1"]
    assert _read("listings", "M1-gateway") == [{"listing_id": HOUR, "state": "AUTHORIZE_OFFERS"}]
    with pytest.raises(QueryError, match="NOT_PERMITTED"):
        _read("order_book", "M1-gateway")  # a meter's key follows the market, no more
    assert _read("grid", "C1")["debt"] == 0 and "debts" not in _read("grid", "C1")


def test_members_audit_the_registry_and_the_proposals() -> None:
    """registry_log and proposals: every member audits them; no meter or order key, nobody
    revoked, no stranger."""
    log = _read("registry_log", "C1")
    kinds = [entry["kind"] for entry in log]
    assert "registry.admit" in kinds and "member.revoke_key" in kinds
    assert "member.set_order_key" in kinds
    assert _read("proposals", "P1") == []
    for who in ("anonymous", "stranger", "M1-gateway", "P1-orders", "R1-revoked"):
        for path in ("registry_log", "proposals"):
            with pytest.raises(QueryError, match="NOT_PERMITTED"):
                _read(path, who)


def test_an_order_key_follows_the_market_and_its_members_orders_only() -> None:
    assert _read("listings", "P1-orders") == [{"listing_id": HOUR, "state": "AUTHORIZE_OFFERS"}]
    book = _read("order_book", "P1-orders")  # sealed: P1's own offer, nobody's bid
    assert [o["seller"] for o in book["offers"]] == ["P1"] and book["bids"] == []
    for path in ("balance", "member", "reports", "settlement", "grid", "members"):
        with pytest.raises(QueryError, match="NOT_PERMITTED"):
            _read(path, "P1-orders")


def test_a_revoked_key_reads_like_a_stranger() -> None:
    for path in queries.QUERIES:
        if path == "params":
            continue
        with pytest.raises(QueryError, match="NOT_PERMITTED"):
            _read(path, "R1-revoked")


def test_after_the_close_the_book_is_public_and_settlement_lines_are_private() -> None:
    c = _community()
    c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    c.ok("OPERATOR", "auction.settle", {"listing_id": HOUR}, ts=AFTER)
    p1 = c.keys["P1"].public_key().public_bytes_raw()
    book = c.contract.read("order_book", {"listing_id": HOUR}, p1)  # type: ignore[attr-defined]
    assert len(book["bids"]) == 1 and len(book["offers"]) == 1
    settled = c.contract.read("settlement", {"listing_id": HOUR}, p1)  # type: ignore[attr-defined]
    assert [line["id_grid"] for line in settled["lines"]] == ["P1"]
    assert settled["totals"]["imported_wh"] == 777_006
    op = OPERATOR.public_key().public_bytes_raw()
    everyone = c.contract.read("settlement", {"listing_id": HOUR}, op)  # type: ignore[attr-defined]
    assert {line["id_grid"] for line in everyone["lines"]} == {"P1", "C1"}


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from([*sorted(queries.QUERIES), "ledger.block", "nope"]) | st.text(max_size=8),
    params=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    who=st.sampled_from(sorted(READERS)),
)
def test_hostile_queries_get_an_answer_or_a_query_error(path: str, params: Any, who: str) -> None:
    raw = READERS[who]
    reader = None if raw is None else raw.public_key().public_bytes_raw()
    try:
        C.contract.read(path, params, reader)  # type: ignore[attr-defined]
    except QueryError:
        pass
