"""One transaction or query a ``LedgerClient`` waits for: the replicas' votes, and a future per
waiting caller settled once f+1 (2f+1 for a query) agree or refuse alike.
"""

from __future__ import annotations

import asyncio
from typing import Any


class PendingOutcome:
    """One transaction (or query) waiting for matching replies. Every caller waiting for it has
    a future of its own (``wait``), settled when the outcome is decided, so one caller giving up
    (cancelled, timed out) cancels only its own future, never the others'. (It was one shared
    future behind ``asyncio.shield`` per caller, which costs a second future, two callbacks and
    an extra turn of the event loop per answer: 6-8 % of a loaded client's CPU samples.)"""

    __slots__ = (
        "_error",
        "_futures",
        "_result",
        "deadline",
        "finished",
        "first",
        "need",
        "rejects",
        "resend_at",
        "to_all",
        "votes",
        "wait_s",
        "waiters",
        "wire",
    )

    def __init__(self, need: int) -> None:
        self.need = need
        self.votes: dict[bytes, set[int]] = {}
        self.first: dict[bytes, dict[str, Any]] = {}
        self.rejects: dict[str, set[int]] = {}
        self.wire: dict[str, Any] | None = None  # the signed transaction, for re-sends
        self.to_all = False  # given to every replica (primary unreachable, or re-sent)
        # re-send and give-up times (loop clock), driven by the client's one sweeper
        self.resend_at = self.deadline = float("inf")
        self.wait_s = 0.0
        self.waiters = 0  # submits waiting; forgotten when the last one returns
        self.finished = False
        self._result: dict[str, Any] = {}
        self._error: BaseException | None = None
        self._futures: list[asyncio.Future[dict[str, Any]]] = []

    def wait(self) -> asyncio.Future[dict[str, Any]]:
        """A new future for one caller: the agreed reply, or the error the wait ended with."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.finished:
            self._settle(future)
        else:
            if len(self._futures) >= 8:  # callers that gave up (a query's timed-out rounds)
                self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(future)
        return future

    def resolve(self, result: dict[str, Any]) -> None:
        if not self.finished:
            self.finished, self._result = True, result
            self._settle_all()

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.finished, self._error = True, error
            self._settle_all()

    def _settle_all(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            self._settle(future)

    def _settle(self, future: asyncio.Future[dict[str, Any]]) -> None:
        if future.done():  # its caller gave up
            return
        if self._error is not None:
            future.set_exception(self._error)
        else:
            future.set_result(self._result)

    def vote(self, replica: int, key: bytes, message: dict[str, Any]) -> None:
        if self.finished:
            return
        for voters in self.votes.values():  # one vote per replica, the latest counts
            voters.discard(replica)
        if key not in self.votes:
            self.votes[key] = set()
            self.first[key] = message
        voters = self.votes[key]
        voters.add(replica)
        if len(voters) >= self.need:
            self.resolve(self.first[key])

    def reject(self, replica: int, code: str, error: BaseException) -> None:
        """A replica refused the transaction; f+1 refusing with one code end the wait."""
        voters = self.rejects.setdefault(code, set())
        voters.add(replica)
        if len(voters) >= self.need:
            self.fail(error)

