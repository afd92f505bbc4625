"""Who may write and who may read, against four real replica processes running the community
contract (issue 17: admission before ordering, per-signer limits, the read policy, and the keys
each signer holds: wallet, order and meter keys, rotated and revoked on chain).

Each attack here was run against the code before admission and the read policy, and failed
there: strangers' transactions were ordered and stored, nothing was refused for a signer's
volume, and an anonymous connection read every member's name, e-mail and meter series.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.cli import _statuses
from ledger.cluster import load_cluster, replica_db_file
from ledger.contract import default_genesis, sign_report
from ledger.framing import FrameDecoder, decode_payload, encode_frame, read_message
from ledger.keys import load_key, new_key, public_hex
from ledger.personal import Opening
from ledger.personal import commitment as commit
from ledger.setup import init_cluster
from ledger.tx import SignedTx, sign_tx
from ledger_client.client import LedgerClient, QueryFailed, RejectedError
from tests.ledger.cluster_harness import replica_link

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
# An hour that is over: the replicas stamp blocks with the real time, and the contract takes a
# report once its interval has ended and within its report window (7 days).
HOUR = time.strftime("%Y-%m-%dT%H", time.gmtime(time.time() - 7200))


def commitment(id_grid: str) -> str:
    """The commitment a member's personal data gets (``ledger.personal``); its salt is fixed
    here only so the test can name it twice."""
    data = Opening(f"Member {id_grid}", f"{id_grid.lower()}@home.example", "1 Grid St", "00" * 32)
    return commit(data)


class Community:
    """Four replica processes with the community contract, an operator and two members."""

    def __init__(self, directory: Path, **params: Any) -> None:
        self.dir = directory
        init_cluster(
            directory,
            4,
            timers={"view_change_ms": 1000, "request_timeout_ms": 500, "status_ms": 100},
            batch={"max_txs": 400, "max_delay_ms": 2},
            genesis=lambda op: default_genesis(op, treasury=10**12, **params),
        )
        self.config = load_cluster(directory / "cluster.json")
        self.operator = load_key(directory / "operator.key")
        self.a, self.b, self.gateway = new_key(), new_key(), new_key()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for i in range(4):
            cmd = [
                sys.executable,
                "-m",
                "ledger",
                "run",
                "--dir",
                str(self.dir),
                "--replica",
                str(i),
            ]
            log = open(self.dir / f"replica-{i}.log", "ab")  # noqa: SIM115 - owned by the child
            self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def client(self, key: Ed25519PrivateKey | None) -> LedgerClient:
        return LedgerClient.from_cluster_file(
            self.dir / "cluster.json", key, request_timeout_s=0.5, timeout_s=60.0
        )

    def store_bytes(self, i: int) -> int:
        base = self.dir / replica_db_file(i)
        return sum(p.stat().st_size for p in (base, Path(f"{base}-wal")) if p.exists())

    async def statuses(self) -> list[dict[str, Any]]:
        return await _statuses([(r.host, r.port) for r in self.config.replicas], 3.0)

    async def converged(self) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 60
        while True:
            ss = await self.statuses()
            if all("error" not in s for s in ss) and len({s["height"] for s in ss}) == 1:
                return ss
            assert time.monotonic() < deadline, f"replicas did not converge: {ss}"
            await asyncio.sleep(0.1)  # polling real processes, not standing in for a clock

    async def setup_members(self) -> None:
        async with self.client(self.operator) as op:
            for id_grid, key in (("A", self.a), ("B", self.b)):
                body = {
                    "id_grid": id_grid,
                    "commitment": commitment(id_grid),
                    "public_key": public_hex(key),
                    "role": "prosumer",
                }
                assert (await op.submit_new("registry.admit", body)).ok
                funds = {"to": id_grid, "amount": 10**9}  # from the genesis treasury
                assert (await op.submit_new("token.transfer", funds)).ok
            meter = {"meter_id": "MA", "owner": "A", "gateway_key": public_hex(self.gateway),
                     "import_limit_w": 6_900, "export_limit_w": 3_680}
            assert (await op.submit_new("registry.add_meter", meter)).ok
        async with self.client(self.a) as a:  # the owner's consent: MA may report
            assert (await a.submit_new("meter.confirm", {"meter_id": "MA"})).ok


@asynccontextmanager
async def community(directory: Path, **params: Any) -> AsyncIterator[Community]:
    c = Community(directory, **params)
    c.start()
    try:
        await c.setup_members()
        yield c
    finally:
        c.stop()


async def raw_flood(c: Community, txs: list[SignedTx]) -> dict[str, str]:
    """Send the transactions in ``requests`` frames to every replica (so each one holds them,
    whichever is primary), as a hostile client would without the client library; return the
    codes the replicas' ``reject`` frames gave, by transaction id (empty if none refused)."""
    wires = [tx.to_wire() for tx in txs]

    async def one(host: str, port: int) -> dict[str, str]:
        codes: dict[str, str] = {}
        reader, writer = await asyncio.open_connection(host, port)
        await read_message(reader)  # the challenge
        for start in range(0, len(wires), 50):  # 50 of 15 kB: under the 1 MiB client frame
            writer.write(encode_frame({"t": "requests", "txs": wires[start : start + 50]}))
        await writer.drain()
        decoder = FrameDecoder()
        end = time.monotonic() + 5.0  # a refusal is sent at once; replies are not awaited
        while len(codes) < len(txs) and time.monotonic() < end:
            try:
                data = await asyncio.wait_for(reader.read(1 << 16), 1.0)
            except TimeoutError:
                if codes:
                    break  # the replica has answered what it refuses
                continue
            if not data:
                break
            for payload in decoder.feed(data):
                message = decode_payload(payload)
                if message["t"] == "reject":
                    codes[message["tx_id"]] = message["code"]
        writer.close()
        return codes

    answers = await asyncio.gather(*(one(r.host, r.port) for r in c.config.replicas))
    merged: dict[str, str] = {}
    for codes in answers:
        merged.update(codes)
    return merged


