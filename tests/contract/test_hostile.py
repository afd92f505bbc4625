"""Hostile, malformed and truncated input: every transaction kind meets random bodies and
random senders; the contract answers with a stable code, never crashes, and a refusal changes
nothing. Queries answer or raise QueryError; a bad snapshot is refused and the state kept."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.contract import codes, sign_report
from ledger.contract.api import BlockContext, QueryError, Transaction
from ledger.contract.community import HANDLERS
from ledger.contract.queries import QUERIES
from tests.contract.harness import AFTER, HOUR, Community, key

STABLE = {v for k, v in vars(codes).items() if k.isupper() and isinstance(v, str)} - {
    codes.INTERNAL_ERROR
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _community() -> Community:
    c = Community()
    c.admit("P1", "prosumer", 10)
    c.admit("C1", "consumer", 11)
    c.res("PV1", "P1", 5000)
    c.meter("M1", "P1", 50)
    c.mint("C1", 10**9)
    c.mint("P1", 10**9)
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    c.offer("P1", HOUR, "PV1", 1000, 40_000)
    c.bid("C1", HOUR, 800, 60_000)
    mint = {"kind": "mint", "to": "C1", "amount": 5}
    c.ok("OPERATOR", "quorum.propose", {"proposal_id": "Q1", "action": mint})
    return c


_BASE = _community()
_BASE_SNAPSHOT = _BASE.contract.snapshot()


def _fresh() -> Community:
    """The prepared community, reset to its prepared state (cheaper than rebuilding it)."""
    _BASE.contract.restore(_BASE_SNAPSHOT)
    return _BASE


def _valid(kind: str, c: Community) -> dict[str, Any]:
    bodies: dict[str, dict[str, Any]] = {
        "registry.admit": {
            "id_grid": "N1",
            "commitment": "ef" * 32,
            "public_key": "ab" * 32,
            "role": "consumer",
        },
        "registry.add_res": {"res_id": "PV2", "owner": "P1", "kind": "PV", "rated_power_w": 9},
        "registry.add_meter": {
            "meter_id": "M2",
            "owner": "C1",
            "gateway_key": "cd" * 32,
            "import_limit_w": 6_900,
            "export_limit_w": 0,
        },
        "token.mint": {"to": "C1", "amount": 5},
        "token.transfer": {"to": "P1", "amount": 5},
        "auction.open": {"listing_id": "2026-11-24T14"},
        "auction.offer": {"listing_id": HOUR, "res_id": "PV1", "wh": 10, "reserve_price": 40_000},
        "auction.bid": {"listing_id": HOUR, "wh": 10, "bid_price": 50_000},
        "auction.close": {"listing_id": HOUR},
        "auction.commit": {"listing_id": HOUR, "side": "bid", "commitment": "ab" * 32},
        "auction.reveal": {
            "listing_id": HOUR,
            "side": "bid",
            "wh": 10,
            "price": 50_000,
            "res_id": "",
            "salt": "cd" * 32,
        },
        "auction.clear": {"listing_id": HOUR},
        "auction.settle": {"listing_id": HOUR},
        "meter.report": sign_report(c.gateways["M1"], "M1", f"{HOUR}:00", 1, 2, ["gap", "clipped"]),
        "registry.apply": {"id_grid": "N2", "role": "prosumer", "commitment": "ef" * 32},
        "registry.dismiss": {"public_key": "ab" * 32},
        "member.rotate_key": {"public_key": "ab" * 32},
        "member.revoke_key": {"id_grid": "C1"},
        "meter.rotate_key": {"meter_id": "M1", "gateway_key": "cd" * 32},
        "meter.revoke": {"meter_id": "M1"},
        "meter.confirm": {"meter_id": "M1"},
        "member.set_order_key": {"id_grid": "P1", "public_key": "ab" * 32},
        "quorum.propose": {
            "proposal_id": "Q2",
            "action": {"kind": "mint", "to": "C1", "amount": 5},
        },
        "quorum.approve": {"proposal_id": "Q1"},
    }
    return bodies[kind]


SENDERS = ("OPERATOR", "P1", "C1", "M1-gateway", "stranger")


def _sender(c: Community, who: str) -> bytes:
    signer = {"M1-gateway": c.gateways["M1"], "stranger": key(99)}.get(who) or c.keys[who]
    return signer.public_key().public_bytes_raw()


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, str, Any]:
    kind = draw(st.sampled_from(sorted(HANDLERS)))
    who = draw(st.sampled_from(SENDERS))
    how = draw(st.sampled_from(("random", "replace", "drop", "add", "truncate-sig")))
    if how == "random":
        return kind, who, draw(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
    return kind, who, (how, draw(json_values), draw(st.integers(0, 10)))


def _body(kind: str, c: Community, spec: Any) -> Any:
    if isinstance(spec, dict):
        return spec
    how, value, n = spec
    body = dict(_valid(kind, c))
    names = sorted(body)
    name = names[n % len(names)]
    if how == "replace":
        body[name] = value
    elif how == "drop":
        del body[name]
    elif how == "add":
        body[f"x{n}"] = value
    elif "signature" in body:
        body["signature"] = body["signature"][: n * 12]
    return body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile())
def test_hostile_bodies_get_a_stable_code_and_change_nothing(case: tuple[str, str, Any]) -> None:
    c = _fresh()
    kind, who, spec = case
    body = _body(kind, c, spec)
    before = c.contract.snapshot()
    tx = Transaction("ab" * 32, _sender(c, who), kind, body, 7)
    receipt = c.contract.apply(tx, BlockContext(100, 0, AFTER))
    assert receipt.code == "OK" or receipt.code in STABLE, receipt
    if not receipt.ok:
        assert receipt.message and c.contract.snapshot() == before


def test_unknown_kinds_and_non_mapping_bodies() -> None:
    c = _community()
    before = c.contract.snapshot()
    sender = _sender(c, "OPERATOR")
    for kind, body in [
        ("", {}),
        ("auction", {}),
        ("token.transfer", ["to"]),
        ("token.transfer", None),
        ("x" * 500, {}),
    ]:
        receipt = c.contract.apply(
            Transaction("t", sender, kind, body, 1),  # type: ignore[arg-type]
            BlockContext(1, 0, 0),
        )
        assert receipt.code in ("UNKNOWN_KIND", "BAD_BODY")
    assert c.contract.snapshot() == before


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([*sorted(QUERIES), "nope", ""]),
    st.dictionaries(
        st.sampled_from(["id_grid", "listing_id", "res_id", "meter_id", "interval", "limit", "x"]),
        json_values,
        max_size=3,
    ),
)
def test_queries_answer_or_raise_query_error(path: str, params: dict[str, Any]) -> None:
    c = _fresh()
    try:
        c.contract.query(path, params)
    except QueryError as exc:
        assert str(exc)


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"[]", b'{"version":1}', b"\xff" * 10, b'{"version":2}']
)
def test_a_bad_snapshot_is_refused_and_the_state_kept(raw: bytes) -> None:
    c = _community()
    before = c.contract.snapshot()
    with pytest.raises(ValueError):
        c.contract.restore(raw)
    assert c.contract.snapshot() == before


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_a_truncated_snapshot_is_refused(cut: int) -> None:
    c = _fresh()
    raw = c.contract.snapshot()
    cut = cut % len(raw)
    with pytest.raises(ValueError):
        c.contract.restore(raw[:cut])


def test_a_handler_bug_is_a_receipt_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    # fault injection: no real input reaches this path (the test above shows it), so a handler
    # is replaced by one that fails the way a bug would
    def broken(*_: Any) -> dict[str, Any]:
        raise KeyError("boom")

    c = _fresh()
    monkeypatch.setitem(HANDLERS, "token.transfer", broken)
    receipt = c.tx("C1", "token.transfer", {"to": "P1", "amount": 5})
    assert receipt.code == "INTERNAL_ERROR" and "KeyError" in receipt.message
    monkeypatch.undo()
    assert c.tx("C1", "token.transfer", {"to": "P1", "amount": 5}).ok  # the contract goes on


def _sealed_community() -> tuple[Community, dict[str, Any]]:
    """A sealed listing in its reveal phase, with one revealed and one unrevealed commitment,
    and the valid reveal body of the unrevealed one."""
    from tests.contract.test_sealed import Sealed

    c = Community(sealed_bids=True)
    c.admit("P1", "prosumer", 10)
    c.admit("C1", "consumer", 11)
    c.res("PVP1", "P1", 5000)  # the name test_sealed.Sealed gives P1's RES
    c.mint("C1", 10**9)
    c.mint("P1", 10**9)
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    offer = Sealed("P1", "offer", 1000, 40_000, bytes(32))
    bid = Sealed("C1", "bid", 800, 60_000, bytes([1]) * 32)
    c.ok("P1", "auction.commit", offer.commit())
    c.ok("C1", "auction.commit", bid.commit())
    c.ok("OPERATOR", "auction.close", {"listing_id": HOUR})
    c.ok("P1", "auction.reveal", offer.reveal())
    return c, bid.reveal()


_SEALED, _REVEAL = _sealed_community()
_SEALED_SNAPSHOT = _SEALED.contract.snapshot()
SEALED_KINDS = ("auction.commit", "auction.reveal", "auction.clear", "auction.close")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEALED_KINDS), st.sampled_from(("OPERATOR", "P1", "C1", "stranger")),
       st.sampled_from(("random", "replace", "drop", "add")), json_values, st.integers(0, 10))
def test_hostile_bodies_on_a_sealed_listing(
    kind: str, who: str, how: str, value: Any, n: int
) -> None:  # fmt: skip
    c = _SEALED
    c.contract.restore(_SEALED_SNAPSHOT)
    valid = _REVEAL if kind == "auction.reveal" else {"listing_id": HOUR} | (
        {"side": "bid", "commitment": "ab" * 32} if kind == "auction.commit" else {})
    body: Any = dict(valid)
    if how == "random":
        body = {"x": value}
    else:
        name = sorted(body)[n % len(body)]
        if how == "replace":
            body[name] = value
        elif how == "drop":
            del body[name]
        else:
            body[f"x{n}"] = value
    before = c.contract.snapshot()
    signer = key(99) if who == "stranger" else c.keys[who]
    tx = Transaction("ab" * 32, signer.public_key().public_bytes_raw(), kind, body, 7)
    receipt = c.contract.apply(tx, BlockContext(100, 0, AFTER))
    assert receipt.code == "OK" or receipt.code in STABLE, receipt
    if not receipt.ok:
        assert receipt.message and c.contract.snapshot() == before
