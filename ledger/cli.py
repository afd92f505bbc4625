"""``wattmesh ledger keygen|genesis|init|run|cluster|status|verify|personal``: the replica's
command line.

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ledger.argtypes import int_in
from ledger.cluster import (
    CLUSTER_FILE,
    OPERATOR_KEY_FILE,
    ClusterConfig,
    ClusterFileError,
    load_cluster,
    replica_db_file,
    replica_key_file,
)
from ledger.contract.api import MAX_REPLICA_ID
from ledger.fields import read_json_object
from ledger.keys import KeyFileError, load_key, public_hex
from ledger.setup import (
    DEFAULT_CONTRACT,
    SetupError,
    assemble_cluster,
    init_cluster,
    load_factory,
    make_key,
    parse_address,
    public_key_file,
    read_public_key,
    write_cluster_file,
)

EXIT_BAD_INPUT = 2
RESTART_BACKOFF_S = (0.5, 5.0)


_non_negative = int_in(0)


def register(subparsers: Any) -> None:
    ledger = subparsers.add_parser("ledger", help="PBFT ledger replicas")
    sub = ledger.add_subparsers(dest="ledger_command", metavar="ACTION")

    p = sub.add_parser("keygen", help="make this host's key; prints only the public key")
    p.add_argument("--dir", type=Path, default=None, help="the replica's (or operator's) directory")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--replica", type=_non_negative, default=None, help="writes replica-I.key")
    who.add_argument("--operator", action="store_true", help="writes operator.key")
    who.add_argument("--out", type=Path, default=None, help="any key file (a member's wallet)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("genesis", help="assemble cluster.json from public keys and addresses")
    p.add_argument("--replica", action="append", default=[], metavar="HOST:PORT:KEY",
                   help="each replica in id order; KEY: 64 hex or a .pub file")  # fmt: skip
    p.add_argument("--operator-key", default=None, help="64 hex or the operator's .pub file")
    p.add_argument("--operator-id", default="OPERATOR")
    p.add_argument("--treasury", type=_non_negative, default=0,
                   help="micro-tokens the genesis allocates to the operator")  # fmt: skip
    p.add_argument("--params", type=Path, default=None, help="JSON of community parameters")
    _genesis_options(p, "a whole genesis JSON instead")
    p.add_argument("--out", type=Path, required=True, help="the cluster file to write")
    p.set_defaults(func=cmd_genesis)

    p = sub.add_parser("personal", help="the operator's register of members' personal data")
    p.add_argument("action", choices=("add", "show", "erase"))
    p.add_argument("--db", type=Path, required=True, help="the register (SQLite, mode 0600)")
    p.add_argument("--id-grid", required=True)
    p.set_defaults(func=cmd_personal)

    p = sub.add_parser(
        "init",
        help="local clusters and tests: every key and a cluster file in one directory (a "
        "community uses keygen on each host and genesis instead)",
    )
    p.add_argument("--replicas", type=_non_negative, default=4, help="3f+1 replicas (default 4)")
    p.add_argument("--dir", type=Path, required=True, help="an empty or new directory")
    p.add_argument("--base-port", type=_non_negative, default=None, help="ports P..P+n-1")
    _genesis_options(p, "genesis JSON instead of default")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run one replica in the foreground (SIGTERM stops it)")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--replica", type=_non_negative, required=True)
    p.add_argument("--contract", default=DEFAULT_CONTRACT, help=argparse.SUPPRESS)
    p.add_argument("--listen-port", type=_non_negative, default=None, help=argparse.SUPPRESS)
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="a replica joining by a reconfiguration (not in cluster.json): where it "
                   "listens, as the members' change names it")  # fmt: skip
    p.add_argument(
        "--pre-prepare-ids",
        action="store_true",
        help="as primary, name a batch's transactions by id (for clients that send every "
        "request to every replica)",
    )
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
    p.add_argument("--replica", type=_non_negative, required=True)
    p.set_defaults(func=cmd_verify)

    ledger.set_defaults(func=lambda args: _help(ledger))


def _genesis_options(p: argparse.ArgumentParser, genesis_help: str) -> None:
    """What a new cluster starts from, for ``genesis`` and ``init``: a genesis file, and the
    consensus tuning its cluster file records."""
    p.add_argument("--genesis", type=Path, default=None, help=genesis_help)
    p.add_argument("--view-change-ms", type=_non_negative, default=None)
    p.add_argument("--request-timeout-ms", type=_non_negative, default=None)
    p.add_argument("--batch-max", type=_non_negative, default=None)
    p.add_argument("--batch-delay-ms", type=_non_negative, default=None)
    p.add_argument("--checkpoint-interval", type=_non_negative, default=64)


def _timers_and_batch(args: argparse.Namespace) -> tuple[dict[str, int], dict[str, int]]:
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
    return timers, batch


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_BAD_INPUT


def _fail(message: str) -> int:
    print(f"wattmesh ledger: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.out is not None:
        if args.dir is not None:
            return _fail("--out: give either --out or --dir with --replica/--operator")
        key_file = args.out
    else:
        if args.dir is None:
            return _fail("--dir: required with --replica or --operator")
        name = OPERATOR_KEY_FILE if args.operator else replica_key_file(args.replica)
        key_file = args.dir / name
    try:
        public = make_key(key_file)
    except (SetupError, OSError) as exc:
        return _fail(str(exc))
    print(json.dumps({"public_key": public, "public_key_file": str(public_key_file(key_file))}))
    return 0


def _replica_spec(text: str, n: int) -> tuple[str, int, str]:
    where = f"--replica #{n}"
    parts = text.rsplit(":", 2)
    if len(parts) != 3:
        raise SetupError(f"{where}: expected HOST:PORT:KEY, got {text!r}")
    host, port_text, key = parts
    host = host.strip("[]")  # [::1]:7100:KEY for IPv6
    try:
        port = int(port_text)
    except ValueError:
        raise SetupError(f"{where}: port must be an integer, got {port_text!r}") from None
    return host, port, read_public_key(key, f"{where} key")


def cmd_genesis(args: argparse.Namespace) -> int:
    from ledger.contract import GenesisError, default_genesis

    timers, batch = _timers_and_batch(args)
    try:
        if args.out.exists():
            raise SetupError(f"--out: {args.out} exists; a cluster file is never overwritten")
        replicas = [_replica_spec(text, n) for n, text in enumerate(args.replica)]
        if args.genesis is not None:
            if args.operator_key or args.params or args.treasury:
                raise SetupError("--genesis: give a whole genesis or --operator-key, not both")
            genesis = read_json_object(args.genesis, SetupError, "--genesis")
        else:
            if args.operator_key is None:
                raise SetupError("--operator-key: required (or --genesis)")
            operator = read_public_key(args.operator_key, "--operator-key")
            params = read_json_object(args.params, SetupError, "--params") if args.params else {}
            genesis = default_genesis(
                operator, operator_id_grid=args.operator_id, treasury=args.treasury, **params
            )
        doc = assemble_cluster(
            replicas,
            genesis,
            timers=timers,
            batch=batch,
            checkpoint_interval=args.checkpoint_interval,
        )
        write_cluster_file(args.out, doc)
    except (SetupError, ClusterFileError, GenesisError, OSError) as exc:
        return _fail(str(exc))
    print(json.dumps({"out": str(args.out), "replicas": len(replicas), "f": doc["f"]}))
    return 0


def cmd_personal(args: argparse.Namespace) -> int:
    """``add`` reads ``{"name", "email", "address"}`` as JSON on stdin (never on the command
    line) and prints the commitment for ``registry.admit`` with the opening for the member."""
    from ledger.personal import PersonalDataError, PersonalStore

    try:
        with PersonalStore(args.db) as store:
            if args.action == "add":
                try:
                    data = json.loads(sys.stdin.read())
                except ValueError as exc:
                    raise PersonalDataError(f"stdin: not JSON: {exc}") from None
                if not isinstance(data, dict) or set(data) != {"name", "email", "address"}:
                    raise PersonalDataError('stdin: expected {"name", "email", "address"}')
                digest, opening = store.add(args.id_grid, **data)
                out: dict[str, Any] = {"id_grid": args.id_grid, "commitment": digest,
                                       "opening": opening.as_dict()}  # fmt: skip
            elif args.action == "show":
                found = store.get(args.id_grid)
                if found is None:
                    raise PersonalDataError(f"{args.id_grid}: not in the register")
                out = {"id_grid": args.id_grid, "commitment": found[0],
                       "opening": found[1].as_dict()}  # fmt: skip
            else:
                out = {"id_grid": args.id_grid, "erased": store.erase(args.id_grid)}
    except (PersonalDataError, OSError, sqlite3.DatabaseError) as exc:
        return _fail(f"personal: {exc}")
    print(json.dumps(out, sort_keys=True))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    timers, batch = _timers_and_batch(args)
    genesis = None
    try:
        if args.genesis is not None:
            genesis = read_json_object(args.genesis, SetupError, "--genesis")
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


def _own_key_matches(directory: Path, cluster: ClusterConfig, replica: int) -> None:
    """The replica's key file holds the key ``cluster.json`` names for it (a swapped or
    regenerated key is found at start, not by peers refusing every message)."""
    path = directory / replica_key_file(replica)
    if public_hex(load_key(path)) != cluster.replica(replica).public_key.hex():
        raise KeyFileError(f"{path}: not the key cluster.json names for replica {replica}")


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cluster = load_cluster(args.dir / CLUSTER_FILE)
        if args.replica < cluster.n:
            _own_key_matches(args.dir, cluster, args.replica)
        elif args.replica > MAX_REPLICA_ID or not (
            args.address or (args.dir / replica_db_file(args.replica)).exists()
        ):
            raise ClusterFileError(
                f"replica {args.replica} is not in the cluster (0..{cluster.n - 1}); a replica "
                "joining by a reconfiguration is started with --address"
            )
        join = None if args.address is None else parse_address(args.address, "--address")
        factory = load_factory(args.contract)
    except (ClusterFileError, ValueError) as exc:
        return _fail(str(exc))
    from ledger.node import serve
    from ledger.store import StoreError

    try:
        asyncio.run(
            serve(
                args.dir,
                args.replica,
                factory,
                listen_port=args.listen_port,
                pre_prepare_ids=args.pre_prepare_ids,
                join_address=join,
            )
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


def stop_replicas(
    procs: Iterable[subprocess.Popen[bytes]], timeout_s: float, *, resume: bool = False
) -> None:
    """SIGTERM each live replica process (after SIGCONT with ``resume``: a stopped one must run
    to act on it), then wait ``timeout_s`` for each and kill the ones still running."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            if resume:
                proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()


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
    stop_replicas(procs.values(), timeout_s=10)
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
    except ClusterFileError as exc:
        return _fail(str(exc))
    path = args.dir / replica_db_file(args.replica)
    if not path.exists():
        return _fail(f"--replica: no store at {path}")
    from ledger.pbft.config import PbftConfig
    from ledger.pbft.signing import Keyring
    from ledger.store import BlockStore
    from ledger.verify import certificate_checker, epochs_of_store, verify_chain

    config = PbftConfig.from_dict(dict(cluster.raw))
    keyring = Keyring(r.public_key for r in config.replicas)
    try:
        store = BlockStore(path)
        try:
            epochs = epochs_of_store(store, config)
            check = certificate_checker(keyring, config.quorum, epochs)
            problems = verify_chain(store.blocks(), check)
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
