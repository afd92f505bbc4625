"""``AdmissionGate`` (sans-IO) over the real community contract, and the executor's second look
at admission: who may enter a replica's queue, per-signer limits, and the no-op a faulty
primary's unadmitted transaction becomes on every replica."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.contract import GenesisError, default_genesis, make_contract
from ledger.contract.params import LIMITS
from ledger.executor import LedgerState
from ledger.gate import HOUR_MS, AdmissionGate
from ledger.pbft.block import Block
from ledger.tx import SignedTx, sign_tx
from tests.contract.harness import HOUR, OPERATOR, Community, commitment, hexkey, key

STRANGER = key(99)


def _community(**params: Any) -> Community:
    c = Community(**params)
    c.admit("A", "prosumer", 10)
    c.admit("B", "consumer", 11)
    c.meter("MA", "A", 50)
    c.mint("A", 10**6)
    return c


def _application(id_grid: str) -> dict[str, str]:
    """A newcomer's ``registry.apply`` body: a commitment to its personal data, never the data."""
    return {"id_grid": id_grid, "role": "consumer", "commitment": commitment(id_grid)}


def _transfer(signer: Any, nonce: int, **extra: Any) -> SignedTx:
    return sign_tx(signer, "token.transfer", {"to": "B", "amount": 1, **extra}, nonce)


def test_who_may_sign_what() -> None:
    c = _community()
    gate = AdmissionGate(c.contract)
    assert gate.check(_transfer(key(10), 1)) is None  # a member
    assert gate.check(_transfer(OPERATOR, 1)) is None  # the operator
    refused = gate.check(_transfer(STRANGER, 1))
    assert refused is not None and refused[0] == "NOT_ADMITTED"
    meter = c.gateways["MA"]
    spend = gate.check(_transfer(meter, 1))  # no spending, and the refusal says why
    assert spend == ("NOT_ADMITTED", "a meter key signs meter reports only, not token.transfer")
    report = sign_tx(meter, "meter.report", {"x": 1}, 1)
    assert gate.check(report) is None  # its one kind (the body is the contract's to judge)
    apply = sign_tx(STRANGER, "registry.apply", _application("N"), 1)
    assert gate.check(apply) is None
    unknown = gate.check(sign_tx(key(10), "token.steal", {}, 1))
    assert unknown is not None and unknown[0] == "UNKNOWN_KIND"
    big = gate.check(_transfer(key(10), 2, pad="x" * 600))
    assert big is not None and big[0] == "TX_TOO_LARGE"
    assert gate.counters() == {
        "refused_not_admitted": 2,
        "refused_unknown_kind": 1,
        "refused_tx_too_large": 1,
    }


def test_a_signer_over_its_pending_limit_is_refused_alone() -> None:
    c = _community(max_pending_per_signer=3)
    gate = AdmissionGate(c.contract)
    txs = [_transfer(key(10), n) for n in range(5)]
    assert [gate.charge(tx, tx.tx_id) for tx in txs[:3]] == [None, None, None]
    assert gate.charge(txs[0], txs[0].tx_id) is None  # a re-send is not counted twice
    refused = gate.charge(txs[3], txs[3].tx_id)
    assert refused is not None and refused[0] == "OVER_LIMIT"
    early = gate.check(txs[4])  # refused before its signature would be checked
    assert early is not None and early[0] == "OVER_LIMIT"
    assert gate.check(txs[0]) is None  # a re-send of a pending one is not refused
    other = _transfer(key(11), 0)
    assert gate.charge(other, other.tx_id) is None  # B is not slowed by A
    gate.executed(0, [txs[0].tx_id])
    assert gate.charge(txs[3], txs[3].tx_id) is None
    gate.reconcile({txs[3].tx_id})  # the core holds only this one now
    assert gate.pending_count[txs[3].sender] == 1
    assert gate.charge(txs[4], txs[4].tx_id) is None


