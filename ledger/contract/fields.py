"""Readers for transaction bodies and query parameters: each names the field that is wrong.

Built on ``ledger.fields`` (the ledger's one family of strict readers), raising the contract's
own stable codes; these functions keep the contract's names and messages.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from ledger.contract.codes import BAD_AMOUNT, BAD_BODY, Rejected
from ledger.ed25519 import valid_public_key
from ledger.fields import Fields

MAX_WH = 10**9  # 1 GWh: far above any community order, bounds every product below 2**63
MAX_AMOUNT = 10**15  # micro-tokens (one billion tokens) per transaction
MAX_PRICE = 10**9  # micro-tokens per kWh (1000 tokens/kWh)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_HEX64 = re.compile(r"[0-9a-f]{128}")
# [0-9], not \d: \d matches every script's digits, so one hour could be named two ways
_LISTING = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2})")
_INTERVAL = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):(00|15|30|45)")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}")


# the ledger's one family of readers, raising the contract's codes ("amount must be ...")
_BODY = Fields(partial(Rejected, BAD_BODY), sep=" ")
_AMOUNT = Fields(partial(Rejected, BAD_AMOUNT), sep=" ")


def exact(body: Mapping[str, Any], names: Sequence[str]) -> None:
    """The body has exactly these fields."""
    _BODY.exact(body, names)


def ident(body: Mapping[str, Any], name: str) -> str:
    return _BODY.text(
        body, name, pattern=_ID, reason="must be 1-64 characters of A-Z a-z 0-9 _ . : -"
    )


def text(body: Mapping[str, Any], name: str, limit: int) -> str:
    reason = f"must be printable text of 1-{limit} characters"
    return _BODY.text(body, name, limit=limit, printable=True, reason=reason)


def email(body: Mapping[str, Any], name: str) -> str:
    return _BODY.text(body, name, pattern=_EMAIL, reason="must be an e-mail address")


def choice(body: Mapping[str, Any], name: str, options: Sequence[str]) -> str:
    return _BODY.choice(body, name, options)


def key_hex(body: Mapping[str, Any], name: str) -> str:
    value = _BODY.text(
        body, name, pattern=_HEX32, reason="must be 64 lowercase hex characters (Ed25519 key)"
    )
    if not valid_public_key(bytes.fromhex(value)):
        raise _BODY.fail(name, "is not a valid Ed25519 public key")
    return value


def digest_hex(body: Mapping[str, Any], name: str) -> str:
    """A SHA-256 digest as 64 lowercase hex characters (e.g. a personal-data commitment)."""
    value = body.get(name)
    if not isinstance(value, str) or _HEX32.fullmatch(value) is None:
        raise Rejected(BAD_BODY, f"{name} must be 64 lowercase hex characters (SHA-256)")
    return value


def signature_hex(body: Mapping[str, Any], name: str) -> bytes:
    value = _BODY.text(body, name, pattern=_HEX64, reason="must be 128 lowercase hex characters")
    return bytes.fromhex(value)


def integer(body: Mapping[str, Any], name: str) -> int:
    return _BODY.integer(body, name)


def positive(body: Mapping[str, Any], name: str, limit: int) -> int:
    """A strictly positive integer amount up to ``limit``: zero and negatives are BAD_AMOUNT."""
    value = integer(body, name)
    if not 0 < value <= limit:
        raise _AMOUNT.fail(name, f"must be in 1..{limit}, got {value}")
    return value


def non_negative(body: Mapping[str, Any], name: str, limit: int) -> int:
    value = integer(body, name)
    if not 0 <= value <= limit:
        raise _AMOUNT.fail(name, f"must be in 0..{limit}, got {value}")
    return value


def _valid_date(y: str, mo: str, d: str, h: str) -> bool:
    year, month, day, hour = int(y), int(mo), int(d), int(h)
    if not (1970 <= year <= 9999 and 1 <= month <= 12 and hour <= 23):
        return False
    return 1 <= day <= calendar.monthrange(year, month)[1]


def listing_id(body: Mapping[str, Any], name: str = "listing_id") -> str:
    """A delivery hour ``YYYY-MM-DDTHH`` (UTC)."""
    value = body.get(name)
    match = _LISTING.fullmatch(value) if isinstance(value, str) else None
    if match is None or not _valid_date(*match.groups()):
        raise Rejected(BAD_BODY, f"{name} must name an hour as YYYY-MM-DDTHH")
    assert isinstance(value, str)
    return value


def interval(body: Mapping[str, Any], name: str = "interval") -> str:
    """A 15-minute interval named by its start, ``YYYY-MM-DDTHH:MM`` with MM in 00/15/30/45."""
    value = body.get(name)
    match = _INTERVAL.fullmatch(value) if isinstance(value, str) else None
    if match is None or not _valid_date(*match.groups()[:4]):
        raise Rejected(BAD_BODY, f"{name} must name a 15-minute interval as YYYY-MM-DDTHH:MM")
    assert isinstance(value, str)
    return value


def hour_of(listing: str) -> int:
    """Hour of day (0-23) of a valid listing id."""
    return int(listing[11:13])


def hour_end_ms(listing: str) -> int:
    """Milliseconds since the epoch (UTC) at which the delivery hour of a valid listing ends."""
    year, month, day, hour = (
        int(listing[0:4]),
        int(listing[5:7]),
        int(listing[8:10]),
        int(listing[11:13]),
    )
    # calendar.timegm is integer arithmetic on the tuple: no clock, no float, no time zone.
    return (calendar.timegm((year, month, day, hour, 0, 0, 0, 0, 0)) + 3600) * 1000
