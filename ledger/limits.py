"""A replica's resource limits: connections, frames, buffers and tables, and how they are set.

Every limit has its default here and may be changed in the cluster file's ``limits`` object
(``ledger.cluster`` validates it against ``RANGES``). They keep what one connection, one source
address or one peer can make a replica hold proportional to what it is allowed, so that a
stranger, a hostile member or a Byzantine replica costs the others nothing. See the table in
``ledger/README.md``.

The replica raises its soft open-file limit to the hard limit at start (``raise_nofile``) and
keeps its client connections well under it (``client_slots``): descriptors are reserved for its
peers' links, its store and the over-cap handshakes through which a peer still gets in.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

KIB = 1024
MIB = 1024 * KIB
MAX_CLIENT_FRAME = 1 * MIB  # the largest frame a client sends (``ledger_client`` splits to it)

DEFAULTS: dict[str, int] = {
    # connections
    "max_clients": 1024,  # client connections in all (also bounded by the open-file limit)
    "max_clients_per_source": 64,  # client connections from one source address
    "handshake_ms": 5000,  # from accept to the first whole frame
    "client_idle_ms": 120_000,  # a client connection that sends nothing this long is closed
    "frame_ms": 10_000,  # a frame whose header arrived must be whole within this
    # frames and buffers
    "max_client_frame": MAX_CLIENT_FRAME,  # one frame from a client (a replica's: 8 MiB)
    "read_budget": 64 * MIB,  # client frames being received, all connections together
    "read_budget_per_source": 16 * MIB,  # the same, per source address
    "max_client_backlog": 4 * MIB,  # replies queued to a client that does not read them
    "max_link_bytes": 32 * MIB,  # frames queued for one peer while its link is slow or down
    # tables
    "max_waiters": 200_000,  # transactions awaited by clients, in all
    "max_waiters_per_client": 10_000,  # transactions one client connection may await
    "fetch_per_s": 20,  # state-transfer requests served per peer per second (burst: 2 s worth)
    "max_fetch_backlog": 8 * MIB,  # no answer is built while this much waits for that peer
}
RANGES: dict[str, tuple[int, int]] = {
    "max_clients": (1, 1_000_000),
    "max_clients_per_source": (1, 1_000_000),
    "handshake_ms": (10, 600_000),
    "client_idle_ms": (100, 86_400_000),
    "frame_ms": (10, 600_000),
    "max_client_frame": (MAX_CLIENT_FRAME, 8 * MIB),  # never below what clients send
    "read_budget": (1 * MIB, 1 << 40),
    "read_budget_per_source": (1 * MIB, 1 << 40),
    "max_client_backlog": (64 * KIB, 1 << 40),
    "max_link_bytes": (8 * MIB, 1 << 40),
    "max_waiters": (1, 10_000_000),
    "max_waiters_per_client": (1, 10_000_000),
    "fetch_per_s": (1, 100_000),
    "max_fetch_backlog": (1 * MIB, 1 << 40),
}
# descriptors a replica keeps for itself whatever its connection limits: the store (database,
# WAL, shared memory, journal), stdio and logs, the event loop's own, and some slack
RESERVED_FDS = 64
HANDSHAKE_SLOTS = (16, 256)  # bounds of the connections in their handshake at once
LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_clients: int
    max_clients_per_source: int
    handshake_ms: int
    client_idle_ms: int
    frame_ms: int
    max_client_frame: int
    read_budget: int
    read_budget_per_source: int
    max_client_backlog: int
    max_link_bytes: int
    max_waiters: int
    max_waiters_per_client: int
    fetch_per_s: int
    max_fetch_backlog: int

    @classmethod
    def from_dict(cls, given: Mapping[str, int] | None = None) -> Limits:
        """Defaults, overridden by ``given`` (already validated by the cluster file's parser)."""
        values = dict(DEFAULTS, **(given or {}))
        return cls(**{f.name: values[f.name] for f in fields(cls)})


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(hard if soft == resource.RLIM_INFINITY else soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return int(soft)
    return int(hard)


def peer_slots(n: int) -> int:
    """Descriptors for peers: up to two inbound links per peer (a reconnect overlaps the old
    one), one outbound, and one to spare."""
    return 4 * n


def handshake_slots(nofile: int) -> int:
    """Connections that may be in their handshake at once: an eighth of the descriptors."""
    return max(HANDSHAKE_SLOTS[0], min(HANDSHAKE_SLOTS[1], nofile // 8))


def client_slots(limits: Limits, nofile: int, n: int) -> int:
    """Client connections this replica accepts: the configured cap, but never so many that its
    peers' links, its handshakes and its store would find no descriptor."""
    spare = nofile - RESERVED_FDS - peer_slots(n) - handshake_slots(nofile)
    return max(1, min(limits.max_clients, spare))


class Counters(Counter[str]):
    """Named event counts (rejected frames, dropped connections, reconnects) for ``status``."""


@dataclass(eq=False)
class Incidents:
    """Counts what went wrong, by cause, and logs each cause at most once a minute (with how
    often it happened since), never a traceback per connection. (The standard library's
    logging has no rate limit; a filter could drop lines but not count them for ``status``.)"""

    counters: Any
    log: logging.Logger
    clock: Callable[[], float] = time.monotonic
    every_s: float = LOG_EVERY_S
    _last: dict[str, float] = field(default_factory=dict, init=False)  # cause -> last logged
    _since: dict[str, int] = field(default_factory=dict, init=False)  # cause -> unlogged since

    def __call__(self, cause: str, detail: str = "") -> None:
        self.counters[cause] += 1
        now = self.clock()
        last = self._last.get(cause)
        if last is not None and now - last < self.every_s:
            self._since[cause] = self._since.get(cause, 0) + 1
            return
        more = self._since.pop(cause, 0)
        self._last[cause] = now
        suffix = f" ({more} more since the last report)" if more else ""
        self.log.warning("%s%s%s", cause, f": {detail}" if detail else "", suffix)