def test_bytes_per_hour_of_block_time() -> None:
    c = _community(max_bytes_per_signer_hour=1000)
    gate = AdmissionGate(c.contract)
    gate.executed(5 * HOUR_MS, [])
    txs = [_transfer(key(10), n) for n in range(20)]
    admitted = [tx for tx in txs if gate.charge(tx, tx.tx_id) is None]
    assert sum(len(tx.payload) for tx in admitted) <= 1000
    assert 0 < len(admitted) < len(txs)
    gate.executed(5 * HOUR_MS + 1, [tx.tx_id for tx in admitted])  # the same hour
    late = _transfer(key(10), 99)
    refused = gate.charge(late, late.tx_id)
    assert refused is not None and refused[0] == "OVER_LIMIT"
    gate.executed(6 * HOUR_MS, [])  # a new hour of block time
    assert gate.charge(late, late.tx_id) is None


def test_applications_open_and_pending_are_bounded() -> None:
    c = _community(max_applications=1)
    gate = AdmissionGate(c.contract)
    first = sign_tx(key(70), "registry.apply", _application("N1"), 1)
    second = sign_tx(key(71), "registry.apply", _application("N2"), 1)
    assert gate.charge(first, first.tx_id) is None
    refused = gate.charge(second, second.tx_id)
    assert refused is not None and refused[0] == "APPLICATIONS_FULL"
    c.ok(key(70), "registry.apply", _application("N1"))
    gate.executed(0, [first.tx_id])
    refused = gate.check(second)
    assert refused is not None and refused[0] == "APPLICATIONS_FULL"  # now open on the chain
    c.ok("OPERATOR", "registry.dismiss", {"public_key": hexkey(key(70))})
    assert gate.check(second) is None


_BASE = _community(max_pending_per_signer=4, max_applications=2)
_TXS = [_transfer(key(10 + n % 2), n) for n in range(24)] + [
    sign_tx(key(80 + n), "registry.apply", _application(f"N{n}"), 1)
    for n in range(7)
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(("charge", "executed", "reconcile")), st.integers(0, 30)),
        max_size=60,
    )
)
def test_pending_counts_stay_true(steps: list[tuple[str, int]]) -> None:
    """Whatever order charges, executions and reconciliations come in, each signer's count is
    the number of its transactions still pending, never negative."""
    c = _BASE
    gate = AdmissionGate(c.contract)
    txs = _TXS
    for op, n in steps:
        tx = txs[n]
        if op == "charge":
            gate.charge(tx, tx.tx_id)
        elif op == "executed":
            gate.executed(0, [tx.tx_id])
        else:
            gate.reconcile({t.tx_id for t in txs[n:]})
        counts: dict[bytes, int] = {}
        for signer, _, _ in gate.pending.values():
            counts[signer] = counts.get(signer, 0) + 1
        assert dict(gate.pending_count) == counts
        assert gate.pending_applications == sum(a for _, _, a in gate.pending.values())


def test_an_unadmitted_transaction_a_faulty_primary_ordered_is_a_no_op_everywhere(
    tmp_path: Path,
) -> None:
    """A correct primary never orders a stranger's transfer; a faulty one may. Every replica
    executing that block turns it into the same ``NOT_ADMITTED`` receipt and the same state."""
    genesis = default_genesis(hexkey(OPERATOR))
    stranger = _transfer(STRANGER, 1)
    action = {"kind": "mint", "to": "OPERATOR", "amount": 5}
    mint = sign_tx(OPERATOR, "quorum.propose", {"proposal_id": "Q1", "action": action}, 1)
    results = []
    for name in ("r0", "r1"):
        state = LedgerState(tmp_path / f"{name}.sqlite", genesis, make_contract, 64)
        before = state.state_digest()
        block = Block(1, 1000, state.last_block_hash(), (stranger.to_wire(),))
        receipts = state.execute(block)
        assert receipts[0]["code"] == "NOT_ADMITTED"
        assert state.state_digest() == before and state.not_admitted == 1
        block2 = Block(2, 1001, state.last_block_hash(), (mint.to_wire(),))
        assert state.execute(block2)[0]["code"] == "OK"
        results.append((receipts, state.state_digest()))
        state.close()
    assert results[0] == results[1]


