"""The operator's powers bounded and visible (issue 17): no mint without a quorum of members,
no way to move or take a member's tokens, a meter's reporting key apart from the wallet key,
rotation and revocation of both on chain."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.contract import GenesisError, QueryError, default_genesis, make_contract
from tests.contract.harness import (
    HOUR,
    LIMIT_W,
    TREASURY,
    Community,
    check_invariants,
    commitment,
    hexkey,
    key,
    rejected,
    sign_report,
)

LIMITS = {"import_limit_w": LIMIT_W, "export_limit_w": LIMIT_W}  # a meter's connection limits


def _community(members: int = 3) -> Community:
    c = Community()
    for n in range(members):
        c.admit(f"M{n}", "prosumer", 10 + n)
    return c


def _mint(to: str, amount: int) -> dict[str, object]:
    return {"kind": "mint", "to": to, "amount": amount}


def test_the_operators_unlimited_mint_is_refused() -> None:
    c = _community()
    rejected(c, "OPERATOR", "token.mint", {"to": "M0", "amount": 10**15}, "QUORUM_REQUIRED")
    assert c.balance("M0") == 0 and c.q("grid")["supply"] == TREASURY


def test_a_quorum_of_members_mints() -> None:
    c = _community(3)  # three voters, quorum_pct 50: two approvals mint
    body = {"proposal_id": "mint-1", "action": _mint("M0", 1_000)}
    opened = c.ok("OPERATOR", "quorum.propose", body)
    assert opened == {"proposal_id": "mint-1", "state": "OPEN", "approvals": 0, "needed": 2}
    rejected(c, "OPERATOR", "quorum.propose", body, "PROPOSAL_EXISTS")
    assert c.ok("M1", "quorum.approve", {"proposal_id": "mint-1"})["state"] == "OPEN"
    rejected(c, "M1", "quorum.approve", {"proposal_id": "mint-1"}, "ALREADY_APPROVED")
    rejected(c, "OPERATOR", "quorum.approve", {"proposal_id": "mint-1"}, "ROLE_FORBIDDEN")
    rejected(c, key(99), "quorum.approve", {"proposal_id": "mint-1"}, "NOT_MEMBER")
    rejected(c, "M2", "quorum.approve", {"proposal_id": "nope"}, "UNKNOWN_PROPOSAL")
    assert c.balance("M0") == 0
    done = c.ok("M2", "quorum.approve", {"proposal_id": "mint-1"})
    assert done == {"proposal_id": "mint-1", "state": "EXECUTED", "approvals": 2, "needed": 2,
                    "balance": 1_000}  # fmt: skip
    assert c.q("grid")["supply"] == TREASURY + 1_000
    rejected(c, "M0", "quorum.approve", {"proposal_id": "mint-1"}, "PROPOSAL_CLOSED")
    assert c.q("proposals") == [{"proposal_id": "mint-1", "action": _mint("M0", 1_000),
                                 "proposer": "OPERATOR", "approvals": ["M1", "M2"],
                                 "state": "EXECUTED", "height": 4}]  # fmt: skip
    check_invariants(c.contract)


def test_a_member_proposing_counts_its_own_approval_and_a_lone_operator_mints_nothing() -> None:
    c = _community(1)  # one voter: its own proposal is the quorum
    got = c.ok("M0", "quorum.propose", {"proposal_id": "p", "action": _mint("M0", 5)})
    assert got["state"] == "EXECUTED" and c.balance("M0") == 5
    lone = Community()  # no member but the operator: the genesis supply is all there is
    body = {"proposal_id": "p", "action": _mint("OPERATOR", 5)}
    got = lone.ok("OPERATOR", "quorum.propose", body)
    assert got["state"] == "OPEN" and lone.q("grid")["supply"] == TREASURY


def test_proposals_are_validated_and_bounded() -> None:
    c = _community(3)
    for action, code in [
        (_mint("NOBODY", 5), "UNKNOWN_MEMBER"),
        (_mint("M0", 0), "BAD_AMOUNT"),
        ({"kind": "burn", "to": "M0", "amount": 5}, "BAD_BODY"),
        ({**_mint("M0", 5), "extra": 1}, "BAD_BODY"),
        ({"kind": "rekey", "id_grid": "M0", "public_key": hexkey(key(30))}, "NOT_REVOKED"),
        ("mint", "BAD_BODY"),
    ]:
        rejected(c, "M0", "quorum.propose", {"proposal_id": "x", "action": action}, code)
    for n in range(16):
        c.ok("M0", "quorum.propose", {"proposal_id": f"p{n}", "action": _mint("M1", 1)})
    rejected(c, "M0", "quorum.propose", {"proposal_id": "p16", "action": _mint("M1", 1)},
             "TOO_MANY_PROPOSALS")  # fmt: skip


def test_the_operator_cannot_move_or_take_a_members_tokens() -> None:
    c = _community(3)
    c.mint("M0", 1_000)  # bought from the operator's treasury
    rejected(c, "OPERATOR", "token.transfer", {"from": "M0", "to": "M1", "amount": 5}, "BAD_BODY")
    c.ok("OPERATOR", "token.transfer", {"to": "M1", "amount": 5})  # its own tokens only
    assert c.balance("M0") == 1_000
    # it may freeze a key it believes stolen, but not choose the next one
    c.ok("OPERATOR", "member.revoke_key", {"id_grid": "M0"})
    rejected(c, "M0", "token.transfer", {"to": "M1", "amount": 5}, "NOT_MEMBER")
    mine = key(66)
    rekey = {"kind": "rekey", "id_grid": "M0", "public_key": hexkey(mine)}
    got = c.ok("OPERATOR", "quorum.propose", {"proposal_id": "r", "action": rekey})
    assert got["state"] == "OPEN"
    rejected(c, mine, "token.transfer", {"to": "OPERATOR", "amount": 1_000}, "NOT_MEMBER")
    assert c.balance("M0") == 1_000
    check_invariants(c.contract)


def test_a_meter_key_is_never_a_wallet_key() -> None:
    c = _community(2)
    c.mint("M0", 10**9)
    wallet = hexkey(key(10))  # M0's wallet key
    meter = {"meter_id": "G0", "owner": "M0", "gateway_key": wallet, **LIMITS}
    rejected(c, "OPERATOR", "registry.add_meter", meter, "KEY_IN_USE")
    c.meter("G0", "M0", 50)
    admit = {"id_grid": "M9", "commitment": commitment("M9"), "public_key": hexkey(key(50)),
             "role": "consumer"}  # fmt: skip
    rejected(c, "OPERATOR", "registry.admit", admit, "KEY_IN_USE")
    gateway = key(50)  # a stolen gateway: it reports, it cannot spend
    c.res("PV0", "M0", 5_000)
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    rejected(c, gateway, "token.transfer", {"to": "M1", "amount": 5}, "NOT_MEMBER")
    rejected(c, gateway, "auction.bid", {"listing_id": HOUR, "wh": 10, "bid_price": 50_000},
             "NOT_MEMBER")  # fmt: skip
    offer = {"listing_id": HOUR, "res_id": "PV0", "wh": 10, "reserve_price": 40_000}
    rejected(c, gateway, "auction.offer", offer, "NOT_MEMBER")
    rejected(c, gateway, "quorum.approve", {"proposal_id": "x"}, "NOT_MEMBER")
    assert c.report("G0", f"{HOUR}:00", 10, 0).ok


def test_an_order_key_trades_for_its_member_and_does_nothing_else() -> None:
    c = _community(2)
    c.mint("M0", 10**9)
    c.res("PV0", "M0", 5_000)
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    agent = key(40)  # what the member gives its gateway's trading agent
    body = {"id_grid": "M0", "public_key": hexkey(agent)}
    rejected(c, "OPERATOR", "member.set_order_key", body, "NOT_OWNER")  # the operator cannot
    rejected(c, "M1", "member.set_order_key", body, "NOT_OWNER")
    rejected(c, "M0", "member.set_order_key", body | {"public_key": hexkey(key(11))}, "KEY_IN_USE")
    assert c.ok("M0", "member.set_order_key", body) == {"id_grid": "M0", "order_key": hexkey(agent)}
    assert c.q("member", id_grid="M0")["order_key"] == hexkey(agent)
    bid = {"listing_id": HOUR, "wh": 100, "bid_price": 50_000}
    assert c.ok(agent, "auction.bid", bid)["escrow"] == 5_000  # on M0's behalf
    assert c.q("order_book", listing_id=HOUR)["bids"][0]["buyer"] == "M0"
    for kind, what in [
        ("token.transfer", {"to": "M1", "amount": 5}),
        ("member.rotate_key", {"public_key": hexkey(key(41))}),
        ("member.set_order_key", {"id_grid": "M0", "public_key": hexkey(key(41))}),
        ("quorum.propose", {"proposal_id": "p", "action": _mint("M0", 5)}),
        ("meter.confirm", {"meter_id": "G0"}),
    ]:
        rejected(c, agent, kind, what, "NOT_MEMBER")
    # a stolen gateway: the operator clears its order key, which is then retired
    c.ok("OPERATOR", "member.set_order_key", {"id_grid": "M0", "public_key": None})
    rejected(c, agent, "auction.bid", {**bid, "listing_id": HOUR}, "NOT_MEMBER")
    rejected(c, "M0", "member.set_order_key", body, "KEY_IN_USE")
    c.ok("M0", "member.set_order_key", {"id_grid": "M0", "public_key": hexkey(key(42))})
    c.ok("OPERATOR", "member.revoke_key", {"id_grid": "M0"})  # freezing clears it too
    assert c.q("member", id_grid="M0")["order_key"] is None
    check_invariants(c.contract)


def test_meter_keys_are_rotated_by_their_owner_and_revoked_by_owner_or_operator() -> None:
    c = _community(2)
    c.meter("G0", "M0", 50)
    new = {"meter_id": "G0", "gateway_key": hexkey(key(51))}
    rejected(c, "OPERATOR", "meter.rotate_key", new, "NOT_OWNER")
    rejected(c, "M1", "meter.rotate_key", new, "NOT_OWNER")
    rejected(c, key(50), "meter.rotate_key", new, "NOT_MEMBER")  # the gateway itself cannot
    rejected(c, "M0", "meter.rotate_key", new | {"meter_id": "G9"}, "UNKNOWN_METER")
    c.ok("OPERATOR", "meter.revoke", {"meter_id": "G0"})  # a stolen gateway, reported
    assert c.report("G0", f"{HOUR}:00", 1, 0).code == "METER_REVOKED"
    rejected(c, "OPERATOR", "meter.revoke", {"meter_id": "G0"}, "KEY_REVOKED")
    rejected(c, "M0", "meter.rotate_key", new | {"gateway_key": hexkey(key(50))}, "KEY_IN_USE")
    c.ok("M0", "meter.rotate_key", new)
    c.gateways["G0"] = key(51)
    assert c.report("G0", f"{HOUR}:00", 1, 0).ok
    stolen = key(50)
    body = sign_report(stolen, "G0", f"{HOUR}:15", 1, 0)
    assert c.tx(stolen, "meter.report", body).code == "NOT_GATEWAY"
    assert c.q("meters") == [
        {"meter_id": "G0", "owner": "M0", "gateway_key": hexkey(key(51)), **LIMITS,
         "role": "member", "confirmed": True}
    ]  # fmt: skip


def test_a_meter_the_operator_registers_reports_only_once_its_owner_consents() -> None:
    c = _community(2)
    c.mint("M0", 10**8)
    # the operator registers a meter for M0 with a key it holds itself, to bill M0 for imports
    mine = key(60)
    meter = {"meter_id": "G9", "owner": "M0", "gateway_key": hexkey(mine), **LIMITS}
    c.ok("OPERATOR", "registry.add_meter", meter)
    assert c.q("meters")[0]["confirmed"] is False
    forged = sign_report(mine, "G9", f"{HOUR}:00", 4_000, 0)  # within the meter's limit
    assert c.tx(mine, "meter.report", forged).code == "METER_UNCONFIRMED"
    rejected(c, "OPERATOR", "meter.confirm", {"meter_id": "G9"}, "NOT_OWNER")
    rejected(c, "M1", "meter.confirm", {"meter_id": "G9"}, "NOT_OWNER")
    rejected(c, mine, "meter.confirm", {"meter_id": "G9"}, "NOT_MEMBER")
    assert c.q("reports", meter_id="G9") == [] and c.balance("M0") == 10**8
    # the owner recognises its own gateway and confirms, or sets a key of its own choosing
    c.ok("M0", "meter.confirm", {"meter_id": "G9"})
    rejected(c, "M0", "meter.confirm", {"meter_id": "G9"}, "METER_CONFIRMED")
    assert c.tx(mine, "meter.report", forged).ok
    c.ok(
        "OPERATOR",
        "registry.add_meter",
        {**meter, "meter_id": "G8", "gateway_key": hexkey(key(61))},
    )
    c.ok("M0", "meter.rotate_key", {"meter_id": "G8", "gateway_key": hexkey(key(62))})
    assert c.tx(key(62), "meter.report", sign_report(key(62), "G8", f"{HOUR}:00", 1, 0)).ok


def test_member_keys_rotate_and_a_revoked_member_is_rekeyed_by_a_quorum() -> None:
    c = _community(3)
    c.mint("M0", 1_000)
    c.ok("M0", "member.rotate_key", {"public_key": hexkey(key(20))})
    rejected(c, key(10), "token.transfer", {"to": "M1", "amount": 1}, "NOT_MEMBER")
    c.keys["M0"] = key(20)
    c.ok("M0", "token.transfer", {"to": "M1", "amount": 1})
    rejected(c, "M0", "member.rotate_key", {"public_key": hexkey(key(10))}, "KEY_IN_USE")
    rejected(c, "M1", "member.revoke_key", {"id_grid": "M0"}, "NOT_OWNER")
    c.ok("M0", "member.revoke_key", {"id_grid": "M0"})  # the member lost its phone
    rejected(c, "OPERATOR", "member.revoke_key", {"id_grid": "M0"}, "KEY_REVOKED")
    taken = {"kind": "rekey", "id_grid": "M0", "public_key": hexkey(key(11))}
    rejected(c, "M1", "quorum.propose", {"proposal_id": "rk", "action": taken}, "KEY_IN_USE")
    rekey = {"kind": "rekey", "id_grid": "M0", "public_key": hexkey(key(21))}
    c.ok("M1", "quorum.propose", {"proposal_id": "rk", "action": rekey})
    # the voters are now M1 and M2 (M0 has no live key): two approvals
    assert c.ok("M2", "quorum.approve", {"proposal_id": "rk"})["state"] == "EXECUTED"
    c.keys["M0"] = key(21)
    assert c.ok("M0", "token.transfer", {"to": "M1", "amount": 1})["balance"] == 998
    check_invariants(c.contract)


def test_rotations_survive_a_snapshot_and_replicas_agree() -> None:
    c = _community(2)
    c.meter("G0", "M0", 50)
    c.ok("M0", "meter.rotate_key", {"meter_id": "G0", "gateway_key": hexkey(key(51))})
    c.ok("M1", "member.rotate_key", {"public_key": hexkey(key(30))})
    other = make_contract(default_genesis(hexkey(key(1)), treasury=TREASURY, sealed_bids=False))
    for tx, ctx in c.log:
        other.apply(tx, ctx)
    assert other.state_digest() == c.contract.state_digest()
    other.restore(c.contract.snapshot())
    c.contract.restore(c.contract.snapshot())
    assert c.tx(key(30), "token.transfer", {"to": "M0", "amount": 1}).code == "INSUFFICIENT_FUNDS"
    assert c.tx(key(50), "meter.report", sign_report(key(50), "G0", f"{HOUR}:00", 1, 0)).code == (
        "NOT_GATEWAY"
    )


def test_every_registry_change_is_in_the_audit_log() -> None:
    c = _community(3)
    c.meter("G0", "M0", 50)
    rejected(c, "M1", "meter.revoke", {"meter_id": "G0"}, "NOT_OWNER")  # refused: not logged
    c.ok("OPERATOR", "meter.revoke", {"meter_id": "G0"})
    c.ok("M1", "member.rotate_key", {"public_key": hexkey(key(30))})
    c.ok("M0", "quorum.propose", {"proposal_id": "p", "action": _mint("M0", 5)})
    c.ok("OPERATOR", "token.transfer", {"to": "M0", "amount": 1})  # not a registry change
    log = c.q("registry_log")
    assert [(e["kind"], e["by"]) for e in log] == [
        ("registry.admit", "OPERATOR"),
        ("registry.admit", "OPERATOR"),
        ("registry.admit", "OPERATOR"),
        ("registry.add_meter", "OPERATOR"),
        ("meter.confirm", "M0"),
        ("meter.revoke", "OPERATOR"),
        ("member.rotate_key", "M1"),
        ("quorum.propose", "M0"),
    ]
    assert log[3]["body"] == {"meter_id": "G0", "owner": "M0", "gateway_key": hexkey(key(50)),
                              **LIMITS}  # fmt: skip
    assert [e["height"] for e in log] == sorted(e["height"] for e in log)
    assert c.q("registry_log", start=5) == log[5:] and len(log) == 8
    for bad in ({"start": -1}, {"start": True}, {"from": 1}):
        with pytest.raises(QueryError):
            c.contract.query("registry_log", bad)


def test_genesis_allocations_are_checked() -> None:
    good = default_genesis(hexkey(key(1)), treasury=5)
    assert make_contract(good).query("grid", {})["supply"] == 5
    for allocations, needle in [
        ({"NOBODY": 5}, "not a genesis member"),
        ({"OPERATOR": 0}, "positive"),
        ({"OPERATOR": True}, "positive"),
        ({"OPERATOR": 10**18 + 1}, "positive"),
        ([5], "object"),
        ({1: 5, "OPERATOR": 5}, "strings"),
    ]:
        with pytest.raises(GenesisError, match=needle):
            make_contract({**good, "allocations": allocations})
    with pytest.raises(GenesisError, match="quorum_pct"):
        default_genesis(hexkey(key(1)), quorum_pct=100)


SIGNERS = [1, 10, 11, 12, 10, 11, 12, 13, 50]  # the operator, members (often), a spare, a meter
NEW_KEYS = [13, 14, 15, 52, 53, 10, 50]  # mostly unused keys, and some in use
MEMBERS = ["OPERATOR", "M0", "M1", "M2", "NOBODY"]
METERS = ["G0", "G1", "G9"]
PROPOSALS = ["p1", "p2"]
_who = st.sampled_from(SIGNERS)
_action = st.one_of(
    st.tuples(st.just("propose"), _who, st.sampled_from(PROPOSALS), st.sampled_from(MEMBERS),
              st.integers(1, 10**6), st.booleans(), st.sampled_from(NEW_KEYS)),
    st.tuples(st.just("approve"), _who, st.sampled_from(PROPOSALS)),
    st.tuples(st.just("rotate"), _who, st.sampled_from(NEW_KEYS)),
    st.tuples(st.just("revoke"), _who, st.sampled_from(MEMBERS)),
    st.tuples(st.just("meter_rotate"), _who, st.sampled_from(METERS), st.sampled_from(NEW_KEYS)),
    st.tuples(st.just("meter_revoke"), _who, st.sampled_from(METERS)),
    st.tuples(st.just("transfer"), _who, st.sampled_from(MEMBERS), st.integers(1, 10**6)),
    st.tuples(st.just("order_key"), _who, st.sampled_from(MEMBERS),
              st.none() | st.sampled_from(NEW_KEYS)),
    st.tuples(st.just("bid"), _who, st.integers(1, 10**4)),
)  # fmt: skip


def _apply(c: Community, a: tuple[Any, ...]) -> None:
    who = key(a[1])
    if a[0] == "propose":
        _, _, pid, to, amount, mint, new = a
        action = _mint(to, amount) if mint else {"kind": "rekey", "id_grid": to,
                                                 "public_key": hexkey(key(new))}  # fmt: skip
        c.tx(who, "quorum.propose", {"proposal_id": pid, "action": action})
    elif a[0] == "approve":
        c.tx(who, "quorum.approve", {"proposal_id": a[2]})
    elif a[0] == "rotate":
        c.tx(who, "member.rotate_key", {"public_key": hexkey(key(a[2]))})
    elif a[0] == "revoke":
        c.tx(who, "member.revoke_key", {"id_grid": a[2]})
    elif a[0] == "meter_rotate":
        c.tx(who, "meter.rotate_key", {"meter_id": a[2], "gateway_key": hexkey(key(a[3]))})
    elif a[0] == "meter_revoke":
        c.tx(who, "meter.revoke", {"meter_id": a[2]})
    elif a[0] == "order_key":
        new = None if a[3] is None else hexkey(key(a[3]))
        c.tx(who, "member.set_order_key", {"id_grid": a[2], "public_key": new})
    elif a[0] == "bid":
        c.tx(who, "auction.bid", {"listing_id": HOUR, "wh": a[2], "bid_price": 50_000})
    else:
        c.tx(who, "token.transfer", {"to": a[2], "amount": a[3]})


@settings(max_examples=150, deadline=None)
@given(st.lists(_action, max_size=40))
def test_any_sequence_of_votes_and_key_changes_keeps_the_powers_bounded(
    actions: list[tuple[Any, ...]],
) -> None:
    c = _community(3)
    c.meter("G0", "M0", 50)
    c.meter("G1", "M1", 51)
    c.mint("M0", 10**7)
    c.ok("OPERATOR", "quorum.propose", {"proposal_id": "p1", "action": _mint("M2", 7)})
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    retired: set[str] = set()
    for a in actions:
        live_before = _live_keys(c)
        _apply(c, a)
        live = _live_keys(c)
        retired |= set(live_before) - set(live)
        # a key is one member's or one meter's, never both, and a retired key never returns
        assert len(live) == len(set(live)) and not retired & set(live)
        # the supply grows only by executed mint proposals
        minted = sum(p["action"]["amount"] for p in c.q("proposals")
                     if p["state"] == "EXECUTED" and p["action"]["kind"] == "mint")  # fmt: skip
        assert c.q("grid")["supply"] == TREASURY + minted
        # the operator's key never approves, and no approval is counted twice
        for p in c.q("proposals"):
            assert "OPERATOR" not in p["approvals"] and len(set(p["approvals"])) == len(
                p["approvals"]
            )
    check_invariants(c.contract)
    replay = make_contract(default_genesis(hexkey(key(1)), treasury=TREASURY, sealed_bids=False))
    for tx, ctx in c.log:
        replay.apply(tx, ctx)
    assert replay.state_digest() == c.contract.state_digest()
    replay.restore(c.contract.snapshot())
    assert replay.query("meters", {}) == c.q("meters")


def _live_keys(c: Community) -> list[str]:
    keys = [m["public_key"] for m in c.q("members") if m["public_key"]]
    keys += [m["order_key"] for m in c.q("members") if m["order_key"]]
    return keys + [m["gateway_key"] for m in c.q("meters") if m["gateway_key"]]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["members", "allocations", "params", "version", "extra"]),
    st.sampled_from(["replace", "member_field", "allocation"]),
    st.text(max_size=10),
    _json,
)
def test_a_hostile_genesis_is_a_genesis_error_never_a_crash(
    where: str, how: str, name: str, value: Any
) -> None:
    genesis: dict[str, Any] = default_genesis(hexkey(key(1)), treasury=5)
    if how == "replace":
        genesis[where] = value
    elif how == "member_field":
        genesis["members"] = [{**genesis["members"][0], name: value}]
    else:
        genesis["allocations"] = {name: value}
    try:
        make_contract(genesis)
    except GenesisError as exc:
        assert str(exc)