async def test_strangers_transactions_are_refused_and_never_stored(tmp_path: Path) -> None:
    """The issue's attack: transfers of 15 kB signed by a key no registry entry knows. Before:
    ordered into blocks, every replica's store grew by their size. Now: each is refused
    (``NOT_ADMITTED``) before its signature is even checked, the stores do not grow, the
    refusals are counted, and a member's transfer still commits."""
    async with community(tmp_path) as c:
        await c.converged()
        before = [c.store_bytes(i) for i in range(4)]
        stranger = new_key()
        pad = "x" * 15_000
        big = [
            sign_tx(stranger, "token.transfer", {"to": "A", "amount": 1, "pad": pad}, n)
            for n in range(150)
        ]
        small = [
            sign_tx(stranger, "token.transfer", {"to": "A", "amount": 1}, n) for n in range(150)
        ]
        codes = await raw_flood(c, big + small)
        async with c.client(c.b) as member:
            assert (await member.submit_new("token.transfer", {"to": "A", "amount": 5})).ok
        statuses = await c.converged()
        grown = [c.store_bytes(i) - before[i] for i in range(4)]
        # 300 refused transactions, 4.5 MB of them, left the stores as they were (a block of
        # one transfer and the WAL's pages are what a replica writes for the member's transfer)
        assert max(grown) < 400_000, f"stores grew by {grown} bytes"
        assert len(codes) == len(big) + len(small), f"only {len(codes)} refused"
        assert {codes[tx.tx_id] for tx in small} == {"NOT_ADMITTED"}
        assert {codes[tx.tx_id] for tx in big} <= {"NOT_ADMITTED", "TX_TOO_LARGE"}
        for s in statuses:
            refused = sum(v for k, v in s["counters"].items() if k.startswith("admission_refused"))
            assert refused >= len(small), s["counters"]
        async with c.client(c.operator) as op:
            for tx in (big[0], small[0], small[-1]):
                assert await op.receipt(tx.tx_id) is None


async def test_a_backup_relaying_strangers_requests_gets_none_ordered(tmp_path: Path) -> None:
    """A faulty backup (its key is on this disk) relays strangers' transactions to the primary
    as requests, over its authenticated link. Before, the primary ordered them (their
    signatures are good); now it admits a relayed request as it admits a client's, so none is
    ordered and the refusals are counted, while a member's transfer still commits."""
    async with community(tmp_path) as c:
        primary = c.config.replica(0)
        _, writer = await replica_link(c.dir, primary.host, primary.port, 3, 0)
        stranger = new_key()
        junk = [sign_tx(stranger, "token.transfer", {"to": "A", "amount": 1}, n) for n in range(50)]
        member = sign_tx(c.b, "token.transfer", {"to": "A", "amount": 7}, 1)
        for tx in [*junk, member]:
            writer.write(encode_frame({"t": "request", "tx": tx.to_wire()}))
        await writer.drain()
        async with c.client(c.b) as b:
            # the member's transfer commits (the client's copy or the relayed one: one id)
            assert (await b.submit(member)).ok
        await c.converged()
        writer.close()
        async with c.client(c.operator) as op:
            for tx in (junk[0], junk[-1]):
                assert await op.receipt(tx.tx_id) is None
        (status,) = [s for s in await c.statuses() if s["replica"] == 0]
        assert status["counters"].get("io_rejected_relayed", 0) >= len(junk), status["counters"]


