"""The client against ``wattmesh ledger cluster`` running the real community contract: the sync
and async APIs, idempotent re-submission from a fresh client (the gateway outbox after a crash),
refused signatures, reads agreed by f+1 replicas, and a clean stop of the whole cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.cluster import load_cluster
from ledger.keys import load_key, new_key, public_hex
from ledger.setup import LOCAL_TREASURY, init_cluster
from ledger.tx import SignedTx, sign_tx
from ledger_client import (
    LedgerClient,
    LedgerError,
    QueryFailed,
    RejectedError,
    SyncLedgerClient,
)
from tests.ledger.cluster_harness import ROOT, Cluster

pytestmark = pytest.mark.timeout(240)


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.fixture
def community(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = tmp_path / "c"
    init_cluster(d, 4, timers={"view_change_ms": 300, "request_timeout_ms": 500, "status_ms": 100})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", "cluster", "--dir", str(d)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    d.joinpath("supervisor.pid").write_text(str(proc.pid))
    yield d
    assert proc.poll() is None, "the cluster supervisor died"
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # every replica it started is gone: their ports accept nothing
    for replica in load_cluster(d / "cluster.json").replicas:
        with pytest.raises(OSError):
            socket.create_connection((replica.host, replica.port), timeout=1).close()


def test_sync_client_with_the_real_contract(community: Path) -> None:
    operator = load_key(community / "operator.key")
    member = new_key()
    with SyncLedgerClient.from_cluster_file(community / "cluster.json", operator) as c:
        admit = c.submit_new(
            "registry.admit",
            {"id_grid": "PT0001", "commitment": "ab" * 32,
             "public_key": public_hex(member), "role": "prosumer"},
        )  # fmt: skip
        assert admit.ok, admit
        bought = c.submit_new("token.transfer", {"to": "PT0001", "amount": 5_000_000})
        assert bought.ok and bought.result["balance"] == LOCAL_TREASURY - 5_000_000
        refused = c.submit_new("token.transfer", {"to": "NOBODY", "amount": 1})
        assert refused.code == "UNKNOWN_MEMBER"
        minted = c.submit_new("token.mint", {"to": "PT0001", "amount": 10**12})
        assert minted.code == "QUORUM_REQUIRED"  # the operator mints nothing on its own
        assert c.query("balance", id_grid="PT0001")["balance"] == 5_000_000
        assert {m["id_grid"] for m in c.query("members")} == {"OPERATOR", "PT0001"}
        height = c.height()
        assert height >= 3
        block = c.block(1)
        assert block["height"] == 1 and block["cert"] is not None
        with pytest.raises(QueryFailed):
            c.query("no.such.path")
        with pytest.raises(QueryFailed):
            c.query("ledger.block", height=10_000)

        # a replica killed under the supervisor comes back and catches up
        supervisor = int((community / "supervisor.pid").read_text())
        before = set(children(supervisor))
        assert len(before) == 4
        os.kill(sorted(before)[0], signal.SIGKILL)
        assert c.submit_new("token.transfer", {"to": "PT0001", "amount": 1}).ok
        deadline = time.monotonic() + 60
        while len(set(children(supervisor)) - before) < 1:
            assert time.monotonic() < deadline, "the supervisor did not restart the replica"
            time.sleep(0.1)  # polling the supervisor, a real process


async def test_resubmission_from_a_fresh_client_applies_once(community: Path) -> None:
    operator = load_key(community / "operator.key")
    path = community / "cluster.json"
    mint = {"proposal_id": "p1", "action": {"kind": "mint", "to": "OPERATOR", "amount": 7}}
    tx = sign_tx(operator, "quorum.propose", mint, nonce=42)
    async with LedgerClient.from_cluster_file(path, operator, request_timeout_s=0.5) as c:
        first = await c.submit_detail(tx)
        assert first["receipt"]["code"] == "OK"  # applied again it would be PROPOSAL_EXISTS
    # a new process after a crash: same signed transaction, same tx_id
    async with LedgerClient.from_cluster_file(path, operator, request_timeout_s=0.5) as c:
        again = await c.submit_detail(tx)
        both = await asyncio.gather(c.submit_detail(tx), c.submit_detail(tx))
        assert again == first and all(b == first for b in both)

        forged_body = {**mint, "proposal_id": "p2"}
        forged = SignedTx(tx.sender, tx.kind, forged_body, 43, tx.signature)
        with pytest.raises(RejectedError) as exc:
            await c.submit(forged)
        assert exc.value.code == "BAD_SIGNATURE"
        assert (await c.query("balance", id_grid="OPERATOR"))["balance"] == LOCAL_TREASURY


async def test_client_survives_a_replica_that_is_down(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "c")
    for i in (0, 1, 2):
        cluster.start(i)
    try:
        async with cluster.client() as client:
            receipt = await client.submit_new("toy.add", {"amount": 2})
            assert receipt.ok
            cluster.start(3)
            await cluster.converge([0, 1, 2, 3])
            assert await client.height() >= 1
    finally:
        cluster.stop_all()


async def test_no_cluster_is_a_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "c"
    init_cluster(d, 4, genesis={})
    client = LedgerClient.from_cluster_file(d / "cluster.json", timeout_s=0.5)
    with pytest.raises(LedgerError, match="fewer than f\\+1=2 replicas reachable"):
        await client.start()
    assert not client._conns  # nothing left running
    with pytest.raises(LedgerError):
        SyncLedgerClient.from_cluster_file(d / "cluster.json", timeout_s=0.5)
