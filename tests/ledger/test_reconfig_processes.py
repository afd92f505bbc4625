"""Reconfiguration on real replica processes under load (issue 22): four replicas running the
community contract; members approve adding a fifth while transfers stream in, a replica is
killed (SIGKILL) between the decision and the switch, the new one joins by state transfer and
then votes (with one of the first four down, n = 5 commits only with it); later members
remove a replica, whose links are then refused, and a client holding the first cluster file
learns the new set. No committed transaction is lost, every correct replica ends on one chain
and one state, and every chain verifies against the sets of its epochs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.cli import cmd_verify
from ledger.cluster import replica_key_file
from ledger.contract import default_genesis
from ledger.keys import new_key, public_hex, write_key
from ledger.setup import free_ports
from ledger.tx import SignedTx, sign_tx
from ledger_client.client import LedgerClient, RejectedError
from tests.ledger.cluster_harness import Cluster, replica_link

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
COMMUNITY = "ledger.contract:make_contract"
MEMBERS = ("M0", "M1", "M2")


class Load:
    """The operator's transfers to M0, 40 in flight at a time, until stopped."""

    def __init__(self, client: LedgerClient, key: Ed25519PrivateKey) -> None:
        self.client, self.key = client, key
        self.committed: list[SignedTx] = []
        self.stop = asyncio.Event()
        self.nonce = 1_000_000

    async def run(self) -> None:
        while not self.stop.is_set():
            txs = []
            for _ in range(40):
                self.nonce += 1
                txs.append(
                    sign_tx(self.key, "token.transfer", {"to": "M0", "amount": 1}, self.nonce)
                )
            receipts = await asyncio.gather(*(self.client.submit(tx) for tx in txs))
            assert all(r.ok for r in receipts), [r for r in receipts if not r.ok][:1]
            self.committed += txs


