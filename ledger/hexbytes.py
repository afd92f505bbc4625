"""Lowercase hex byte strings: the one parser of keys, signatures and digests in text form.

Each place that reads one (wire messages, transactions, cluster files) raises its own error
type, prefixed with the field's name, from the reason this parser gives."""

from __future__ import annotations


def parse_hex(value: object, size: int) -> bytes:
    """``size`` bytes written as exactly ``2 * size`` lowercase hex characters; otherwise
    ``ValueError`` whose message is the reason (without the field's name)."""
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ValueError(f"must be {2 * size} lowercase hex characters")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError("not hex") from None
    if raw.hex() != value:
        raise ValueError("must be lowercase hex")
    return raw
