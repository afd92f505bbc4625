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

``verify_many`` checks a block's worth of signatures together when the batch verifier in
``native/`` is built (``make setup`` builds it where Go and filippo.io/edwards25519 are installed):
one multi-scalar multiplication for the whole set, about half the CPU per signature of the
single checks on a block of 400 transfers by 50 members. Its "yes" means every signature would
pass ``verify`` (ZIP 215's cofactored equation, so the batch and the single check agree on every
input; a set with a bad signature passes with probability about 2^-128); on "no", or where the
library is not built, each signature is checked by ``verify``. So the verdicts, and with them
every replica's decisions, are those of ``verify`` whichever way they were reached.
``WATTMESH_ED25519_BATCH=0`` in the environment turns batching off (for measuring it).
"""

from __future__ import annotations

import ctypes
import logging
import os
from array import array
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any

from ed25519_zebra import ed_verify
from nacl.bindings import crypto_core_ed25519_is_valid_point

log = logging.getLogger(__name__)

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
KEY_CACHE = 4096
# the batch verifier, built from native/ed25519_batch.go by ``make setup``
BATCH_LIBRARY = Path(__file__).resolve().parent / "native" / "libwattmesh_ed25519.so"
BATCH_ENV = "WATTMESH_ED25519_BATCH"
# Fewer signatures than this are checked one by one: the multi-scalar multiplication's fixed
# cost (256 doublings) and, with every signer distinct, a full-size scalar per key leave a small
# batch no cheaper per signature than single checks.
BATCH_MIN = 64
BATCH_MAX = 1 << 16  # the library refuses more in one call

Item = tuple[bytes, bytes, bytes]  # public key, signature, message


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


def verify_many(items: Sequence[Item]) -> list[bool]:
    """``[verify(*item) for item in items]``, reached with one batch check when it can be."""
    verdicts = [False] * len(items)
    eligible = [
        i
        for i, (public_key, signature, _) in enumerate(items)
        if len(signature) == SIGNATURE_BYTES and valid_public_key(bytes(public_key))
    ]
    batch = batch_verifier() if BATCH_MIN <= len(eligible) <= BATCH_MAX else None
    if batch is not None and batch([items[i] for i in eligible]):
        for i in eligible:
            verdicts[i] = True
        return verdicts
    for i in eligible:
        public_key, signature, message = items[i]
        verdicts[i] = verify(public_key, signature, message)
    return verdicts


@cache
def native_check() -> Any | None:
    """The library's ``wattmesh_ed25519_batch_verify``, or None where it is not built or is
    turned off. Loaded on first use, not at import: a process that forks without exec must not
    carry the Go runtime."""
    if os.environ.get(BATCH_ENV, "1") == "0":
        return None
    try:
        library = ctypes.CDLL(str(BATCH_LIBRARY))
    except OSError:
        log.info("no batch verifier at %s: signatures are checked one by one", BATCH_LIBRARY)
        return None
    check = library.wattmesh_ed25519_batch_verify
    check.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int]
    check.restype = ctypes.c_int
    return check


def batch_verifier() -> Callable[[Sequence[Item]], bool] | None:
    """A check of a whole set of signatures (True: every one is valid), or None."""
    check = native_check()
    if check is None:
        return None

    def batch(items: Sequence[Item]) -> bool:
        if not items:
            return True
        data = b"".join([b"".join(item) for item in items])
        ends = array("I", accumulate(len(k) + len(s) + len(m) for k, s, m in items))
        return bool(check(data, len(data), ends.buffer_info()[0], len(items)) == 1)

    return batch
