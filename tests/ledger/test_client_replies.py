"""The client's handling of reply frames: a block's replies come as one ``replies`` frame, and
whatever a replica sends in one can only fail that reply, never the client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.keys import new_key
from ledger.tx import sign_tx
from ledger_client.client import LedgerClient, RejectedError, _Conn, _Pending
from tests.ledger.strategies import json_values

JSON = json_values()


def _client() -> LedgerClient:
    return LedgerClient([("127.0.0.1", 1)] * 4, 1)


def _reply(replica: int, tx_id: str, height: int) -> dict[str, Any]:
    receipt = {"code": "OK", "result": {}, "message": ""}
    return {"t": "reply", "r": replica, "v": 0, "tx": tx_id, "h": height, "receipt": receipt}


async def test_a_replies_frame_counts_like_single_replies() -> None:
    client = _client()
    ids = [f"{k:064x}" for k in range(3)]
    for tx_id in ids:
        client._txs[tx_id] = _Pending(2)
    client._on_message(0, {"t": "replies", "replies": [_reply(0, t, 7) for t in ids]})
    assert not any(client._txs[t].finished for t in ids)  # one replica is not f+1
    client._on_message(1, {"t": "replies", "replies": [_reply(1, t, 7) for t in ids[:2]]})
    client._on_message(1, _reply(1, ids[2], 8))  # disagrees on the height: no result
    assert [client._txs[t].finished for t in ids] == [True, True, False]
    assert client._txs[ids[0]].wait().result()["h"] == 7
    client._on_message(2, {"t": "replies", "replies": [_reply(2, ids[2], 8)]})
    assert client._txs[ids[2]].wait().result()["h"] == 8


@settings(max_examples=100, deadline=None)
@given(receipt=JSON)
def test_a_reply_whose_receipt_is_no_receipt_is_no_vote(receipt: Any) -> None:
    good = isinstance(receipt, dict) and [
        type(receipt.get(k)) for k in ("code", "result", "message")
    ] == [str, dict, str]

    async def run() -> None:
        client = _client()
        tx_id = "cd" * 32
        client._txs[tx_id] = _Pending(2)
        for replica in (0, 1):
            client._on_message(replica, dict(_reply(replica, tx_id, 4), receipt=receipt))
        assert client._txs[tx_id].finished == good
        client._on_message(2, _reply(2, tx_id, 4))
        client._on_message(3, _reply(3, tx_id, 4))
        assert client._txs[tx_id].finished

    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(items=JSON, frame=st.dictionaries(st.text(max_size=6), JSON, max_size=4))
def test_hostile_replies_frames_fail_only_themselves(items: Any, frame: dict[str, Any]) -> None:
    async def run() -> None:
        client = _client()
        tx_id = "ab" * 32
        client._txs[tx_id] = _Pending(2)
        client._on_message(0, {"t": "replies", "replies": items})
        client._on_message(0, {"t": "replies", "replies": [items, frame, _reply(0, tx_id, 3)]})
        client._on_message(1, dict(frame, t="replies"))
        client._on_message(1, {"t": "replies", "replies": [_reply(1, tx_id, 3)]})
        assert client._txs[tx_id].wait().result()["h"] == 3

    asyncio.run(run())


def _ready_client() -> LedgerClient:
    """A client whose four connections count as ready, though none ever connects."""
    client = _client()
    client._conns = [_Conn(client, i, "127.0.0.1", 1) for i in range(4)]
    for conn in client._conns:
        conn.ready.set()
    return client


async def _settle() -> None:
    """Let every callback that is ready run (a few turns of the loop, no wall-clock wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_cancelled_submit_leaves_a_second_submit_of_the_same_transaction_waiting() -> None:
    """Two tasks submit one transaction; the first is cancelled (its caller gave up). The
    second still gets the result when f+1 replies come, and the transaction is forgotten only
    once nobody waits for it."""
    client = _ready_client()
    tx = sign_tx(new_key(), "token.transfer", {"to": "M00001", "amount": 1}, 7)
    first = asyncio.ensure_future(client.submit_detail(tx))
    second = asyncio.ensure_future(client.submit_detail(tx))
    await _settle()
    first.cancel()
    await _settle()
    assert first.cancelled() and tx.tx_id in client._txs
    client._on_message(0, _reply(0, tx.tx_id, 5))
    client._on_message(1, _reply(1, tx.tx_id, 5))
    await _settle()
    assert second.done() and second.result()["height"] == 5
    assert tx.tx_id not in client._txs
    # a lone submit that is cancelled is forgotten at once
    lone = asyncio.ensure_future(client.submit_detail(tx))
    await _settle()
    lone.cancel()
    await _settle()
    assert lone.cancelled() and tx.tx_id not in client._txs


async def test_f_plus_one_rejections_end_every_wait_and_later_waits_see_the_outcome() -> None:
    """Two submits of one transaction: one refusal is not enough (it may come from the faulty
    replica); f+1 refusals with one code raise in both, and a wait begun afterwards (a third
    caller) gets the same error at once."""
    client = _ready_client()
    tx = sign_tx(new_key(), "token.transfer", {"to": "M00001", "amount": 1}, 9)
    waits = [asyncio.ensure_future(client.submit_detail(tx)) for _ in range(2)]
    await _settle()
    pending = client._txs[tx.tx_id]
    reject = {"t": "reject", "tx_id": tx.tx_id, "code": "BAD_SIGNATURE", "message": "no"}
    client._on_message(0, reject)
    client._on_message(1, dict(reject, code="MALFORMED_TX"))  # another code: no agreement
    await _settle()
    assert not any(w.done() for w in waits)
    client._on_message(2, reject)
    await _settle()
    for w in waits:
        with pytest.raises(RejectedError) as caught:
            w.result()
        assert caught.value.code == "BAD_SIGNATURE"
    assert pending.finished and tx.tx_id not in client._txs
    late = pending.wait()
    assert late.done() and isinstance(late.exception(), RejectedError)
    # replies after the outcome change nothing
    client._on_message(0, _reply(0, tx.tx_id, 5))
    client._on_message(1, _reply(1, tx.tx_id, 5))
    assert isinstance(pending.wait().exception(), RejectedError)


async def test_one_replica_claiming_a_huge_view_does_not_move_the_client() -> None:
    """A faulty replica's reply names view 4*10**15+3 (itself as primary): the client keeps
    sending full transactions to the primary f+1 replicas agree on."""
    client = _client()
    tx_id = "cd" * 32
    client._txs[tx_id] = _Pending(2)
    bogus = dict(_reply(3, tx_id, 1), v=4 * 10**15 + 3)
    client._on_message(3, bogus)
    assert client.view == 0
    client._on_message(0, dict(_reply(0, tx_id, 1), v=1))
    assert client.view == 1  # two replicas have reached view 1 or more: f+1 = 2
    client._on_message(2, dict(_reply(2, tx_id, 1), v=2))
    assert client.view == 2
    client._on_message(2, dict(_reply(2, tx_id, 1), v=True))  # not a view at all
    assert client.view == 2


class _Answering:
    """Stands in for the connection to one replica: answers a height query with its height
    (None: never answers), replica i some 20i turns of the event loop after the query."""

    def __init__(self, client: LedgerClient, index: int, height: int | None) -> None:
        self.client, self.index, self.height = client, index, height

    def send(self, message: dict[str, Any]) -> bool:
        if self.height is not None:
            answer = {"t": "answer", "replica": self.index, "id": message["id"], "ok": True,
                      "value": self.height}  # fmt: skip
            self._later(20 * self.index, answer)  # replica i answers 20i turns of the loop later
        return True

    def _later(self, turns: int, answer: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        if turns:
            loop.call_soon(self._later, turns - 1, answer)
        else:
            self.client._on_message(self.index, answer)


@pytest.mark.parametrize(
    ("heights", "expected"),
    [
        ([0, 5, 5, None], 5),  # a correct replica that lags answers first: it is outvoted
        ([9, 5, 5, None], 5),  # a faulty one that claims a height nobody reached: outvoted too
        ([0, 0, 5, None], 0),  # f+1 of the 2f+1 answers at 0: nothing more is sure
        ([3, 5, 4, None], 4),  # the (f+1)-th highest
        ([0, 5, 5, 5], 5),
    ],
)
async def test_height_is_the_f_plus_1th_highest_of_2f_plus_1_answers(
    heights: list[int | None], expected: int
) -> None:
    """Of the first f+1 answers the lower could be a replica that lags, so a height read just
    after a write came back as 0 (seen in CI); of 2f+1, f may lag or lie."""
    client = _client()
    client._conns = [_Answering(client, i, h) for i, h in enumerate(heights)]  # type: ignore[misc]
    assert await client.height() == expected


async def test_a_want_gets_the_transactions_still_waited_for_and_nothing_else() -> None:
    """A replica asks (``want``) for transactions the client announced to it: it gets those the
    client still waits for, in full, on that connection only; unknown, finished and malformed
    ids get nothing."""
    client = _client()
    client._conns = [_Conn(client, i, "127.0.0.1", 1) for i in range(4)]  # never connected
    for conn in client._conns:
        conn.ready.set()
    tx = sign_tx(new_key(), "token.transfer", {"to": "M00001", "amount": 1}, 11)
    done = sign_tx(new_key(), "token.transfer", {"to": "M00001", "amount": 1}, 12)
    waiting = [asyncio.ensure_future(client.submit_detail(t)) for t in (tx, done)]
    await _settle()
    client._txs[done.tx_id].resolve(_reply(0, done.tx_id, 1))
    for conn in client._conns:
        conn._requests.clear()
    client._on_message(2, {"t": "want", "tx_ids": [tx.tx_id, done.tx_id, "cd" * 32, 7, None]})
    assert client._conns[2]._requests == [tx.to_wire()]
    assert all(not client._conns[i]._requests for i in (0, 1, 3))
    for frame in ({"t": "want"}, {"t": "want", "tx_ids": "x"}, {"t": "want", "tx_ids": {}}):
        client._on_message(1, frame)
    assert not client._conns[1]._requests
    for task in waiting:
        task.cancel()
    await _settle()


@settings(max_examples=200, deadline=None)
@given(ids=JSON)
def test_hostile_want_frames_never_raise(ids: Any) -> None:
    async def run() -> None:
        client = _client()
        client._conns = [_Conn(client, i, "127.0.0.1", 1) for i in range(4)]
        client._on_message(0, {"t": "want", "tx_ids": ids})
        client._on_message(0, {"t": "want", "tx_ids": [ids]})

    asyncio.run(run())
