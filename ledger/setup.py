"""Creating a cluster directory: replica keys, the operator key and ``cluster.json``.

Kept apart from the CLI so tests and the benchmark create clusters the same way the command does.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ledger import keys
from ledger.cluster import (
    CLUSTER_FILE,
    OPERATOR_KEY_FILE,
    cluster_document,
    replica_db_file,
    replica_key_file,
)
from ledger.contract.api import Contract

LOOPBACK = "127.0.0.1"
DEFAULT_CONTRACT = "ledger.contract:make_contract"

ContractFactory = Callable[[Mapping[str, Any]], Contract]


class SetupError(ValueError):
    """A cluster directory that cannot be created as asked."""


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Ports the kernel reports free right now (all held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def default_genesis(operator_public_hex: str) -> dict[str, Any]:
    from ledger.contract import default_genesis as contract_genesis

    return dict(contract_genesis(operator_public_hex))


def init_cluster(
    directory: Path,
    replicas: int,
    *,
    base_port: int | None = None,
    hosts: list[str] | None = None,
    ports: list[int] | None = None,
    timers: Mapping[str, int] | None = None,
    batch: Mapping[str, int] | None = None,
    checkpoint_interval: int = 64,
    genesis: Callable[[str], Mapping[str, Any]] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write keys and ``cluster.json`` into ``directory``; returns the cluster document.
    ``hosts`` and ``ports``: each replica's address (separate hosts, ``tools.hosts``); by default
    all on 127.0.0.1 at ``base_port + i`` or at free ports."""
    if replicas < 4 or (replicas - 1) % 3:
        raise SetupError(f"--replicas: must be 3f+1 with f >= 1 (4, 7, 10, ...), got {replicas}")
    if replicas > 64:
        raise SetupError("--replicas: at most 64")
    if base_port is not None and not 1024 <= base_port <= 65535 - replicas:
        raise SetupError(f"--base-port: must be between 1024 and {65535 - replicas}")
    directory.mkdir(parents=True, exist_ok=True)
    names = [CLUSTER_FILE, OPERATOR_KEY_FILE]
    names += [replica_key_file(i) for i in range(replicas)]
    names += [replica_db_file(i) for i in range(replicas)]
    existing = [name for name in names if (directory / name).exists()]
    if existing:
        raise SetupError(f"--dir: {directory} already holds {existing[0]}; use an empty directory")
    replica_keys = [keys.new_key() for _ in range(replicas)]
    operator = keys.new_key()
    operator_hex = keys.public_hex(operator)
    if genesis is None:
        genesis_doc: Mapping[str, Any] = default_genesis(operator_hex)
    elif callable(genesis):
        genesis_doc = genesis(operator_hex)
    else:
        genesis_doc = genesis
    if ports is None:
        ports = (
            [base_port + i for i in range(replicas)]
            if base_port is not None
            else free_ports(replicas)
        )
    doc = cluster_document(
        [keys.public_hex(k) for k in replica_keys],
        ports,
        genesis_doc,
        host=LOOPBACK if hosts is None else hosts,
        timers=timers,
        batch=batch,
        checkpoint_interval=checkpoint_interval,
    )
    for i, key in enumerate(replica_keys):
        keys.write_key(directory / replica_key_file(i), key)
    keys.write_key(directory / OPERATOR_KEY_FILE, operator)
    tmp = directory / (CLUSTER_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / CLUSTER_FILE)
    return doc


def load_factory(spec: str) -> ContractFactory:
    """``"module:function"`` to the contract factory it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--contract: expected MODULE:FUNCTION, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--contract: cannot import {module_name}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--contract: {module_name} has no function {attr}")
    return factory  # type: ignore[no-any-return]
