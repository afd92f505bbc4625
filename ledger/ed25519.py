"""Ed25519 signature checks: the one verification function of the ledger.

Keys are made and signatures produced with ``cryptography`` (OpenSSL). Checks run through the
Zcash Foundation's ``ed25519-zebra`` Rust crate (its Python binding), because every replica checks
every client transaction and several replica messages per block, and that check is the largest
single cost of a replica. Measured on the 2-core development box, per 180-byte message: OpenSSL
145 us, libsodium (PyNaCl) 65-99 us, ed25519-zebra 47-61 us (about 40 % below libsodium in
paired runs).

ed25519-zebra validates by ZIP 215: the RFC 8032 equation in its cofactored form, the public key
and ``R`` decoded even when not canonically encoded, ``s`` required to be canonical. Signatures
from any RFC 8032 signer (ours, OpenSSL, libsodium) verify. What matters for consensus is that
every replica runs this same function and so reaches the same verdict on every byte string, and
ZIP 215 exists precisely to pin that verdict down. One thing ZIP 215 accepts must not pass here:
a public key of small order, for which a signature of any message verifies. So a key must first
be a canonically encoded point of the prime-order subgroup, as every honestly generated key is
(libsodium's ``crypto_core_ed25519_is_valid_point``; the verdict is cached per key, since the
same members sign again and again).
"""

from __future__ import annotations

from functools import lru_cache

from ed25519_zebra import ed_verify
from nacl.bindings import crypto_core_ed25519_is_valid_point

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
KEY_CACHE = 4096


@lru_cache(maxsize=KEY_CACHE)
def valid_public_key(public_key: bytes) -> bool:
    """A canonical encoding of a point of the prime-order subgroup (no small-order keys)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        return False
    try:
        return bool(crypto_core_ed25519_is_valid_point(public_key))
    except Exception:  # a type the binding refuses
        return False


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s signature of ``message``; never raises."""
    if len(signature) != SIGNATURE_BYTES or not valid_public_key(bytes(public_key)):
        return False
    try:
        return bool(ed_verify(signature, message, public_key))
    except Exception:  # the binding raises for inputs it cannot decode; that is a "no"
        return False
