"""The household tariff: integer micro-tokens per kWh (1 token = 1 EUR, so 0.095 EUR/kWh = 95_000).

The figures are the community's parameters, defined once in ``ledger.contract.params`` (feed-in
39_000, retail peak 95_000 from 13:00 to 23:00, off-peak a community choice); ``from_params``
builds the tariff from the ledger's ``params`` query. The trading agent's price band lies
between the feed-in and the retail price of the hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ledger.contract.params import FEED_IN, PEAK_HOURS, RETAIL_PEAK
from ledger.contract.params import RETAIL_OFFPEAK as RETAIL_OFFPEAK_DEFAULT


class TariffError(ValueError):
    """A tariff whose prices contradict each other."""


@dataclass(frozen=True, slots=True)
class Tariff:
    feed_in: int = FEED_IN
    retail_peak: int = RETAIL_PEAK
    retail_offpeak: int = RETAIL_OFFPEAK_DEFAULT
    peak_start_h: int = PEAK_HOURS[0]
    peak_end_h: int = PEAK_HOURS[1]

    def __post_init__(self) -> None:
        for name in ("feed_in", "retail_peak", "retail_offpeak"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TariffError(f"{name} must be a non-negative integer (micro-tokens/kWh)")
        if not (0 <= self.peak_start_h <= 24 and 0 <= self.peak_end_h <= 24):
            raise TariffError("peak hours must lie within 0..24")
        if self.feed_in > min(self.retail_peak, self.retail_offpeak):
            raise TariffError(
                f"feed-in {self.feed_in} exceeds a retail price "
                f"({self.retail_offpeak} off-peak, {self.retail_peak} peak): "
                "the price band would be empty")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Tariff:
        """The tariff of the community's parameters (the ledger's ``params`` query)."""
        try:
            start, end = params.get("peak_hours", PEAK_HOURS)
            return cls(feed_in=params.get("feed_in", FEED_IN),
                       retail_peak=params.get("retail_peak", RETAIL_PEAK),
                       retail_offpeak=params.get("retail_offpeak", RETAIL_OFFPEAK_DEFAULT),
                       peak_start_h=int(start), peak_end_h=int(end))
        except (TypeError, ValueError) as exc:
            raise TariffError(f"community params are malformed: {exc}") from exc

    def is_peak(self, hour: int) -> bool:
        h = hour % 24
        if self.peak_start_h <= self.peak_end_h:
            return self.peak_start_h <= h < self.peak_end_h
        return h >= self.peak_start_h or h < self.peak_end_h

    def retail(self, hour: int) -> int:
        return self.retail_peak if self.is_peak(hour) else self.retail_offpeak

    def band(self, hour: int) -> tuple[int, int]:
        """(feed-in, retail) of the hour: the range inside which community prices make sense."""
        return self.feed_in, self.retail(hour)

    def community_midpoint(self, hour: int) -> int:
        """Default expected community price: the middle of the band."""
        lo, hi = self.band(hour)
        return (lo + hi) // 2


def cost_utok(energy_mwh: int, price_utok_per_kwh: int) -> int:
    """Micro-tokens for ``energy_mwh`` at ``price`` micro-tokens/kWh, rounded half up."""
    return (energy_mwh * price_utok_per_kwh + 500_000) // 1_000_000


__all__ = [
    "FEED_IN",
    "PEAK_HOURS",
    "RETAIL_OFFPEAK_DEFAULT",
    "RETAIL_PEAK",
    "Tariff",
    "TariffError",
    "cost_utok",
]
