"""``wattmesh bench ledger``: committed transactions per second of a real replica cluster.

Here in ``tools`` (not in ``ledger``) because it drives the cluster through ``ledger_client``,
which ``ledger`` does not import; the figures are in ledger/README.md.

It creates a throw-away cluster (real community contract), starts the replicas as separate
processes on loopback, admits ``--members`` members and gives them tokens from the operator's
genesis treasury, pre-signs every load transaction (``token.transfer`` between members, so
each one is verified by every replica and changes state), then drives them from ``--clients``
concurrent clients, each keeping ``--window`` transactions in flight, for ``--seconds``. With
``--kill-primary-after T`` the primary is killed with SIGKILL T seconds in. At the end it waits
for in-flight transactions, then checks every submitted transaction against a surviving
replica's store. Admission is on (every request is judged by the contract's admission predicate
and counted against its signer's limits); the bench's genesis raises the per-signer limits
(``BENCH_LIMITS``), because its few members each send thousands of transfers a minute and the
operator admits all of them at once: the limits are checked on every request, not reached.
With ``--link`` the replicas run on separate hosts (``tools.hosts``: namespaces, else loopback
addresses) with every replica-to-replica connection shaped (``tools.netem``); ``--crash K``
kills K backups once the setup is done.

Output (one JSON object): ``tps`` (committed per second of load), ``p50_ms``/``p99_ms``
(submit to f+1 matching replies), ``committed`` (acknowledged by f+1 replicas), ``lost``
(submitted but not in the chain of the most advanced surviving replica; ``acked_missing``
counts those among the acknowledged, which must be 0),
``view_changes`` (highest view reached), the CPU each process spent per committed transaction,
``cores_busy`` (all of that CPU over the run's wall time: below the core count, the pipeline
idled; null after a kill), ``verify_us`` (one Ed25519 check on this machine as the run starts,
a measure of its speed at that moment), plus the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import ed25519
from ledger.cli import stop_replicas
from ledger.cluster import load_cluster, replica_db_file
from ledger.contract import default_genesis
from ledger.keys import load_key, new_key, public_hex
from ledger.node import tune_gc
from ledger.setup import DEFAULT_CONTRACT, init_cluster
from ledger.store import BlockStore
from ledger.tx import SignedTx, sign_tx
from ledger_client.client import LedgerClient, LedgerError
from tools.hosts import Hosts, make_hosts, relay_routes
from tools.netem import LinkSpec, LinkSpecError, ShapedRelay, parse_link, uniform_plan

FUNDS = 10**12  # micro-tokens each member gets from the treasury
BENCH_LIMITS: dict[str, Any] = {
    "max_pending_per_signer": 1_000_000,
    "max_bytes_per_signer_hour": 2**40,
}
# In-flight transactions per client (4 clients by default, 800 in all). With 240 in flight and
# blocks of up to 400 the run was stop-and-wait: one block in flight at a time, the clients
# waiting for its replies before sending the next, and 16-20 % of the two cores idle
# (cores_busy 1.55-1.63). With 600, about two blocks are in flight and 1.68-1.80 cores are busy,
# but blocks average 300 transactions; with 800 they fill up (390 on average) and each
# transaction costs 10-20 % less CPU (fewer, fuller frames and blocks) at p99 320-400 ms;
# 1000 in flight pushes p99 past 500 ms on a slow minute.
WINDOW = 200


def _member(k: int, key: Ed25519PrivateKey) -> dict[str, Any]:
    return {
        "id_grid": f"M{k:05d}",
        "commitment": public_hex(key),  # stands in for a commitment to personal data
        "public_key": public_hex(key),
        "role": "prosumer",
    }


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux ``/proc``; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _verify_us(tx: SignedTx, rounds: int = 5, count: int = 200) -> float:
    """The machine's speed as the run starts: microseconds per Ed25519 check, the best of a few
    rounds. The shared development box drifts by up to a third from minute to minute; this
    figure lets runs made at different moments be compared."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(count):
            tx.verify()
        best = min(best, (time.perf_counter() - t0) / count)
    return round(best * 1e6, 1)