@given(
    name=st.sampled_from(LIMITS),
    value=st.one_of(
        st.integers(max_value=0), st.integers(min_value=2**40 + 1), st.booleans(),
        st.text(max_size=4), st.none(), st.floats(), st.lists(st.integers(), max_size=2),
    ),
)  # fmt: skip
def test_a_bad_limit_in_the_genesis_is_refused_by_name(name: str, value: Any) -> None:
    with pytest.raises(GenesisError, match=f"params.{name}"):
        make_contract(default_genesis(hexkey(OPERATOR)) | {"params": {name: value}})


def test_an_expired_application_no_longer_holds_a_place() -> None:
    """Block time, not a clock: an application a week old counts neither at admission nor at
    execution, and the next applicant's ``registry.apply`` drops it from the state."""
    from ledger.contract.admission import APPLICATION_TTL_MS

    c = _community(max_applications=1)
    c.ok(key(70), "registry.apply", _application("N1"), ts=1000)
    gate = AdmissionGate(c.contract)
    second = sign_tx(key(71), "registry.apply", _application("N2"), 1)
    gate.executed(1000 + APPLICATION_TTL_MS - 1, [])
    refused = gate.check(second)
    assert refused is not None and refused[0] == "APPLICATIONS_FULL"
    gate.executed(1000 + APPLICATION_TTL_MS, [])
    assert gate.check(second) is None and gate.charge(second, second.tx_id) is None
    c.ok(
        key(71),
        "registry.apply",
        _application("N2"),
        ts=1000 + APPLICATION_TTL_MS,
    )
    assert [a["id_grid"] for a in c.q("applications")] == ["N2"]


# -- the keys of issue 17's second half: order keys, meter keys, rotation, revocation ----------

ORDER = key(60)  # A's order key, delegated to its gateway's trading agent


def _keyed_community() -> Community:
    c = _community()
    c.ok("A", "member.set_order_key", {"id_grid": "A", "public_key": hexkey(ORDER)})
    return c


def _signers(c: Community) -> dict[str, Any]:
    return {"member": key(10), "order": ORDER, "meter": c.gateways["MA"], "stranger": STRANGER}


def test_each_kind_is_admitted_for_its_signers_only() -> None:
    """Every kind the contract knows, against every kind of key: a member's wallet key may sign
    any (its handler checks the role), an order key offers and bids only, a meter key reports
    only, a never-used key applies only."""
    from ledger.contract.community import HANDLERS
    from ledger.contract.registry import ORDER_KINDS

    c = _keyed_community()
    gate = AdmissionGate(c.contract)
    allowed = {
        "order": set(ORDER_KINDS),  # offer and bid, open or sealed (commit, reveal)
        "meter": {"meter.report"},
        "stranger": {"registry.apply"},
    }
    for kind in sorted(HANDLERS):
        for who, signer in _signers(c).items():
            verdict = gate.check(sign_tx(signer, kind, {}, 1))
            if who == "member" or kind in allowed[who]:
                assert verdict is None, (kind, who, verdict)
            else:
                assert verdict is not None and verdict[0] == "NOT_ADMITTED", (kind, who)


def test_an_order_key_bids_but_never_spends() -> None:
    c = _keyed_community()
    gate = AdmissionGate(c.contract)
    bid = sign_tx(ORDER, "auction.bid", {"listing_id": HOUR, "wh": 10, "bid_price": 60_000}, 1)
    assert gate.check(bid) is None
    refused = gate.check(_transfer(ORDER, 2))
    assert refused is not None and refused[0] == "NOT_ADMITTED"
    assert "order key" in refused[1]
    c.ok("OPERATOR", "auction.open", {"listing_id": HOUR})
    c.ok(ORDER, "auction.bid", {"listing_id": HOUR, "wh": 10, "bid_price": 60_000})
    assert [b["buyer"] for b in c.q("order_book", listing_id=HOUR)["bids"]] == ["A"]


