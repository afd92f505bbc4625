"""What the day cost the community: with its own hourly market, and at grid tariffs alone.

Pure functions over what the demo recorded: each hour's order book (as the ledger accepted it)
and each home's metered import and export. The other clearing rules are recomputed from the same
books with the contract's own pure clearing functions (``ledger.contract.clearing``), so the
comparison uses exactly the rules the replicas run.

Settlement model of the comparison, per home and hour (energies in Wh, prices micro-tokens/kWh):
a buyer pays its matched energy at the trade price and imports the rest of its metered import at
the retail price of the hour; a seller is paid its matched energy at the trade price and sells the
rest of its metered export at the feed-in price; a seller that delivered less than it sold buys
the shortfall at retail (it is the one that failed to deliver), and a buyer that used less than it
bought gets the excess back at feed-in. Costs are micro-tokens (1 token = 1 EUR), positive = paid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ledger.contract.clearing import Clearing, Order, clear, efficiency, payment


@dataclass(frozen=True, slots=True)
class Tariffs:
    retail_peak: int
    retail_offpeak: int
    feed_in: int
    peak_hours: tuple[int, int]

    def retail(self, hour_of_day: int) -> int:
        start, end = self.peak_hours
        return self.retail_peak if start <= hour_of_day % 24 < end else self.retail_offpeak

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Tariffs:
        peak = params["peak_hours"]
        assert isinstance(peak, (list, tuple)) and len(peak) == 2
        rp, ro, fi = params["retail_peak"], params["retail_offpeak"], params["feed_in"]
        assert isinstance(rp, int) and isinstance(ro, int) and isinstance(fi, int)
        return cls(rp, ro, fi, (int(peak[0]), int(peak[1])))


@dataclass
class HourBook:
    """One listing: its order book in acceptance order and what each home's meter measured."""

    listing_id: str
    hour_of_day: int
    offers: list[Order] = field(default_factory=list)
    bids: list[Order] = field(default_factory=list)
    metered: dict[str, tuple[int, int]] = field(default_factory=dict)  # id_grid -> (imp, exp)


def _split(clearing: Clearing) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    bought: dict[str, int] = {}
    sold: dict[str, int] = {}
    money: dict[str, int] = {}  # paid (+) or received (-) in the market
    for t in clearing.trades:
        amount = payment(t.wh, t.price)
        bought[t.buyer] = bought.get(t.buyer, 0) + t.wh
        sold[t.seller] = sold.get(t.seller, 0) + t.wh
        money[t.buyer] = money.get(t.buyer, 0) + amount
        # a seller receives its own price (McAfee's rule: less than the buyer paid; the
        # difference goes to the community's purse, not to a home)
        money[t.seller] = money.get(t.seller, 0) - payment(t.wh, t.seller_price)
    return bought, sold, money


def hour_costs(book: HourBook, tariffs: Tariffs, rule: str | None) -> dict[str, int]:
    """Each home's cost of one hour; ``rule=None`` is the grid-only day (no market)."""
    retail = tariffs.retail(book.hour_of_day)
    fin = tariffs.feed_in
    if rule is None:
        bought: dict[str, int] = {}
        sold: dict[str, int] = {}
        money: dict[str, int] = {}
    else:
        bought, sold, money = _split(clear(rule, book.offers, book.bids))
    costs: dict[str, int] = {}
    for home, (imp, exp) in book.metered.items():
        b, s = bought.get(home, 0), sold.get(home, 0)
        cost = money.get(home, 0)
        cost += payment(max(0, imp - b), retail) - payment(max(0, b - imp), fin)
        cost -= payment(max(0, exp - s), fin)
        cost += payment(max(0, s - exp), retail)
        costs[home] = cost
    for home in set(money) - set(book.metered):  # traded but no meter data: market money only
        costs[home] = money[home]
    return costs


def day_costs(books: Sequence[HourBook], tariffs: Tariffs, rule: str | None) -> dict[str, int]:
    total: dict[str, int] = {}
    for book in books:
        for home, cost in hour_costs(book, tariffs, rule).items():
            total[home] = total.get(home, 0) + cost
    return total


def compare_rules(
    books: Sequence[HourBook], tariffs: Tariffs, rules: Iterable[str]
) -> dict[str, object]:
    """The community's cost per clearing rule against the grid-only day, in micro-tokens."""
    grid = day_costs(books, tariffs, None)
    grid_total = sum(grid.values())
    out: dict[str, object] = {
        "grid_only": {"community_cost_utok": grid_total, "per_home_utok": grid},
    }
    for rule in rules:
        homes = day_costs(books, tariffs, rule)
        total = sum(homes.values())
        clearings = [clear(rule, b.offers, b.bids) for b in books]
        gains = [efficiency(b.offers, b.bids, c) for b, c in zip(books, clearings, strict=True)]
        traded_gains, best_gains = sum(g[0] for g in gains), sum(g[1] for g in gains)
        out[rule] = {
            "community_cost_utok": total,
            "saving_utok": grid_total - total,
            "saving_pct": round(100 * (grid_total - total) / grid_total, 2) if grid_total else 0.0,
            "traded_wh": sum(c.traded_wh for c in clearings),
            "per_home_utok": homes,
            # gains from trade realised against the efficient allocation's, over the day and
            # per clearing (None where the book allowed no gain at all)
            "traded_gains_utok": traded_gains,
            "efficient_gains_utok": best_gains,
            "efficiency": ratio(traded_gains, best_gains),
            "efficiency_per_clearing": {
                b.listing_id: ratio(*g) for b, g in zip(books, gains, strict=True)},
        }
    return out


def ratio(part: int, whole: int) -> float | None:
    """A share for a report (floats only here, never in the contract)."""
    return round(part / whole, 4) if whole else None


def deviations(trades: Iterable[Mapping[str, object]],
               metered: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """How far an hour's metered energy missed what its homes traded (Wh): sellers that exported
    less than they sold (shortfall) and buyers that imported less than they bought (excess), the
    cases the settlement rules above price. Homes trade on forecasts, so these are not zero."""
    sold: dict[str, int] = {}
    bought: dict[str, int] = {}
    for t in trades:
        wh = int(str(t["wh"]))
        sold[str(t["seller"])] = sold.get(str(t["seller"]), 0) + wh
        bought[str(t["buyer"])] = bought.get(str(t["buyer"]), 0) + wh
    short = {h: max(0, wh - metered.get(h, (0, 0))[1]) for h, wh in sold.items()}
    excess = {h: max(0, wh - metered.get(h, (0, 0))[0]) for h, wh in bought.items()}
    return {
        "seller_shortfall_wh": sum(short.values()),
        "sellers_short": sum(1 for v in short.values() if v),
        "buyer_excess_wh": sum(excess.values()),
        "buyers_in_excess": sum(1 for v in excess.values() if v),
    }
