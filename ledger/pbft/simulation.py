"""A deterministic in-process network of replicas: for the core's tests and for measuring it.

Messages travel through a priority queue ordered by delivery time on a simulated clock; a seeded
random generator decides drops, delays and duplicates; partitions and crashes are sets. With
``wire=True`` every message goes through ``to_wire`` -> canonical bytes -> ``decode`` -> parse,
exactly the path it takes between processes. No wall clock, no threads, no sockets.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.encoding import canonical, decode
from ledger.pbft.actions import Action, BlockReplies, Broadcast, ReplyTo, Send
from ledger.pbft.config import PbftConfig, ReplicaInfo
from ledger.pbft.memory import MemoryExecutor
from ledger.pbft.messages import Message, Reply
from ledger.pbft.replica import Replica
from ledger.tx import SignedTx, public_bytes, sign_tx


def replica_key(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)


def client_key(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([200 - i]) * 32)


def make_config(n: int, **tuning: Any) -> PbftConfig:
    replicas = tuple(
        ReplicaInfo(i, "127.0.0.1", 7100 + i, public_bytes(replica_key(i).public_key()))
        for i in range(n)
    )
    return PbftConfig(replicas=replicas, **tuning)


@dataclass
class Network:
    config: PbftConfig
    seed: int = 0
    wire: bool = True
    drop: float = 0.0
    duplicate: float = 0.0
    delay: tuple[int, int] = (1, 3)
    # bytes per ms each directed link carries (0: unlimited); a message waits for those sent
    # before it on the same link, then takes len(bytes) / rate to send, then the delay
    rate: int = 0
    tick_ms: int = 5
    # replica id -> the class it runs instead of ``Replica`` (a faulty one, from the tests)
    faults: dict[int, type[Replica]] = field(default_factory=dict)
    now: int = 0
    replicas: list[Replica] = field(init=False)
    executors: list[MemoryExecutor] = field(init=False)
    crashed: set[int] = field(default_factory=set)
    cut: set[frozenset[int]] = field(default_factory=set)  # blocked links {a, b}
    replies: dict[str, dict[int, Reply]] = field(default_factory=dict)
    sent: int = 0
    tamper: Callable[[int, int, dict[str, Any]], dict[str, Any] | None] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._queue: list[tuple[int, int, int, int, Any]] = []
        self._counter = 0
        self._link_free: dict[tuple[int, int], int] = {}  # when each link has sent its queue
        self.executors = [MemoryExecutor() for _ in range(self.config.n)]
        self.replicas = [self._boot(i) for i in range(self.config.n)]
        self._next_tick = 0

    def _boot(self, i: int) -> Replica:
        core = self.faults.get(i, Replica)
        return core(self.config, i, replica_key(i), self.executors[i], now_ms=self.now)

    # -- faults
    def crash(self, i: int) -> None:
        self.crashed.add(i)

    def restart(self, i: int, *, lose_state: bool = False) -> None:
        """Bring ``i`` back with a fresh core over its executor (or an empty one)."""
        self.crashed.discard(i)
        if lose_state:
            self.executors[i] = MemoryExecutor()
        self.replicas[i] = self._boot(i)

    def add_replica(self) -> int:
        """Boot a new replica (the next id, never used before) over an empty executor: it is
        in no epoch yet, and joins once a reconfiguration names it (state transfer first)."""
        i = len(self.replicas)
        self.executors.append(MemoryExecutor())
        self.replicas.append(self._boot(i))
        return i

    def partition(self, group: Iterable[int]) -> None:
        inside = set(group)
        for a in inside:
            for b in range(len(self.replicas)):
                if b not in inside:
                    self.cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self.cut.clear()

    # -- traffic
    def _post(self, src: int, dst: int, msg: Message | dict[str, Any]) -> None:
        if dst >= len(self.replicas) or dst in self.crashed or frozenset((src, dst)) in self.cut:
            return
        if self.drop and self.rng.random() < self.drop:
            return
        payload: Any = msg
        if self.wire or self.tamper is not None:
            data: dict[str, Any] | None = msg if isinstance(msg, dict) else msg.to_wire()
            if self.tamper is not None and data is not None:
                data = self.tamper(src, dst, data)
            if data is None:
                return
            payload = canonical(data)
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        sent_at = self.now
        if self.rate and isinstance(payload, bytes):
            start = max(self.now, self._link_free.get((src, dst), 0))
            sent_at = start + -(-len(payload) // self.rate)
            self._link_free[(src, dst)] = sent_at
        for _ in range(copies):
            self._counter += 1
            at = sent_at + self.rng.randint(*self.delay)
            heapq.heappush(self._queue, (at, self._counter, src, dst, payload))
        self.sent += 1

    def _perform(self, src: int, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._post(src, action.to, action.msg)
            elif isinstance(action, Broadcast):
                for dst in self.replicas[src].peers():
                    self._post(src, dst, action.msg)
            elif isinstance(action, ReplyTo | BlockReplies):
                for one in action.replies() if isinstance(action, BlockReplies) else (action,):
                    self.replies.setdefault(one.tx_id, {})[one.reply.replica] = one.reply

    def inject(self, dst: int, msg: Message | dict[str, Any], sender: int) -> list[Action]:
        """Hand ``msg`` to replica ``dst`` now as if from ``sender``; its actions go out."""
        actions = self.replicas[dst].on_message(msg, sender, self.now)
        self._perform(dst, actions)
        return actions

    def report_unreachable(self, i: int, peer: int) -> None:
        """What the IO layer does when replica ``i``'s link to ``peer`` stays down."""
        self._perform(i, self.replicas[i].on_peer_unreachable(peer, self.now))

    def submit(
        self,
        tx: SignedTx,
        to: Iterable[int] | None = None,
        *,
        verified: bool = False,
        tx_id: str | None = None,
    ) -> None:
        targets = [self.newest().cfg.primary(self.view_hint())] if to is None else list(to)
        for i in targets:
            if i not in self.crashed:
                actions = self.replicas[i].on_request(tx, self.now, verified=verified, tx_id=tx_id)
                self._perform(i, actions)

    def submit_all(
        self, txs: Iterable[SignedTx], to: Iterable[int] | None = None, **how: Any
    ) -> None:
        """``submit`` each of ``txs`` (to the same replicas, ``to`` taken once)."""
        targets = None if to is None else list(to)
        for tx in txs:
            self.submit(tx, targets, **how)

    def resend_uncommitted(self, txs: Iterable[SignedTx]) -> None:
        """What a client does on its timeout: every one of ``txs`` it has not seen committed
        goes again, to every replica."""
        self.submit_all(
            (tx for tx in txs if not self.committed(tx.tx_id)), range(len(self.replicas))
        )

    def all_committed(self, txs: Iterable[SignedTx]) -> bool:
        """The client saw every one of ``txs`` committed (see ``committed``)."""
        return all(self.committed(tx.tx_id) for tx in txs)

    def view_hint(self) -> int:
        views = [r.view for i, r in enumerate(self.replicas) if i not in self.crashed]
        return max(set(views), key=views.count)

    def newest(self) -> Replica:
        """A running replica in the newest epoch any has entered (what a client learns)."""
        live = [r for i, r in enumerate(self.replicas) if i not in self.crashed]
        return max(live, key=lambda r: r.epoch.number)

    def run(self, duration_ms: int) -> None:
        end = self.now + duration_ms
        while self.now <= end:
            while self._queue and self._queue[0][0] <= self.now:
                _, _, src, dst, payload = heapq.heappop(self._queue)
                if dst in self.crashed or frozenset((src, dst)) in self.cut:
                    continue
                msg = decode(payload) if isinstance(payload, bytes) else payload
                self._perform(dst, self.replicas[dst].on_message(msg, src, self.now))
            if self.now >= self._next_tick:
                self._next_tick = self.now + self.tick_ms
                for i, replica in enumerate(self.replicas):
                    if i not in self.crashed:
                        self._perform(i, replica.on_tick(self.now))
            nxt = self._queue[0][0] if self._queue else end + 1
            self.now = max(self.now + 1, min(nxt, self._next_tick))
        self.now = end

    # -- observations
    def committed(self, tx_id: str) -> bool:
        """The client's view: f+1 replicas sent matching replies."""
        replies = self.replies.get(tx_id, {})
        counts: dict[tuple[int, str], int] = {}
        for r in replies.values():
            key = (r.height, canonical(dict(r.receipt)).decode())
            counts[key] = counts.get(key, 0) + 1
        return any(c >= self.newest().cfg.f + 1 for c in counts.values())

    def correct(self) -> list[int]:
        return [
            i for i in range(len(self.replicas)) if i not in self.crashed and i not in self.faults
        ]


