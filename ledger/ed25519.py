"""Ed25519 signature checks: the one verification function of the ledger.

Keys are made and signatures produced with ``cryptography`` (OpenSSL); checks run through
libsodium (PyNaCl), because every replica checks every client transaction and several replica
messages per block, and libsodium verifies in about half OpenSSL's time (65 vs 145 us measured
on the 2-core development box). Both follow RFC 8032; libsodium also refuses small-order keys
and non-canonical signatures, which no honest signer produces. Every replica runs this same
check, so their verdicts agree.
"""

from __future__ import annotations

from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s signature of ``message``; never raises."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except (CryptoError, ValueError, TypeError):
        return False
    return True
