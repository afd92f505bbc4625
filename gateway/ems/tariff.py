"""The household tariff: integer micro-tokens per kWh (1 token = 1 EUR, so 0.095 EUR/kWh = 95_000).

Feed-in 39_000 and retail peak 95_000 (13:00 to 23:00) are the project's figures; the off-peak
retail price is a community parameter. The trading agent's price band lies between the feed-in
and the retail price of the hour.
"""

from __future__ import annotations

from dataclasses import dataclass

FEED_IN = 39_000
RETAIL_PEAK = 95_000
RETAIL_OFFPEAK_DEFAULT = 60_000
PEAK_HOURS = (13, 23)  # [start, end) hours of day at the peak retail price


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
