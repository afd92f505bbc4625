"""A seeded day of community life through the contract, for runs in separate interpreters.

``python -m tests.contract.scenario SEED RULE [sealed]`` prints the final state digest; the test
runs it under different ``PYTHONHASHSEED`` values, so any dependence on set or dict order shows
up as two different digests. ``sealed``: the orders are committed, revealed after the close (one
in ten never is) and cleared, in a community with a feeder meter.
"""

from __future__ import annotations

import hashlib
import random
import sys
from typing import Any

from ledger.contract.sealed import order_commitment
from tests.contract.harness import AFTER, Community

HOURS = [f"2026-11-24T{h:02d}" for h in range(8, 20)]


def run(seed: int, rule: str, sealed: bool = False) -> Community:
    rng = random.Random(seed)
    c = Community(clearing_rule=rule, sealed_bids=sealed)
    producers = [f"P{i}" for i in range(6)]
    consumers = [f"C{i}" for i in range(6)]
    for n, who in enumerate(producers + consumers):
        c.admit(who, "prosumer" if who.startswith("P") else "consumer", 10 + n)
        c.meter(f"M{who}", who, 60 + n)
        if who.startswith("P"):
            c.res(f"PV{who}", who, 4000)
        c.mint(who, 2_000_000)
    if sealed:
        c.meter("FEEDER", "OPERATOR", 80, import_limit_w=10**6, export_limit_w=10**6, role="feeder")
    for hour in HOURS:
        c.ok("OPERATOR", "auction.open", {"listing_id": hour})
        reveals: list[tuple[str, dict[str, Any]]] = []
        for who in rng.sample(producers + consumers, k=len(producers + consumers)):
            wh, price = rng.randint(100, 2500), rng.randint(39_000, 95_000)
            offer = who.startswith("P") and rng.random() < 0.7
            if sealed:
                side, res_id = ("offer", f"PV{who}") if offer else ("bid", "")
                salt = hashlib.sha256(f"{seed}/{hour}/{who}".encode()).digest()
                body = {"listing_id": hour, "side": side,
                        "commitment": order_commitment(hour, who, side, wh, price, res_id, salt)}
                if c.tx(who, "auction.commit", body).ok:
                    reveals.append((who, {"listing_id": hour, "side": side, "wh": wh,
                                          "price": price, "res_id": res_id, "salt": salt.hex()}))
            elif offer:
                body = {"listing_id": hour, "res_id": f"PV{who}", "wh": wh, "reserve_price": price}
                c.tx(who, "auction.offer", body)
            else:
                c.tx(who, "auction.bid", {"listing_id": hour, "wh": wh, "bid_price": price})
        c.ok("OPERATOR", "auction.close", {"listing_id": hour})
        if sealed:
            for who, body in reveals:
                if rng.random() < 0.9:
                    c.tx(who, "auction.reveal", body)
            c.ok("OPERATOR", "auction.clear", {"listing_id": hour}, ts=AFTER)
        for who in producers + consumers:
            for quarter in ("00", "15", "30", "45"):
                exp = rng.randint(0, 900) if who.startswith("P") else 0
                c.report(f"M{who}", f"{hour}:{quarter}", rng.randint(0, 600), exp)
        if sealed:
            for quarter in ("00", "15", "30", "45"):
                c.report("FEEDER", f"{hour}:{quarter}", rng.randint(0, 3000), rng.randint(0, 3000))
        c.ok("OPERATOR", "auction.settle", {"listing_id": hour}, ts=AFTER)
    return c


if __name__ == "__main__":
    sealed = sys.argv[3:] == ["sealed"]
    print(run(int(sys.argv[1]), sys.argv[2], sealed).contract.state_digest().hex())
