"""How the demo reaches the ledger: the replica cluster, four ``wattmesh ledger run`` processes on
loopback TCP, through ``ledger_client.LedgerClient``. ``LedgerPort`` is what the run needs of it:
``submit(tx) -> Receipt``, ``query(path, **params)`` and ``digests() -> {replica: hex digest}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ledger.contract.api import Receipt
from ledger.tx import SignedTx


class LedgerPort(Protocol):
    kind: str

    async def submit(self, tx: SignedTx) -> Receipt: ...

    async def query(self, path: str, **params: Any) -> Any: ...

    async def digests(self) -> dict[str, str]: ...

    async def close(self) -> None: ...


class ClusterLedger:
    """Four PBFT replicas (f = 1), each a separate ``wattmesh ledger run`` process on loopback
    TCP, reached through ``ledger_client.LedgerClient`` (f+1 matching replies)."""

    kind = "4 PBFT replicas, separate processes over loopback TCP"
    REPLICAS = 4

    def __init__(self, sup: Any, directory: Any, addresses: list[tuple[str, int]]) -> None:
        self.sup = sup
        self.directory = directory
        self.addresses = addresses
        self.client: Any = None

    @classmethod
    async def start(
        cls, sup: Any, directory: Any, genesis: Mapping[str, Any], reader: Any = None
    ) -> ClusterLedger:
        """``reader``: the key the client's connections prove (the read policy answers its
        queries as that key may read them; the demo reads as the operator)."""
        from ledger.setup import init_cluster

        doc = init_cluster(directory, cls.REPLICAS, genesis=genesis,
                           timers={"view_change_ms": 1500, "request_timeout_ms": 1000})
        addresses = [(r["host"], int(r["port"])) for r in doc["replicas"]]
        self = cls(sup, directory, addresses)
        for i in range(cls.REPLICAS):
            self.start_replica(i)
        await self.wait_up(range(cls.REPLICAS))
        from ledger_client.client import LedgerClient

        self.client = LedgerClient(addresses, (cls.REPLICAS - 1) // 3, reader,
                                   request_timeout_s=1.0,
                                   timeout_s=120.0)
        await self.client.start()
        return self

    def start_replica(self, i: int) -> None:
        """Start replica ``i`` unless it is running."""
        from ledger.cli import replica_command

        child = self.sup.children.get(f"replica-{i}")
        if child is None or not child.alive():
            self.sup.spawn(f"replica-{i}", replica_command(self.directory, i))

    def kill_replica(self, i: int) -> None:
        import signal

        self.sup.kill(f"replica-{i}", signal.SIGKILL)

    def stop_all(self) -> None:
        for i in range(self.REPLICAS):
            self.sup.stop(f"replica-{i}")

    async def start_all(self) -> None:
        for i in range(self.REPLICAS):
            self.start_replica(i)
        await self.wait_up(range(self.REPLICAS))

    async def wait_up(self, replicas: Any, timeout_s: float = 30.0) -> None:
        import asyncio

        from tools.demo.procs import wait_port

        for i in replicas:
            host, port = self.addresses[i]
            await asyncio.to_thread(wait_port, host, port, timeout_s, self.sup.children[
                f"replica-{i}"])

    async def submit(self, tx: SignedTx) -> Receipt:
        receipt: Receipt = await self.client.submit(tx)
        return receipt

    async def query(self, path: str, **params: Any) -> Any:
        return await self.client.query(path, **params)

    async def statuses(self) -> list[dict[str, Any]]:
        """``wattmesh ledger status`` for the cluster directory, one object per replica."""
        import asyncio
        import json
        import sys

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.cli", "ledger", "status", "--dir", str(self.directory),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        return [json.loads(line) for line in out.decode().splitlines() if line.strip()]

    async def digests(self) -> dict[str, str]:
        """Each replica's state digest once all have executed the same height (they may lag a
        moment behind the f+1 that answered the client)."""
        import asyncio

        statuses: list[dict[str, Any]] = []
        for _ in range(60):
            statuses = await self.statuses()
            heights = {s.get("height") for s in statuses}
            if len(heights) == 1 and all("error" not in s for s in statuses):
                break
            await asyncio.sleep(0.25)  # replicas catching up in real time, no clock to drive
        return {
            f"replica {s.get('replica')} @ {s.get('height')}": str(
                s.get("state_digest", s.get("error", "?")))
            for s in statuses
        }

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def open_ledger(
    sup: Any, directory: Any, genesis: Mapping[str, Any], reader: Any = None
) -> LedgerPort:
    return await ClusterLedger.start(sup, directory, genesis, reader)
