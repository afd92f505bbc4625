"""The hourly trading decision of each home: sell the planned surplus, buy the planned deficit.

Prices are drawn (seeded) inside the tariff band of the hour: a seller's reserve price in the
lower part of the band (it would otherwise get only the feed-in price), a buyer's bid in the upper
part (it would otherwise pay retail). Quantities are the EMS plan's net energy for the hour.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tools.demo.economics import Tariffs
from tools.demo.plan import HomePlan

MIN_ORDER_WH = 50  # below this an order is not worth a transaction
RESERVE_BAND = (0.05, 0.40)
BID_BAND = (0.40, 0.95)


@dataclass(frozen=True, slots=True)
class Decision:
    side: str  # "offer" | "bid"
    wh: int
    price: int


def decide(
    plan: HomePlan, hour_of_day: int, tariffs: Tariffs, rng: random.Random
) -> Decision | None:
    net = plan.net_wh(hour_of_day)
    lo, hi = tariffs.feed_in, tariffs.retail(hour_of_day)
    band = hi - lo
    if net <= -MIN_ORDER_WH and plan.home.pv_w > 0:
        wh = min(-net, plan.home.pv_w)  # the contract caps an offer at the RES's rated Wh/h
        return Decision("offer", wh, lo + int(band * rng.uniform(*RESERVE_BAND)))
    if net >= MIN_ORDER_WH:
        return Decision("bid", net, lo + int(band * rng.uniform(*BID_BAND)))
    return None
