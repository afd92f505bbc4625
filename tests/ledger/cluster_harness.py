"""Real replica processes over loopback TCP for the ledger's fault tests.

Each replica is ``python -m ledger run`` in its own process (with the toy contract from
``tests.ledger.toy_contract``); the harness kills them with SIGKILL, stops them with SIGTERM,
cuts one off the network with SIGSTOP (nothing in or out, its peers' links time out and queue)
and heals it with SIGCONT. Waiting is polling the replicas' own status, with a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.cli import _statuses
from ledger.cluster import load_cluster, replica_db_file, replica_key_file
from ledger.framing import encode_frame, read_message
from ledger.keys import load_key, new_key
from ledger.peer_link import link_proof
from ledger.setup import free_ports, init_cluster
from ledger.store import BlockStore
from ledger_client.client import LedgerClient
from tests.ledger.proxy import ReplicaProxy

ROOT = Path(__file__).resolve().parents[2]
TOY = "tests.ledger.toy_contract:make_contract"


def run_bench(register: Callable[[Any], None], argv: list[str]) -> int:
    """Parse ``argv`` (the bench's name first) with the commands ``register`` adds, as
    ``wattmesh bench`` does, and run the one it names."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


async def replica_link(
    directory: Path, host: str, port: int, sender: int, receiver: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A link to replica ``receiver`` at ``host:port`` authenticated as replica ``sender``, whose
    key is in ``directory``: what a faulty replica can open."""
    key = load_key(directory / replica_key_file(sender))
    reader, writer = await asyncio.open_connection(host, port)
    challenge = await read_message(reader)
    proof = link_proof(key, sender, receiver, challenge["nonce"])
    writer.write(encode_frame({"t": "auth", "from": sender, "proof": proof}))
    return reader, writer


class Cluster:
    def __init__(
        self,
        directory: Path,
        *,
        view_change_ms: int = 300,
        checkpoint_interval: int = 8,
        batch_max: int = 50,
        faults: dict[int, str] | None = None,
        proxied: bool = False,
        nofile: dict[int, int] | None = None,
        limits: dict[str, int] | None = None,
        genesis: Any = None,
        contract: str = TOY,
    ) -> None:
        self.dir = directory
        self.contract = contract  # the toy, or the community's (``genesis`` then its genesis)
        init_cluster(
            directory,
            4,
            timers={"view_change_ms": view_change_ms, "request_timeout_ms": 500, "status_ms": 100},
            batch={"max_txs": batch_max, "max_delay_ms": 2},
            checkpoint_interval=checkpoint_interval,
            genesis={"toy": 1} if genesis is None else genesis,
        )
        if limits:  # the cluster file's optional ``limits`` (ledger.limits)
            path = directory / "cluster.json"
            doc = json.loads(path.read_text())
            doc["limits"] = limits
            path.write_text(json.dumps(doc))
        self.config = load_cluster(directory / "cluster.json")
        self.faults = faults or {}
        # replica -> its open-file limit (soft and hard), to reach descriptor exhaustion with
        # a few hundred connections instead of the thousands a default limit needs
        self.nofile = nofile or {}
        # with ``proxied``, replica i listens on a private port behind a ReplicaProxy that
        # holds the advertised one (start the proxies with ``await start_proxies()``)
        self.private_ports = free_ports(self.config.n) if proxied else []
        self.proxies: list[ReplicaProxy] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.joined: list[tuple[str, int]] = []  # addresses of replicas n, n+1, ... that joined
        self.operator = load_key(directory / "operator.key")
        self.user = new_key()

    # -- processes ------------------------------------------------------------------------------

    def start(self, i: int, extra: list[str] | None = None) -> None:
        # a faulty replica runs tests.ledger.faulty's core in place of the correct one
        entry = ["tests.ledger.faulty", "--fault", self.faults[i]] if i in self.faults else [
            "ledger", "run"]
        cmd = [sys.executable, "-m", *entry, "--dir", str(self.dir), "--replica", str(i),
               "--contract", self.contract, *(extra or [])]  # fmt: skip
        if self.private_ports:
            cmd += ["--listen-port", str(self.private_ports[i])]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log = open(self.dir / f"replica-{i}.log", "ab")  # noqa: SIM115 - owned by the child
        limit = self.nofile.get(i)

        def lower_nofile() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.procs[i] = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lower_nofile
        )
        log.close()

    def start_all(self) -> None:
        for i in range(self.config.n):
            self.start(i)

    async def start_proxies(self) -> None:
        for r in self.config.replicas:
            proxy = ReplicaProxy(r.id, r.port, self.private_ports[r.id])
            await proxy.start()
            self.proxies.append(proxy)

    def cut(self, replicas: set[int]) -> None:
        for proxy in self.proxies:
            proxy.cut(replicas)

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.heal()

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def pause(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGCONT)

    def stop_all(self) -> dict[int, int]:
        codes: dict[int, int] = {}
        for proc in self.procs.values():
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        for i, proc in list(self.procs.items()):
            try:
                codes[i] = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[i] = proc.wait()
        self.procs.clear()
        return codes

    # -- observation ----------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> LedgerClient:
        kwargs.setdefault("request_timeout_s", 0.5)
        kwargs.setdefault("timeout_s", 60.0)
        return LedgerClient.from_cluster_file(self.dir / "cluster.json", self.user, **kwargs)

    async def statuses(self) -> list[dict[str, Any]]:
        """Each replica's status, by id: the cluster file's, then those that joined."""
        addresses = [(r.host, r.port) for r in self.config.replicas] + self.joined
        return await _statuses(addresses, 3.0)

    async def wait_for(
        self, replicas: list[int], predicate: Any, timeout_s: float = 60.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            all_status = await self.statuses()
            chosen = [all_status[i] for i in replicas]
            if all("error" not in s for s in chosen) and predicate(chosen):
                return chosen
            self.last_errors = [s for s in chosen if "error" in s]
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster did not reach the condition: {chosen}")
            await asyncio.sleep(0.1)  # polling real processes, not standing in for a clock

    async def converge(self, replicas: list[int], timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Wait until these replicas report one height, head and state digest."""

        def same(ss: list[dict[str, Any]]) -> bool:
            return len({(s["height"], s["head_hash"], s["state_digest"]) for s in ss}) == 1

        return await self.wait_for(replicas, same, timeout_s)

    def rss_kib(self, i: int, field: str = "VmRSS") -> int:
        """A replica's resident memory (``VmHWM``: its peak) from ``/proc``, in KiB."""
        for line in Path(f"/proc/{self.procs[i].pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} for replica {i}")

    def log_bytes(self, i: int) -> int:
        return (self.dir / f"replica-{i}.log").stat().st_size

    def store(self, i: int) -> BlockStore:
        return BlockStore(self.dir / replica_db_file(i))
