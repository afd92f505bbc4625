"""The cluster file (``cluster.json``): who the replicas are and how they are tuned.

It is the one place for a cluster's addresses, public keys, fault bound, timers, batch settings
and genesis. ``load_cluster`` validates it once, at start, and every error names the key that is
wrong (``replicas[2].port: ...``), so a broken file never gets half-way into a running replica.

Shape::

    {"version": 1, "f": 1,
     "replicas": [{"id": 0, "host": "127.0.0.1", "port": 7100, "public_key": "<hex>"}, ...],
     "timers": {"view_change_ms": 1000, "max_view_change_ms": 60000, "status_ms": 500,
                "request_timeout_ms": 2000, "tick_ms": 20, "min_view_change_ms": 200},
     "batch": {"max_txs": 400, "max_delay_ms": 5},
     "checkpoint_interval": 64, "log_window": 256, "fetch_limit": 64,

     "limits": {"max_clients": 1024, ...},
     "genesis": {...}}

``timers``, ``batch``, ``checkpoint_interval``, ``log_window`` and ``fetch_limit`` are read by the
consensus core (``ledger.pbft.PbftConfig.from_dict``); ``request_timeout_ms`` (when a client
re-sends to every replica) and ``tick_ms`` (how often a replica's timers are driven) by the IO
layer, as is the optional ``limits`` (connections, frames, buffers, tables: ``ledger.limits``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.contract.api import MAX_REPLICAS
from ledger.fields import read_document
from ledger.keys import KeyFileError, parse_public_hex
from ledger.limits import DEFAULTS as DEFAULT_LIMITS
from ledger.limits import RANGES as LIMIT_RANGES
from ledger.pbft.config import ReplicaInfo

VERSION = 1
CLUSTER_FILE = "cluster.json"
OPERATOR_KEY_FILE = "operator.key"

DEFAULT_TIMERS: dict[str, int] = {
    "view_change_ms": 1000,
    "max_view_change_ms": 60_000,
    "status_ms": 500,
    "request_timeout_ms": 2000,
    "tick_ms": 20,
}
DEFAULT_BATCH: dict[str, int] = {"max_txs": 400, "max_delay_ms": 5}
DEFAULT_CHECKPOINT_INTERVAL = 64
TIMER_LIMITS: dict[str, tuple[int, int]] = {
    "view_change_ms": (10, 600_000),
    "max_view_change_ms": (10, 3_600_000),
    "min_view_change_ms": (0, 600_000),  # optional: the adaptive timeout's floor (0: off)
    "status_ms": (1, 600_000),
    "request_timeout_ms": (10, 600_000),
    "tick_ms": (1, 10_000),
}
BATCH_LIMITS: dict[str, tuple[int, int]] = {"max_txs": (1, 10_000), "max_delay_ms": (0, 10_000)}


class ClusterFileError(ValueError):
    """A cluster file that cannot be used; the message names the offending key."""


def replica_key_file(replica_id: int) -> str:
    return f"replica-{replica_id}.key"


def replica_db_file(replica_id: int) -> str:
    return f"replica-{replica_id}.sqlite"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    f: int
    replicas: tuple[ReplicaInfo, ...]
    timers: Mapping[str, int]
    batch: Mapping[str, int]
    checkpoint_interval: int
    genesis: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    @property
    def n(self) -> int:
        return len(self.replicas)

    def replica(self, replica_id: int) -> ReplicaInfo:
        if not 0 <= replica_id < self.n:
            raise ClusterFileError(f"replica {replica_id} is not in the cluster (0..{self.n - 1})")
        return self.replicas[replica_id]


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClusterFileError(f"{where}: must be an integer")
    if not lo <= value <= hi:
        raise ClusterFileError(f"{where}: must be between {lo} and {hi}, got {value}")
    return value


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClusterFileError(f"{where}: must be an object")
    return value


def _settings(
    value: Any, where: str, defaults: Mapping[str, int], limits: Mapping[str, tuple[int, int]]
) -> dict[str, int]:
    given = _obj(value, where)
    unknown = sorted(set(given) - set(limits))
    if unknown:
        raise ClusterFileError(f"{where}.{unknown[0]}: unknown setting")
    out = dict(defaults)
    for key, (lo, hi) in limits.items():
        if key in given:
            out[key] = _int(given[key], f"{where}.{key}", lo, hi)
    return out


def _replica(value: Any, index: int) -> ReplicaInfo:
    where = f"replicas[{index}]"
    item = _obj(value, where)
    for key in ("id", "host", "port", "public_key"):
        if key not in item:
            raise ClusterFileError(f"{where}.{key}: missing")
    unknown = sorted(set(item) - {"id", "host", "port", "public_key"})
    if unknown:
        raise ClusterFileError(f"{where}.{unknown[0]}: unknown field")
    rid = _int(item["id"], f"{where}.id", 0, MAX_REPLICAS - 1)
    if rid != index:
        raise ClusterFileError(f"{where}.id: must equal its position {index}, got {rid}")
    host = item["host"]
    if not isinstance(host, str):
        raise ClusterFileError(f"{where}.host: must be an IP address string")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ClusterFileError(f"{where}.host: not an IP address: {host!r}") from exc
    port = _int(item["port"], f"{where}.port", 1, 65535)
    try:
        parse_public_hex(item["public_key"], f"{where}.public_key")
    except KeyFileError as exc:
        raise ClusterFileError(str(exc)) from exc
    return ReplicaInfo(id=rid, host=host, port=port, public_key=bytes.fromhex(item["public_key"]))


def parse_cluster(data: Any) -> ClusterConfig:
    top = _obj(data, "cluster")
    for key in ("version", "f", "replicas", "genesis"):
        if key not in top:
            raise ClusterFileError(f"{key}: missing")
    allowed = {
        "version",
        "f",
        "replicas",
        "timers",
        "batch",
        "checkpoint_interval",
        "log_window",
        "fetch_limit",
        "genesis",
        "limits",
    }
    unknown = sorted(set(top) - allowed)
    if unknown:
        raise ClusterFileError(f"{unknown[0]}: unknown key")
    if top["version"] != VERSION or isinstance(top["version"], bool):
        raise ClusterFileError(f"version: must be {VERSION}")
    f = _int(top["f"], "f", 1, (MAX_REPLICAS - 1) // 3)
    reps = top["replicas"]
    if not isinstance(reps, list):
        raise ClusterFileError("replicas: must be a list")
    if len(reps) != 3 * f + 1:
        raise ClusterFileError(
            f"replicas: f={f} needs exactly {3 * f + 1} replicas, got {len(reps)}"
        )
    replicas = tuple(_replica(item, i) for i, item in enumerate(reps))
    seen_addr: set[tuple[str, int]] = set()
    seen_key: set[bytes] = set()
    for r in replicas:
        if (r.host, r.port) in seen_addr:
            raise ClusterFileError(f"replicas[{r.id}].port: address {r.host}:{r.port} used twice")
        if r.public_key in seen_key:
            raise ClusterFileError(f"replicas[{r.id}].public_key: used twice")
        seen_addr.add((r.host, r.port))
        seen_key.add(r.public_key)
    timers = _settings(top.get("timers", {}), "timers", DEFAULT_TIMERS, TIMER_LIMITS)
    batch = _settings(top.get("batch", {}), "batch", DEFAULT_BATCH, BATCH_LIMITS)
    limits = _settings(top.get("limits", {}), "limits", DEFAULT_LIMITS, LIMIT_RANGES)
    interval = _int(
        top.get("checkpoint_interval", DEFAULT_CHECKPOINT_INTERVAL),
        "checkpoint_interval",
        1,
        1 << 20,
    )
    log_window = _int(top.get("log_window", 4 * interval), "log_window", 2 * interval, 1 << 22)
    if log_window % interval:
        raise ClusterFileError("log_window: must be a multiple of checkpoint_interval")
    _int(top.get("fetch_limit", 64), "fetch_limit", 1, 10_000)
    if timers["view_change_ms"] > timers["max_view_change_ms"]:
        raise ClusterFileError("timers.view_change_ms: must not exceed timers.max_view_change_ms")
    if timers.get("min_view_change_ms", 0) > timers["view_change_ms"]:
        raise ClusterFileError("timers.min_view_change_ms: must not exceed timers.view_change_ms")
    genesis = _obj(top["genesis"], "genesis")
    return ClusterConfig(
        f=f,
        replicas=replicas,
        timers=timers,
        batch=batch,
        checkpoint_interval=interval,
        genesis=genesis,
        raw=top,
        limits=limits,
    )


def load_cluster(path: Path) -> ClusterConfig:
    data = read_document(path, json.loads, ClusterFileError, syntax="not JSON", what="cluster file")
    return parse_cluster(data)


def cluster_document(
    public_keys: list[str],
    ports: list[int],
    genesis: Mapping[str, Any],
    *,
    host: str | list[str] = "127.0.0.1",
    timers: Mapping[str, int] | None = None,
    batch: Mapping[str, int] | None = None,
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
) -> dict[str, Any]:
    """The JSON document of a new cluster (validated by ``parse_cluster`` before it is returned).
    ``host``: one address for every replica, or one per replica (replicas on separate hosts)."""
    n = len(public_keys)
    hosts = [host] * n if isinstance(host, str) else list(host)
    if len(hosts) != n:
        raise ClusterFileError(f"replicas: {n} replicas but {len(hosts)} hosts")
    doc: dict[str, Any] = {
        "version": VERSION,
        "f": (n - 1) // 3,
        "replicas": [
            {"id": i, "host": hosts[i], "port": ports[i], "public_key": public_keys[i]}
            for i in range(n)
        ],
        "timers": dict(DEFAULT_TIMERS, **(timers or {})),
        "batch": dict(DEFAULT_BATCH, **(batch or {})),
        "checkpoint_interval": checkpoint_interval,
        "genesis": dict(genesis),
    }
    parse_cluster(doc)
    return doc