def prepared_nowhere_committed(**tuning: Any) -> tuple[Network, list[SignedTx]]:
    """Four replicas whose first batch (five transactions) is prepared at every replica and
    committed at none, as every COMMIT of view 0 is lost; ``net.tamper = None`` lets them
    through again."""

    def drop_commits(src: int, dst: int, wire: dict[str, Any]) -> dict[str, Any] | None:
        return None if wire["t"] == "commit" and wire["v"] == 0 else wire

    net = Network(make_config(4, **tuning), tamper=drop_commits)
    txs = make_txs(5)
    for tx in txs:
        net.submit(tx)
    net.run(50)
    assert all(r.log.slots[1].prepared and not r.log.slots[1].committed for r in net.replicas)
    return net, txs


def make_txs(count: int, *, client: int = 0, start: int = 0, key: str = "k") -> list[SignedTx]:
    signer = client_key(client)
    return [sign_tx(signer, "kv.add", {"key": key, "by": 1}, start + i) for i in range(count)]


def divergence(net: Network, replicas: Iterable[int] | None = None) -> list[str]:
    """Safety check: two of ``replicas`` (default: the correct ones) holding different blocks
    at the same height, or a broken hash chain. Empty when they agree."""
    ids = list(net.correct() if replicas is None else replicas)
    problems: list[str] = []
    for i in ids:
        prev = net.executors[i].genesis_hash
        for block in net.executors[i].blocks:
            if block.prev_hash != prev:
                problems.append(f"replica {i}: chain broken at {block.height}")
            prev = block.hash()
    height = max((len(net.executors[i].hashes) for i in ids), default=0)
    for h in range(height):
        seen = {net.executors[i].hashes[h] for i in ids if len(net.executors[i].hashes) > h}
        if len(seen) > 1:
            problems.append(f"height {h + 1}: {len(seen)} different blocks")
    return problems


def executed_tx_ids(executor: MemoryExecutor) -> set[str]:
    return set(executor.receipts)
