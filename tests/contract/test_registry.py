"""Registry and tokens (issue #2): members, RES, meters, transfer, genesis."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.contract import GenesisError, default_genesis, make_contract
from ledger.contract.api import QueryError
from tests.contract.harness import TREASURY, Community, commitment, hexkey, key, rejected


def _member(id_grid: str, n: int, role: str = "consumer") -> dict[str, Any]:
    return {
        "id_grid": id_grid,
        "commitment": commitment(id_grid),
        "public_key": hexkey(key(n)),
        "role": role,
    }


def test_operator_admits_members_with_the_table_9_fields() -> None:
    c = Community()
    c.ok("OPERATOR", "registry.admit", _member("PT0001", 10, "prosumer"))
    assert c.q("member", id_grid="PT0001") == {
        "id_grid": "PT0001",
        "commitment": commitment("PT0001"),
        "public_key": hexkey(key(10)),
        "role": "prosumer",
        "order_key": None,
        "balance": 0,
    }
    assert [m["id_grid"] for m in c.q("members")] == ["OPERATOR", "PT0001"]


def test_admission_errors_leave_the_state_unchanged() -> None:
    c = Community()
    c.admit("PT0001", "consumer", 10)
    rejected(c, "PT0001", "registry.admit", _member("PT0002", 11), "NOT_OPERATOR")
    rejected(c, key(99), "registry.admit", _member("PT0002", 11), "NOT_OPERATOR")
    rejected(c, "OPERATOR", "registry.admit", _member("PT0001", 11), "MEMBER_EXISTS")
    rejected(c, "OPERATOR", "registry.admit", _member("PT0002", 10), "KEY_IN_USE")
    for field, value in [
        ("role", "king"),
        ("commitment", "no-hex"),
        ("commitment", "AB" * 32),
        ("public_key", "ab"),
        ("public_key", "00" * 32),  # a point of small order: would "verify" any signature
        ("id_grid", ""),
        ("id_grid", "a b"),
        ("commitment", 7),
    ]:
        body = _member("PT0002", 11) | {field: value}
        assert field in rejected(c, "OPERATOR", "registry.admit", body, "BAD_BODY")
    rejected(c, "OPERATOR", "registry.admit", _member("PT0002", 11) | {"extra": 1}, "BAD_BODY")
    # personal data is not taken on chain: the old body with name and e-mail is refused
    old = {"id_grid": "PT0002", "name": "Ana Silva", "email": "ana@example.org",
           "public_key": hexkey(key(11)), "role": "consumer"}  # fmt: skip
    rejected(c, "OPERATOR", "registry.admit", old, "BAD_BODY")


def test_a_member_admitted_as_operator_may_operate() -> None:
    c = Community()
    c.admit("OP2", "operator", 10)
    c.admit("PT0001", "consumer", 11)
    c.ok("OP2", "auction.open", {"listing_id": "2026-11-24T13"})
    c.ok("OP2", "registry.add_meter", {"meter_id": "M1", "owner": "PT0001",
                                      "gateway_key": hexkey(key(50)),
                                      "import_limit_w": 6_900, "export_limit_w": 0})  # fmt: skip


def test_res_and_meters() -> None:
    c = Community()
    c.admit("P1", "producer", 10)
    c.admit("C1", "consumer", 11)
    c.res("PV1", "P1", 4000)
    assert c.q("res", res_id="PV1") == {
        "res_id": "PV1",
        "owner": "P1",
        "kind": "PV",
        "rated_power_w": 4000,
    }
    body = {"res_id": "PV2", "owner": "C1", "kind": "wind", "rated_power_w": 10}
    rejected(c, "OPERATOR", "registry.add_res", body, "ROLE_FORBIDDEN")
    rejected(c, "OPERATOR", "registry.add_res", body | {"owner": "X"}, "UNKNOWN_MEMBER")
    rejected(
        c, "OPERATOR", "registry.add_res", body | {"res_id": "PV1", "owner": "P1"}, "RES_EXISTS"
    )
    rejected(
        c, "OPERATOR", "registry.add_res", body | {"owner": "P1", "rated_power_w": 0}, "BAD_AMOUNT"
    )
    rejected(c, "P1", "registry.add_res", body | {"owner": "P1"}, "NOT_OPERATOR")
    c.meter("M1", "C1", 50, import_limit_w=6_900, export_limit_w=0)
    assert c.q("meters") == [
        {
            "meter_id": "M1",
            "owner": "C1",
            "gateway_key": hexkey(key(50)),
            "import_limit_w": 6_900,
            "export_limit_w": 0,
            "role": "member",
            "confirmed": True,
        }
    ]
    meter = {"meter_id": "M1", "owner": "C1", "gateway_key": hexkey(key(51))}
    meter |= {"import_limit_w": 6_900, "export_limit_w": 3_680}
    rejected(c, "OPERATOR", "registry.add_meter", meter, "METER_EXISTS")
    # the limits are required, whole watts, bounded; the role is member or feeder
    for field, value, code in [
        ("import_limit_w", "6900", "BAD_BODY"),
        ("export_limit_w", -1, "BAD_AMOUNT"),
        ("export_limit_w", 10**8 + 1, "BAD_AMOUNT"),
        ("role", "dso", "BAD_BODY"),
    ]:
        body = meter | {"meter_id": "M2", field: value}
        rejected(c, "OPERATOR", "registry.add_meter", body, code)
    no_limits = {k: v for k, v in meter.items() if k != "export_limit_w"} | {"meter_id": "M2"}
    rejected(c, "OPERATOR", "registry.add_meter", no_limits, "BAD_BODY")
    # a feeder meter is the community's, so an operator's
    feeder = meter | {"meter_id": "F1", "role": "feeder"}
    rejected(c, "OPERATOR", "registry.add_meter", feeder, "ROLE_FORBIDDEN")
    c.ok("OPERATOR", "registry.add_meter", feeder | {"owner": "OPERATOR"})
    rejected(
        c,
        "OPERATOR",
        "registry.add_meter",
        meter | {"meter_id": "M2", "owner": "Z"},
        "UNKNOWN_MEMBER",
    )


def test_mint_and_transfer() -> None:
    c = Community()
    c.admit("A", "consumer", 10)
    c.admit("B", "producer", 11)
    c.mint("A", 1_000)
    assert c.ok("A", "token.transfer", {"to": "B", "amount": 400}) == {
        "from": "A",
        "to": "B",
        "amount": 400,
        "balance": 600,
    }
    assert (c.balance("A"), c.balance("B")) == (600, 400)
    rejected(c, "A", "token.transfer", {"to": "B", "amount": 601}, "INSUFFICIENT_FUNDS")
    rejected(c, "A", "token.transfer", {"to": "B", "amount": 0}, "BAD_AMOUNT")
    rejected(c, "A", "token.transfer", {"to": "B", "amount": -5}, "BAD_AMOUNT")
    rejected(c, "A", "token.transfer", {"to": "B", "amount": True}, "BAD_BODY")
    rejected(c, "A", "token.transfer", {"to": "B", "amount": "5"}, "BAD_BODY")
    rejected(c, "A", "token.transfer", {"to": "A", "amount": 5}, "SELF_TRANSFER")
    rejected(c, "A", "token.transfer", {"to": "Q", "amount": 5}, "UNKNOWN_MEMBER")
    rejected(c, key(77), "token.transfer", {"to": "B", "amount": 5}, "NOT_MEMBER")
    rejected(c, "A", "token.mint", {"to": "A", "amount": 5}, "QUORUM_REQUIRED")
    rejected(c, "A", "token.burn", {"amount": 5}, "UNKNOWN_KIND")
    assert c.q("grid")["supply"] == TREASURY


def test_genesis_is_validated_and_names_the_key() -> None:
    op = hexkey(key(1))
    with pytest.raises(GenesisError, match="clearing_rule"):
        default_genesis(op, clearing_rule="dutch")
    with pytest.raises(GenesisError, match="unknown params"):
        default_genesis(op, retail=1)
    with pytest.raises(GenesisError, match="price_min"):
        default_genesis(op, price_min=100_000)
    with pytest.raises(GenesisError, match="public_key"):
        default_genesis("zz")
    with pytest.raises(GenesisError, match="peak_hours"):
        default_genesis(op, peak_hours=[20, 13])
    good = default_genesis(op)
    for broken, needle in [
        ({**good, "version": 2}, "version"),
        ({**good, "members": []}, "members"),
        ({**good, "members": [{**good["members"][0], "role": "consumer"}]}, "operator"),
        ({**good, "members": good["members"] * 2}, "duplicate"),
        ({**good, "extra": 1}, "unknown genesis"),
        ({**good, "params": {"feed_in": 0}}, "feed_in"),
    ]:
        with pytest.raises(GenesisError, match=needle):
            make_contract(broken)
    assert make_contract(good).query("params", {})["clearing_rule"] == "paper"


def test_queries_refuse_unknown_paths_and_bad_params() -> None:
    c = Community()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("nope", {}),
        ("balance", {}),
        ("balance", {"id_grid": "X"}),
        ("balance", {"id_grid": 5}),
        ("members", {"x": 1}),
        ("listing", {"listing_id": "2026-13-01T00"}),
        ("res", {"res_id": "Q"}),
        ("mcp_history", {"limit": 0}),
        ("reports", {"meter_id": "M"}),
        ("order_book", {"listing_id": "2026-11-24T13"}),
    ]
    for path, params in cases:
        with pytest.raises(QueryError):
            c.contract.query(path, params)
