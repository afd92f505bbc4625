"""``wattmesh bench auction --orders N --json``: clear N offers plus N bids inside the contract.

Builds a community (operator, ``--members`` producers each with one RES, as many consumers),
submits N offers and N bids through ``apply`` (not timed), then times the one ``apply`` of
``auction.close`` that clears the book and moves the tokens, ``--repeat`` times from the same
snapshot; ``clear_ms`` is the fastest run (the machine's noise only ever adds time), with the
median beside it, and ``clear_cpu_ms``, the smallest CPU time of this process over the runs
(on a shared machine the wall clock also counts time the scheduler gave to other processes).
Prices and sizes come from a seeded generator, so a run is repeatable.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.contract.api import BlockContext, Transaction
from ledger.contract.community import CommunityContract
from ledger.contract.params import DEFAULTS, RULES

LISTING = "2026-11-24T13"


def _key(n: int) -> bytes:
    """Deterministic distinct Ed25519 public keys (no signing happens inside the contract)."""
    seed = n.to_bytes(4, "big") * 8
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


class _Driver:
    def __init__(self, contract: CommunityContract) -> None:
        self.contract = contract
        self.height = 0

    def apply(self, sender: bytes, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        self.height += 1
        tx = Transaction(f"{self.height:064x}", sender, kind, body, self.height)
        receipt = self.contract.apply(tx, BlockContext(self.height, 0, 0))
        if not receipt.ok:
            raise RuntimeError(f"{kind} {body}: {receipt.code} {receipt.message}")
        return dict(receipt.result)


def run(orders: int, members: int, rule: str, seed: int, repeat: int = 5) -> dict[str, Any]:
    op = _key(0)
    genesis = {
        "version": 1,
        "params": {**DEFAULTS, "clearing_rule": rule},
        "members": [
            {
                "id_grid": "OP",
                "commitment": "00" * 32,
                "public_key": op.hex(),
                "role": "operator",
            }
        ],
        "allocations": {"OP": members * 10**14},
    }
    d = _Driver(CommunityContract(genesis))
    rng = random.Random(seed)
    low, high = DEFAULTS["price_min"], DEFAULTS["price_max"]
    producers: list[bytes] = []
    consumers: list[bytes] = []
    started = time.perf_counter()
    for i in range(members):
        for role, out in (("producer", producers), ("consumer", consumers)):
            key = _key(1 + 2 * i + (role == "consumer"))
            who = f"{role[0].upper()}{i:05d}"
            body = {"id_grid": who, "commitment": key.hex(), "public_key": key.hex()}
            body |= {"role": role}
            d.apply(op, "registry.admit", body)
            out.append(key)
        res = {"res_id": f"PV{i:05d}", "owner": f"P{i:05d}", "kind": "PV"}
        d.apply(op, "registry.add_res", res | {"rated_power_w": 10**8})
        d.apply(op, "token.transfer", {"to": f"C{i:05d}", "amount": 10**14})
    d.apply(op, "auction.open", {"listing_id": LISTING})
    for n in range(orders):
        i = n % members
        offer = {"listing_id": LISTING, "res_id": f"PV{i:05d}", "wh": rng.randint(100, 5000)}
        d.apply(producers[i], "auction.offer", offer | {"reserve_price": rng.randint(low, high)})
        bid = {"listing_id": LISTING, "wh": rng.randint(100, 5000)}
        d.apply(consumers[i], "auction.bid", bid | {"bid_price": rng.randint(low, high)})
    setup_ms = (time.perf_counter() - started) * 1000
    book = d.contract.snapshot()
    runs: list[float] = []
    cpu: list[float] = []
    for _ in range(repeat):
        d.contract.restore(book)
        gc.collect()  # each run starts from the same heap, not from the previous run's garbage
        started, started_cpu = time.perf_counter(), time.process_time()
        result = d.apply(op, "auction.close", {"listing_id": LISTING})
        runs.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    runs.sort()
    cpu.sort()
    return {
        "orders": orders,
        "clear_ms": round(runs[0], 3),
        "clear_ms_median": round(runs[len(runs) // 2], 3),
        "clear_cpu_ms": round(cpu[0], 3),  # CPU time of this process: what others' load hides
        "repeat": repeat,
        "rule": rule,
        "members": 2 * members,
        "trades": len(result["trades"]),
        "traded_wh": result["traded_wh"],
        "mcp": result["mcp"],
        "setup_ms": round(setup_ms, 1),
    }


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _handler(args: argparse.Namespace) -> int:
    report = run(args.orders, min(args.members, args.orders), args.rule, args.seed, args.repeat)
    print(json.dumps(report, sort_keys=True))
    return 0


def register_bench(bench_subparsers: Any) -> None:
    p = bench_subparsers.add_parser(
        "auction", help="clear N offers plus N bids inside the contract; prints JSON"
    )
    p.add_argument("--orders", type=_positive, default=10_000, help="offers, and as many bids")
    p.add_argument("--members", type=_positive, default=100, help="producers, and consumers")
    p.add_argument("--rule", choices=RULES, default="paper", help="clearing rule")
    p.add_argument("--repeat", type=_positive, default=5, help="runs; clear_ms is the fastest")
    p.add_argument("--seed", type=int, default=1, help="seed of the order generator")
    p.add_argument("--json", action="store_true", help="print JSON (the only output format)")
    p.set_defaults(func=_handler)
