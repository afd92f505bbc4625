"""Signed client transactions: the one definition of their wire form, id and signature.

A transaction is ``{"kind", "body", "nonce", "sender"}`` signed with the sender's Ed25519 key.
``tx_id`` is the hex SHA-256 of the canonical encoding of those four fields, so a client that
retries with the same nonce produces the same id and the ledger applies it at most once.
The signature covers a domain tag plus the same canonical bytes, so it can never be replayed as
a signature over some other kind of ledger object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger import ed25519
from ledger.contract.api import Transaction
from ledger.encoding import EncodingError, canonical, check
from ledger.fields import Fields

TX_DOMAIN = b"wattmesh/tx/v1\x00"
MAX_KIND_LEN = 64
MAX_NONCE = 2**63 - 1
# Canonical unsigned bytes of one transaction at most. The largest the contract takes (a member
# admitted, a signed meter report) is under 1 KiB; the bound keeps one client from filling a
# batch, and so a consensus message, with megabytes.
MAX_TX_BYTES = 16 * 1024
WIRE_FIELDS = frozenset(("body", "kind", "nonce", "sender", "sig"))
_new = object.__new__
_set = object.__setattr__


class TxError(ValueError):
    """A transaction that is malformed or whose signature does not verify."""


_READ = Fields(TxError)


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A signed transaction. Its canonical unsigned bytes (what the id hashes and the signature
    covers) and its id are computed once and kept: every replica needs both for every
    transaction, several times (id, signature check, batch, block), and encoding is the largest
    per-transaction cost after the signature check itself. ``body`` must not be mutated."""

    sender: bytes
    kind: str
    body: Mapping[str, Any]
    nonce: int
    signature: bytes
    # caches (not constructor arguments, so ``dataclasses.replace`` can never carry them over)
    _payload: bytes = field(default=b"", init=False, compare=False, repr=False)
    _id: str = field(default="", init=False, compare=False, repr=False)
    _wire: dict[str, Any] | None = field(default=None, init=False, compare=False, repr=False)

    def unsigned(self) -> dict[str, Any]:
        return {
            "body": self.body,
            "kind": self.kind,
            "nonce": self.nonce,
            "sender": self.sender.hex(),
        }

    @property
    def payload(self) -> bytes:
        """``canonical(self.unsigned())``, computed once."""
        if not self._payload:
            object.__setattr__(self, "_payload", canonical(self.unsigned()))
        return self._payload

    def signing_bytes(self) -> bytes:
        return TX_DOMAIN + self.payload

    @property
    def tx_id(self) -> str:
        if not self._id:
            object.__setattr__(self, "_id", hashlib.sha256(self.payload).hexdigest())
        return self._id

    def to_wire(self) -> dict[str, Any]:
        wire = self.unsigned()
        wire["sig"] = self.signature.hex()
        return wire

    def wire(self) -> dict[str, Any]:
        """The wire dict this transaction was parsed from (``from_wire`` checked that it encodes
        exactly as ``to_wire()`` does), else a new one: for the replica, which keeps and sends
        every request it orders. Shared: read it, never change it."""
        return self._wire if self._wire is not None else self.to_wire()

    def verify(self) -> bool:
        return ed25519.verify(self.sender, self.signature, self.signing_bytes())

    def to_contract(self) -> Transaction:
        return Transaction(
            tx_id=self.tx_id, sender=self.sender, kind=self.kind, body=self.body, nonce=self.nonce
        )

    @classmethod
    def from_wire(cls, wire: Any) -> SignedTx:
        """Parse (not verify) a wire transaction; raises ``TxError`` naming what is wrong."""
        if not isinstance(wire, dict):
            raise TxError("transaction must be an object")
        if wire.keys() != WIRE_FIELDS:
            raise TxError(
                f"transaction fields must be body, kind, nonce, sender, sig: {sorted(wire)}"
            )
        kind, body, nonce = wire["kind"], wire["body"], wire["nonce"]
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_LEN:
            raise TxError("kind must be a non-empty string of at most 64 characters")
        if not isinstance(body, dict):
            raise TxError("body must be an object")
        if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 <= nonce <= MAX_NONCE:
            raise TxError("nonce must be an integer in [0, 2**63)")
        sender = _READ.hex_bytes(wire, "sender", 32)
        sig = _READ.hex_bytes(wire, "sig", 64)
        unsigned = {"body": body, "kind": kind, "nonce": nonce, "sender": wire["sender"]}
        try:
            # the body is the one part not checked above; then the bytes the id and the
            # signature are computed over
            check(body)
            payload = canonical(unsigned, checked=False)
        except EncodingError as exc:
            raise TxError(f"body: {exc}") from exc
        if len(payload) > MAX_TX_BYTES:
            raise TxError(f"transaction of {len(payload)} bytes exceeds {MAX_TX_BYTES}")
        # Every replica parses every transaction: filling the slots directly costs a third of
        # the frozen dataclass's __init__ (which sets each field through a looked-up
        # object.__setattr__), about 1.3 us of the 7.7 a parse took.
        tx = _new(cls)
        _set(tx, "sender", sender)
        _set(tx, "kind", kind)
        _set(tx, "body", body)
        _set(tx, "nonce", nonce)
        _set(tx, "signature", sig)
        _set(tx, "_payload", payload)
        _set(tx, "_id", "")
        _set(tx, "_wire", wire)
        return tx


def sign_tx(key: Ed25519PrivateKey, kind: str, body: Mapping[str, Any], nonce: int) -> SignedTx:
    """Build and sign a transaction. Use a nonce that is fixed when the intent is recorded (an
    outbox row, say) so that every retry carries the same ``tx_id``."""
    unsigned = SignedTx(
        sender=public_bytes(key.public_key()),
        kind=kind,
        body=dict(body),
        nonce=nonce,
        signature=b"",
    )
    # Validate through the same parser replicas use, so a client cannot sign what they refuse.
    signed = SignedTx(
        sender=unsigned.sender,
        kind=kind,
        body=unsigned.body,
        nonce=nonce,
        signature=key.sign(unsigned.signing_bytes()),
    )
    return SignedTx.from_wire(signed.to_wire())
