"""The one canonical byte encoding of the ledger: transactions, consensus messages, blocks, state.

Canonical JSON: UTF-8, keys sorted by code point, no insignificant whitespace, integers only and
within 64 bits (``[-2**63, 2**64)``; no floats, so no rounding can make two replicas disagree),
byte strings as lowercase hex in ``str``, strings escaped minimally (``"``, ``\\`` and control
characters; everything else as UTF-8). The same value always encodes to the same bytes, so a
digest or a signature over it means one thing. JSON rather than CBOR because it is readable in
logs and SQLite, and the value space (no floats, no bytes type) is narrow enough to make it
canonical.

The bytes are produced and parsed by ``orjson``: the encoding is the replica's most frequent
operation after signature checks, and orjson does it about ten times faster than the standard
library's ``json``, whose output it equals byte for byte on this value space (a property test
holds the two to that, see ``tests/ledger/test_encoding.py``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

MAX_DEPTH = 32
MAX_BYTES = 16 * 1024 * 1024
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
_SORT = orjson.OPT_SORT_KEYS


class EncodingError(ValueError):
    """Bytes or a value outside the canonical encoding."""


def _check(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise EncodingError("nested too deeply")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise EncodingError(f"integer {value} is outside 64 bits")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"non-string key {key!r}")
            _check(item, depth + 1)
        return
    raise EncodingError(f"{type(value).__name__} is not encodable (no floats, bytes as hex)")


def check(value: Any) -> None:
    """Raise ``EncodingError`` unless ``value`` is inside the encoding. The common case, a flat
    object of strings and integers (a transaction body), is checked without recursion."""
    if type(value) is dict:
        for key, item in value.items():
            kind = type(item)
            if type(key) is not str:
                raise EncodingError(f"non-string key {key!r}")
            if kind is str or kind is bool or item is None:
                continue
            if kind is int and MIN_INT <= item <= MAX_INT:
                continue
            _check(item, 1)
        return
    _check(value)


def canonical(value: Any, *, checked: bool = True) -> bytes:
    """Canonical bytes of a JSON-like, float-free value. ``checked=False`` skips the type walk
    for values the caller built itself from known-good parts (hot paths)."""
    if checked:
        check(value)
    try:
        return orjson.dumps(value, option=_SORT)
    except TypeError as exc:  # orjson.JSONEncodeError; _check rejects these first when checked
        raise EncodingError(str(exc)) from exc


def digest(value: Any) -> bytes:
    """SHA-256 of the canonical encoding."""
    return hashlib.sha256(canonical(value)).digest()


def decode(
    data: bytes | bytearray | memoryview, *, strict: bool = True, max_bytes: int = MAX_BYTES
) -> Any:
    """Parse canonical bytes. With ``strict`` the input must be exactly the canonical encoding of
    what it parses to (so two byte strings never stand for one value: no floats, no duplicate
    keys, no whitespace, keys in order). Without it any JSON is accepted (a number may come out
    as a float, a repeated key keeps its last value): for messages whose parsers check every
    field's type themselves. ``max_bytes`` raises the bound for trusted local data only (a
    replica's own contract snapshot)."""
    if len(data) > max_bytes:
        raise EncodingError("too large")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8
        raise EncodingError(f"malformed: {exc}") from exc
    if strict:
        _check(value)
        if canonical(value, checked=False) != data:
            raise EncodingError("not in canonical form")
    return value
