"""Strict field readers for wire dicts: hostile input raises ``WireError`` and nothing else.

The readers are ``ledger.fields``'s, raising ``WireError``."""

from __future__ import annotations

from ledger.fields import MAX_INT, Fields

__all__ = ["MAX_INT", "READ", "WireError", "exact_keys", "hex_bytes", "listed", "nat"]


class WireError(ValueError):
    """A consensus message, batch or block that is malformed."""


READ = Fields(WireError)
exact_keys = READ.exact
nat = READ.nat
hex_bytes = READ.hex_bytes
listed = READ.listed
