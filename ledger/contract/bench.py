"""``wattmesh bench auction --orders N --json``: clear N offers plus N bids inside the contract.

Builds a community (operator, N producers each with one RES, N consumers: one order per member,
as the default order policy keeps it), submits N offers and N bids through ``apply`` (not
timed), then times the one ``apply`` of ``auction.close`` that clears the book and moves the
tokens, for every clearing rule (or the one ``--rule`` names) on the same book, ``--repeat``
times from the same snapshot; ``clear_ms`` is the fastest run (the machine's noise only ever
adds time), with the median beside it, and ``clear_cpu_ms``, the smallest CPU time of this
process over the runs (on a shared machine the wall clock also counts time the scheduler gave
to other processes). ``sealed`` is the same book sealed: every order committed while the listing
is open, then each reveal timed (``reveal_us_per_order``: hash check, order checks and escrow)
and ``auction.clear`` timed (``clear_ms``: ranking the orders by their service keys, then the
clearing). Prices and sizes come from a seeded generator, so a run is repeatable.
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
from ledger.contract.sealed import order_commitment
from ledger.encoding import canonical, decode

LISTING = "2026-11-24T13"
CLOSE_MS = 1_790_000_000_000


def _key(n: int) -> bytes:
    """Deterministic distinct Ed25519 public keys (no signing happens inside the contract)."""
    seed = n.to_bytes(4, "big") * 8
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


class _Driver:
    def __init__(self, contract: CommunityContract) -> None:
        self.contract = contract
        self.height = 0

    def apply(self, sender: bytes, kind: str, body: dict[str, Any], ts: int = 0) -> dict[str, Any]:
        self.height += 1
        tx = Transaction(f"{self.height:064x}", sender, kind, body, self.height)
        receipt = self.contract.apply(tx, BlockContext(self.height, 0, ts))
        if not receipt.ok:
            raise RuntimeError(f"{kind} {body}: {receipt.code} {receipt.message}")
        return dict(receipt.result)


def _community(members: int, sealed: bool) -> tuple[_Driver, bytes, list[bytes], list[bytes]]:
    op = _key(0)
    genesis = {
        "version": 1,
        "params": {**DEFAULTS, "sealed_bids": sealed},
        "members": [
            {
                "id_grid": "OP",
                "commitment": "00" * 32,
                "public_key": op.hex(),
                "role": "operator",
            }
        ],
        "allocations": {"OP": members * (10**14 + 10**9)},
    }
    d = _Driver(CommunityContract(genesis))
    producers: list[bytes] = []
    consumers: list[bytes] = []
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
        d.apply(op, "token.transfer", {"to": f"P{i:05d}", "amount": 10**9})  # sealed: deposits
    d.apply(op, "auction.open", {"listing_id": LISTING})
    return d, op, producers, consumers


def _book(orders: int, seed: int) -> list[tuple[int, int, int, int]]:
    """(offer Wh, reserve price, bid Wh, bid price) per member pair."""
    rng = random.Random(seed)
    low, high = DEFAULTS["price_min"], DEFAULTS["price_max"]
    return [
        (rng.randint(100, 5000), rng.randint(low, high), rng.randint(100, 5000),
         rng.randint(low, high))
        for _ in range(orders)
    ]  # fmt: skip


def _timed(d: _Driver, snapshot: bytes, repeat: int, sender: bytes, kind: str,
           ts: int) -> tuple[list[float], list[float], dict[str, Any]]:  # fmt: skip
    runs: list[float] = []
    cpu: list[float] = []
    result: dict[str, Any] = {}
    for _ in range(repeat):
        d.contract.restore(snapshot)
        gc.collect()  # each run starts from the same heap, not from the previous run's garbage
        started, started_cpu = time.perf_counter(), time.process_time()
        result = d.apply(sender, kind, {"listing_id": LISTING}, ts)
        runs.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    runs.sort()
    cpu.sort()
    return runs, cpu, result


def _figures(runs: list[float], cpu: list[float], result: dict[str, Any]) -> dict[str, Any]:
    gains = result["efficiency"]
    return {
        "clear_ms": round(runs[0], 3),
        "clear_ms_median": round(runs[len(runs) // 2], 3),
        "clear_cpu_ms": round(cpu[0], 3),  # CPU time of this process: what others' load hides
        "trades": len(result["trades"]),
        "traded_wh": result["traded_wh"],
        "mcp": result["mcp"],
        "traded_gains": gains["traded_gains"],
        "efficient_gains": gains["efficient_gains"],
        "efficiency": round(gains["traded_gains"] / gains["efficient_gains"], 4)
        if gains["efficient_gains"]
        else None,
    }


def _with_rule(snapshot: bytes, rule: str) -> bytes:
    """The same book under another clearing rule (the rule is fixed when a listing opens)."""
    data = decode(snapshot)
    data["listings"][LISTING]["rule"] = rule
    return canonical(data, checked=False)


def run_open(orders: int, rules: list[str], seed: int, repeat: int) -> dict[str, Any]:
    started = time.perf_counter()
    d, op, producers, consumers = _community(orders, sealed=False)
    for i, (owh, oprice, bwh, bprice) in enumerate(_book(orders, seed)):
        offer = {"listing_id": LISTING, "res_id": f"PV{i:05d}", "wh": owh}
        d.apply(producers[i], "auction.offer", offer | {"reserve_price": oprice})
        bid = {"listing_id": LISTING, "wh": bwh, "bid_price": bprice}
        d.apply(consumers[i], "auction.bid", bid)
    setup_ms = (time.perf_counter() - started) * 1000
    book = d.contract.snapshot()
    out: dict[str, Any] = {}
    for rule in rules:
        runs, cpu, result = _timed(d, _with_rule(book, rule), repeat, op, "auction.close", 0)
        out[rule] = _figures(runs, cpu, result)
    return {"setup_ms": round(setup_ms, 1), "rules": out}


def run_sealed(orders: int, seed: int, repeat: int) -> dict[str, Any]:
    d, op, producers, consumers = _community(orders, sealed=True)
    reveals: list[tuple[bytes, dict[str, Any]]] = []
    for i, (owh, oprice, bwh, bprice) in enumerate(_book(orders, seed)):
        for key, who, side, wh, price, res_id in (
            (producers[i], f"P{i:05d}", "offer", owh, oprice, f"PV{i:05d}"),
            (consumers[i], f"C{i:05d}", "bid", bwh, bprice, ""),
        ):
            salt = random.Random(f"{seed}/{who}").randbytes(32)
            commitment = order_commitment(LISTING, who, side, wh, price, res_id, salt)
            d.apply(key, "auction.commit", {"listing_id": LISTING, "side": side,
                                            "commitment": commitment})  # fmt: skip
            reveals.append((key, {"listing_id": LISTING, "side": side, "wh": wh, "price": price,
                                  "res_id": res_id, "salt": salt.hex()}))  # fmt: skip
    d.apply(op, "auction.close", {"listing_id": LISTING}, CLOSE_MS)
    gc.collect()
    started, started_cpu = time.perf_counter(), time.process_time()
    for key, body in reveals:
        d.apply(key, "auction.reveal", body, CLOSE_MS)
    reveal_s = time.perf_counter() - started
    reveal_cpu_s = time.process_time() - started_cpu
    runs, cpu, result = _timed(d, d.contract.snapshot(), repeat, op, "auction.clear", CLOSE_MS)
    return {
        "reveal_us_per_order": round(reveal_s * 1e6 / len(reveals), 2),
        "reveal_cpu_us_per_order": round(reveal_cpu_s * 1e6 / len(reveals), 2),
        "rule": DEFAULTS["clearing_rule"],
        **_figures(runs, cpu, result),
    }


def run(orders: int, rules: list[str], seed: int, repeat: int = 5,
        sealed: bool = True) -> dict[str, Any]:  # fmt: skip
    report: dict[str, Any] = {"orders": orders, "members": 2 * orders, "repeat": repeat}
    report["seed"] = seed
    report |= run_open(orders, rules, seed, repeat)
    if sealed:
        report["sealed"] = run_sealed(orders, seed, repeat)
    return report


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _handler(args: argparse.Namespace) -> int:
    rules = list(RULES) if args.rule == "all" else [args.rule]
    report = run(args.orders, rules, args.seed, args.repeat, sealed=not args.no_sealed)
    print(json.dumps(report, sort_keys=True))
    return 0


def register_bench(bench_subparsers: Any) -> None:
    p = bench_subparsers.add_parser(
        "auction", help="clear N offers plus N bids inside the contract; prints JSON"
    )
    p.add_argument("--orders", type=_positive, default=10_000, help="offers, and as many bids")
    p.add_argument("--rule", choices=("all", *RULES), default="all", help="clearing rule(s)")
    p.add_argument("--repeat", type=_positive, default=5, help="runs; clear_ms is the fastest")
    p.add_argument("--seed", type=int, default=1, help="seed of the order generator")
    p.add_argument("--no-sealed", action="store_true", help="skip the sealed-bid figures")
    p.add_argument("--json", action="store_true", help="print JSON (the only output format)")
    p.set_defaults(func=_handler)
