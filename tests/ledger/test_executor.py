"""The executor over SQLite and a contract: blocks applied in order, a transaction never applied
twice (same block, later block, after restart), restart restores the snapshot and replays, and
``verify_chain`` finds any tampering with the stored chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.executor import LedgerState, SigCache
from ledger.keys import new_key
from ledger.pbft.block import GENESIS_HASH, Block
from ledger.store import StoreError
from ledger.tx import SignedTx, sign_tx
from ledger.verify import verify_chain
from tests.ledger.toy_contract import make_contract

KEY = new_key()


def tx(amount: int, nonce: int) -> SignedTx:
    return sign_tx(KEY, "toy.add", {"amount": amount}, nonce)


def open_state(path: Path, interval: int = 3) -> LedgerState:
    return LedgerState(path / "r.sqlite", {"g": 1}, make_contract, interval)


def next_block(state: LedgerState, txs: list[SignedTx], ts: int = 1000) -> Block:
    return Block(
        height=state.last_executed() + 1,
        timestamp_ms=ts,
        prev_hash=state.last_block_hash(),
        txs=tuple(t.to_wire() for t in txs),
    )


def total(state: LedgerState) -> Any:
    return state.contract.query("count", {"sender": KEY.public_key().public_bytes_raw().hex()})


def test_blocks_apply_in_order_and_duplicates_do_not_apply(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    assert state.last_executed() == 0 and state.last_block_hash() == GENESIS_HASH
    a, b = tx(5, 1), tx(7, 2)
    receipts = state.execute(next_block(state, [a, b, a]))
    assert [r["code"] for r in receipts] == ["OK", "OK", "OK"]
    assert receipts[2] == receipts[0]  # the duplicate gets the original receipt
    assert total(state) == 12
    receipts = state.execute(next_block(state, [b, tx(1, 3)]))
    assert receipts[0]["result"] == {"total": 12, "height": 1}  # original, from block 1
    assert total(state) == 13
    assert state.receipt(b.tx_id) == (1, receipts[0])
    assert state.receipt("ff" * 32) is None
    with pytest.raises(StoreError, match="does not follow"):
        state.execute(Block(9, 0, state.last_block_hash(), ()))
    with pytest.raises(StoreError, match="does not link"):
        state.execute(Block(3, 0, b"\x01" * 32, ()))
    assert [blk.height for blk in state.blocks_from(1, 10)] == [1, 2]
    assert [blk.height for blk in state.blocks_from(2, 10)] == [2]
    assert state.block(2) is not None and state.block(3) is None


@settings(max_examples=15, deadline=None)
@given(
    plan=st.lists(
        st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 6)), max_size=5), max_size=8
    ),
    interval=st.integers(1, 4),
)
def test_restart_reaches_the_same_state(
    tmp_path_factory: pytest.TempPathFactory, plan: list[list[tuple[int, int]]], interval: int
) -> None:
    """Whatever blocks were executed (with repeats), a fresh process over the same file reaches
    the same height, head and state digest, and every nonce counted once."""
    path = tmp_path_factory.mktemp("restart")
    state = open_state(path, interval)
    amounts: dict[int, int] = {}
    answered: dict[str, dict[str, Any]] = {}
    for block_plan in plan:
        txs = [tx(amounts.setdefault(nonce, amount), nonce) for amount, nonce in block_plan]
        for sent, receipt in zip(txs, state.execute(next_block(state, txs)), strict=True):
            answered.setdefault(sent.tx_id, receipt)
    expected = (state.last_executed(), state.last_block_hash(), state.state_digest())
    state.close()
    again = open_state(path, interval)
    assert (again.last_executed(), again.last_block_hash(), again.state_digest()) == expected
    assert total(again) == sum(amounts.values())
    # every transaction's stored receipt is the one its first execution answered
    for tx_id, receipt in answered.items():
        found = again.receipt(tx_id)
        assert found is not None and found[1] == receipt
    assert again.replayed == again.last_executed() % interval
    again.close()


def test_checkpoints_are_saved_and_loaded(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    assert state.load_checkpoint() is None
    state.save_checkpoint(3, b"\x02" * 32, [{"t": "checkpoint", "r": 1}])
    assert state.load_checkpoint() == (3, b"\x02" * 32, [{"t": "checkpoint", "r": 1}])


def test_a_bad_signature_is_refused_when_checking_is_on(tmp_path: Path) -> None:
    state = LedgerState(
        tmp_path / "r.sqlite", {}, make_contract, 4, SigCache(), verify_signatures=True
    )
    good = tx(3, 1)
    forged = SignedTx(good.sender, good.kind, {"amount": 1000}, 2, good.signature)
    receipts = state.execute(next_block(state, [forged, good]))
    assert [r["code"] for r in receipts] == ["BAD_SIGNATURE", "OK"]
    assert total(state) == 3
    assert state.sigs.verified == 2
    state.execute(next_block(state, [good]))
    assert state.sigs.verified == 2  # the duplicate is not verified again


def test_verify_chain_finds_tampering(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    for n in range(4):
        state.execute(next_block(state, [tx(1, n)]))
    ok = list(verify_chain(state.store.blocks(), lambda block: True))
    assert ok == []
    assert verify_chain(state.store.blocks(), lambda block: block.height != 2) == [
        "block 2: commit certificate does not verify"
    ]
    state.store.db.execute(
        "UPDATE blocks SET body = replace(body, '\"amount\":1', '\"amount\":9') WHERE height = 3"
    )
    problems = verify_chain(state.store.blocks(), lambda block: True)
    assert any("block 3: stored columns have the wrong types" in p for p in problems)
    state.store.db.execute("UPDATE blocks SET body = CAST(body AS BLOB) WHERE height = 3")
    problems = verify_chain(state.store.blocks(), lambda block: True)
    assert any("block 3: hash does not match" in p for p in problems)
    state.store.db.execute("UPDATE blocks SET body = X'00ff' WHERE height = 1")
    problems = verify_chain(state.store.blocks(), lambda block: True)
    assert any("block 1: stored body does not decode" in p for p in problems)
    state.store.db.execute("DELETE FROM blocks WHERE height = 2")
    problems = verify_chain(state.store.blocks(), lambda block: True)
    assert any("expected height 2" in p for p in problems)


def test_the_journal_survives_reopening_and_is_pruned(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    assert state.load_journal() == (0, True, {})  # a new replica
    state.save_view(3, False)
    for seq in (5, 6, 7):
        state.save_journal(seq, {"pp": b"pp %d" % seq, "batch": b"batch %d" % seq})
    state.save_journal(6, {"pp": None, "batch": None})
    state.save_journal(7, {"proof": b"proof 7", "batch": None})
    state.close()
    again = open_state(tmp_path)
    assert again.load_journal() == (
        3,
        False,
        {5: {"pp": b"pp 5", "batch": b"batch 5"}, 7: {"pp": b"pp 7", "proof": b"proof 7"}},
    )
    again.prune_journal(5)
    assert list(again.load_journal()[2]) == [7]


def test_a_damaged_stored_view_is_refused_by_name(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    for raw in (b"{", b'{"view": -1, "active": true}', b'{"view": 1}', b'{"view": 1, "active": 2}'):
        state.store.set_meta("view", raw)
        with pytest.raises(StoreError, match="stored view"):
            state.load_journal()


def test_the_state_digest_of_kept_checkpoints_is_known(tmp_path: Path) -> None:
    state = open_state(tmp_path, interval=3)
    digests = {}
    for height in range(1, 8):
        state.execute(next_block(state, [tx(height, height)]))
        digests[height] = state.state_digest()
    assert state.state_digest_at(3) == digests[3] and state.state_digest_at(6) == digests[6]
    assert state.state_digest_at(5) is None and state.state_digest_at(9) is None


def test_the_signature_cache_is_bounded_and_spares_recent_checks() -> None:
    cache = SigCache(size=4)
    txs = [tx(1, n) for n in range(10)]
    for t in txs:
        assert cache.check(t)
        assert len(cache) <= 4
    assert cache.verified == 10
    assert cache.check(txs[-1]) and cache.check(txs[-2]) and cache.verified == 10  # cached
    assert cache.check(txs[0]) and cache.verified == 11  # long forgotten: checked again
    forged = SignedTx(txs[-1].sender, txs[-1].kind, txs[-1].body, txs[-1].nonce, b"\0" * 64)
    assert not cache.check(forged)  # same id, another signature: its own verdict
