"""Who the replicas are and how the protocol is tuned: validated once, errors name the key.

``PbftConfig.from_dict`` reads the cluster file's JSON (the same shape ``ledger.cluster`` loads:
``replicas``, optional ``f``, ``timers``, ``batch``, ``checkpoint_interval``, ``log_window``) and
ignores keys that are not about consensus (``version``, ``genesis``, ...), which other layers own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.contract.api import MAX_REPLICA_ID, MAX_REPLICAS, MIN_REPLICAS


class PbftConfigError(ValueError):
    """A consensus configuration that cannot be used; the message names the bad key."""


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    id: int
    host: str
    port: int
    public_key: bytes  # raw 32-byte Ed25519 public key


@dataclass(frozen=True, slots=True)
class PbftConfig:
    replicas: tuple[ReplicaInfo, ...]
    checkpoint_interval: int = 64  # K: a checkpoint every K sequence numbers
    log_window: int = 256  # L: high watermark = low watermark + L (a multiple of K)
    batch_max: int = 400  # most transactions in one pre-prepare
    batch_delay_ms: int = 5  # longest wait of the oldest queued request before a batch is cut
    # Bounds that keep every consensus message well inside a frame (ledger.framing.MAX_FRAME,
    # 8 MiB) and a faulty peer from filling a replica's memory: the bytes of one batch
    # (block.batch_bytes), how many sequence numbers a primary runs ahead of what it executed,
    # and how far ahead of its own execution a backup takes a pre-prepare (a backup further
    # behind catches up by state transfer).
    batch_max_bytes: int = 1024 * 1024
    max_inflight: int = 8
    max_ahead: int = 32
    view_change_timeout_ms: int = 1000  # first timeout; doubles on each failed view change
    # Lower bound of the adaptive timeout (viewchange.py): where the waits a replica observes
    # before progress are short, its timeout shrinks towards this, never below it and never
    # above view_change_timeout_ms. 0: not adaptive (the timeout is view_change_timeout_ms).
    min_view_change_timeout_ms: int = 0
    max_view_change_timeout_ms: int = 60_000
    status_interval_ms: int = 500  # period of status gossip (catch-up of lagging replicas)
    # A batch stamped further ahead of a backup's clock is refused (the primary is replaced):
    # blocks carry the contract's only clock, and one far-future stamp would pin it there,
    # since every later primary stamps max(last stamp, now).
    max_clock_skew_ms: int = 60_000
    fetch_limit: int = 64  # most blocks in one state-transfer answer
    fault_bound: int = 0  # f; 0 means (n - 1) // 3

    def __post_init__(self) -> None:
        n = len(self.replicas)
        if n < MIN_REPLICAS:
            raise PbftConfigError(f"replicas: need at least 4 replicas (3f+1 with f >= 1), got {n}")
        if n > MAX_REPLICAS:
            raise PbftConfigError(f"replicas: at most {MAX_REPLICAS} replicas")
        for index, info in enumerate(self.replicas):
            # ids are a replica's identity for good: after a reconfiguration (epochs.py) a removed
            # replica leaves a hole and a new one takes an id never used before
            previous = self.replicas[index - 1].id if index else -1
            if not previous < info.id <= MAX_REPLICA_ID:
                raise PbftConfigError(
                    f"replicas[{index}].id: ids must increase, each in 0..{MAX_REPLICA_ID}"
                )
            if len(info.public_key) != 32:
                raise PbftConfigError(f"replicas[{index}].public_key: must be 32 bytes")
        if len({info.public_key for info in self.replicas}) != n:
            raise PbftConfigError("replicas: public keys must be distinct")
        if self.fault_bound and 3 * self.fault_bound + 1 > n:
            raise PbftConfigError(
                f"f: {self.fault_bound} needs at least {3 * self.fault_bound + 1} replicas"
            )
        if self.checkpoint_interval < 1:
            raise PbftConfigError("checkpoint_interval: must be >= 1")
        if (
            self.log_window < 2 * self.checkpoint_interval
            or self.log_window % self.checkpoint_interval
        ):
            raise PbftConfigError(
                "log_window: must be a multiple of checkpoint_interval, at least 2x"
            )
        if self.batch_max < 1:
            raise PbftConfigError("batch.max_txs: must be >= 1")
        if self.batch_delay_ms < 0:
            raise PbftConfigError("batch.max_delay_ms: must be >= 0")
        if not 1 <= self.view_change_timeout_ms <= self.max_view_change_timeout_ms:
            raise PbftConfigError("timers.view_change_ms: must be in [1, max_view_change_ms]")
        if not 0 <= self.min_view_change_timeout_ms <= self.view_change_timeout_ms:
            raise PbftConfigError("timers.min_view_change_ms: must be in [0, view_change_ms]")
        if self.status_interval_ms < 1:
            raise PbftConfigError("timers.status_ms: must be >= 1")
        if self.fetch_limit < 1:
            raise PbftConfigError("fetch_limit: must be >= 1")
        for info in self.replicas:
            try:
                Ed25519PublicKey.from_public_bytes(info.public_key)
            except ValueError as exc:
                raise PbftConfigError(f"replicas[{info.id}].public_key: {exc}") from exc

    @property
    def n(self) -> int:
        return len(self.replicas)

    @property
    def f(self) -> int:
        return self.fault_bound or (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """Size of a quorum: any two intersect in at least one correct replica (2f+1 for 3f+1)."""
        return (self.n + self.f + 2) // 2

    @property
    def weak(self) -> int:
        """f+1: at least one of them is correct."""
        return self.f + 1

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(info.id for info in self.replicas)

    def primary(self, view: int) -> int:
        return self.replicas[view % self.n].id

    def info(self, replica: int) -> ReplicaInfo | None:
        return next((r for r in self.replicas if r.id == replica), None)

    def with_replicas(self, replicas: tuple[ReplicaInfo, ...]) -> PbftConfig:
        """The same tuning over another replica set (a reconfiguration): f follows n."""
        return replace(self, replicas=replicas, fault_bound=0)

    @classmethod
    def from_dict(cls, data: Any) -> PbftConfig:
        """Build from the cluster file's JSON; raises ``PbftConfigError`` naming the bad key."""
        if not isinstance(data, Mapping):
            raise PbftConfigError("cluster: must be an object")
        replicas_raw = data.get("replicas")
        if not isinstance(replicas_raw, list) or not replicas_raw:
            raise PbftConfigError("replicas: must be a non-empty list")
        replicas = tuple(_replica(i, r) for i, r in enumerate(replicas_raw))
        for index, info in enumerate(replicas):
            if info.id != index:  # the first set; reconfigurations may leave holes later
                raise PbftConfigError(f"replicas[{index}].id: the cluster file numbers them 0..n-1")
        timers = _section(data, "timers")
        batch = _section(data, "batch")
        kwargs: dict[str, Any] = {"replicas": replicas}
        for name, section, key, sect_name in (
            ("fault_bound", data, "f", ""),
            ("checkpoint_interval", data, "checkpoint_interval", ""),
            ("log_window", data, "log_window", ""),
            ("fetch_limit", data, "fetch_limit", ""),
            ("batch_max", batch, "max_txs", "batch."),
            ("batch_delay_ms", batch, "max_delay_ms", "batch."),
            ("view_change_timeout_ms", timers, "view_change_ms", "timers."),
            ("max_view_change_timeout_ms", timers, "max_view_change_ms", "timers."),
            ("min_view_change_timeout_ms", timers, "min_view_change_ms", "timers."),
            ("status_interval_ms", timers, "status_ms", "timers."),
        ):
            if key in section:
                kwargs[name] = _int(section[key], sect_name + key)
        if "fault_bound" in kwargs and kwargs["fault_bound"] < 1:
            raise PbftConfigError("f: must be >= 1")
        if "log_window" not in kwargs and "checkpoint_interval" in kwargs:
            kwargs["log_window"] = 4 * kwargs["checkpoint_interval"]
        return cls(**kwargs)


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = data.get(key, {})
    if not isinstance(section, Mapping):
        raise PbftConfigError(f"{key}: must be an object")
    return section


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PbftConfigError(f"{key}: must be an integer")
    return value


def _replica(index: int, raw: Any) -> ReplicaInfo:
    where = f"replicas[{index}]"
    if not isinstance(raw, Mapping):
        raise PbftConfigError(f"{where}: must be an object")
    for key in ("id", "host", "port", "public_key"):
        if key not in raw:
            raise PbftConfigError(f"{where}.{key}: missing")
    rid = _int(raw["id"], f"{where}.id")
    port = _int(raw["port"], f"{where}.port")
    if not 0 < port < 65536:
        raise PbftConfigError(f"{where}.port: must be in 1..65535")
    host = raw["host"]
    if not isinstance(host, str) or not host:
        raise PbftConfigError(f"{where}.host: must be a non-empty string")
    key_hex = raw["public_key"]
    if not isinstance(key_hex, str) or len(key_hex) != 64:
        raise PbftConfigError(f"{where}.public_key: must be 64 hex characters")
    try:
        key_raw = bytes.fromhex(key_hex)
    except ValueError as exc:
        raise PbftConfigError(f"{where}.public_key: not hex") from exc
    return ReplicaInfo(id=rid, host=host, port=port, public_key=key_raw)
