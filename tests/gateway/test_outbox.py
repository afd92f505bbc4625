"""Outbox: state machine and delivery against an outage, lost replies and a restart."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.outbox import DELIVERED, PENDING, REJECTED, Backoff, OutboxRow, deliver_due, next_state
from gateway.store import Store
from ledger.contract.api import Receipt
from ledger.tx import SignedTx
from tests.gateway.fakes import MemoryLedger

KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))


@given(st.integers(0, 40))
def test_backoff_grows_and_is_capped(attempts: int) -> None:
    p = Backoff(1_000, 60_000)
    assert 1_000 <= p.delay_ms(attempts) <= 60_000
    assert p.delay_ms(attempts + 1) >= p.delay_ms(attempts)


def test_state_machine() -> None:
    row = OutboxRow(1, "token.transfer", {"to": "x", "amount": 1}, 5)
    p = Backoff()
    failed = next_state(row, 100, p, code=None, error="down")
    assert (failed.state, failed.attempts, failed.next_ms) == (PENDING, 1, 1_100)
    assert next_state(failed, 200, p, code="OK").state == DELIVERED
    assert next_state(failed, 200, p, code="DUPLICATE").state == DELIVERED
    assert next_state(failed, 200, p, code="INSUFFICIENT_FUNDS").state == REJECTED


def test_a_report_for_an_unregistered_meter_waits_for_registration() -> None:
    report = OutboxRow(2, "meter.report", {"meter_id": "PT0001:grid"}, 7)
    p = Backoff(1_000, 300_000)
    later = next_state(report, 0, p, code="UNKNOWN_METER", error="no meter PT0001:grid")
    assert (later.state, later.code, later.next_ms) == (PENDING, "UNKNOWN_METER", 60_000)
    again = next_state(later, 60_000, p, code="UNKNOWN_METER")
    assert again.state == PENDING and again.next_ms == 60_000 + 120_000  # doubling
    # only reports wait (one report per meter and interval: a new nonce cannot double it)
    other = OutboxRow(3, "auction.bid", {}, 8)
    assert next_state(other, 0, p, code="UNKNOWN_METER").state == REJECTED


async def test_outage_lost_replies_and_restart_deliver_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    store = Store(db)
    ids = [store.enqueue("token.transfer", {"to": "b", "amount": i}, 1000 + i, 0) for i in range(5)]
    ledger = MemoryLedger()
    ledger.up = False
    p = Backoff(1_000, 8_000)
    assert await deliver_due(store, KEY, ledger, 0, p) == (0, 1)
    assert await deliver_due(store, KEY, ledger, 500, p) == (0, 0)  # backing off
    ledger.up = True
    ledger.lose_reply = 2  # applied by the ledger but the gateway never heard back
    await deliver_due(store, KEY, ledger, 1_000, p)
    store.close()
    store = Store(db)  # gateway restarts
    for now in range(2_000, 40_000, 1_000):
        await deliver_due(store, KEY, ledger, now, p)
    rows = store.outbox_all()
    assert [r.id for r in rows] == ids
    assert all(r.state == DELIVERED for r in rows)
    assert len(ledger.applied) == 5
    assert sorted(t.body["amount"] for t in ledger.applied.values()) == [0, 1, 2, 3, 4]
    store.close()


async def test_rejection_does_not_block_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.db")
    bad = store.enqueue("bad.kind", {}, 1, 0)
    good = store.enqueue("token.transfer", {"to": "b", "amount": 1}, 2, 0)
    ledger = MemoryLedger()
    ledger.reject_kinds.add("bad.kind")
    await deliver_due(store, KEY, ledger, 0, Backoff())
    assert store.outbox_get(bad).state == REJECTED  # type: ignore[union-attr]
    assert store.outbox_get(good).state == DELIVERED  # type: ignore[union-attr]


async def test_a_refused_report_goes_again_as_a_new_transaction(tmp_path: Path) -> None:
    """The ledger keeps an executed refusal under its tx_id: the retry needs a new nonce."""

    class NotYet:
        def __init__(self) -> None:
            self.seen: list[str] = []

        async def submit(self, tx: SignedTx) -> Receipt:
            self.seen.append(tx.tx_id)
            return Receipt("OK" if len(self.seen) > 1 else "UNKNOWN_METER", "no meter")

    store = Store(tmp_path / "gw.db")
    oid = store.enqueue("meter.report", {"meter_id": "PT0001:grid"}, 5, 0)
    ledger, nonces = NotYet(), iter(range(100, 200))
    await deliver_due(store, KEY, ledger, 0, Backoff(), new_nonce=lambda: next(nonces))
    row = store.outbox_get(oid)
    assert row is not None and row.state == PENDING and row.nonce == 100
    await deliver_due(store, KEY, ledger, row.next_ms, Backoff(), new_nonce=lambda: next(nonces))
    row = store.outbox_get(oid)
    assert row is not None and row.state == DELIVERED
    assert len(set(ledger.seen)) == 2  # two transactions, the second one applied
