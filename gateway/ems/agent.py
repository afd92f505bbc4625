"""The trading agent: before a listing closes, turn the planned surplus or deficit of that hour
into a RESOffer (``auction.offer``) or a BuyOffer (``auction.bid``); after it clears, read the
trades and hand the plan the quantities this home bought and sold.

Pure: ``decide``, ``reveal`` and ``read_clearing`` take data and return data (the salts of
sealed orders come from an injected source); the runner sends the bodies through the gateway's
outbox. Bodies follow ``ledger/contract/README.md``.

Sealed orders (a community whose ``params.sealed_bids`` is true, ``sealed=True``): ``decide``
returns an ``auction.commit`` carrying only the hash of the order and a fresh 32-byte salt, and
keeps the order; once the listing is closed (state ``REVEAL``) ``reveal`` returns the
``auction.reveal`` that opens it, once. Without its reveal the order is not cleared and the
deposit is forfeit, so the pending reveals are this agent's state to keep until then.

Price strategy: the agent keeps an expected community price per hour of day (the midpoint of the
band until clearings are seen, then an exponentially weighted mean of the clearing prices). A
seller asks a margin below it, a buyer bids a margin above it, so that both are likely to be on
the right side of the clearing price; every price is clamped into the band between the feed-in
and the retail price of the hour, where a trade beats the grid for both sides.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.ems.plan import Commitment
from gateway.ems.tariff import Tariff
from gateway.ems.timegrid import parse_listing_id
from ledger.contract.sealed import order_commitment


@dataclass(frozen=True, slots=True)
class OrderTx:
    """The ledger transaction that places the agent's order for a listing (for the outbox)."""

    kind: str  # "auction.offer", "auction.bid", "auction.commit" or "auction.reveal"
    body: dict[str, Any]


def _salt() -> bytes:
    return os.urandom(32)


@dataclass(slots=True)
class TradingAgent:
    id_grid: str
    tariff: Tariff
    res_id: str | None = None  # None: a consumer, never offers
    res_rated_w: int = 0  # a RES may be offered for at most its rated power for one hour
    sell_share: float = 0.9  # offer this share of the forecast surplus (forecast risk)
    buy_share: float = 0.9  # bid for this share of the forecast deficit
    margin: float = 0.15  # of the band, below (sell) or above (buy) the expected price
    learn: float = 0.3  # weight of the newest clearing price
    min_wh: int = 50  # smaller quantities are not worth a transaction
    expected: dict[int, int] = field(default_factory=dict)  # hour of day -> expected price
    sealed: bool = False  # the community takes sealed orders: commit now, reveal after the close
    commit_deposit: int = 0  # micro-tokens a commitment holds until the clearing
    salt_source: Callable[[], bytes] = field(default=_salt, repr=False)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # listing -> reveal body

    def __post_init__(self) -> None:
        for name in ("sell_share", "buy_share", "margin", "learn"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in 0..1, got {v}")
        if self.res_id is not None and self.res_rated_w <= 0:
            raise ValueError("a RES needs its rated power (W) to cap offers")

    def expected_price(self, hour: int) -> int:
        return self.expected.get(hour % 24, self.tariff.community_midpoint(hour))

    def _clamp(self, price: float, hour: int) -> int:
        lo, hi = self.tariff.band(hour)
        return int(min(max(round(price), lo), hi))

    def decide(self, listing_id: str, net_wh: int, balance_utok: int | None = None
               ) -> OrderTx | None:
        """The order for one listing from the plan's net energy of that hour (import > 0,
        export < 0), or None; sealed: its commitment. ``balance_utok`` caps a bid to what its
        escrow (and a commitment's deposit) can cover."""
        if self.sealed and balance_utok is not None:
            balance_utok = max(0, balance_utok - self.commit_deposit)
        order = self._order(listing_id, net_wh, balance_utok)
        if order is None or not self.sealed:
            return order
        return self._commit(listing_id, order)

    def _commit(self, listing_id: str, order: OrderTx) -> OrderTx:
        body = order.body
        if order.kind == "auction.offer":
            side, price, res_id = "offer", int(body["reserve_price"]), str(body["res_id"])
        else:
            side, price, res_id = "bid", int(body["bid_price"]), ""
        salt = self.salt_source()
        if len(salt) != 32:
            raise ValueError("a salt is 32 bytes")
        wh = int(body["wh"])
        self.pending[listing_id] = {"listing_id": listing_id, "side": side, "wh": wh,
                                    "price": price, "res_id": res_id, "salt": salt.hex()}
        commitment = order_commitment(listing_id, self.id_grid, side, wh, price, res_id, salt)
        return OrderTx("auction.commit", {"listing_id": listing_id, "side": side,
                                        "commitment": commitment})

    def reveal(self, listing_id: str) -> OrderTx | None:
        """The reveal of this home's sealed order for a closed listing (once), or None."""
        body = self.pending.pop(listing_id, None)
        return None if body is None else OrderTx("auction.reveal", body)

    def _order(self, listing_id: str, net_wh: int, balance_utok: int | None) -> OrderTx | None:
        hour = parse_listing_id(listing_id).hour
        lo, hi = self.tariff.band(hour)
        band = hi - lo
        expected = self.expected_price(hour)
        if net_wh < 0 and self.res_id is not None:
            wh = int(-net_wh * self.sell_share)
            wh = min(wh, self.res_rated_w)
            if wh < self.min_wh:
                return None
            price = self._clamp(expected - self.margin * band, hour)
            return OrderTx("auction.offer", {"listing_id": listing_id, "res_id": self.res_id,
                                           "wh": wh, "reserve_price": price})
        if net_wh > 0:
            wh = int(net_wh * self.buy_share)
            price = self._clamp(expected + self.margin * band, hour)
            if balance_utok is not None and price > 0:
                wh = min(wh, balance_utok * 1000 // price)
            if wh < self.min_wh:
                return None
            return OrderTx("auction.bid", {"listing_id": listing_id, "wh": wh,
                                         "bid_price": price})
        return None

    def read_clearing(self, result: Mapping[str, Any]) -> Commitment:
        """This home's side of an ``auction.close`` result (or a ``listing`` query plus its
        ``trades``); learns the clearing price. Malformed results raise ``ValueError``."""
        try:
            listing = str(result["listing_id"])
            hour = parse_listing_id(listing).hour
            trades = result.get("trades") or []
            mcp = result.get("mcp")
            bought = sum(int(t["wh"]) for t in trades if t["buyer"] == self.id_grid)
            sold = sum(int(t["wh"]) for t in trades if t["seller"] == self.id_grid)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"clearing result is malformed: {exc!r}") from exc
        if mcp is not None:
            if isinstance(mcp, bool) or not isinstance(mcp, int):
                raise ValueError(f"clearing price {mcp!r} is not an integer")
            old = self.expected_price(hour)
            self.expected[hour] = self._clamp((1 - self.learn) * old + self.learn * mcp, hour)
        if bought < 0 or sold < 0:
            raise ValueError("negative traded energy")
        return Commitment(listing_id=listing, bought_wh=bought, sold_wh=sold,
                          mcp=mcp if isinstance(mcp, int) else 0)