def _machine_ticks() -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs so far (Linux ``/proc/stat``; None elsewhere).
    Steal is time the hypervisor gave this virtual machine's CPUs to someone else."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        ticks = [int(x) for x in fields[1:]]
    except (OSError, ValueError):
        return None
    if fields[0] != "cpu" or len(ticks) < 8:
        return None
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    return ticks[7], sum(ticks[:8])


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time stolen between two ``_machine_ticks`` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def _batch_verify_us(txs: list[SignedTx], rounds: int = 3) -> float | None:
    """Microseconds per signature of one batch check of ``txs`` (a block's worth), the best of
    a few rounds; None where the batch verifier is not built or is turned off."""
    batch = ed25519.batch_verifier()
    if batch is None or not txs:
        return None
    items = [(tx.sender, tx.signature, tx.signing_bytes()) for tx in txs]
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        if not batch(items):
            raise RuntimeError("the pre-signed load failed its batch check")
        best = min(best, (time.perf_counter() - t0) / len(items))
    return round(best * 1e6, 1)


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


@dataclass
class Load:
    """Pre-signed transactions that workers submit, each one at a time, until ``stop_at``
    (``time.perf_counter``) or until none is left; what was sent and acknowledged, and the
    latency of each acknowledgement in ms."""

    txs: list[SignedTx]
    stop_at: float
    next_tx: int = 0
    failed: int = 0
    submitted: list[SignedTx] = field(default_factory=list)
    acked: list[SignedTx] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    async def worker(self, client: LedgerClient) -> None:
        txs = self.txs
        while time.perf_counter() < self.stop_at and self.next_tx < len(txs):
            tx = txs[self.next_tx]
            self.next_tx += 1
            self.submitted.append(tx)
            t0 = time.perf_counter()
            try:
                await client.submit(tx)
            except LedgerError:
                self.failed += 1
                continue
            self.latencies.append((time.perf_counter() - t0) * 1000)
            self.acked.append(tx)


async def _run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    hosts: Hosts | None = None
    try:
        if args.link is not None:
            hosts = make_hosts(args.replicas, namespaces=args.hosts != "loopback")
        return await _run_on(args, directory, hosts)
    finally:
        if hosts is not None:
            hosts.remove()


