"""``LedgerClient``: submit signed transactions and read the ledger, trusting f+1 agreeing replicas.

``submit`` sends the full request to the replica it believes is primary and a small ``await`` to
the others (so every replica knows where to send its reply), then waits for f+1 matching replies.
(``broadcast=True`` sends the full request to every replica instead, as in the PBFT paper. The
backups then check signatures as requests arrive rather than all at once when the pre-prepare
comes, so the two cores are busier (1.86-1.89 against 1.66-1.73 in the bench), but each backup
receives and books every request as well, which costs about as much: 3030, 2760, 3060 against
2655, 3013, 3090 tx/s in alternating runs. So the smaller ``await`` is the default.)
If none arrive within ``request_timeout_s`` it re-sends the full request to every replica (and
again after twice that wait, and so on, until ``timeout_s``), so a dead or faulty primary loses
nothing: the backups forward it and time the primary out. The
transaction id is fixed by the signed transaction, so a retry (even from a new process after a
crash) can only ever be ordered once; a replica that already executed it answers with the
original receipt.

The replica set can change (a reconfiguration members approved on chain, ledger/pbft
README): on start, and every ``refresh_s`` after, the client asks the replicas it knows for
``ledger.replicas`` and, once f+1 of them name the same newer set, talks to that set with its
f. So a client given an older cluster file still works, as long as f+1 of the replicas it
names are still correct members or were when they answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.cluster import load_cluster
from ledger.contract.api import Receipt
from ledger.tasks import cancel_and_wait
from ledger.tx import MAX_NONCE, SignedTx, sign_tx
from ledger_client.connection import MAX_PER_FRAME, ReplicaConnection
from ledger_client.pending import PendingOutcome
from ledger_client.protocol import (
    answer_key,
    receipt_from_wire,
    receipt_is_wire,
    reply_key,
)

DEFAULT_TIMEOUT_S = 30.0
REFRESH_S = 30.0  # how often the client asks which replica set orders the ledger


class LedgerError(RuntimeError):
    """The ledger did not give f+1 matching answers in time, or refused the request."""


class RejectedError(LedgerError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class QueryFailed(LedgerError):
    """2f+1 replicas agree that the query is invalid (unknown path, bad parameters)."""


class LedgerClient:
    """Async client. Use as ``async with LedgerClient.from_cluster_file(path, key) as c``.

    ``key`` signs ``submit_new``'s transactions and authenticates every connection (``hello``):
    queries are answered as that key may read them. Without a key the client reads as
    anonymous (heights, status and the community parameters)."""

    def __init__(
        self,
        addresses: list[tuple[str, int]],
        f: int,
        key: Ed25519PrivateKey | None = None,
        *,
        request_timeout_s: float = 2.0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        broadcast: bool = False,
        ids: list[int] | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.addresses = addresses
        self.ids = list(range(len(addresses))) if ids is None else list(ids)
        self.epoch = 0  # of the replica set the client talks to (0: the cluster file's)
        self.refresh_s = refresh_s
        self._refreshing: asyncio.Task[bool] | None = None
        self._next_refresh = float("inf")
        self.f = f
        self.key = key
        self.request_timeout_s = request_timeout_s
        self.timeout_s = timeout_s
        self.broadcast = broadcast
        self.view = 0
        self._views: dict[int, int] = {}  # the highest view each replica's replies named
        self._conns: list[ReplicaConnection] = []  # in the set's order (primary: view % n)
        self._txs: dict[str, PendingOutcome] = {}
        self._queries: dict[int, PendingOutcome] = {}
        self._height_collectors: dict[int, Callable[[int, dict[str, Any]], None]] = {}
        self._next_query = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.resends = 0

    @classmethod
    def from_cluster_file(
        cls, path: Path | str, key: Ed25519PrivateKey | None = None, **kwargs: Any
    ) -> LedgerClient:
        config = load_cluster(Path(path))
        kwargs.setdefault("request_timeout_s", config.timers["request_timeout_ms"] / 1000)
        return cls([(r.host, r.port) for r in config.replicas], config.f, key, **kwargs)

    async def __aenter__(self) -> LedgerClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        for rid, (host, port) in zip(self.ids, self.addresses, strict=True):
            self._conns.append(self._connect(rid, host, port))
        # wait until enough replicas are reachable to possibly answer (not all: some may be down)
        waiters = [asyncio.ensure_future(c.ready.wait()) for c in self._conns]
        try:
            async with asyncio.timeout(self.timeout_s):
                while sum(c.ready.is_set() for c in self._conns) < self.f + 1:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError as exc:
            await self.close()
            raise LedgerError(
                f"fewer than f+1={self.f + 1} replicas reachable in {self.timeout_s}s"
            ) from exc
        finally:
            for w in waiters:
                w.cancel()
        # the set may have changed since the cluster file was written; a set still in its
        # change (answers differ) is asked again by the sweeper, not waited for here
        with contextlib.suppress(LedgerError, TimeoutError):
            async with asyncio.timeout(min(self.timeout_s, 2 * self.request_timeout_s)):
                await self.refresh_replicas()
        self._next_refresh = asyncio.get_running_loop().time() + self.refresh_s

    def _connect(self, rid: int, host: str, port: int) -> ReplicaConnection:
        conn = ReplicaConnection(self, rid, host, port)
        conn.task = asyncio.get_running_loop().create_task(conn.run())
        return conn

    def _conn(self, rid: int) -> ReplicaConnection | None:
        """The connection to replica ``rid`` (connects and wants are rare: a scan will do)."""
        return next((c for c in self._conns if c.index == rid), None)

    async def refresh_replicas(self) -> bool:
        """Ask the replicas for the set ordering the ledger (``ledger.replicas``); when f+1
        name the same set of a newer epoch, talk to it from now on. True if it changed."""
        value = await self._query("ledger.replicas", self.f + 1, {})
        return self._adopt(value)

    def _adopt(self, value: Any) -> bool:
        try:
            epoch, f, raw = value["epoch"], value["f"], value["replicas"]
            replicas = [(r["id"], r["host"], r["port"]) for r in raw]
        except (TypeError, KeyError):
            return False
        if (
            not all(type(x) is int for x in (epoch, f))
            or epoch <= self.epoch
            or f < 1
            or not 3 * f + 1 <= len(replicas) <= 64
            or not all(type(i) is int and type(h) is str and type(p) is int for i, h, p in replicas)
            or len({i for i, _, _ in replicas}) != len(replicas)
        ):
            return False
        known = {c.index: c for c in self._conns}
        conns: list[ReplicaConnection] = []
        for rid, host, port in replicas:
            conn = known.get(rid)
            if conn is None or (conn.host, conn.port) != (host, port):
                conn = self._connect(rid, host, port)
            conns.append(conn)
        for conn in self._conns:
            if conn not in conns and conn.task is not None:
                conn.task.cancel()  # a replica no longer in the set
        self._conns = conns
        self.ids = [rid for rid, _, _ in replicas]
        self.addresses = [(host, port) for _, host, port in replicas]
        self.f, self.epoch = f, epoch
        self._views = {r: v for r, v in self._views.items() if r in self.ids}
        return True

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await cancel_and_wait(self._sweeper)
        self._sweeper = None
        for conn in self._conns:
            await cancel_and_wait(conn.task)
        self._conns.clear()

    # -- transactions ---------------------------------------------------------------------------

    async def submit(self, tx: SignedTx) -> Receipt:
        return receipt_from_wire((await self.submit_detail(tx))["receipt"])

    async def submit_detail(self, tx: SignedTx) -> dict[str, Any]:
        """Like ``submit`` but returns what f+1 replicas agreed on:
        ``{"tx_id", "height", "receipt"}`` (receipt as a wire dict)."""
        tx_id = tx.tx_id
        pending = self._txs.get(tx_id)
        if pending is None:
            pending = self._txs[tx_id] = PendingOutcome(self.f + 1)
            wire = pending.wire = tx.to_wire()
            now = asyncio.get_running_loop().time()
            pending.wait_s = self.request_timeout_s
            pending.resend_at = now + pending.wait_s
            pending.deadline = now + self.timeout_s
            primary = self._conns[self.view % len(self._conns)]
            # the primary we would use is not connected (down, or restarting): give the
            # transaction to every replica, so the backups hold it and time the primary out
            everyone = self.broadcast or not primary.ready.is_set()
            pending.to_all = everyone
            for conn in self._conns:
                if everyone or conn is primary:
                    conn.request(wire)
                else:
                    conn.await_reply(tx_id)
        pending.waiters += 1
        try:
            reply = await pending.wait()
        finally:
            pending.waiters -= 1
            if pending.waiters == 0 and self._txs.get(tx_id) is pending:
                self._txs.pop(tx_id)  # nobody waits any more (answered, or all gave up)
        return {"tx_id": tx_id, "height": reply["h"], "receipt": reply["receipt"]}

    async def _sweep(self) -> None:
        """Re-send and time out waiting transactions. One timer for all of them rather than two
        per transaction (a re-send timer and a deadline): timers were a fifth of a loaded
        client's CPU. Overdue requests go to every replica, with the wait doubled each time so
        an overloaded cluster is not flooded with copies of what it is already working on."""
        loop = asyncio.get_running_loop()
        tick = max(0.005, min(self.request_timeout_s, self.timeout_s) / 8)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            if now >= self._next_refresh and (self._refreshing is None or self._refreshing.done()):
                self._next_refresh = now + self.refresh_s
                self._refreshing = loop.create_task(self._refresh_quietly())
            for tx_id, pending in list(self._txs.items()):
                if pending.finished:
                    continue
                if now >= pending.deadline:
                    pending.fail(
                        LedgerError(f"no f+1 matching replies for {tx_id} in {self.timeout_s}s")
                    )
                elif now >= pending.resend_at and pending.wire is not None:
                    self.resends += 1
                    pending.to_all = True
                    for conn in self._conns:
                        conn.request(pending.wire)
                    pending.wait_s *= 2
                    pending.resend_at = now + pending.wait_s

    async def _refresh_quietly(self) -> bool:
        try:
            return await self.refresh_replicas()
        except LedgerError:
            return False  # asked again at the next refresh

    async def submit_new(self, kind: str, body: Mapping[str, Any]) -> Receipt:
        """Sign with this client's key and a fresh random nonce, then ``submit``."""
        if self.key is None:
            raise LedgerError("this client has no signing key")
        return await self.submit(sign_tx(self.key, kind, body, secrets.randbelow(MAX_NONCE)))

    # -- reads ----------------------------------------------------------------------------------

    async def query(self, path: str, **params: Any) -> Any:
        """A read answered identically by 2f+1 replicas (re-asked until they agree).

        2f+1, as in PBFT's read-only optimisation, and not f+1: after ``submit`` returned, up to
        f correct replicas may not have executed the block yet, and f+1 of them (lagging ones
        plus a faulty one) could agree on the state before it. With 2f+1 a read made after a
        write sees it. Lagging replicas catch up and re-answer, so one dead replica does not
        block reads."""
        return await self._query(path, 2 * self.f + 1, params)

    async def query_agreed(self, path: str, need: int, params: dict[str, Any]) -> Any:
        """``query`` with ``need`` matching answers instead of 2f+1."""
        return await self._query(path, need, params)

    async def _query(self, path: str, need: int, params: dict[str, Any]) -> Any:
        self._next_query += 1
        qid = self._next_query
        pending = self._queries[qid] = PendingOutcome(need)
        message = {"t": "query", "id": qid, "path": path, "params": params}
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    for conn in self._conns:
                        conn.send(message)
                    try:
                        answer = await asyncio.wait_for(pending.wait(), self.request_timeout_s)
                        break
                    except TimeoutError:
                        pending.votes.clear()
        except TimeoutError as exc:
            raise LedgerError(f"no {need} matching answers to {path} in {self.timeout_s}s") from exc
        finally:
            self._queries.pop(qid, None)
        if not answer.get("ok"):
            raise QueryFailed(str(answer.get("error")))
        return answer.get("value")

    async def height(self) -> int:
        """A height that at least one correct replica has reached (and so the cluster committed):
        the (f+1)-th highest of the heights 2f+1 replicas report. Any f+1 answers would bound it
        from below, but their lowest can be a correct replica that lags (up to f may), so a
        height read right after a write could come back as 0; of 2f+1 answers, f may lag or
        lie and the (f+1)-th highest is still one that f+1 of them reached."""
        self._next_query += 1
        qid = self._next_query
        heights: dict[int, int] = {}
        got = asyncio.Event()

        def collect(replica: int, message: dict[str, Any]) -> None:
            value = message.get("value")
            if message.get("ok") and isinstance(value, int) and not isinstance(value, bool):
                heights[replica] = value
                if len(heights) >= 2 * self.f + 1:
                    got.set()

        self._height_collectors[qid] = collect
        try:
            async with asyncio.timeout(self.timeout_s):
                while not got.is_set():
                    for conn in self._conns:
                        conn.send({"t": "query", "id": qid, "path": "ledger.height", "params": {}})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(got.wait(), self.request_timeout_s)
        except TimeoutError as exc:
            raise LedgerError("no 2f+1 heights") from exc
        finally:
            self._height_collectors.pop(qid, None)
        return sorted(heights.values(), reverse=True)[self.f]

    async def block(self, height: int) -> dict[str, Any]:
        value = await self.query("ledger.block", height=height)
        if not isinstance(value, dict):
            raise LedgerError(f"block {height} is not an object")
        return value

    async def receipt(self, tx_id: str) -> dict[str, Any] | None:
        value = await self.query("ledger.receipt", tx_id=tx_id)
        return value if isinstance(value, dict) else None

    # -- plumbing -------------------------------------------------------------------------------

    def _on_connect(self, index: int) -> None:
        # A replica that (re)connects missed what was sent while it was away: the awaits, and
        # the full transactions that went to every replica (a hand-over from a lost primary,
        # a re-send). Without them a backup that connected late never holds those requests,
        # never times the primary out, and the view cannot change.
        conn = self._conn(index)
        if conn is None:
            return
        for tx_id, pending in list(self._txs.items()):
            if pending.to_all and pending.wire is not None:
                conn.request(pending.wire)
            else:
                conn.await_reply(tx_id)

    def _on_reply(self, index: int, message: Any) -> None:
        if not isinstance(message, dict):
            return
        pending = self._txs.get(str(message.get("tx")))
        if pending is None:
            return
        view = message.get("v")
        if isinstance(view, int) and not isinstance(view, bool) and view >= 0:
            self._note_view(index, view)
        if pending.finished:
            return
        if receipt_is_wire(message.get("receipt")):
            pending.vote(index, reply_key(message), message)

    def _note_view(self, index: int, view: int) -> None:
        """Follow the view f+1 replicas have reached (the (f+1)-th highest they report): one
        faulty replica claiming a huge view must not make this client send every transaction
        to the replica it names as primary and only bare awaits to the others."""
        if view <= self._views.get(index, -1):
            return
        self._views[index] = view
        if len(self._views) > self.f:
            agreed = sorted(self._views.values(), reverse=True)[self.f]
            self.view = max(self.view, agreed)

    def _on_disconnect(self, index: int) -> None:
        """The connection to replica ``index`` dropped. If it is the primary we send requests
        to, the transactions waiting on it go to every other replica now rather than after
        ``request_timeout_s``: a backup that holds a request arms its view-change timer, so a
        crashed primary is replaced one view-change timeout after the crash."""
        if not self._conns or index != self._conns[self.view % len(self._conns)].index:
            return
        for pending in self._txs.values():
            if pending.wire is not None and not pending.finished:
                pending.to_all = True
                for conn in self._conns:
                    if conn.index != index:
                        conn.request(pending.wire)

    def _on_want(self, index: int, ids: Any) -> None:
        """A replica asks for transactions this client announced to it with ``await`` and that
        it has not seen ordered: it gets them in full (only those still waited for), so that it
        holds them and times a stalled primary out."""
        if not isinstance(ids, list):
            return
        conn = self._conn(index)
        if conn is None:
            return
        for tx_id in ids[:MAX_PER_FRAME]:
            pending = self._txs.get(tx_id) if isinstance(tx_id, str) else None
            if pending is not None and pending.wire is not None and not pending.finished:
                conn.request(pending.wire)

    def _on_message(self, index: int, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "reply":
            self._on_reply(index, message)
        elif kind == "replies":
            replies = message.get("replies")
            if isinstance(replies, list):
                for reply in replies:
                    self._on_reply(index, reply)
        elif kind == "reject":
            pending = self._txs.get(str(message.get("tx_id")))
            if pending is None:
                return
            code = str(message.get("code"))
            pending.reject(index, code, RejectedError(code, str(message.get("message"))))
        elif kind == "want":
            self._on_want(index, message.get("tx_ids"))
        elif kind == "answer":
            qid = message.get("id")
            if not isinstance(qid, int):
                return
            collector = self._height_collectors.get(qid)
            if collector is not None:
                collector(index, message)
                return
            pending = self._queries.get(qid)
            if pending is None:
                return
            pending.vote(index, answer_key(message), message)
