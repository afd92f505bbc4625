"""Checking many signatures at once (``ed25519.verify_many`` and the native batch check behind
it): the verdicts are always those of the single check, whatever is wrong with which item, and
the native function refuses input that does not tile its buffer instead of reading past it."""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger import ed25519
from ledger.executor import SigCache
from ledger.tx import sign_tx

L = 2**252 + 27742317777372353535851937790883648493  # the order of the base point

KEYS = [Ed25519PrivateKey.generate() for _ in range(12)]
PUBLIC = [k.public_key().public_bytes_raw() for k in KEYS]


def _item(n: int, size: int = 90) -> ed25519.Item:
    message = n.to_bytes(4, "big") * (size // 4)
    return PUBLIC[n % len(KEYS)], KEYS[n % len(KEYS)].sign(message), message


POOL = [_item(n, 40 + n % 150) for n in range(3 * ed25519.BATCH_MIN)]

needs_native = pytest.mark.skipif(
    ed25519.native_check() is None, reason="the batch verifier is not built (make setup)"
)


def test_ci_builds_the_batch_verifier() -> None:
    """CI sets WATTMESH_REQUIRE_BATCH: there a missing library fails instead of skipping every
    test of it below."""
    if os.environ.get("WATTMESH_REQUIRE_BATCH") != "1":
        pytest.skip("WATTMESH_REQUIRE_BATCH is not set")
    assert ed25519.native_check() is not None


@pytest.fixture
def no_single_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the single checks ``verify_many`` falls back to."""
    calls: list[int] = []
    single = ed25519.verify

    def counting(public_key: bytes, signature: bytes, message: bytes) -> bool:
        calls.append(1)
        return single(public_key, signature, message)

    monkeypatch.setattr(ed25519, "verify", counting)
    yield calls


@needs_native
@pytest.mark.parametrize("size", [ed25519.BATCH_MIN, 2 * ed25519.BATCH_MIN + 7])
def test_a_valid_set_is_checked_in_one_batch(size: int, no_single_checks: list[int]) -> None:
    assert ed25519.verify_many(POOL[:size]) == [True] * size
    assert no_single_checks == []


def test_a_small_set_is_checked_one_by_one(no_single_checks: list[int]) -> None:
    size = ed25519.BATCH_MIN - 1
    assert ed25519.verify_many(POOL[:size]) == [True] * size
    assert len(no_single_checks) == size


def _corrupt(item: ed25519.Item, how: str, at: int) -> ed25519.Item:
    public_key, signature, message = item
    if how == "message":
        return public_key, signature, message + bytes([at % 256])
    if how in ("R", "s"):  # (an earlier fault may have shortened the signature)
        sig = bytearray(signature)
        sig[min((0 if how == "R" else 32) + at % 32, len(sig) - 1)] ^= 1 << (at % 8)
        return public_key, bytes(sig), message
    if how == "s+L":  # the same signature with s not reduced: refused by ZIP 215 and RFC 8032
        s = int.from_bytes(signature[32:], "little") + L
        return public_key, signature[:32] + s.to_bytes(32, "little"), message
    if how == "key":  # the next member's key (any member's if an earlier fault replaced it)
        at_key = PUBLIC.index(public_key) if public_key in PUBLIC else -1
        return PUBLIC[(at_key + 1) % len(PUBLIC)], signature, message
    if how == "short":
        return public_key, signature[:63], message
    if how == "small-order key":
        return bytes.fromhex("01" + "00" * 31), bytes.fromhex("01" + "00" * 63), message
    raise AssertionError(how)


HOW = ["message", "R", "s", "s+L", "key", "short", "small-order key"]


@settings(max_examples=60, deadline=None)
@example(size=len(POOL), faults=[(3, "short", 0), (3, "s", 31)])  # found by CI: s of a short one
@example(size=len(POOL), faults=[(4, "small-order key", 0), (4, "key", 0)])
@given(
    size=st.integers(1, len(POOL)),
    faults=st.lists(
        st.tuples(st.integers(0, len(POOL) - 1), st.sampled_from(HOW), st.integers(0, 255)),
        max_size=3,
    ),
)
def test_verdicts_are_the_single_checks_whatever_is_wrong(
    size: int, faults: list[tuple[int, str, int]]
) -> None:
    items = list(POOL[:size])
    for index, how, at in faults:
        if index < size:
            items[index] = _corrupt(items[index], how, at)
    expected = [ed25519.verify(*item) for item in items]
    assert ed25519.verify_many(items) == expected
    for index, _how, _at in faults:
        if index < size and items[index] != POOL[index]:
            assert expected[index] is False


@needs_native
@settings(max_examples=40, deadline=None)
@given(
    index=st.integers(0, len(POOL) - 1),
    how=st.sampled_from(["message", "R", "s", "s+L", "key"]),
    at=st.integers(0, 255),
)
def test_one_bad_signature_fails_the_whole_batch(index: int, how: str, at: int) -> None:
    batch = ed25519.batch_verifier()
    assert batch is not None
    items = list(POOL)
    assert batch(items)
    items[index] = _corrupt(items[index], how, at)
    assert not batch(items)


def _raw(items: list[ed25519.Item]) -> tuple[bytes, array[int]]:
    data = b"".join(b"".join(item) for item in items)
    ends = array("I")
    position = 0
    for k, s, m in items:
        position += len(k) + len(s) + len(m)
        ends.append(position)
    return data, ends


def _call(data: bytes, size: int, ends: array[int], n: int) -> int:
    check = ed25519.native_check()
    assert check is not None
    return int(check(data, size, ends.buffer_info()[0], n))


@needs_native
def test_the_native_check_refuses_framing_that_does_not_tile_its_buffer() -> None:
    data, ends = _raw(POOL[:5])
    assert _call(data, len(data), ends, 5) == 1
    assert _call(data, len(data) - 1, ends, 5) == 0  # the last item overruns the buffer
    assert _call(data + b"\x00", len(data) + 1, ends, 5) == 0  # a tail no item covers
    assert _call(data, len(data), ends, 0) == 0
    assert _call(data, len(data), ends, -1) == 0
    assert _call(data, len(data), ends, 4) == 0  # n items must end at the buffer's end
    backwards = array("I", ends)
    backwards[1], backwards[2] = backwards[2], backwards[1]
    assert _call(data, len(data), backwards, 5) == 0
    short = array("I", ends)
    short[0] = 95  # shorter than a key and a signature
    assert _call(data, len(data), short, 5) == 0
    assert _call(b"", 0, array("I", [0]), 1) == 0


@needs_native
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 500), min_size=1, max_size=6))
def test_the_native_check_survives_arbitrary_bytes(data: bytes, ends: list[int]) -> None:
    offsets = array("I", ends)
    assert _call(data, len(data), offsets, len(offsets)) in (0, 1)


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    ed25519.native_check.cache_clear()
    try:
        monkeypatch.setenv(ed25519.BATCH_ENV, "0")
        assert ed25519.native_check() is None and ed25519.batch_verifier() is None
        assert ed25519.verify_many(POOL) == [True] * len(POOL)
    finally:
        monkeypatch.delenv(ed25519.BATCH_ENV)
        ed25519.native_check.cache_clear()


def test_a_missing_library_means_single_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    ed25519.native_check.cache_clear()
    try:
        monkeypatch.setattr(ed25519, "BATCH_LIBRARY", ed25519.BATCH_LIBRARY.with_name("none.so"))
        assert ed25519.native_check() is None
        assert ed25519.verify_many(POOL) == [True] * len(POOL)
    finally:
        ed25519.native_check.cache_clear()


def test_the_signature_cache_checks_misses_together_and_keeps_verdicts() -> None:
    key = KEYS[0]
    txs = [sign_tx(key, "token.transfer", {"to": "M00001", "amount": 1}, n) for n in range(80)]
    forged = sign_tx(KEYS[1], "token.transfer", {"to": "M00001", "amount": 1}, 5)
    # tx 5's payload with another key's signature over it
    txs[5] = type(forged).from_wire(dict(txs[5].to_wire(), sig=forged.signature.hex()))
    ids = [tx.tx_id for tx in txs]
    cache = SigCache()
    verdicts = cache.check_many(txs, ids)
    assert verdicts == [n != 5 for n in range(80)]
    assert cache.verified == 80
    assert cache.check_many(txs, ids) == verdicts  # from the cache
    assert cache.verified == 80
    assert cache.check(txs[5], ids[5]) is False and cache.check(txs[6], ids[6]) is True
    assert cache.verified == 80



def _secret_scalar(key: Ed25519PrivateKey) -> int:
    """RFC 8032's a: the clamped first half of SHA-512 of the seed."""
    digest = bytearray(hashlib.sha512(key.private_bytes_raw()).digest()[:32])
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return int.from_bytes(digest, "little")


# Encodings of points of small order as R, canonical and not (ZIP 215 decodes all of them):
# the identity (and with the sign bit set, and as y = p + 1), the point of order 2, the points
# of order 4 (y = 0, and as y = p), and one of order 8.
SMALL_ORDER_R = [
    "01" + "00" * 31,
    "01" + "00" * 30 + "80",
    "ee" + "ff" * 30 + "7f",
    "ec" + "ff" * 30 + "7f",
    "00" * 32,
    "00" * 31 + "80",
    "ed" + "ff" * 30 + "7f",
    "ed" + "ff" * 31,
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
]


@needs_native
@pytest.mark.parametrize("r", SMALL_ORDER_R)
def test_the_batch_decodes_r_as_the_single_check_does(r: str) -> None:
    """A signature made with the secret key whose R is a point of small order, in a canonical or
    a non-canonical encoding: s = k a, so s B - k A is the identity and the cofactored equation
    holds. What the single check (ed25519-zebra) says of it, the batch check must say of a set
    holding it, or a replica with the library and one without could disagree."""
    key, public = KEYS[0], PUBLIC[0]
    message = b"small-order R " + bytes.fromhex(r)
    r_bytes = bytes.fromhex(r)
    k = int.from_bytes(hashlib.sha512(r_bytes + public + message).digest(), "little") % L
    s = k * _secret_scalar(key) % L
    crafted = (public, r_bytes + s.to_bytes(32, "little"), message)
    single = ed25519.verify(*crafted)
    batch = ed25519.batch_verifier()
    assert batch is not None
    assert batch([*POOL, crafted]) == single
    assert ed25519.verify_many([*POOL, crafted]) == [True] * len(POOL) + [single]
