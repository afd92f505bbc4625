"""Community parameters carried in the genesis: clearing rule, order policy, sealed bids,
tariffs, price band, peak hours, and the bounds that meter reports are held to.

Defaults are the paper's (Section 4.3): retail 0.095 EUR/kWh in the peak 13-23 h, feed-in
0.039 EUR/kWh. Prices are integer micro-tokens per kWh (1 token stands for 1 EUR, so
0.095 EUR/kWh = 95_000). The off-peak retail price is the community's own choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ledger.contract.fields import MAX_PRICE

RULES: Final = ("paper", "uniform", "pay_as_bid", "mcafee")
# "one": one order per member per listing, a new one replaces the old while bidding is open (the
# default: the paper's mean of bid prices cannot be dragged by extra orders); "many": any number
# of orders, each its own (the paper as published; with clearing_rule "paper" and sealed_bids
# false it reproduces the seed's market exactly).
ORDER_POLICIES: Final = ("one", "many")

RETAIL_PEAK: Final = 95_000  # micro-tokens per kWh, hours peak_start..peak_end-1
RETAIL_OFFPEAK: Final = 65_000  # community parameter; a typical Portuguese off-peak rate
FEED_IN: Final = 39_000
QUORUM_PCT: Final = 50  # percent; more than half of the members decide a mint
PEAK_HOURS: Final = (13, 23)  # [start, end) in hours of the day, UTC as the listing ids

REPORT_CLOCK_TOLERANCE_MS: Final = 5 * 60_000  # an interval may end this long after the block
REPORT_WINDOW_MS: Final = 7 * 24 * 3_600_000  # and may start at most this long before it
MAX_REPORT_WINDOW_MS: Final = 30 * 366 * 24 * 3_600_000  # a replayed past (the demo) fits in here
FEEDER_TOLERANCE_PERMILLE: Final = 30  # losses plus meter error, of the members' metered flow
COMMIT_DEPOSIT: Final = 100_000  # micro-tokens held per sealed order, forfeit if not revealed
REVEAL_WINDOW_MS: Final = 10 * 60_000  # after auction.close, before unrevealed orders forfeit

DEFAULTS: Final[Mapping[str, Any]] = {
    "clearing_rule": "paper",
    "retail_peak": RETAIL_PEAK,
    "retail_offpeak": RETAIL_OFFPEAK,
    "feed_in": FEED_IN,
    "peak_hours": list(PEAK_HOURS),
    # the tariff band: nobody sells below what the grid pays, nobody buys above what it charges
    "price_min": FEED_IN,
    "price_max": RETAIL_PEAK,
    "order_policy": "one",
    "sealed_bids": True,
    "commit_deposit": COMMIT_DEPOSIT,
    "reveal_window_ms": REVEAL_WINDOW_MS,
    "report_clock_tolerance_ms": REPORT_CLOCK_TOLERANCE_MS,
    "report_window_ms": REPORT_WINDOW_MS,
    "feeder_tolerance_permille": FEEDER_TOLERANCE_PERMILLE,
    # admission (ledger README, "Admission"): per signer, transactions admitted and not yet
    # executed, and canonical bytes ordered per hour of block time; open applications at once
    "max_pending_per_signer": 256,
    "max_bytes_per_signer_hour": 4 * 1024 * 1024,
    "max_applications": 32,
    # a quorum proposal (mint, rekey) executes with more than this share of voting members
    "quorum_pct": QUORUM_PCT,
}

# The seed paper's market exactly as published: any number of open orders, FIFO by arrival.
PAPER_MARKET: Final[Mapping[str, Any]] = {
    "clearing_rule": "paper",
    "order_policy": "many",
    "sealed_bids": False,
}
LIMITS: Final = ("max_pending_per_signer", "max_bytes_per_signer_hour", "max_applications")
MAX_LIMIT: Final = 2**40


class GenesisError(ValueError):
    """A genesis document the contract cannot start from; the message names the key."""


def _price(params: Mapping[str, Any], name: str) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PRICE:
        raise GenesisError(f"params.{name} must be an integer in 1..{MAX_PRICE} micro-tokens/kWh")
    return value


def _bounded(params: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GenesisError(f"params.{name} must be an integer in {low}..{high}")
    return value


def check_params(raw: Any) -> dict[str, Any]:
    """Defaults completed and every key validated; unknown keys are refused (likely typos)."""
    if not isinstance(raw, Mapping):
        raise GenesisError("params must be an object")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise GenesisError(f"unknown params {unknown}; known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **raw}
    if params["clearing_rule"] not in RULES:
        raise GenesisError(f"params.clearing_rule must be one of {list(RULES)}")
    for name in ("retail_peak", "retail_offpeak", "feed_in", "price_min", "price_max"):
        _price(params, name)
    if params["order_policy"] not in ORDER_POLICIES:
        raise GenesisError(f"params.order_policy must be one of {list(ORDER_POLICIES)}")
    if not isinstance(params["sealed_bids"], bool):
        raise GenesisError("params.sealed_bids must be true or false")
    _bounded(params, "commit_deposit", 0, MAX_PRICE)
    _bounded(params, "reveal_window_ms", 0, 24 * 3_600_000)
    _bounded(params, "report_clock_tolerance_ms", 0, 3_600_000)
    _bounded(params, "report_window_ms", 3_600_000, MAX_REPORT_WINDOW_MS)
    _bounded(params, "feeder_tolerance_permille", 0, 1000)
    for name in LIMITS:
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_LIMIT:
            raise GenesisError(f"params.{name} must be an integer in 1..{MAX_LIMIT}")
    if params["price_min"] > params["price_max"]:
        raise GenesisError("params.price_min must not exceed params.price_max")
    pct = params["quorum_pct"]
    if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 99:
        raise GenesisError("params.quorum_pct must be an integer percent in 0..99")
    peak = params["peak_hours"]
    if (
        not isinstance(peak, list | tuple)
        or len(peak) != 2
        or not all(isinstance(h, int) and not isinstance(h, bool) for h in peak)
        or not 0 <= peak[0] <= peak[1] <= 24
    ):
        raise GenesisError("params.peak_hours must be [start, end] with 0 <= start <= end <= 24")
    params["peak_hours"] = [peak[0], peak[1]]
    return params


def retail_price(params: Mapping[str, Any], hour: int) -> int:
    """Retail tariff (micro-tokens/kWh) for an hour of the day."""
    start, end = params["peak_hours"]
    return int(params["retail_peak"] if start <= hour < end else params["retail_offpeak"])
