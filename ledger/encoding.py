"""The one canonical byte encoding of the ledger: transactions, consensus messages, blocks, state.

Canonical JSON: UTF-8, keys sorted, no insignificant whitespace, integers only (no floats, so no
rounding can make two replicas disagree), byte strings as lowercase hex in ``str``. The same value
always encodes to the same bytes, so a digest or a signature over it means one thing. It is built
on the C-accelerated ``json`` module rather than CBOR because it is fast, readable in logs and
SQLite, and the value space (no floats, no bytes type) is narrow enough to make it canonical.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_DEPTH = 32
MAX_BYTES = 16 * 1024 * 1024


class EncodingError(ValueError):
    """Bytes or a value outside the canonical encoding."""


_encoder = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False, check_circular=False
)


def _check(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise EncodingError("nested too deeply")
    if value is None or isinstance(value, bool | int | str):
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


def canonical(value: Any, *, checked: bool = True) -> bytes:
    """Canonical bytes of a JSON-like, float-free value. ``checked=False`` skips the type walk
    for values the caller built itself from known-good parts (hot paths)."""
    if checked:
        _check(value)
    try:
        return _encoder.encode(value).encode("utf-8")
    except (TypeError, ValueError) as exc:  # pragma: no cover - _check rejects these first
        raise EncodingError(str(exc)) from exc


def digest(value: Any) -> bytes:
    """SHA-256 of the canonical encoding."""
    return hashlib.sha256(canonical(value)).digest()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in pairs:
        if key in out:
            raise EncodingError(f"duplicate key {key!r}")
        out[key] = item
    return out


def _no_float(text: str) -> Any:
    raise EncodingError(f"float {text!r} is not allowed")


def _no_constant(text: str) -> Any:
    raise EncodingError(f"{text} is not allowed")


def decode(data: bytes | bytearray | memoryview, *, strict: bool = True) -> Any:
    """Parse canonical bytes. With ``strict`` the input must be exactly the canonical encoding of
    what it parses to (so two byte strings never stand for one value)."""
    if len(data) > MAX_BYTES:
        raise EncodingError("too large")
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except EncodingError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EncodingError(f"malformed: {exc}") from exc
    if strict:
        _check(value)
        if canonical(value, checked=False) != raw:
            raise EncodingError("not in canonical form")
    return value
