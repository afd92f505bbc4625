"""Which client connections wait for which transactions, sans-IO: the replica's table of waits.

A client that sends a transaction (``request``) or only its id (``await``) waits here for its
receipt; a reply goes to the connections that wait for its transaction. The table is bounded in
all and per connection and indexed both ways (transaction -> connections, connection -> its
transactions in order of age), so a reply, an expiry and a closing connection each cost what
they touch, not the table. Time is given (``now`` in ms); the replica node sends what the table
returns (``stale``) and counts what it reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

WAITER_TTL_MS = 300_000  # a client waiting this long for one transaction has re-sent or gone
EVICT_CHUNK = 256  # most waits taken at once from the largest holder when the table is full


class Waiter(Hashable, Protocol):
    """What the table needs of a connection (``ledger.transport.ClientConn`` in a replica)."""

    @property
    def closed(self) -> bool: ...

    @property
    def source(self) -> str: ...


C = TypeVar("C", bound=Waiter)


@dataclass(eq=False)
class ClientWaits(Generic[C]):
    """The waits of client connections (``C``) for transaction ids, bounded and two-way indexed.

    ``incidents(cause, detail)`` is told of each refused wait (``waiters_refused``); evictions
    and expiries are counted in ``counters`` (``waiters_evicted``, ``waiters_expired``)."""

    max_waits: int
    max_per_client: int
    ask_after_ms: int
    counters: Counter[str]
    incidents: Callable[[str, str], None]
    # tx_id -> the connections waiting for it
    by_tx: dict[str, set[C]] = field(default_factory=dict, init=False)
    # connection -> its tx_ids, oldest first
    held: dict[C, dict[str, None]] = field(default_factory=dict, init=False)
    count: int = field(default=0, init=False)  # (transaction, connection) pairs in the table
    # tx_id -> when first awaited; insertion = age order
    since: dict[str, int] = field(default_factory=dict, init=False)
    # awaited, not yet asked of the client: since when
    to_ask: dict[str, int] = field(default_factory=dict, init=False)

    def add(self, conn: C, tx_id: str, now: int, ask: bool = False) -> bool:
        """Note that ``conn`` waits for ``tx_id``; False if the table has no room for it.
        With ``ask``, the transaction is one the client only awaited: ``stale`` may ask for it.

        A connection may hold ``max_per_client`` waits. When the whole table is full, the
        connection holding the most waits gives up its oldest (half the difference to the
        asking connection, at most ``EVICT_CHUNK``, so the search for it is rare) unless that
        is the asking connection itself: whoever floods the table pays for it, a client that
        waits for a few is always served."""
        if conn.closed:
            return False
        mine = self.held.get(conn)
        if mine is None:
            mine = self.held[conn] = {}
        if tx_id not in mine:
            if len(mine) >= self.max_per_client:
                self.incidents("waiters_refused", f"a client from {conn.source} at its limit")
                return False
            if self.count >= self.max_waits and not self._evict_for(conn):
                self.incidents("waiters_refused", "the table is full")
                return False
            conns = self.by_tx.get(tx_id)
            if conns is None:
                conns = self.by_tx[tx_id] = set()
                self.since[tx_id] = now
            conns.add(conn)
            mine[tx_id] = None
            self.count += 1
        if ask:
            self.to_ask.setdefault(tx_id, now)
        return True

    def _evict_for(self, conn: C) -> bool:
        held = self.held
        largest = max(held, key=lambda c: len(held[c]))
        if largest is conn or len(held[largest]) <= len(held[conn]) + 1:
            return False
        theirs = held[largest]
        # half the difference (so two floods end up with equal shares), at most a chunk
        count = max(1, min(EVICT_CHUNK, (len(theirs) - len(held[conn])) // 2))
        for tx_id in list(theirs)[:count]:
            self._remove(largest, tx_id)
        self.counters["waiters_evicted"] += 1
        return True

    def _remove(self, conn: C, tx_id: str) -> None:
        mine = self.held.get(conn)
        if mine is None or tx_id not in mine:
            return
        del mine[tx_id]
        self.count -= 1
        conns = self.by_tx.get(tx_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                self._forget(tx_id)

    def _forget(self, tx_id: str) -> None:
        del self.by_tx[tx_id]
        self.since.pop(tx_id, None)
        self.to_ask.pop(tx_id, None)

    def take(self, tx_id: str) -> set[C] | None:
        """The connections waiting for ``tx_id``, removed from the table (it was answered)."""
        conns = self.by_tx.pop(tx_id, None)
        if conns is None:
            return None
        self.since.pop(tx_id, None)
        self.to_ask.pop(tx_id, None)
        held = self.held
        for conn in conns:
            mine = held.get(conn)
            if mine is not None:
                del mine[tx_id]
        self.count -= len(conns)
        return conns

    def expire(self, now: int) -> None:
        """Forget waits for transactions that never executed (refused, never ordered) so the
        table cannot grow without bound; a client still interested re-sends."""
        cutoff = now - WAITER_TTL_MS
        expired = []
        for tx_id, since in self.since.items():
            if since > cutoff:
                break
            expired.append(tx_id)
        for tx_id in expired:
            if self.take(tx_id) is not None:
                self.counters["waiters_expired"] += 1

    def stale(self, now: int, held_here: Callable[[str], bool]) -> dict[C, list[str]]:
        """What to ask each waiting client for: the transactions it awaits that this replica
        has not held (``held_here``: received or seen in a pre-prepare) for ``ask_after_ms``.
        Each transaction is asked for once."""
        cutoff = now - self.ask_after_ms
        due: dict[C, list[str]] = {}
        for tx_id, since in self.to_ask.items():
            if since > cutoff:
                break
            if not held_here(tx_id):
                for conn in self.by_tx.get(tx_id, ()):
                    due.setdefault(conn, []).append(tx_id)
        for tx_id in list(self.to_ask):
            if self.to_ask[tx_id] > cutoff:
                break
            del self.to_ask[tx_id]
        return due

    def close(self, conn: C) -> None:
        """Forget a closed connection's waits: work in proportion to what it held."""
        mine = self.held.pop(conn, None)
        if not mine:
            return
        self.count -= len(mine)
        for tx_id in mine:
            conns = self.by_tx.get(tx_id)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    self._forget(tx_id)
