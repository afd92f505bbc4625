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
from tests.contract.harness import OPERATOR, Community, hexkey, key

STRANGER = key(99)


def _community(**params: Any) -> Community:
    c = Community(**params)
    c.admit("A", "prosumer", 10)
    c.admit("B", "consumer", 11)
    c.meter("MA", "A", 50)
    c.mint("A", 10**6)
    return c


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
    assert gate.check(_transfer(meter, 1)) == ("NOT_ADMITTED", refused[1])  # no spending
    report = sign_tx(meter, "meter.report", {"x": 1}, 1)
    assert gate.check(report) is None  # its one kind (the body is the contract's to judge)
    apply = sign_tx(STRANGER, "registry.apply", {"id_grid": "N", "role": "consumer"}, 1)
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
    first = sign_tx(key(70), "registry.apply", {"id_grid": "N1", "role": "consumer"}, 1)
    second = sign_tx(key(71), "registry.apply", {"id_grid": "N2", "role": "consumer"}, 1)
    assert gate.charge(first, first.tx_id) is None
    refused = gate.charge(second, second.tx_id)
    assert refused is not None and refused[0] == "APPLICATIONS_FULL"
    c.ok(key(70), "registry.apply", {"id_grid": "N1", "role": "consumer"})
    gate.executed(0, [first.tx_id])
    refused = gate.check(second)
    assert refused is not None and refused[0] == "APPLICATIONS_FULL"  # now open on the chain
    c.ok("OPERATOR", "registry.dismiss", {"public_key": hexkey(key(70))})
    assert gate.check(second) is None


_BASE = _community(max_pending_per_signer=4, max_applications=2)
_TXS = [_transfer(key(10 + n % 2), n) for n in range(24)] + [
    sign_tx(key(80 + n), "registry.apply", {"id_grid": f"N{n}", "role": "consumer"}, 1)
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
    mint = sign_tx(OPERATOR, "token.mint", {"to": "OPERATOR", "amount": 5}, 1)
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
    c.ok(key(70), "registry.apply", {"id_grid": "N1", "role": "consumer"}, ts=1000)
    gate = AdmissionGate(c.contract)
    second = sign_tx(key(71), "registry.apply", {"id_grid": "N2", "role": "consumer"}, 1)
    gate.executed(1000 + APPLICATION_TTL_MS - 1, [])
    refused = gate.check(second)
    assert refused is not None and refused[0] == "APPLICATIONS_FULL"
    gate.executed(1000 + APPLICATION_TTL_MS, [])
    assert gate.check(second) is None and gate.charge(second, second.tx_id) is None
    c.ok(
        key(71),
        "registry.apply",
        {"id_grid": "N2", "role": "consumer"},
        ts=1000 + APPLICATION_TTL_MS,
    )
    assert [a["id_grid"] for a in c.q("applications")] == ["N2"]
