"""Creating clusters: keys made where they are used, ``cluster.json`` assembled from public keys.

Two ways, kept apart from the CLI so tests and the benchmark create clusters as the commands do:

* separate hosts (``ledger keygen`` on each, then ``ledger genesis`` anywhere): each replica's
  host makes its own key (``make_key``: the secret stays there, mode 0600; only the public key
  leaves, printed and in ``<name>.pub``), the operator makes its own likewise, and
  ``assemble_cluster`` builds ``cluster.json`` from public keys and addresses alone. No machine
  ever holds another's secret.
* one directory for local clusters and tests (``ledger init``, ``init_cluster``): every key in one
  place, so whoever holds the directory could forge a quorum. Fine on one developer's machine,
  not for a community.
"""

from __future__ import annotations

import importlib
import ipaddress
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
PUBLIC_SUFFIX = ".pub"
# What ``ledger init``'s default genesis allocates to the operator (micro-tokens): the supply of a
# local test community, handed to members by transfer. A real community sets its own genesis.
LOCAL_TREASURY = 10**15

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


def default_genesis(operator_public_hex: str, treasury: int = LOCAL_TREASURY) -> dict[str, Any]:
    from ledger.contract import default_genesis as contract_genesis

    return dict(contract_genesis(operator_public_hex, treasury=treasury))


def public_key_file(key_file: Path) -> Path:
    return key_file.with_name(key_file.name.removesuffix(".key") + PUBLIC_SUFFIX)


def make_key(key_file: Path) -> str:
    """A new key made here: the secret in ``key_file`` (mode 0600, never overwritten), the public
    key in ``<name>.pub`` beside it; returns the public key's hex, the only part that leaves."""
    if key_file.exists():
        raise SetupError(f"{key_file}: already exists; a key is never overwritten")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = keys.new_key()
    keys.write_key(key_file, key)
    public = keys.public_hex(key)
    pub = public_key_file(key_file)
    tmp = pub.with_name(pub.name + ".tmp")
    tmp.write_text(public + "\n", encoding="ascii")
    os.replace(tmp, pub)
    return public


def parse_address(text: str, where: str) -> tuple[str, int]:
    """``IP:PORT`` (``[IPv6]:PORT`` too) as (host, port); ``SetupError`` names ``where``."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise SetupError(f"{where}: expected IP:PORT, got {text!r}") from None
    if not 0 < number < 65536:
        raise SetupError(f"{where}: port {number} is not in 1..65535")
    return host, number


def read_public_key(text: str, where: str) -> str:
    """A public key given as 64 hex characters or as the path of a ``.pub`` file."""
    value = text.strip()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        try:
            value = Path(text).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SetupError(f"{where}: neither 64 hex characters nor a readable key file") from exc
    try:
        keys.parse_public_hex(value, where)
    except keys.KeyFileError as exc:
        raise SetupError(str(exc)) from None
    return value


def assemble_cluster(
    replicas: list[tuple[str, int, str]],
    genesis: Mapping[str, Any],
    *,
    timers: Mapping[str, int] | None = None,
    batch: Mapping[str, int] | None = None,
    checkpoint_interval: int = 64,
) -> dict[str, Any]:
    """``cluster.json`` from each replica's (host, port, public key) and a genesis: public
    material only. Raises ``ClusterFileError`` naming a bad key, ``GenesisError`` a bad genesis."""
    from ledger.contract import make_contract

    n = len(replicas)
    if n < 4 or (n - 1) % 3:
        raise SetupError(f"--replica: must be 3f+1 with f >= 1 (4, 7, 10, ...), got {n}")
    make_contract(genesis)  # a bad genesis is reported here, not by every replica at start
    return cluster_document(
        [key for _, _, key in replicas],
        [port for _, port, _ in replicas],
        genesis,
        host=[host for host, _, _ in replicas],
        timers=timers,
        batch=batch,
        checkpoint_interval=checkpoint_interval,
    )


def write_cluster_file(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``cluster.json`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
    write_cluster_file(directory / CLUSTER_FILE, doc)
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