async def test_a_newcomer_applies_once_with_its_own_key(tmp_path: Path) -> None:
    """The one form a key no registry entry knows may sign: ``registry.apply``, once per key,
    within ``max_applications``; the operator sees the application and admits the applicant."""
    async with community(tmp_path, max_applications=2) as c:
        newcomer = new_key()
        async with c.client(newcomer) as client:
            application = {"id_grid": "N", "role": "consumer", "commitment": commitment("N")}
            receipt = await client.submit_new("registry.apply", application)
            assert receipt.ok, receipt
            # f+1 replies may come before the primary has executed the application; once every
            # replica has, the second one is refused before ordering
            await c.converged()
            with pytest.raises(RejectedError) as refused:
                again = {"id_grid": "N2", "role": "consumer", "commitment": commitment("N2")}
                await client.submit_new("registry.apply", again)
            assert refused.value.code == "APPLICATION_EXISTS"
            with pytest.raises(RejectedError) as refused:
                await client.submit_new("token.transfer", {"to": "A", "amount": 1})
            assert refused.value.code == "NOT_ADMITTED"
        async with c.client(c.operator) as op:
            apps = await op.query("applications")
            assert [a["public_key"] for a in apps] == [public_hex(newcomer)]
            assert apps[0]["commitment"] == commitment("N")  # the data itself is off the chain
            body = {
                "id_grid": "N",
                "commitment": commitment("N"),
                "public_key": public_hex(newcomer),
                "role": "consumer",
            }
            assert (await op.submit_new("registry.admit", body)).ok
        async with c.client(newcomer) as client:
            assert (await client.query("balance", id_grid="N"))["balance"] == 0


async def test_a_signer_over_its_limit_is_refused_and_others_are_not(tmp_path: Path) -> None:
    """Per-signer bytes per hour of block time from the genesis: member B flooding transfers is
    refused (``OVER_LIMIT``) once it is over its budget; member A's transfer commits."""
    async with community(tmp_path, max_bytes_per_signer_hour=6_000) as c:
        await c.converged()
        flood = [sign_tx(c.b, "token.transfer", {"to": "A", "amount": 1}, n) for n in range(200)]
        codes = await raw_flood(c, flood)
        assert codes and set(codes.values()) == {"OVER_LIMIT"}, (len(codes), set(codes.values()))
        async with c.client(c.a) as member:
            assert (await member.submit_new("token.transfer", {"to": "B", "amount": 5})).ok
            mine = await member.query("balance", id_grid="A")
        # B's budget let as many of its transfers through as 6,000 bytes hold, no more
        sizes = [len(tx.payload) for tx in flood]
        assert 6_000 // max(sizes) <= mine["balance"] - (10**9 - 5) <= 6_000 // min(sizes), mine