async def wattmesh(*argv: str) -> Any:
    """``wattmesh ...`` as its own process (the command runs its own event loop); its JSON."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def entry(i: int, host: str, port: int, key: str) -> dict[str, Any]:
    return {"id": i, "host": host, "port": port, "public_key": key}


async def test_add_and_remove_a_replica_under_load_with_a_crash(tmp_path: Path) -> None:
    cluster = Cluster(
        tmp_path / "c",
        checkpoint_interval=8,
        batch_max=50,
        genesis=lambda op: default_genesis(op, treasury=10**12),
        contract=COMMUNITY,
    )
    operator = cluster.operator
    keys = {m: new_key() for m in MEMBERS}
    first = [entry(r.id, r.host, r.port, r.public_key.hex()) for r in cluster.config.replicas]
    cluster_file = cluster.dir / "cluster.json"

    def client(key: Ed25519PrivateKey) -> LedgerClient:
        return LedgerClient.from_cluster_file(cluster_file, key, request_timeout_s=0.5,
                                              timeout_s=90.0)  # fmt: skip

    async def vote(who: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        async with client(keys[who]) as c:
            receipt = await c.submit_new(kind, body)
        assert receipt.ok, receipt
        return dict(receipt.result)

    cluster.start_all()
    load_task: asyncio.Task[None] | None = None
    try:
        async with client(operator) as op:
            for n, m in enumerate(MEMBERS):
                body = {"id_grid": m, "commitment": f"{n + 1:064x}",
                        "public_key": public_hex(keys[m]), "role": "prosumer"}  # fmt: skip
                assert (await op.submit_new("registry.admit", body)).ok
            load = Load(op, operator)
            load_task = asyncio.ensure_future(load.run())

            # the new replica: its own key, its address; it fetches the chain once it is named
            joiner_key = new_key()
            write_key(cluster.dir / replica_key_file(4), joiner_key)
            port = free_ports(1)[0]
            cluster.start(4, ["--address", f"127.0.0.1:{port}"])
            cluster.joined.append(("127.0.0.1", port))
            five = [*first, entry(4, "127.0.0.1", port, public_hex(joiner_key))]

            # an unapproved change changes nothing: the operator proposes, nobody approves
            unapproved = {"proposal_id": "op-alone", "action": {"kind": "replicas",
                          "replicas": [*five, entry(5, "127.0.0.1", port + 1,
                                                     public_hex(new_key()))]}}  # fmt: skip
            assert (await op.submit_new("quorum.propose", unapproved)).ok
            # a malformed change is refused, and a stranger's is not even ordered
            three = {"proposal_id": "three", "action": {"kind": "replicas", "replicas": first[:3]}}
            assert (await op.submit_new("quorum.propose", three)).code == "BAD_BODY"
            async with client(new_key()) as stranger:
                with pytest.raises(RejectedError) as refused:
                    await stranger.submit_new("quorum.propose", unapproved)
            assert refused.value.code == "NOT_ADMITTED"

            # members decide: M0 proposes (its own approval counts), M1's approval executes it
            opened = await vote("M0", "quorum.propose", {"proposal_id": "add-4", "action": {
                "kind": "replicas", "replicas": five}})  # fmt: skip
            assert opened["state"] == "OPEN"
            done = await vote("M1", "quorum.approve", {"proposal_id": "add-4"})
            assert done["state"] == "EXECUTED"
            cluster.kill(2)  # between the decision and the switch, 32+ blocks later
            before_switch = len(load.committed)
            store = cluster.store(2)
            try:
                killed_at = store.head()[0]
            finally:
                store.close()

            live = [0, 1, 3, 4]
            await cluster.wait_for(
                live, lambda ss: all(s["epoch"] == 1 and s["member"] for s in ss)
            )
            # n = 5 (quorum 4) with replica 2 down: every commit now needs the new replica
            at_switch = len(load.committed)
            await cluster.wait_for(live, lambda _: len(load.committed) >= at_switch + 400)
            assert at_switch >= before_switch
            async with client(operator) as c:
                current = await c.query_agreed("ledger.replicas", 2, {})
            assert current["epoch"] == 1 and [r["id"] for r in current["replicas"]] == [
                0,
                1,
                2,
                3,
                4,
            ]
            assert killed_at < current["since"], "the kill must land before the switch"
            store = cluster.store(0)
            try:
                head = store.head()[0]
                signers = set()
                for h in range(current["since"] + 1, head + 1):
                    row = store.block(h)
                    assert row is not None
                    signers |= {r for r, _ in json.loads(row.body)["cert"]["c"]}
            finally:
                store.close()
            assert 4 in signers and 2 not in signers

            # the killed replica comes back from its store, takes the change from its chain
            cluster.start(2)
            await cluster.wait_for([0, 1, 2, 3, 4], lambda ss: all(s["epoch"] == 1 for s in ss))

            # members remove replica 3, with the command line (keys from files)
            for m in ("M0", "M2"):
                write_key(tmp_path / f"{m}.key", keys[m])
            removed = await wattmesh("replicas", "remove", "--cluster", str(cluster_file),
                                     "--key", str(tmp_path / "M2.key"),
                                     "--proposal-id", "remove-3", "--replica", "3")  # fmt: skip
            assert removed["result"]["state"] == "OPEN"
            approved = await wattmesh("replicas", "approve", "--cluster", str(cluster_file),
                                      "--key", str(tmp_path / "M0.key"),
                                      "--proposal-id", "remove-3")  # fmt: skip
            assert approved["result"]["state"] == "EXECUTED"
            kept = [0, 1, 2, 4]
            await cluster.wait_for(
                kept, lambda ss: all(s["epoch"] == 2 and s["member"] for s in ss)
            )
            # once a checkpoint of the new set is stable, replica 3 is no longer a peer
            await cluster.wait_for(kept, lambda ss: all(
                s["stable_checkpoint"] >= s["epoch_start"] for s in ss))  # fmt: skip
            assert (await cluster.statuses())[3].get("member") is False  # it knows, too

            # a removed replica's link is refused: its auth no longer opens a link
            first_host, first_port = first[0]["host"], first[0]["port"]
            reader, writer = await replica_link(cluster.dir, first_host, first_port, 3, 0)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

            shown = await wattmesh("replicas", "show", "--cluster", str(cluster_file))
            assert shown["epoch"] == 2 and [r["id"] for r in shown["replicas"]] == [0, 1, 2, 4]

            # a client holding the first cluster file learns the new set and works with it
            async with client(keys["M1"]) as learner:
                assert learner.epoch == 2 and learner.ids == [0, 1, 2, 4] and learner.f == 1
                tx = sign_tx(keys["M1"], "quorum.approve", {"proposal_id": "op-alone"}, 7)
                assert (await learner.submit(tx)).ok  # M1's approval; one short of the quorum

            # the joined replica, killed and restarted without --address, finds it on chain
            cluster.kill(4)
            cluster.start(4)
            await cluster.wait_for([4], lambda ss: ss[0]["epoch"] == 2 and ss[0]["height"] > 0)

            load.stop.set()
            await load_task
            load_task = None
            ss = await cluster.converge(kept, timeout_s=90)
            assert all(s["epoch"] == 2 for s in ss)
            for i in kept:
                store = cluster.store(i)
                try:
                    missing = [tx for tx in load.committed if store.receipt(tx.tx_id) is None]
                finally:
                    store.close()
                assert not missing, f"replica {i} lacks {len(missing)} committed transactions"
            async with client(operator) as c:
                assert (await c.query("balance", id_grid="M0"))["balance"] == len(load.committed)
                proposals = {p["proposal_id"]: p["state"] for p in await c.query("proposals")}
            assert proposals == {"op-alone": "OPEN", "add-4": "EXECUTED", "remove-3": "EXECUTED"}
    finally:
        if load_task is not None:
            load_task.cancel()
            with contextlib.suppress(BaseException):
                await load_task
        codes = cluster.stop_all()
    assert all(code == 0 for code in codes.values()), codes
    for i in (0, 1, 2, 4):
        assert cmd_verify(argparse.Namespace(dir=cluster.dir, replica=i)) == 0
