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
from ledger.transport import (
    HEADER,
    MAX_CLIENT_FRAME,
    FrameDecoder,
    FrameError,
    decode_payload,
    encode_frame,
    read_message,
)
from ledger.tx import MAX_NONCE, SignedTx, public_bytes, sign_tx
from ledger_client.protocol import (
    answer_key,
    hello_bytes,
    receipt_from_wire,
    receipt_is_wire,
    reply_key,
)

DEFAULT_TIMEOUT_S = 30.0
RECONNECT_S = 0.2
MAX_PER_FRAME = 500  # transactions or awaited ids in one frame
READ_CHUNK = 1 << 16


class LedgerError(RuntimeError):
    """The ledger did not give f+1 matching answers in time, or refused the request."""


class RejectedError(LedgerError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class QueryFailed(LedgerError):
    """2f+1 replicas agree that the query is invalid (unknown path, bad parameters)."""


class _Conn:
    def __init__(self, client: LedgerClient, index: int, host: str, port: int) -> None:
        self.client, self.index, self.host, self.port = client, index, host, port
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self._requests: list[dict[str, Any]] = []
        self._awaits: list[str] = []
        self._flush_scheduled = False

    def send(self, message: dict[str, Any]) -> bool:
        if self.writer is None or self.writer.is_closing():
            return False
        self.writer.write(encode_frame(message))
        return True

    def send_list(self, kind: str, field: str, items: list[Any]) -> None:
        """``items`` in frames of ``kind``, halved until each fits a client frame (a replica
        drops a connection that sends a larger one)."""
        if self.writer is None or self.writer.is_closing():
            return
        data = encode_frame({"t": kind, field: items})
        if len(data) - HEADER.size > MAX_CLIENT_FRAME and len(items) > 1:
            half = len(items) // 2
            self.send_list(kind, field, items[:half])
            self.send_list(kind, field, items[half:])
            return
        self.writer.write(data)

    def request(self, wire: dict[str, Any]) -> None:
        """Queue a transaction; all queued in one turn of the loop go out in one frame."""
        self._requests.append(wire)
        self._schedule()

    def await_reply(self, tx_id: str) -> None:
        self._awaits.append(tx_id)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        requests, self._requests = self._requests, []
        awaits, self._awaits = self._awaits, []
        for start in range(0, len(requests), MAX_PER_FRAME):
            self.send_list("requests", "txs", requests[start : start + MAX_PER_FRAME])
        for start in range(0, len(awaits), MAX_PER_FRAME):
            self.send_list("await", "tx_ids", awaits[start : start + MAX_PER_FRAME])

    async def run(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                challenge = await read_message(reader)
                key = self.client.key
                if key is not None:  # authenticate the connection: queries read as this key
                    writer.write(encode_frame(hello(key, challenge)))
                self.writer = writer
                self.ready.set()
                self.client._on_connect(self.index)
                # read whatever has arrived and split it into frames: one read for many
                # replies (two awaited reads per frame cost more than the reply itself)
                decoder = FrameDecoder()
                while True:
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        break
                    for payload in decoder.feed(data):
                        self.client._on_message(self.index, decode_payload(payload))
            except (OSError, asyncio.IncompleteReadError, FrameError):
                pass
            finally:
                was_up = self.writer is not None
                self.ready.clear()
                self.writer = None
                writer.close()
                if was_up:
                    self.client._on_disconnect(self.index)
            await asyncio.sleep(RECONNECT_S)


def hello(key: Ed25519PrivateKey, challenge: dict[str, Any]) -> dict[str, Any]:
    """The ``hello`` that proves ``key`` to the replica that sent ``challenge``."""
    nonce, replica = challenge.get("nonce"), challenge.get("replica")
    if not isinstance(nonce, str) or isinstance(replica, bool) or not isinstance(replica, int):
        raise FrameError("the replica's challenge has no nonce or replica id")
    key_hex = public_bytes(key.public_key()).hex()
    sig = key.sign(hello_bytes(nonce, replica, key_hex)).hex()
    return {"t": "hello", "key": key_hex, "sig": sig}


class _Pending:
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
    ) -> None:
        self.addresses = addresses
        self.f = f
        self.key = key
        self.request_timeout_s = request_timeout_s
        self.timeout_s = timeout_s
        self.broadcast = broadcast
        self.view = 0
        self._views: dict[int, int] = {}  # the highest view each replica's replies named
        self._conns: list[_Conn] = []
        self._txs: dict[str, _Pending] = {}
        self._queries: dict[int, _Pending] = {}
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
        for i, (host, port) in enumerate(self.addresses):
            conn = _Conn(self, i, host, port)
            conn.task = asyncio.get_running_loop().create_task(conn.run())
            self._conns.append(conn)
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

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
            self._sweeper = None
        for conn in self._conns:
            if conn.task is not None:
                conn.task.cancel()
                with contextlib.suppress(BaseException):
                    await conn.task
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
            pending = self._txs[tx_id] = _Pending(self.f + 1)
            wire = pending.wire = tx.to_wire()
            now = asyncio.get_running_loop().time()
            pending.wait_s = self.request_timeout_s
            pending.resend_at = now + pending.wait_s
            pending.deadline = now + self.timeout_s
            primary = self.view % len(self._conns)
            # the primary we would use is not connected (down, or restarting): give the
            # transaction to every replica, so the backups hold it and time the primary out
            everyone = self.broadcast or not self._conns[primary].ready.is_set()
            pending.to_all = everyone
            for conn in self._conns:
                if everyone or conn.index == primary:
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
        self._next_query += 1
        qid = self._next_query
        pending = self._queries[qid] = _Pending(2 * self.f + 1)
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
            raise LedgerError(f"no 2f+1 matching answers to {path} in {self.timeout_s}s") from exc
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
        conn = self._conns[index]
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
        if not self._conns or index != self.view % len(self._conns):
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
        conn = self._conns[index]
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
