"""Strict field readers: the one family every decoder of untrusted objects uses.

A decoder (consensus messages, blocks, client transactions, contract bodies, config tables)
builds one ``Fields`` with its own error and reads each field through it; a field that is
missing, of another type or out of range raises that error, with a message that names the
field, and nothing else escapes (no ``KeyError``, no ``TypeError``).

    READ = Fields(WireError)                       # raises WireError("n: must be ...")
    BODY = Fields(partial(Rejected, BAD_BODY), sep=" ")   # an error that takes more than a message

    READ.exact(wire, ("d", "n", "r"), "prepare")   # the object, with exactly these keys
    READ.nat(wire, "n")                            # an int in [0, 2**63 - 1] (bool refused)
    READ.integer(wire, "x", -5, 5)                 # an int in [-5, 5]
    READ.hex_bytes(wire, "d", 32)                  # 32 bytes written as 64 lowercase hex chars
    READ.listed(wire, "p", 100)                    # a list of at most 100 items
    READ.text(wire, "id", pattern=ID, reason="must be an id")   # a str (full match, length)
    READ.choice(wire, "mode", ("a", "b"))          # one of these strings
    READ.typed(table, "port", int, lo=1, hi=65535)  # a TOML-like value of one of some types
    raise READ.fail("x", "must be even")           # the error, for a rule of the caller's own

A config file comes in whole through ``read_document(path, json.loads, Error, syntax=...)``: the
one reader of a file's text whose errors name the file and say whether it could not be read or
parsed; ``read_json_object`` is that reader for a JSON file that must hold an object.

Messages are ``name + sep + reason``; ``sep`` is ": " unless the decoder's messages are written
another way. Hand-written, not a schema library: these run for every transaction and message a
replica receives, and each caller keeps the error type (and for the contract, the receipt
code) its own callers match on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from ledger.hexbytes import parse_hex

MAX_INT = 2**63 - 1  # the canonical encoding's bound (64-bit integers only)

ErrorFactory = Callable[[str], Exception]  # an error class taking a message, or a partial


def read_document(
    path: Path, parse: Callable[[str], Any], error: ErrorFactory, *, syntax: str, what: str = ""
) -> Any:
    """The file at ``path`` (UTF-8) as ``parse`` reads it (``json.loads``, ``tomllib.loads``);
    ``error`` names the file and says that it cannot be read (a ``what``, when given) or is not
    ``syntax`` (``parse``'s ``ValueError``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read{' ' + what if what else ''}: {exc}") from exc
    try:
        return parse(text)
    except ValueError as exc:
        raise error(f"{path}: {syntax}: {exc}") from exc


def read_json_object(path: Path, error: ErrorFactory, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (a genesis, a firmware manifest, a board), read as
    ``read_document`` reads it; every refusal is ``error`` starting with ``what`` (the option or
    the thing the file was given as), then the file and why."""

    def named(message: str) -> Exception:
        return error(f"{what}: {message}")

    value = read_document(path, json.loads, named, syntax="not JSON")
    if not isinstance(value, dict):
        raise named(f"{path}: must hold a JSON object")
    return value


class Fields:
    """Readers whose every failure raises ``error(message)``."""

    __slots__ = ("error", "sep")

    def __init__(self, error: ErrorFactory, *, sep: str = ": ") -> None:
        self.error = error
        self.sep = sep

    def fail(self, name: str, reason: str) -> Exception:
        """The error for field ``name`` (the whole object when empty) and ``reason``."""
        return self.error(f"{name}{self.sep}{reason}" if name else reason)

    def obj(self, value: Any, what: str) -> dict[str, Any]:
        """``value`` if it is a dict (a decoded JSON object)."""
        if not isinstance(value, dict):
            raise self.fail(what, "must be an object")
        return value

    def exact(self, value: Any, keys: Collection[str], what: str = "") -> Mapping[str, Any]:
        """``value`` if it is a mapping with exactly ``keys``."""
        if type(value) is not dict and not isinstance(value, Mapping):
            raise self.fail(what, "must be an object")
        if len(value) != len(keys) or not all([key in value for key in keys]):
            raise self.fail(what, f"fields must be {sorted(keys)}, got {sorted(map(str, value))}")
        return value

    def integer(
        self, obj: Mapping[str, Any], key: str, lo: int | None = None, hi: int | None = None
    ) -> int:
        """An int (not a bool) in [lo, hi] (an open end where None)."""
        value = obj.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
        ):
            if lo is None and hi is None:
                raise self.fail(key, "must be an integer")
            raise self.fail(key, f"must be an integer in [{lo}, {hi}]")
        return value

    def nat(self, obj: Mapping[str, Any], key: str, limit: int = MAX_INT) -> int:
        """An int in [0, limit]."""
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise self.fail(key, f"must be an integer in [0, {limit}]")
        return value

    def hex_bytes(self, obj: Mapping[str, Any], key: str, size: int) -> bytes:
        """``size`` bytes written as ``2 * size`` lowercase hex characters."""
        try:
            return parse_hex(obj.get(key), size)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def listed(self, obj: Mapping[str, Any], key: str, limit: int) -> list[Any]:
        """A list of at most ``limit`` items (the items are the caller's to read)."""
        value = obj.get(key)
        if not isinstance(value, list) or len(value) > limit:
            raise self.fail(key, f"must be a list of at most {limit} items")
        return value

    def text(
        self,
        obj: Mapping[str, Any],
        key: str,
        *,
        reason: str,
        pattern: re.Pattern[str] | None = None,
        limit: int | None = None,
        printable: bool = False,
    ) -> str:
        """A str that ``pattern`` matches in full, of 1 to ``limit`` characters, printable if
        asked; otherwise the error with ``reason``."""
        value = obj.get(key)
        if (
            not isinstance(value, str)
            or (pattern is not None and pattern.fullmatch(value) is None)
            or (limit is not None and not 0 < len(value) <= limit)
            or (printable and not value.isprintable())
        ):
            raise self.fail(key, reason)
        return value

    def choice(self, obj: Mapping[str, Any], key: str, options: Sequence[str]) -> str:
        """One of ``options``."""
        value = obj.get(key)
        if not isinstance(value, str) or value not in options:
            raise self.fail(key, f"must be one of {list(options)}")
        return value

    def typed(
        self,
        obj: Mapping[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        *,
        lo: Any = None,
        hi: Any = None,
        choices: Collection[Any] | None = None,
        pattern: re.Pattern[str] | None = None,
        name: str | None = None,
    ) -> Any:
        """A config value of type ``kind`` (a bool only where ``bool`` is named; floats finite),
        within [lo, hi], among ``choices``, matching ``pattern`` (at its start). ``name``: how
        the message names the field (a dotted path, say), ``key`` by default."""
        name = key if name is None else name
        if key not in obj:
            raise self.fail(name, "missing (required)")
        value = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = "/".join(k.__name__ for k in kinds)
            raise self.fail(name, f"expected {wanted}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            # nan and inf slip through the range test below (nan compares false)
            raise self.fail(name, f"{value!r} is not a finite number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(name, f"{value!r} is outside [{lo}, {hi}]")
        if choices is not None and value not in choices:
            raise self.fail(name, f"{value!r} is not one of {', '.join(map(str, choices))}")
        if pattern is not None and (not isinstance(value, str) or not pattern.match(value)):
            raise self.fail(name, f"{value!r} is not a valid name")
        return value
