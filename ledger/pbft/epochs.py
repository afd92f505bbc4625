"""Epochs: which replica set orders which sequence numbers, after reconfigurations.

A reconfiguration is a new replica set a quorum of members approved on chain (the contract's
``quorum`` action ``replicas``, read through ``Executor.reconfigurations``). Executed in block
``s``, it takes effect after block ``E = effective_height(s, ...)``: the first checkpoint height
at least ``max_ahead`` above ``s`` (and above the previous change's). Sequence numbers up to
``E`` are ordered by the old set, those above by the new one; every correct replica switches
when it executes block ``E``, so all switch at the same point of the chain (see README.md,
"Reconfiguration", for why ``max_ahead`` makes this safe).

Ids are identities: a replica keeps its id and key across epochs, a removed replica's id is
never given to another, a new replica takes an id above every id used before. A change that
breaks these rules is ignored by every replica alike (deterministic, counted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.contract.api import MAX_REPLICA_ID
from ledger.pbft.config import PbftConfig, PbftConfigError, ReplicaInfo
from ledger.pbft.messages import NewView, ViewChange
from ledger.pbft.signing import Keyring

# What the executor reports: (height of the block that executed the change, the new replicas as
# the contract recorded them: [{"id", "host", "port", "public_key" (64 hex)}, ...]).
Change = tuple[int, Sequence[Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class Epoch:
    number: int
    start: int  # the epoch orders sequence numbers start+1, start+2, ...
    config: PbftConfig
    keyring: Keyring
    members: frozenset[int]

    @classmethod
    def of(cls, number: int, start: int, config: PbftConfig) -> Epoch:
        return cls(number, start, config, Keyring.of(config.replicas), config.ids)


def effective_height(height: int, previous_start: int, config: PbftConfig) -> int:
    """The last sequence number the old set orders after a change executed at ``height``:
    the first checkpoint height at least the voting bound above it (a correct replica votes
    only within ``max_ahead`` of its execution, a primary proposes within ``max_inflight``)."""
    base = max(height, previous_start) + max(config.max_ahead, config.max_inflight)
    k = config.checkpoint_interval
    return -(-base // k) * k


def parse_replicas(raw: Any) -> tuple[ReplicaInfo, ...]:
    """A change's replica list as ``ReplicaInfo``s; ``PbftConfigError`` names what is wrong."""
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise PbftConfigError("replicas: must be a list")
    out = []
    for n, item in enumerate(raw):
        if not isinstance(item, Mapping) or set(item) != {"id", "host", "port", "public_key"}:
            raise PbftConfigError(f"replicas[{n}]: must be {{id, host, port, public_key}}")
        rid, host, port, key = item["id"], item["host"], item["port"], item["public_key"]
        if type(rid) is not int or type(port) is not int or not 0 < port < 65536:
            raise PbftConfigError(f"replicas[{n}]: id and port must be integers")
        if not isinstance(host, str) or not host or not isinstance(key, str) or len(key) != 64:
            raise PbftConfigError(f"replicas[{n}]: host and public_key (64 hex) needed")
        try:
            raw_key = bytes.fromhex(key)
        except ValueError as exc:
            raise PbftConfigError(f"replicas[{n}].public_key: not hex") from exc
        out.append(ReplicaInfo(rid, host, port, raw_key))
    return tuple(out)


class Epochs:
    """The epochs this replica knows, oldest first (epoch 0: the cluster file's set)."""

    def __init__(self, config: PbftConfig) -> None:
        self.all: list[Epoch] = [Epoch.of(0, 0, config)]
        self.seen = 0  # changes taken from the executor (valid or not)
        self.ignored = 0
        self.max_id = max(config.ids)

    @property
    def last(self) -> Epoch:
        return self.all[-1]

    def at(self, seq: int) -> Epoch:
        """The epoch that orders sequence number ``seq``."""
        for epoch in reversed(self.all):
            if epoch.start < seq:
                return epoch
        return self.all[0]

    def after(self, epoch: Epoch) -> Epoch | None:
        return self.all[epoch.number + 1] if epoch.number + 1 < len(self.all) else None

    def learn(self, changes: Sequence[Change]) -> list[Epoch]:
        """Take the changes not seen yet; returns the epochs they start (invalid ones skipped)."""
        new: list[Epoch] = []
        for height, raw in changes[self.seen :]:
            self.seen += 1
            epoch = self._check(height, raw)
            if epoch is None:
                self.ignored += 1
                continue
            self.all.append(epoch)
            self.max_id = max(self.max_id, *epoch.members)
            new.append(epoch)
        return new

    def _check(self, height: int, raw: Any) -> Epoch | None:
        last = self.last
        try:
            replicas = parse_replicas(raw)
            config = last.config.with_replicas(replicas)
        except (PbftConfigError, ValueError):
            return None
        before = {r.id: r for r in last.config.replicas}
        for r in replicas:
            old = before.get(r.id)
            if old is not None and old.public_key != r.public_key:
                return None  # a replica keeps its key; a new key is a new replica
            if old is None and not self.max_id < r.id <= MAX_REPLICA_ID:
                return None  # a removed replica's id is never reused
        if config.ids == last.members and all(before[r.id] == r for r in replicas):
            return None  # nothing changes
        start = effective_height(height, last.start, last.config)
        return Epoch.of(len(self.all), start, config)

    def live_peers(self, me: int, stable_seq: int, current: Epoch) -> dict[int, ReplicaInfo]:
        """The replicas this one talks to: the current epoch's, those of epochs it knows are
        coming (a joining replica fetches the chain before it votes), and the previous epoch's
        until a checkpoint of the current one is stable (they sign the checkpoint at its start
        and serve its blocks)."""
        peers: dict[int, ReplicaInfo] = {}
        chosen = [e for e in self.all if e.number >= current.number]
        if current.number > 0 and stable_seq < current.start:
            chosen.append(self.all[current.number - 1])
        for epoch in chosen:
            for r in epoch.config.replicas:
                if r.id != me:
                    peers.setdefault(r.id, r)
        return peers


class NextEpochViews:
    """The next epoch's VIEW-CHANGEs (the latest of each replica) and NEW-VIEW (of the highest
    view) that reach a replica before it switches, held until it does. The others switch a
    little earlier and begin the epoch with a view change at once; dropped, those messages
    were not sent again, and the NEW-VIEW (naming them by reference) came incomplete."""

    def __init__(self) -> None:
        self.view_changes: dict[int, ViewChange] = {}
        self.new_view: NewView | None = None

    def hold(self, msg: ViewChange | NewView, epoch: int, peers: Mapping[int, Any]) -> bool:
        """Held if of epoch ``epoch + 1`` and from one of ``peers`` (bounded: one each)."""
        if msg.epoch != epoch + 1 or msg.replica not in peers:
            return False
        if isinstance(msg, NewView):
            if self.new_view is None or msg.view > self.new_view.view:
                self.new_view = msg
            return True
        known = self.view_changes.get(msg.replica)
        if known is None or msg.view > known.view:
            self.view_changes[msg.replica] = msg
        return True

    def take(self, epoch: int) -> list[ViewChange | NewView]:
        """What is held for ``epoch``, view-changes first; the rest is dropped."""
        out: list[ViewChange | NewView] = [
            vc for vc in self.view_changes.values() if vc.epoch == epoch
        ]
        if self.new_view is not None and self.new_view.epoch == epoch:
            out.append(self.new_view)
        self.view_changes, self.new_view = {}, None
        return out
