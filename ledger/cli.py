"""``wattmesh ledger init|run|cluster|status|verify``: the replica's command line.

Every handler returns an exit code; bad arguments and broken files print one line naming what is
wrong and return 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ledger.cluster import CLUSTER_FILE, ClusterFileError, load_cluster, replica_db_file
from ledger.keys import KeyFileError
from ledger.setup import DEFAULT_CONTRACT, SetupError, init_cluster, load_factory

EXIT_BAD_INPUT = 2
RESTART_BACKOFF_S = (0.5, 5.0)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def register(subparsers: Any) -> None:
    ledger = subparsers.add_parser("ledger", help="PBFT ledger replicas")
    sub = ledger.add_subparsers(dest="ledger_command", metavar="ACTION")

    p = sub.add_parser("init", help="create keys and a cluster file on loopback ports")
    p.add_argument("--replicas", type=_positive, default=4, help="3f+1 replicas (default 4)")
    p.add_argument("--dir", type=Path, required=True, help="an empty or new directory")
    p.add_argument("--base-port", type=_positive, default=None, help="ports P..P+n-1")
    p.add_argument("--view-change-ms", type=_positive, default=None)
    p.add_argument("--request-timeout-ms", type=_positive, default=None)
    p.add_argument("--batch-max", type=_positive, default=None)
    p.add_argument("--batch-delay-ms", type=_positive, default=None)
    p.add_argument("--checkpoint-interval", type=_positive, default=64)
    p.add_argument("--genesis", type=Path, default=None, help="genesis JSON instead of default")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run one replica in the foreground (SIGTERM stops it)")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--replica", type=_positive, required=True)
    p.add_argument("--contract", default=DEFAULT_CONTRACT, help=argparse.SUPPRESS)
    p.add_argument("--listen-port", type=_positive, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("cluster", help="run every replica of --dir as child processes")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--contract", default=DEFAULT_CONTRACT, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("status", help="one JSON object per replica")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=2.0)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("verify", help="re-check a replica's chain and certificates from disk")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--replica", type=_positive, required=True)
    p.set_defaults(func=cmd_verify)

    ledger.set_defaults(func=lambda args: _help(ledger))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_BAD_INPUT


def _fail(message: str) -> int:
    print(f"wattmesh ledger: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_init(args: argparse.Namespace) -> int:
    timers: dict[str, int] = {}
    if args.view_change_ms is not None:
        timers["view_change_ms"] = args.view_change_ms
    if args.request_timeout_ms is not None:
        timers["request_timeout_ms"] = args.request_timeout_ms
    batch: dict[str, int] = {}
    if args.batch_max is not None:
        batch["max_txs"] = args.batch_max
    if args.batch_delay_ms is not None:
        batch["max_delay_ms"] = args.batch_delay_ms
    genesis = None
    if args.genesis is not None:
        try:
            genesis = json.loads(args.genesis.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return _fail(f"--genesis: cannot read {args.genesis}: {exc}")
        if not isinstance(genesis, dict):
            return _fail("--genesis: must hold a JSON object")
    try:
        doc = init_cluster(
            args.dir,
            args.replicas,
            base_port=args.base_port,
            timers=timers,
            batch=batch,
            checkpoint_interval=args.checkpoint_interval,
            genesis=genesis,
        )
    except (SetupError, ClusterFileError, OSError) as exc:
        return _fail(str(exc))
    ports = [r["port"] for r in doc["replicas"]]
    print(json.dumps({"dir": str(args.dir), "replicas": len(ports), "f": doc["f"], "ports": ports}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cluster = load_cluster(args.dir / CLUSTER_FILE)
        cluster.replica(args.replica)
        factory = load_factory(args.contract)
    except (ClusterFileError, ValueError) as exc:
        return _fail(str(exc))
    from ledger.node import serve
    from ledger.store import StoreError

    try:
        asyncio.run(
            serve(args.dir, args.replica, factory, listen_port=args.listen_port)
        )
    except (KeyFileError, ClusterFileError) as exc:
        return _fail(str(exc))
    except (StoreError, sqlite3.DatabaseError) as exc:
        return _fail(f"replica {args.replica}: store: {exc}")
    except ValueError as exc:  # the core's PbftConfigError, the contract's GenesisError
        return _fail(f"replica {args.replica}: {exc}")
    except OSError as exc:
        return _fail(f"replica {args.replica}: {exc}")
    return 0


def replica_command(directory: Path, replica: int, contract: str = DEFAULT_CONTRACT) -> list[str]:
    return [
        sys.executable, "-m", "ledger", "run",
        "--dir", str(directory), "--replica", str(replica), "--contract", contract,
    ]  # fmt: skip


def cmd_cluster(args: argparse.Namespace) -> int:
    try:
        cluster = load_cluster(args.dir / CLUSTER_FILE)
        load_factory(args.contract)
    except (ClusterFileError, ValueError) as exc:
        return _fail(str(exc))
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    backoff = dict.fromkeys(range(cluster.n), RESTART_BACKOFF_S[0])
    restart_at: dict[int, float] = {}
    for i in range(cluster.n):
        procs[i] = subprocess.Popen(replica_command(args.dir, i, args.contract))
    while not stopping:
        time.sleep(0.2)  # a supervisor's poll, not a test wait
        for i, proc in list(procs.items()):
            code = proc.poll()
            if code is None or stopping:
                continue
            now = time.monotonic()
            if i not in restart_at:
                print(f"replica {i} exited with {code}; restarting", file=sys.stderr)
                restart_at[i] = now + backoff[i]
                backoff[i] = min(RESTART_BACKOFF_S[1], backoff[i] * 2)
            elif now >= restart_at[i]:
                del restart_at[i]
                procs[i] = subprocess.Popen(replica_command(args.dir, i, args.contract))
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        cluster = load_cluster(args.dir / CLUSTER_FILE)
    except ClusterFileError as exc:
        return _fail(str(exc))
    results = asyncio.run(_statuses([(r.host, r.port) for r in cluster.replicas], args.timeout))
    for line in results:
        print(json.dumps(line, sort_keys=True))
    return 0 if all("error" not in r for r in results) else 1


async def _statuses(addresses: list[tuple[str, int]], timeout: float) -> list[dict[str, Any]]:
    from ledger.framing import FrameError, encode_frame, read_message

    async def one(i: int, host: str, port: int) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    await read_message(reader)
                    writer.write(
                        encode_frame({"t": "query", "id": 1, "path": "ledger.status", "params": {}})
                    )
                    answer = await read_message(reader)
                finally:
                    writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, FrameError) as exc:
            return {"replica": i, "error": f"unreachable: {exc or type(exc).__name__}"}
        value = answer.get("value")
        if not answer.get("ok") or not isinstance(value, dict):
            return {"replica": i, "error": str(answer.get("error"))}
        return value

    return list(await asyncio.gather(*(one(i, h, p) for i, (h, p) in enumerate(addresses))))


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        cluster = load_cluster(args.dir / CLUSTER_FILE)
        cluster.replica(args.replica)
    except ClusterFileError as exc:
        return _fail(str(exc))
    path = args.dir / replica_db_file(args.replica)
    if not path.exists():
        return _fail(f"--replica: no store at {path}")
    from ledger.pbft.config import PbftConfig
    from ledger.pbft.signing import Keyring
    from ledger.store import BlockStore
    from ledger.verify import certificate_checker, verify_chain

    config = PbftConfig.from_dict(dict(cluster.raw))
    keyring = Keyring(r.public_key for r in config.replicas)
    try:
        store = BlockStore(path)
        try:
            problems = verify_chain(store.blocks(), certificate_checker(keyring, config.quorum))
            height = store.head()[0]
        finally:
            store.close()
    except sqlite3.DatabaseError as exc:
        print(f"wattmesh ledger: replica {args.replica}: store: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    print(json.dumps({"replica": args.replica, "height": height, "ok": not problems,
                      "problems": len(problems)}))  # fmt: skip
    return 1 if problems else 0
