"""The EMS's time grid: 15-minute slots, hourly listings. The one place for these constants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

SLOT_MIN = 15
SLOTS_PER_HOUR = 60 // SLOT_MIN
SLOTS_PER_DAY = 24 * SLOTS_PER_HOUR
SLOT_MS = SLOT_MIN * 60_000
MWH_PER_W_SLOT = 1000 * SLOT_MIN // 60  # a load of 1 W for one slot uses 250 mWh


def slot_energy_mwh(power_w: int) -> int:
    """Energy in mWh that a constant ``power_w`` load uses in one slot."""
    return power_w * MWH_PER_W_SLOT


def listing_id(t: datetime) -> str:
    """The listing that delivers in the hour containing ``t`` (UTC), e.g. ``"2026-11-24T13"``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H")


def interval_id(t: datetime) -> str:
    """A meter interval named by its start, e.g. ``"2026-11-24T13:15"``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def parse_listing_id(value: str) -> datetime:
    """Start of the delivery hour named by a listing id; ``ValueError`` names a bad one."""
    try:
        t = datetime.strptime(value, "%Y-%m-%dT%H")
    except ValueError as exc:
        raise ValueError(f"listing id {value!r} is not YYYY-MM-DDTHH") from exc
    return t.replace(tzinfo=UTC)


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def dt_to_ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def slot_floor_ms(ms: int) -> int:
    return ms - ms % SLOT_MS


def day_start(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def slot_times(start: datetime, n: int) -> list[datetime]:
    return [start + timedelta(minutes=SLOT_MIN * i) for i in range(n)]