def test_revoked_and_rotated_keys_are_refused_at_admission() -> None:
    c = _keyed_community()
    gate = AdmissionGate(c.contract)
    report = sign_tx(c.gateways["MA"], "meter.report", {}, 1)
    assert gate.check(report) is None
    c.ok("OPERATOR", "meter.revoke", {"meter_id": "MA"})
    refused = gate.check(report)
    assert refused is not None and refused[0] == "NOT_ADMITTED"
    c.ok("A", "meter.rotate_key", {"meter_id": "MA", "gateway_key": hexkey(key(52))})
    assert gate.check(sign_tx(key(52), "meter.report", {}, 1)) is None
    assert gate.check(report) is not None  # the revoked key stays refused
    c.ok("A", "member.rotate_key", {"public_key": hexkey(key(20))})
    assert gate.check(_transfer(key(20), 1)) is None
    old = gate.check(_transfer(key(10), 1))
    assert old is not None and old[0] == "NOT_ADMITTED" and "revoked" in old[1]
    c.ok("OPERATOR", "member.revoke_key", {"id_grid": "B"})
    for signer in (key(11), ORDER):
        assert gate.check(_transfer(signer, 1)) is not None
    c.ok(key(20), "member.revoke_key", {"id_grid": "A"})  # also clears A's order key
    bid = sign_tx(ORDER, "auction.bid", {"listing_id": HOUR, "wh": 10, "bid_price": 60_000}, 1)
    assert gate.check(bid) is not None
    for retired in (key(10), key(11), c.gateways["MA"], ORDER):  # no way back in by applying
        again = gate.check(sign_tx(retired, "registry.apply", _application("X"), 1))
        assert again is not None and again[0] == "NOT_ADMITTED"


def test_a_key_change_counts_for_the_next_transaction_of_the_same_block(tmp_path: Path) -> None:
    """The executor's second look uses the state as it is after each transaction: a revocation
    early in a block refuses the revoked key's transactions later in that block (no index that a
    key change could leave stale), identically on two replicas."""
    genesis = default_genesis(hexkey(OPERATOR), treasury=10**9)
    a, gw = key(10), key(50)
    member = {"id_grid": "A", "commitment": commitment("A"), "public_key": hexkey(a),
              "role": "prosumer"}  # fmt: skip
    meter = {"meter_id": "MA", "owner": "A", "gateway_key": hexkey(gw),
             "import_limit_w": 6_900, "export_limit_w": 0}  # fmt: skip
    setup = [
        sign_tx(OPERATOR, "registry.admit", member, 1),
        sign_tx(OPERATOR, "token.transfer", {"to": "A", "amount": 1000}, 2),
        sign_tx(OPERATOR, "registry.add_meter", meter, 3),
    ]
    bid = {"listing_id": HOUR, "wh": 10, "bid_price": 60_000}
    block = [
        sign_tx(a, "member.set_order_key", {"id_grid": "A", "public_key": hexkey(ORDER)}, 4),
        sign_tx(ORDER, "auction.bid", bid, 1),  # admitted (the listing is not open: refused)
        sign_tx(gw, "meter.report", {}, 1),  # admitted (its body is refused)
        sign_tx(OPERATOR, "meter.revoke", {"meter_id": "MA"}, 4),
        sign_tx(gw, "meter.report", {}, 2),
        sign_tx(a, "member.revoke_key", {"id_grid": "A"}, 5),
        sign_tx(ORDER, "auction.bid", bid, 2),
        sign_tx(a, "token.transfer", {"to": "OPERATOR", "amount": 1}, 6),
    ]
    results = []
    for name in ("r0", "r1"):
        state = LedgerState(tmp_path / f"{name}.sqlite", genesis, make_contract, 64)
        first = state.execute(Block(1, 1000, state.last_block_hash(),
                                    tuple(tx.to_wire() for tx in setup)))  # fmt: skip
        assert [r["code"] for r in first] == ["OK", "OK", "OK"]
        receipts = state.execute(Block(2, 1001, state.last_block_hash(),
                                       tuple(tx.to_wire() for tx in block)))  # fmt: skip
        codes = [r["code"] for r in receipts]
        assert codes[0] == "OK" and codes[3] == "OK" and codes[5] == "OK"
        assert "NOT_ADMITTED" not in (codes[1], codes[2])
        assert codes[4] == codes[6] == codes[7] == "NOT_ADMITTED"
        results.append((codes, state.state_digest()))
        state.close()
    assert results[0] == results[1]
