"""The ledger's one Ed25519 check: RFC 8032 vectors, our signer, and hostile input."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from ledger import ed25519

# RFC 8032, section 7.1, TEST 1 (empty message) and TEST 2 (one byte)
RFC8032 = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize(("public", "message", "signature"), RFC8032)
def test_rfc8032_vectors_verify_and_any_flipped_bit_fails(
    public: str, message: str, signature: str
) -> None:
    pk, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert ed25519.verify(pk, sig, msg)
    for i in range(0, 64 * 8, 37):
        bad = bytearray(sig)
        bad[i // 8] ^= 1 << (i % 8)
        assert not ed25519.verify(pk, bytes(bad), msg)
    assert not ed25519.verify(pk, sig, msg + b"\x00")


def test_signatures_of_our_signer_verify() -> None:
    key = Ed25519PrivateKey.generate()
    pk = key.public_key().public_bytes_raw()
    for n in range(20):
        msg = bytes([n]) * n
        assert ed25519.verify(pk, key.sign(msg), msg)
        other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        assert not ed25519.verify(other, key.sign(msg), msg)


@given(st.binary(max_size=40), st.binary(max_size=80), st.binary(max_size=64))
def test_arbitrary_bytes_never_raise(public: bytes, signature: bytes, message: bytes) -> None:
    assert ed25519.verify(public, signature, message) in (False, True)


def test_wrong_lengths_and_degenerate_keys_are_refused() -> None:
    pk, _, sig = (bytes.fromhex(x) for x in RFC8032[0])
    assert not ed25519.verify(pk[:31], sig, b"")
    assert not ed25519.verify(pk, sig[:63], b"")
    assert not ed25519.verify(pk + b"\x00", sig, b"")
    assert not ed25519.verify(bytes(32), bytes(64), b"")


# encodings of points of small order (libsodium's blocklist): with such a key a signature
# (R = identity, s = 0) satisfies the cofactored equation for every message
SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
]


@pytest.mark.parametrize("key", SMALL_ORDER)
def test_small_order_keys_verify_nothing(key: str) -> None:
    identity = bytes.fromhex(SMALL_ORDER[0])
    assert not ed25519.verify(bytes.fromhex(key), identity + bytes(32), b"any message")
    assert not ed25519.valid_public_key(bytes.fromhex(key))