async def test_reads_follow_the_read_policy(tmp_path: Path) -> None:
    """Before: with no key at all, ``members`` returned names, e-mails and keys, and
    ``reports`` every home's series. Now anonymous reads get nothing personal; a member reads
    its own records and the roster and audits the registry; the operator reads what billing
    needs (and the chain holds commitments, never names or e-mails)."""
    async with community(tmp_path) as c:
        report = sign_tx(
            c.gateway, "meter.report", sign_report(c.gateway, "MA", f"{HOUR}:00", 120, 30), 1
        )
        async with c.client(c.gateway) as gw:
            assert (await gw.submit(report)).ok
            assert len(await gw.query("reports", meter_id="MA")) == 1  # its own meter
            assert (await gw.receipt(report.tx_id))["receipt"]["code"] == "OK"  # its own receipt
        async with c.client(None) as anonymous:
            for path, params in (
                ("members", {}),
                ("reports", {"meter_id": "MA"}),
                ("member", {"id_grid": "A"}),
                ("balance", {"id_grid": "A"}),
                ("grid", {}),
                ("meters", {}),
            ):
                with pytest.raises(QueryFailed, match="NOT_PERMITTED"):
                    await anonymous.query(path, **params)
            assert (await anonymous.query("params"))["clearing_rule"] == "paper"
            with pytest.raises(QueryFailed, match="NOT_PERMITTED"):
                await anonymous.query("ledger.block", height=1)
            with pytest.raises(QueryFailed, match="NOT_PERMITTED"):
                await anonymous.receipt(report.tx_id)
        async with c.client(c.b) as b:
            roster = await b.query("members")
            assert {m["id_grid"] for m in roster} == {"OPERATOR", "A", "B"}
            assert all(set(m) == {"id_grid", "role"} for m in roster)  # no commitments, keys
            log = await b.query("registry_log")  # every member audits the registry
            assert [e["kind"] for e in log].count("registry.admit") == 2
            with pytest.raises(QueryFailed, match="NOT_PERMITTED"):
                await b.query("reports", meter_id="MA")
            with pytest.raises(QueryFailed, match="NOT_PERMITTED"):
                await b.query("balance", id_grid="A")
            assert (await b.query("balance", id_grid="B"))["balance"] == 10**9
            assert await b.query("meters") == []
            with pytest.raises(QueryFailed, match="NOT_PERMITTED"):
                await b.receipt(report.tx_id)  # A's meter's report
        async with c.client(c.a) as a:
            assert [r["import_wh"] for r in await a.query("reports", meter_id="MA")] == [120]
        async with c.client(c.operator) as op:
            full = await op.query("members")
            assert {m["commitment"] for m in full} >= {commitment("A"), commitment("B")}
            assert len(await op.query("reports", meter_id="MA")) == 1


async def test_an_order_key_bids_and_a_revoked_meter_key_is_refused(tmp_path: Path) -> None:
    """Keys held where they are used, on real replicas: the order key A delegated to its
    gateway places A's bid but cannot move A's tokens (refused at admission, never ordered);
    once A revokes its meter's key (a stolen gateway), that key's reports are refused at
    admission too, while the rotated-in key reports. On a merge that admitted every key the
    state knows (wallet, order, meter or retired alike) the transfer and the revoked key's
    report were ordered."""
    async with community(tmp_path, sealed_bids=False) as c:  # an open book: a plain bid
        order = new_key()
        async with c.client(c.a) as a:
            body = {"id_grid": "A", "public_key": public_hex(order)}
            assert (await a.submit_new("member.set_order_key", body)).ok
        async with c.client(c.operator) as op:
            assert (await op.submit_new("auction.open", {"listing_id": HOUR})).ok
        async with c.client(order) as agent:
            bid = {"listing_id": HOUR, "wh": 500, "bid_price": 60_000}
            assert (await agent.submit_new("auction.bid", bid)).ok
            book = await agent.query("order_book", listing_id=HOUR)  # its member's orders
            assert [b["buyer"] for b in book["bids"]] == ["A"]
            steal = sign_tx(order, "token.transfer", {"to": "B", "amount": 1}, 99)
            with pytest.raises(RejectedError) as refused:
                await agent.submit(steal)
            assert refused.value.code == "NOT_ADMITTED"
            with pytest.raises(QueryFailed, match="NOT_PERMITTED"):
                await agent.query("balance", id_grid="A")
        fresh = new_key()
        async with c.client(c.a) as a:
            assert (await a.submit_new("meter.revoke", {"meter_id": "MA"})).ok
            assert (await a.query("balance", id_grid="A"))["balance"] == 10**9 - 30_000
        stolen = sign_tx(
            c.gateway, "meter.report", sign_report(c.gateway, "MA", f"{HOUR}:00", 120, 30), 1
        )
        async with c.client(c.gateway) as gw:
            with pytest.raises(RejectedError) as refused:
                await gw.submit(stolen)
            assert refused.value.code == "NOT_ADMITTED"
        async with c.client(c.a) as a:
            body = {"meter_id": "MA", "gateway_key": public_hex(fresh)}
            assert (await a.submit_new("meter.rotate_key", body)).ok
        report = sign_tx(fresh, "meter.report", sign_report(fresh, "MA", f"{HOUR}:00", 120, 30), 1)
        async with c.client(fresh) as gw:
            assert (await gw.submit(report)).ok
        statuses = await c.converged()
        async with c.client(c.operator) as op:
            for tx in (steal, stolen):
                assert await op.receipt(tx.tx_id) is None  # never ordered, never stored
            assert (await op.query("balance", id_grid="A"))["balance"] == 10**9 - 30_000
        refused = sum(s["counters"].get("admission_refused_not_admitted", 0) for s in statuses)
        assert refused >= 2, [s["counters"] for s in statuses]