async def _run_on(args: argparse.Namespace, directory: Path, hosts: Hosts | None) -> dict[str, Any]:
    ports = hosts.ports(2) if hosts is not None else None
    init_cluster(
        directory,
        args.replicas,
        hosts=hosts.addresses if hosts is not None else None,
        ports=[p[0] for p in ports] if ports is not None else None,
        timers={
            "view_change_ms": args.view_change_ms,
            "min_view_change_ms": args.min_view_change_ms,
            "status_ms": args.status_ms,
            "request_timeout_ms": args.request_timeout_ms,
        },
        batch={"max_txs": args.batch_max, "max_delay_ms": args.batch_delay_ms},
        checkpoint_interval=args.checkpoint_interval,
        genesis=lambda operator_hex: default_genesis(
            operator_hex, treasury=FUNDS * args.members, **BENCH_LIMITS
        ),
    )
    cluster = load_cluster(directory / "cluster.json")
    operator = load_key(directory / "operator.key")
    procs: dict[int, subprocess.Popen[bytes]] = {}
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    relay: ShapedRelay | None = None
    for i in range(cluster.n):
        cmd = [sys.executable, "-m", "ledger", "run", "--dir", str(directory), "--replica", str(i),
               "--contract", DEFAULT_CONTRACT]  # fmt: skip
        if args.pre_prepare_ids:
            cmd.append("--pre-prepare-ids")
        if hosts is not None and ports is not None:
            cmd = hosts.command(i, [*cmd, "--listen-port", str(ports[i][1])])
        procs[i] = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    path = directory / "cluster.json"
    try:
        if hosts is not None and ports is not None:
            # every replica-to-replica connection through the shaper, each replica behind
            # its advertised address
            relay = ShapedRelay(
                relay_routes(hosts, [p[0] for p in ports], [p[1] for p in ports]),
                uniform_plan(args.link),
                seed=args.seed,
            )
            await relay.start()
        # setup: members with tokens (not timed)
        keys = [new_key() for _ in range(args.members)]
        async with LedgerClient.from_cluster_file(path, operator, timeout_s=60) as admin:
            await asyncio.gather(*(admin.submit_new("registry.admit", _member(k, key))
                                   for k, key in enumerate(keys)))  # fmt: skip
            await asyncio.gather(
                *(
                    admin.submit_new("token.transfer", {"to": f"M{k:05d}", "amount": FUNDS})
                    for k in range(len(keys))
                )
            )
            start_height = await admin.height()
        # pre-sign the load so signing does not compete with the replicas during the run
        total = int(args.seconds * args.rate_cap) if args.rate_cap else args.max_txs
        txs = [
            sign_tx(
                keys[n % len(keys)],
                "token.transfer",
                {"to": f"M{(n + 1) % len(keys):05d}", "amount": 1},
                n,
            )
            for n in range(total)
        ]
        # The pre-signed load lives for the whole run: keep the cyclic collector from rescanning
        # it (as a replica does with its start-up objects).
        tune_gc()
        clients = [
            LedgerClient.from_cluster_file(
                path, None, timeout_s=args.seconds + 30, broadcast=args.broadcast
            )
            for _ in range(args.clients)
        ]
        for c in clients:
            await c.start()
        crashed = list(range(cluster.n - args.crash, cluster.n))
        for i in crashed:  # f backups crash before the load starts
            procs[i].send_signal(signal.SIGKILL)
            procs[i].wait()
        speed = _verify_us(txs[0])
        batch_speed = _batch_verify_us(txs[: args.batch_max])
        cpu0 = {i: _cpu_seconds(proc.pid) for i, proc in procs.items()}
        client_cpu0 = time.process_time()
        ticks0 = _machine_ticks()
        sent0 = dict(relay.sent) if relay is not None else {}
        # the clock starts once every client is connected (31 replicas behind a shaped relay
        # took seconds to connect to, which a run started earlier counted as idle load time)
        started = time.perf_counter()
        stop_at = started + args.seconds

        load = Load(txs, stop_at)

        async def killer() -> None:
            if args.kill_primary_after is None:
                return
            await asyncio.sleep(args.kill_primary_after)
            procs[0].send_signal(signal.SIGKILL)

        kill_task = asyncio.ensure_future(killer())
        await asyncio.gather(
            *(load.worker(clients[k % len(clients)]) for k in range(args.clients * args.window))
        )
        client_cpu = time.process_time() - client_cpu0
        stolen = steal_share(ticks0, _machine_ticks())
        sent = (
            {i: sum(v - sent0.get(k, 0) for k, v in relay.sent.items() if k[0] == i)
             for i in range(cluster.n)}
            if relay is not None
            else None
        )  # fmt: skip
        elapsed = min(time.perf_counter(), stop_at) - started
        drained = time.perf_counter() - started
        kill_task.cancel()
        views = []
        for c in clients:
            await c.close()
        cpu = {i: _cpu_seconds(proc.pid) for i, proc in procs.items() if proc.poll() is None}
        from ledger.cli import _statuses

        statuses = await _statuses([(r.host, r.port) for r in cluster.replicas], 5.0)
        views = [s["view"] for s in statuses if "view" in s]
        live = [s for s in statuses if "height" in s]
        alive = max(live, key=lambda s: s["height"])["replica"]
    finally:
        if relay is not None:
            await relay.close()
        stop_replicas(procs.values(), timeout_s=20)
    store = BlockStore(directory / replica_db_file(alive))
    try:
        in_chain = store.known([tx.tx_id for tx in load.submitted])
        acked_missing = sum(1 for tx in load.acked if tx.tx_id not in in_chain)
        height = store.head()[0]
    finally:
        store.close()
    latencies = sorted(load.latencies)
    committed = len(latencies)
    return {
        "tps": round(committed / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(_percentile(latencies, 0.50), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "committed": committed,
        "lost": len(load.submitted) - len(in_chain),
        "acked_missing": acked_missing,
        "submitted": len(load.submitted),
        "view_changes": max(views) if views else None,
        "failed_submits": load.failed,
        "seconds": round(elapsed, 2),
        "drain_seconds": round(drained - elapsed, 2),
        "blocks": height - start_height,
        "replicas": args.replicas,
        "clients": args.clients,
        "window": args.window,
        "batch_max": args.batch_max,
        "broadcast": args.broadcast,
        "pre_prepare_ids": args.pre_prepare_ids,
        "cores": os.cpu_count(),
        "client_cpu_ms_per_tx": round(1000 * client_cpu / max(committed, 1), 3),
        "replica_cpu_ms_per_tx": {
            str(i): round(1000 * (cpu[i] - cpu0.get(i, 0.0)) / max(committed, 1), 3) for i in cpu
        },
        # how much of the machine the run kept busy: below the core count, the pipeline idled
        # (unknown once a replica was killed: its CPU died with it)
        "cores_busy": None
        if len(cpu) < len(procs)
        else round(
            (client_cpu + sum(cpu[i] - cpu0.get(i, 0.0) for i in cpu)) / max(drained, 1e-9), 2
        ),
        "verify_us": speed,
        # separate hosts and shaped links (--link): how replicas were placed, the link, the
        # replicas crashed before the load, and the bytes each replica sent to the others per
        # committed transaction (through the shaper; null without --link)
        "hosts": None if hosts is None else hosts.mode,
        "link": None if args.link is None else args.link.describe(),
        "crashed": args.crash,
        "bytes_per_tx": None
        if sent is None
        else {str(i): round(b / max(committed, 1)) for i, b in sent.items() if i not in crashed},
        # CPU time the hypervisor took for other guests during the run (a virtual machine's
        # cores_busy cannot exceed cores x (1 - steal))
        "steal": stolen,
        # the replicas check a block's (or a client frame's) signatures together when this is
        # not None: see ledger/ed25519.py
        "batch_verify_us": batch_speed,
        "batch_verify": batch_speed is not None,
    }


# what a --repeat summary keeps of the runs' settings (the same in every run)
SETTINGS = (
    "replicas",
    "clients",
    "window",
    "batch_max",
    "broadcast",
    "pre_prepare_ids",
    "cores",
    "batch_verify",
    "hosts",
    "link",
    "crashed",
)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One report for several runs of the same settings: ``tps`` and ``p50_ms`` are the runs'
    medians, ``p99_ms`` the worst run's, ``committed``/``lost``/``acked_missing``/
    ``failed_submits`` totals, ``view_changes`` the most any run saw; ``runs`` holds every run's
    own report. On a shared machine one run can be a third off the next; the median of several,
    with their spread, is the figure to compare."""
    tps = [r["tps"] for r in runs]
    views = [r["view_changes"] for r in runs if r["view_changes"] is not None]
    stolen = [r["steal"] for r in runs if r.get("steal") is not None]
    out: dict[str, Any] = {k: runs[0].get(k) for k in SETTINGS}
    out.update(
        {
            "repeat": len(runs),
            "tps": statistics.median(tps),
            "tps_min": min(tps),
            "tps_max": max(tps),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": max(r["p99_ms"] for r in runs),
            "committed": sum(r["committed"] for r in runs),
            "lost": sum(r["lost"] for r in runs),
            "acked_missing": sum(r["acked_missing"] for r in runs),
            "failed_submits": sum(r["failed_submits"] for r in runs),
            "view_changes": max(views) if views else None,
            # the most the hypervisor took in any run: a slow run with high steal was the box
            "steal_max": max(stolen) if stolen else None,
            "seconds": sum(r["seconds"] for r in runs),
            "runs": runs,
        }
    )
    return out


def _handler(args: argparse.Namespace) -> int:
    if args.replicas < 4 or (args.replicas - 1) % 3:
        print("wattmesh bench ledger: --replicas must be 3f+1 (4, 7, ...)", file=sys.stderr)
        return 2
    if args.crash > (args.replicas - 1) // 3:
        print("wattmesh bench ledger: --crash must be at most f", file=sys.stderr)
        return 2
    if args.min_view_change_ms > args.view_change_ms:
        print("wattmesh bench ledger: --min-view-change-ms above --view-change-ms", file=sys.stderr)
        return 2
    if args.pre_prepare_ids and not args.broadcast:
        print("wattmesh bench ledger: --pre-prepare-ids goes with --broadcast", file=sys.stderr)
        return 2
    if args.hosts is not None and args.link is None:
        print("wattmesh bench ledger: --hosts goes with --link", file=sys.stderr)
        return 2
    runs = []
    for _ in range(args.repeat):  # a fresh cluster each time: no run inherits a longer chain
        with tempfile.TemporaryDirectory(prefix="wattmesh-bench-") as tmp:
            runs.append(asyncio.run(_run(args, Path(tmp) / "cluster")))
    report = runs[0] if args.repeat == 1 else summarize(runs)
    print(json.dumps(report, sort_keys=True))
    return 0


_N = TypeVar("_N", int, float)


def bounded(cast: Callable[[str], _N], ok: Callable[[_N], bool], rule: str) -> Callable[[str], _N]:
    """An argparse type for the bench commands: ``cast`` (int or float) of the text, refused
    with ``rule`` unless ``ok`` holds for it."""
    what = "an integer" if cast is int else "a number"

    def parse(text: str) -> _N:
        try:
            value = cast(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from exc
        if not ok(value):
            raise argparse.ArgumentTypeError(rule)
        return value

    return parse


_pos_int = bounded(int, lambda v: v > 0, "must be a positive integer")


def _nonneg_int(text: str) -> int:
    if text == "0":
        return 0
    return _pos_int(text)


def _link(text: str) -> LinkSpec:
    try:
        return parse_link(text)
    except LinkSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


_pos_float = bounded(float, lambda v: 0 < v < 86_400, "must be a positive number of seconds")


def register_bench(bench_subparsers: Any) -> None:
    p = bench_subparsers.add_parser(
        "ledger", help="committed tx/s of a real replica cluster on loopback; prints JSON"
    )
    p.add_argument("--replicas", type=_pos_int, default=4)
    p.add_argument("--seconds", type=_pos_float, default=10.0)
    p.add_argument("--clients", type=_pos_int, default=4, help="client connections")
    p.add_argument("--window", type=_pos_int, default=WINDOW, help="in-flight txs per client")
    p.add_argument("--members", type=_pos_int, default=50, help="members sending transfers")
    p.add_argument("--kill-primary-after", type=_pos_float, default=None, metavar="T")
    p.add_argument("--batch-max", type=_pos_int, default=400)
    p.add_argument("--batch-delay-ms", type=_pos_int, default=5)
    p.add_argument("--view-change-ms", type=_pos_int, default=2000)
    p.add_argument(
        "--min-view-change-ms",
        type=_nonneg_int,
        default=0,
        help="floor of the adaptive view-change timeout (0: the fixed --view-change-ms)",
    )
    p.add_argument("--request-timeout-ms", type=_pos_int, default=3000, help="client re-send")
    p.add_argument(
        "--status-ms",
        type=_pos_int,
        default=500,
        help="status gossip period (every replica to every other: n(n-1) messages per period)",
    )
    p.add_argument("--checkpoint-interval", type=_pos_int, default=64)
    p.add_argument("--rate-cap", type=_pos_int, default=6000, help="pre-signed txs per second")
    p.add_argument("--max-txs", type=_pos_int, default=100_000, help=argparse.SUPPRESS)
    p.add_argument(
        "--broadcast",
        action="store_true",
        help="clients send every transaction to every replica (not only to the primary)",
    )
    p.add_argument(
        "--pre-prepare-ids",
        action="store_true",
        help="primaries name a batch's transactions by id (with --broadcast: backups hold them)",
    )
    p.add_argument(
        "--repeat",
        type=_pos_int,
        default=1,
        help="runs, each on a fresh cluster; prints their median tps, spread and worst p99",
    )
    p.add_argument(
        "--link",
        type=_link,
        default=None,
        metavar="DELAY,RATE,LOSS",
        help="separate hosts, every replica-to-replica link shaped (e.g. 50ms,1mbit,1%%)",
    )
    p.add_argument(
        "--hosts",
        choices=("auto", "loopback"),
        default=None,
        help="with --link: network namespaces where possible (auto), or loopback addresses",
    )
    p.add_argument("--crash", type=_nonneg_int, default=0, help="backups killed before the load")
    p.add_argument("--seed", type=int, default=1, help="the link shaper's random seed")
    p.add_argument("--json", action="store_true", help="print JSON (the only output format)")
    p.set_defaults(func=_handler)
