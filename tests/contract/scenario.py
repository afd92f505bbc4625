"""A seeded day of community life through the contract, for runs in separate interpreters.

``python -m tests.contract.scenario SEED RULE`` prints the final state digest; the test runs it
under different ``PYTHONHASHSEED`` values, so any dependence on set or dict order shows up as
two different digests.
"""

from __future__ import annotations

import random
import sys

from tests.contract.harness import AFTER, Community

HOURS = [f"2026-11-24T{h:02d}" for h in range(8, 20)]


def run(seed: int, rule: str) -> Community:
    rng = random.Random(seed)
    c = Community(clearing_rule=rule)
    producers = [f"P{i}" for i in range(6)]
    consumers = [f"C{i}" for i in range(6)]
    for n, who in enumerate(producers + consumers):
        c.admit(who, "prosumer" if who.startswith("P") else "consumer", 10 + n)
        c.meter(f"M{who}", who, 60 + n)
        if who.startswith("P"):
            c.res(f"PV{who}", who, 4000)
        c.mint(who, 2_000_000)
    for hour in HOURS:
        c.ok("OPERATOR", "auction.open", {"listing_id": hour})
        for who in rng.sample(producers + consumers, k=len(producers + consumers)):
            wh, price = rng.randint(100, 2500), rng.randint(39_000, 95_000)
            if who.startswith("P") and rng.random() < 0.7:
                body = {"listing_id": hour, "res_id": f"PV{who}", "wh": wh, "reserve_price": price}
                c.tx(who, "auction.offer", body)
            else:
                c.tx(who, "auction.bid", {"listing_id": hour, "wh": wh, "bid_price": price})
        c.ok("OPERATOR", "auction.close", {"listing_id": hour})
        for who in producers + consumers:
            for quarter in ("00", "15", "30", "45"):
                exp = rng.randint(0, 900) if who.startswith("P") else 0
                c.report(f"M{who}", f"{hour}:{quarter}", rng.randint(0, 600), exp)
        c.ok("OPERATOR", "auction.settle", {"listing_id": hour}, ts=AFTER)
    return c


if __name__ == "__main__":
    print(run(int(sys.argv[1]), sys.argv[2]).contract.state_digest().hex())
