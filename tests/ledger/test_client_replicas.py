"""The client learns the replica set (``ledger.replicas``): it moves only when f+1 replicas name
the same newer set, talks to that set in its order with its f, and whatever a replica answers
can only fail to move it, never break it."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings

from ledger_client.client import LedgerClient
from tests.ledger.strategies import json_values


def _client() -> LedgerClient:
    return LedgerClient([("127.0.0.1", 1 + i) for i in range(4)], 1)


def _set(epoch: int, ids: list[int], f: int = 1) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "since": 40,
        "f": f,
        "replicas": [
            {"id": i, "host": "127.0.0.1", "port": 100 + i, "public_key": "ab" * 32} for i in ids
        ],
    }


class _Answering:
    """Stands in for the connection to one replica: answers every query with ``value``."""

    def __init__(self, client: LedgerClient, index: int, value: Any) -> None:
        self.client, self.index, self.value = client, index, value
        self.host, self.port, self.task = "127.0.0.1", 1 + index, None

    def send(self, message: dict[str, Any]) -> bool:
        answer = {"t": "answer", "replica": self.index, "id": message["id"], "ok": True,
                  "value": self.value}  # fmt: skip
        asyncio.get_running_loop().call_soon(self.client._on_message, self.index, answer)
        return True


async def test_f_plus_1_matching_answers_move_the_client_to_the_newer_set() -> None:
    client = _client()
    new = _set(2, [0, 1, 2, 4, 7], f=1)
    # one faulty replica names a set of its own; f+1 others agree on the real one
    answers = [_set(5, [0, 9, 10, 11]), new, new, _set(1, [0, 1, 2, 3, 4])]
    client._conns = [_Answering(client, i, a) for i, a in enumerate(answers)]  # type: ignore[misc]
    try:
        assert await client.refresh_replicas()
        assert client.epoch == 2 and client.ids == [0, 1, 2, 4, 7] and client.f == 1
        assert [c.index for c in client._conns] == [0, 1, 2, 4, 7]
        assert [(c.host, c.port) for c in client._conns][3:] == [("127.0.0.1", 104),
                                                                 ("127.0.0.1", 107)]  # fmt: skip
        # an older or the same epoch moves nothing
        assert not client._adopt(_set(1, [0, 1, 2, 3]))
        assert not client._adopt(new)
    finally:
        await client.close()


@settings(max_examples=200, deadline=None)
@given(json_values())
def test_any_answer_either_names_a_set_or_changes_nothing(value: Any) -> None:
    async def run() -> None:
        client = _client()
        before = (client.epoch, client.f, list(client.ids))
        moved = client._adopt(value)
        if moved:
            assert client.epoch > 0 and len(client.ids) >= 3 * client.f + 1
        else:
            assert (client.epoch, client.f, list(client.ids)) == before
        await client.close()

    asyncio.run(run())


def test_malformed_sets_are_not_taken() -> None:
    async def run() -> None:
        client = _client()
        good = _set(3, [0, 1, 2, 5])
        bad = [
            {**good, "epoch": "3"},
            {**good, "epoch": True},
            {**good, "f": 2},  # four replicas cannot have f = 2
            {**good, "f": 0},
            {**good, "replicas": good["replicas"][:3]},
            {**good, "replicas": [*good["replicas"][:3], good["replicas"][0]]},  # id twice
            {**good, "replicas": [{"id": 0, "host": 1, "port": 1}] * 4},
            {**good, "replicas": "0,1,2,5"},
            {k: v for k, v in good.items() if k != "f"},
        ]
        for value in bad:
            assert not client._adopt(value), value
        assert client.epoch == 0 and client.ids == [0, 1, 2, 3]
        assert client._adopt(good)
        await client.close()

    asyncio.run(run())
