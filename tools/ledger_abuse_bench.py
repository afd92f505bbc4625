"""``wattmesh bench ledger-abuse``: the members' committed tx/s while strangers abuse the replicas.

It creates a throw-away cluster (real community contract) on loopback, admits ``--members``
members, and measures their committed transactions per second twice, each for ``--seconds``:
unloaded, then while a separate attacker process (from other loopback addresses, as from other
hosts) makes ``5000 x --scale`` connection attempts that each send one query and then hold the
connection idle, sends ``1 GB x --scale`` of garbage (frames of a valid length with random
content, and raw random bytes), keeps ``200 x --scale`` slow-loris connections that announce a
1 MiB frame and send one byte of it every half second, and sends ``10,000 x --scale`` signed
transfers from keys no registry entry knows. (Refusing those unknown keys before ordering is
admission control, another part of issue 17; this command only generates the load.)

Output (one JSON object): ``unloaded``, ``abused`` and ``unloaded_after`` (the members' run
before, during and after the attack: ``tps``, ``p50_ms``, ``p99_ms``, ``committed``,
``failed_submits``), ``tps_ratio`` (abused against the mean of the two unloaded runs, as the
shared machine's speed drifts from run to run), ``rss_mib`` (each
replica's resident memory after the unloaded run) and ``rss_peak_mib`` (its peak, ``VmHWM``,
at the end), ``attack`` (what the attacker managed: connections opened and refused, garbage
bytes the kernel took, transactions sent), ``counters`` (the replicas' ``io_`` counters from
``ledger status``, summed), ``view`` at the end, and with ``--frozen-primary``
``frozen_primary_s``: seconds from submitting one transaction to its commit while the primary is
stopped with SIGSTOP, measured between the two runs (the cluster file's default timers: view
change 1 s, client re-send 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.cli import stop_replicas
from ledger.cluster import load_cluster
from ledger.framing import HEADER, encode_frame, read_message
from ledger.keys import load_key, new_key
from ledger.limits import raise_nofile
from ledger.setup import DEFAULT_CONTRACT, init_cluster
from ledger.tx import SignedTx, sign_tx
from tools.ledger_bench import FUNDS, Load, _member, _percentile, bounded

ATTACK_SOURCES = [f"127.0.0.{k}" for k in range(2, 34)]
CONNECTIONS = 5000
GARBAGE_BYTES = 1_000_000_000
SLOW_LORIS = 200
UNKNOWN_TXS = 10_000
CHUNK = 256 * 1024
WINDOW = 400  # in-flight member transactions


def _rss_mib(pid: int, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def _members_load(
    path: Path, keys: list[Ed25519PrivateKey], seconds: float, first_nonce: int, rate: int
) -> dict[str, Any]:
    from ledger_client.client import LedgerClient, LedgerError

    txs = [
        sign_tx(
            keys[n % len(keys)],
            "token.transfer",
            {"to": f"M{(n + 1) % len(keys):05d}", "amount": 1},
            first_nonce + n,
        )
        for n in range(int(seconds * rate))
    ]
    client = LedgerClient.from_cluster_file(path, None, timeout_s=seconds + 30)
    try:
        await client.start()
    except LedgerError as exc:  # the cluster did not hold: that is the figure
        return {"tps": 0.0, "committed": 0, "error": str(exc)}
    try:
        started = time.perf_counter()
        stop_at = started + seconds
        load = Load(txs, stop_at)
        await asyncio.gather(*(load.worker(client) for _ in range(WINDOW)))
        elapsed = min(time.perf_counter(), stop_at) - started
    finally:
        await client.close()
    latencies = sorted(load.latencies)
    return {
        "tps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(_percentile(latencies, 0.50), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "committed": len(latencies),
        "failed_submits": load.failed,
    }


# -- the attacker (a process of its own, so its work does not slow the members' client) --------


async def _open(
    address: tuple[str, int], source: str, timeout: float = 3.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(*address, local_addr=(source, 0)), timeout
    )
    await asyncio.wait_for(read_message(reader), timeout)
    return reader, writer


async def _attack(
    addresses: list[tuple[str, int]], scale: float, seconds: float, stranger_txs: list[SignedTx]
) -> dict[str, int]:
    tally = dict.fromkeys(
        ("connections_opened", "connections_refused", "garbage_bytes", "slow_loris", "unknown_txs"),
        0,
    )
    held: list[asyncio.StreamWriter] = []
    stop_at = time.monotonic() + seconds
    noise = os.urandom(CHUNK)

    async def connections() -> None:
        total = int(CONNECTIONS * scale)
        for start in range(0, total, 100):

            async def one(k: int) -> None:
                try:
                    _, writer = await _open(addresses[k % len(addresses)], ATTACK_SOURCES[k % 8])
                except (OSError, TimeoutError):
                    tally["connections_refused"] += 1
                    return
                query = {"t": "query", "id": 1, "path": "ledger.height", "params": {}}
                writer.write(encode_frame(query))
                held.append(writer)
                tally["connections_opened"] += 1

            await asyncio.gather(*(one(k) for k in range(start, min(total, start + 100))))
            if time.monotonic() > stop_at:
                return

    async def garbage(lane: int) -> None:
        share = int(GARBAGE_BYTES * scale) // 16
        sent = 0
        while sent < share and time.monotonic() < stop_at:
            try:
                _, writer = await _open(addresses[lane % len(addresses)], ATTACK_SOURCES[8 + lane])
                while sent < share and time.monotonic() < stop_at:
                    if lane % 2:  # a frame of a valid length, then content that does not decode
                        writer.write(HEADER.pack(CHUNK - HEADER.size))
                    writer.write(noise)
                    await writer.drain()
                    sent += CHUNK
                    tally["garbage_bytes"] += CHUNK
            except (OSError, TimeoutError):
                await asyncio.sleep(0.01)  # dropped, as it should be: again

    async def slow_loris(k: int) -> None:
        try:
            _, writer = await _open(addresses[k % len(addresses)], ATTACK_SOURCES[24 + k % 8])
            held.append(writer)
            writer.write(HEADER.pack(1 << 20))
            tally["slow_loris"] += 1
            while time.monotonic() < stop_at:
                writer.write(b"{")
                await writer.drain()
                await asyncio.sleep(0.5)
        except (OSError, TimeoutError):
            pass

    async def strangers(address: tuple[str, int]) -> None:
        try:
            reader, writer = await _open(address, ATTACK_SOURCES[31])
            for start in range(0, len(stranger_txs), 500):
                wires = [tx.to_wire() for tx in stranger_txs[start : start + 500]]
                writer.write(encode_frame({"t": "requests", "txs": wires}))
                await writer.drain()
            while time.monotonic() < stop_at and await reader.read(1 << 16):
                pass  # read the replies, so this connection is not cut for not reading
        except (OSError, TimeoutError):
            pass

    tasks = [connections()]
    tasks += [garbage(lane) for lane in range(16)]
    tasks += [slow_loris(k) for k in range(int(SLOW_LORIS * scale))]
    tasks += [strangers(address) for address in addresses]
    tally["unknown_txs"] = len(stranger_txs)  # sent to every replica
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), seconds + 5)
    for writer in held:
        writer.close()
    return tally


def _attacker(
    addresses: list[tuple[str, int]],
    member_ids: int,
    scale: float,
    seconds: float,
    ready: Any,
    out: Any,
) -> None:
    raise_nofile()  # thousands of connections
    strangers = [new_key() for _ in range(100)]
    txs = [
        sign_tx(
            strangers[n % len(strangers)],
            "token.transfer",
            {"to": f"M{n % member_ids:05d}", "amount": 1},
            n,
        )
        for n in range(int(UNKNOWN_TXS * scale))
    ]
    ready.set()
    out.put(asyncio.run(_attack(addresses, scale, seconds, txs)))


# -- the run -------------------------------------------------------------------------------------


async def _statuses(addresses: list[tuple[str, int]]) -> list[dict[str, Any]]:
    from ledger.cli import _statuses as statuses

    return await statuses(addresses, 5.0)


async def _frozen_primary_s(
    path: Path, procs: dict[int, subprocess.Popen[bytes]], key: Ed25519PrivateKey, nonce: int
) -> float | None:
    from ledger_client.client import LedgerClient

    cluster = load_cluster(path)
    addresses = [(r.host, r.port) for r in cluster.replicas]
    views = [s["view"] for s in await _statuses(addresses) if "view" in s]
    primary = max(views) % cluster.n if views else 0
    async with LedgerClient.from_cluster_file(path, None, timeout_s=60) as client:
        procs[primary].send_signal(signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            await client.submit(
                sign_tx(key, "token.transfer", {"to": "M00001", "amount": 1}, nonce)
            )
            return round(time.perf_counter() - t0, 2)
        finally:
            procs[primary].send_signal(signal.SIGCONT)


async def _run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    from ledger_client.client import LedgerClient

    init_cluster(directory, 4)
    path = directory / "cluster.json"
    cluster = load_cluster(path)
    addresses = [(r.host, r.port) for r in cluster.replicas]
    operator = load_key(directory / "operator.key")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs: dict[int, subprocess.Popen[bytes]] = {}
    nofile = args.replica_nofile

    def lower_nofile() -> None:  # as on a host whose default is 1024
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    for i in range(cluster.n):
        procs[i] = subprocess.Popen(
            [sys.executable, "-m", "ledger", "run", "--dir", str(directory), "--replica", str(i),
             "--contract", DEFAULT_CONTRACT],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lower_nofile,
        )  # fmt: skip
    context = multiprocessing.get_context("spawn")
    attacker: Any = None
    try:
        keys = [new_key() for _ in range(args.members)]
        async with LedgerClient.from_cluster_file(path, operator, timeout_s=60) as admin:
            await asyncio.gather(*(admin.submit_new("registry.admit", _member(k, key))
                                   for k, key in enumerate(keys)))  # fmt: skip
            await asyncio.gather(
                *(admin.submit_new("token.transfer", {"to": f"M{k:05d}", "amount": FUNDS})
                  for k in range(len(keys)))  # from the genesis treasury: nothing is minted
            )  # fmt: skip
        unloaded = await _members_load(path, keys, args.seconds, 0, args.rate_cap)
        rss = {str(i): _rss_mib(p.pid, "VmRSS") for i, p in procs.items()}
        frozen = None
        if args.frozen_primary:  # on the quiet cluster, before the attack
            frozen = await _frozen_primary_s(path, procs, keys[0], 1 << 40)
        ready, out = context.Event(), context.Queue()
        attacker = context.Process(
            target=_attacker,
            args=(addresses, len(keys), args.scale, args.seconds + 2, ready, out),
        )
        attacker.start()
        while not ready.is_set():
            await asyncio.sleep(0.05)  # the attacker signing its unknown keys' transactions
        await asyncio.sleep(1.0)  # the attack under way before the members start
        abused = await _members_load(path, keys, args.seconds, 1 << 30, args.rate_cap)
        tally: dict[str, int] = {}
        with contextlib.suppress(Exception):
            tally = await asyncio.get_running_loop().run_in_executor(None, out.get, True, 30)
        if attacker.is_alive():
            attacker.terminate()
        # unloaded again: on a shared machine the load of others drifts between runs
        after = await _members_load(path, keys, args.seconds, 1 << 31, args.rate_cap)
        statuses = await _statuses(addresses)
        view = max((s["view"] for s in statuses if "view" in s), default=None)
        peak = {str(i): _rss_mib(p.pid, "VmHWM") for i, p in procs.items()}
    finally:
        if attacker is not None and attacker.is_alive():
            attacker.terminate()
        stop_replicas(procs.values(), timeout_s=20, resume=True)
    counters: dict[str, int] = {}
    for status in statuses:
        for name, value in status.get("counters", {}).items():
            if name.startswith("io_"):
                counters[name] = counters.get(name, 0) + value
    return {
        "unloaded": unloaded,
        "abused": abused,
        "unloaded_after": after,
        # abused against the mean of the unloaded runs before and after it
        "tps_ratio": round(2 * abused["tps"] / (unloaded["tps"] + after["tps"]), 3)
        if unloaded["tps"] + after["tps"]
        else None,
        "rss_mib": rss,
        "rss_peak_mib": peak,
        "attack": tally,
        "counters": counters,
        "unreachable_replicas": sum(1 for s in statuses if "error" in s),
        "view": view,  # after the abused run (the frozen primary's run changes it once)
        "frozen_primary_s": frozen,
        "scale": args.scale,
        "replica_nofile": nofile,
        "seconds": args.seconds,
        "members": args.members,
        "cores": os.cpu_count(),
    }


def _handler(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="wattmesh-abuse-") as tmp:
        report = asyncio.run(_run(args, Path(tmp) / "cluster"))
    print(json.dumps(report, sort_keys=True))
    return 0


_scale = bounded(float, lambda v: 0 < v <= 100, "must be in (0, 100]")
_seconds = bounded(float, lambda v: 1 <= v <= 3600, "must be between 1 and 3600 seconds")
_count = bounded(int, lambda v: 2 <= v <= 10_000, "must be between 2 and 10000")


def register_bench(bench_subparsers: Any) -> None:
    p = bench_subparsers.add_parser(
        "ledger-abuse",
        help="members' tx/s and replica memory under connection floods, garbage, slow-loris "
        "and unknown keys; prints JSON",
    )
    p.add_argument("--seconds", type=_seconds, default=8.0, help="each of the two runs")
    p.add_argument("--scale", type=_scale, default=1.0, help="of 5000 conns, 1 GB, 10k txs")
    p.add_argument("--members", type=_count, default=50)
    p.add_argument("--rate-cap", type=_count, default=5000, help="pre-signed txs per second")
    p.add_argument(
        "--replica-nofile",
        type=_count,
        default=None,
        metavar="N",
        help="the replicas' open-file limit (soft and hard), e.g. 1024 as on many hosts",
    )
    p.add_argument(
        "--frozen-primary",
        action="store_true",
        help="also time one transaction while the primary is stopped (SIGSTOP)",
    )
    p.set_defaults(func=_handler)
