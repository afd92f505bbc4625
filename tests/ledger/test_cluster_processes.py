"""Fault scenarios against four real replica processes over loopback TCP.

After every scenario: every transaction the client saw committed has a receipt in every correct
replica's store, no transaction was applied twice (the toy counter equals the number of distinct
transactions), and all correct replicas report the same height, head hash and state digest.
Timeouts come from the cluster file (view change 300 ms), so each scenario takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ledger import ed25519
from ledger.cli import cmd_verify
from ledger.contract.api import Receipt
from ledger.encoding import canonical
from ledger.framing import HEADER, encode_frame, read_message
from ledger.keys import load_key
from ledger.pbft.messages import Commit, Prepare, sign
from ledger.pbft.signing import Signer
from ledger.tx import SignedTx, sign_tx
from ledger_client.client import LedgerClient
from tests.ledger.cluster_harness import Cluster, replica_link

pytestmark = pytest.mark.timeout(240)


async def load(
    client: LedgerClient,
    cluster: Cluster,
    count: int,
    start: int,
    first_done: asyncio.Event | None = None,
) -> list[SignedTx]:
    """Submit ``count`` distinct transactions concurrently; every one must commit."""
    txs = [sign_tx(cluster.user, "toy.add", {"amount": 1}, start + k) for k in range(count)]

    async def one(tx: SignedTx) -> Receipt:
        receipt = await client.submit(tx)
        if first_done is not None:
            first_done.set()
        return receipt

    receipts = await asyncio.gather(*(one(tx) for tx in txs))
    assert all(r.ok for r in receipts)
    return txs


async def kill_a_frozen_primary_under_load(
    client: LedgerClient, cluster: Cluster
) -> tuple[list[SignedTx], list[asyncio.Future[Receipt]]]:
    """Freeze the primary (its connections stay up, so requests reach only it), submit five
    transactions, wait until they are on its socket, then kill it: its sockets close and the
    client sees the primary go. Returns the transactions and their pending submits."""
    cluster.pause(0)
    in_flight = [sign_tx(cluster.user, "toy.add", {"amount": 1}, 100 + k) for k in range(5)]
    tasks = [asyncio.ensure_future(client.submit(tx)) for tx in in_flight]
    while not all(client._txs.get(tx.tx_id) for tx in in_flight):
        await asyncio.sleep(0)
    while client._conns[0]._flush_scheduled or client._conns[0]._requests:
        await asyncio.sleep(0)
    cluster.kill(0)
    return in_flight, tasks


def stopped_cleanly_and_chains_verify(cluster: Cluster, codes: dict[int, int]) -> None:
    """Every replica left on SIGTERM with exit code 0, and every chain re-checks from disk."""
    assert all(code == 0 for code in codes.values()), f"SIGTERM did not stop cleanly: {codes}"
    for i in range(cluster.config.n):
        assert cmd_verify(argparse.Namespace(dir=cluster.dir, replica=i)) == 0


async def check(cluster: Cluster, correct: list[int], committed: list[SignedTx]) -> None:
    statuses = await cluster.converge(correct)
    who = cluster.user.public_key().public_bytes_raw().hex()
    for i in correct:
        store = cluster.store(i)
        try:
            missing = [tx.tx_id for tx in committed if store.receipt(tx.tx_id) is None]
            assert not missing, f"replica {i} lacks {len(missing)} committed transactions"
        finally:
            store.close()
    async with cluster.client() as client:
        assert await client.query("count", sender=who) == len({tx.tx_id for tx in committed})
    assert len({s["state_digest"] for s in statuses}) == 1


@contextlib.asynccontextmanager
async def started(
    tmp_path: Path, first: int
) -> AsyncIterator[tuple[Cluster, LedgerClient, list[SignedTx]]]:
    """Four replica processes, a client, and ``first`` transactions committed through it; on
    the way out every replica gets SIGTERM and must stop cleanly with a chain that verifies."""
    cluster = Cluster(tmp_path / "c")
    cluster.start_all()
    try:
        async with cluster.client() as client:
            yield cluster, client, await load(client, cluster, first, 0)
    finally:
        codes = cluster.stop_all()
    stopped_cleanly_and_chains_verify(cluster, codes)


async def interrupted_load(
    client: LedgerClient, cluster: Cluster, count: int, start: int, interrupt: Callable[[], None]
) -> list[SignedTx]:
    """``load``, with ``interrupt()`` done once the first transaction committed, while the
    others are in flight."""
    first = asyncio.Event()
    task = asyncio.ensure_future(load(client, cluster, count, start, first))
    await first.wait()
    interrupt()
    assert not task.done(), "the interruption must land in the middle of the load"
    return await task


async def test_crashes_restarts_and_a_cut_off_replica(tmp_path: Path) -> None:
    async with started(tmp_path, 60) as (cluster, client, committed):
        await check(cluster, [0, 1, 2, 3], committed)

        # the same signed transaction again: the original receipt, applied once
        again = await client.submit_detail(committed[0])
        first = await client.receipt(committed[0].tx_id)
        assert first is not None and again["height"] == first["height"]

        # primary crash -> view change -> progress
        cluster.kill(0)
        committed += await load(client, cluster, 40, 1000)
        statuses = await cluster.wait_for([1, 2, 3], lambda ss: all(s["view"] >= 1 for s in ss))
        assert all(s["counters"].get("view_changes", 0) >= 1 for s in statuses)
        await check(cluster, [1, 2, 3], committed)

        # the old primary restarts from its store and catches up
        cluster.start(0)
        await cluster.converge([0, 1, 2, 3])

        # a backup killed with SIGKILL in the middle of a load, then restarted
        committed += await interrupted_load(client, cluster, 1000, 2000, lambda: cluster.kill(2))
        cluster.start(2)
        committed += await load(client, cluster, 20, 3000)
        await check(cluster, [0, 1, 2, 3], committed)

        # one replica cut off (SIGSTOP: nothing in or out) while the others go on; healed
        cluster.pause(3)
        committed += await load(client, cluster, 60, 4000)
        cluster.resume(3)
        committed += await load(client, cluster, 10, 5000)
        await check(cluster, [0, 1, 2, 3], committed)
    # a certificate signature flipped on disk, then a transaction changed: both are caught
    store = cluster.store(3)
    row = store.block(2)
    assert row is not None
    body = json.loads(row.body)
    sig = body["cert"]["c"][0][1]
    body["cert"]["c"][0][1] = ("0" if sig[0] != "0" else "1") + sig[1:]
    body["cert"]["c"] = body["cert"]["c"][:1] + body["cert"]["c"][2:]  # one short of a quorum
    store.db.execute("UPDATE blocks SET body = ? WHERE height = 2", (canonical(body),))
    store.close()
    assert cmd_verify(argparse.Namespace(dir=cluster.dir, replica=3)) == 1


async def test_a_partitioned_replica_rejoins(tmp_path: Path) -> None:
    """Replica 3 cut off by the proxies (it keeps running and times out on its own), the others
    make progress; after healing it catches up. Then the primary is partitioned away: the rest
    change view and go on; healed, the old primary follows them."""
    cluster = Cluster(tmp_path / "c", proxied=True)
    await cluster.start_proxies()
    cluster.start_all()
    committed: list[SignedTx] = []
    try:
        async with cluster.client() as client:
            committed += await load(client, cluster, 30, 0)
            cluster.cut({3})
            committed += await load(client, cluster, 60, 100)
            lagging = (await cluster.statuses())[3]
            assert lagging["height"] < (await cluster.statuses())[0]["height"]
            cluster.heal()
            committed += await load(client, cluster, 20, 200)
            await check(cluster, [0, 1, 2, 3], committed)

            cluster.cut({0})
            committed += await load(client, cluster, 40, 300)
            statuses = await cluster.wait_for([1, 2, 3], lambda ss: all(s["view"] >= 1 for s in ss))
            assert all(s["primary"] != 0 for s in statuses)
            cluster.heal()
            committed += await load(client, cluster, 20, 400)
            await check(cluster, [0, 1, 2, 3], committed)
    finally:
        cluster.stop_all()
        for proxy in cluster.proxies:
            await proxy.close()


async def test_equivocating_primary_causes_no_divergence(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "c", faults={0: "equivocate"})
    cluster.start_all()
    try:
        async with cluster.client() as client:
            committed = await load(client, cluster, 30, 0)
            committed += await load(client, cluster, 30, 100)
            await check(cluster, [1, 2, 3], committed)
            statuses = await cluster.statuses()
            # the backups got different batches for one sequence number: they either caught the
            # primary at it or timed it out; either way they moved on without it
            seen = sum(
                s["counters"].get("equivocations_seen", 0) + s["counters"].get("view_changes", 0)
                for s in statuses[1:]
            )
            assert seen >= 1, "the fault was not active"
    finally:
        cluster.stop_all()


async def test_silent_backup_and_hostile_peers(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "c", faults={3: "silent"})
    cluster.start_all()
    target = cluster.config.replica(1)
    try:
        async with cluster.client() as client:
            committed = await load(client, cluster, 30, 0)

            # garbage from a stranger, a forged link proof, an oversized frame
            for junk in (b"\x00\x00\x00\x05hello", HEADER.pack(1 << 30), b"\xff" * 64):
                reader, writer = await asyncio.open_connection(target.host, target.port)
                await read_message(reader)
                writer.write(junk)
                await writer.drain()
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()

            # an authenticated link as replica 3 (its key is on this disk) sending forged,
            # mismatched, corrupted and replayed consensus messages
            key3 = load_key(cluster.dir / "replica-3.key")
            key2 = load_key(cluster.dir / "replica-2.key")
            reader, writer = await replica_link(cluster.dir, target.host, target.port, 3, 1)
            digest = b"\x07" * 32
            # in replica 1's current view and log window, so each reaches the check it is for
            # (a slow box may have changed views or taken a checkpoint during the first load)
            (now,) = [s for s in await cluster.statuses() if s.get("replica") == 1]
            view, seq = now["view"], now["stable_checkpoint"] + 5
            forged = sign(Prepare(view, seq, digest, 3), Signer(3, key2)).to_wire()  # wrong key
            mismatch = sign(
                Prepare(view, seq, digest, 2), Signer(2, key2)
            ).to_wire()  # r=2 on 3's link
            valid = sign(Commit(view, seq + 1, digest, 3), Signer(3, key3)).to_wire()
            corrupted = dict(valid, d="00" * 32)
            for message in (forged, mismatch, corrupted, valid, valid, {"t": "prepare"}):
                writer.write(encode_frame(message))
            await writer.drain()
            writer.close()

            committed += await load(client, cluster, 30, 100)
            statuses = await cluster.statuses()
            counters = statuses[1]["counters"]
            assert counters.get("rejected_bad_sig", 0) >= 2, counters  # forged and corrupted
            assert counters.get("rejected_sender_mismatch", 0) >= 1, counters
            assert counters.get("duplicate_msg", 0) >= 1, counters  # the replay
            assert counters.get("malformed", 0) >= 1, counters
            assert counters.get("io_dropped_connections", 0) >= 3, counters
            await check(cluster, [0, 1, 2], committed)
    finally:
        cluster.stop_all()


def test_sigterm_stops_a_replica_cleanly(tmp_path: Path) -> None:
    """Also with the batch signature check (and so the Go runtime) loaded, as a replica loads
    it at start where it is built: its status says which."""
    cluster = Cluster(tmp_path / "c")
    cluster.start(0)
    (status,) = asyncio.run(cluster.wait_for([0], lambda ss: True))
    assert status["batch_verify"] == (ed25519.native_check() is not None)
    proc = cluster.procs.pop(0)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


async def test_transactions_in_flight_at_a_frozen_then_killed_primary_all_commit(
    tmp_path: Path,
) -> None:
    """Transactions sent to the primary while it is frozen, and those submitted after it is
    killed, all commit on the backups exactly once, without a single re-send: the client hands
    waiting transactions to the backups as soon as it sees the primary's connection drop, and
    the backups time the primary out. (The re-send timer is long, so the hand-over alone must
    do it.)"""
    cluster = Cluster(tmp_path / "c")
    cluster.start_all()
    try:
        async with cluster.client(request_timeout_s=30.0, timeout_s=60.0) as client:
            committed = await load(client, cluster, 5, 0)
            in_flight, tasks = await kill_a_frozen_primary_under_load(client, cluster)
            receipts = await asyncio.wait_for(asyncio.gather(*tasks), 25)
            assert all(r.ok for r in receipts)
            assert client.resends == 0
            committed += in_flight
            committed += await asyncio.wait_for(load(client, cluster, 5, 200), 50)
            await check(cluster, [1, 2, 3], committed)
    finally:
        cluster.stop_all()


async def test_backups_the_client_reaches_only_after_the_primary_died_get_the_hand_over(
    tmp_path: Path,
) -> None:
    """The client starts once f+1 replicas answer; two backups are still out of its reach (here:
    behind forwarders that open late) when the primary dies, so the hand-over reaches one
    backup. The transactions must reach the other two as full requests once they are
    connected, not only as awaits: one backup alone cannot change the view."""
    from ledger.setup import free_ports
    from tests.ledger.proxy import ReplicaProxy

    cluster = Cluster(tmp_path / "c")
    cluster.start_all()
    ports = free_ports(2)
    late = [ReplicaProxy(i, ports[k], cluster.config.replica(i).port) for k, i in enumerate((2, 3))]
    addresses = [(r.host, r.port) for r in cluster.config.replicas[:2]]
    addresses += [("127.0.0.1", port) for port in ports]
    client = LedgerClient(
        addresses, cluster.config.f, cluster.user, request_timeout_s=30.0, timeout_s=60.0
    )
    try:
        await client.start()
        committed = await load(client, cluster, 5, 0)
        in_flight, tasks = await kill_a_frozen_primary_under_load(client, cluster)
        while client._conns[0].ready.is_set():  # the hand-over reaches replica 1 only
            await asyncio.sleep(0.01)
        assert not client._conns[2].ready.is_set() and not client._conns[3].ready.is_set()
        for proxy in late:
            await proxy.start()
        receipts = await asyncio.wait_for(asyncio.gather(*tasks), 25)
        assert all(r.ok for r in receipts)
        assert client.resends == 0
        committed += in_flight
        await check(cluster, [1, 2, 3], committed)
    finally:
        await client.close()
        for proxy in late:
            await proxy.close()
        cluster.stop_all()


async def test_the_whole_cluster_killed_under_load_restarts_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """All four replicas get SIGKILL at once while a load is in flight (batches pre-prepared,
    prepared, committed at some and not others), then all restart from their stores and
    journals: every transaction the client saw committed is kept, the ones in flight commit once
    (the client re-sends), and the replicas agree again."""
    async with started(tmp_path, 40) as (cluster, client, committed):
        await cluster.wait_for([0, 1, 2, 3], lambda ss: all(s["height"] >= 1 for s in ss))

        def kill_and_restart_all() -> None:
            for i in range(4):
                cluster.kill(i)
            cluster.start_all()

        committed += await interrupted_load(client, cluster, 600, 1000, kill_and_restart_all)
        committed += await load(client, cluster, 20, 2000)
        await check(cluster, [0, 1, 2, 3], committed)
