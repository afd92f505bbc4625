"""Ed25519 signatures of replica messages, with a domain tag so no signature means two things.

Every replica-to-replica message that a third party may have to check later (pre-prepares and
prepares inside view-change proofs, commits inside block certificates, checkpoints inside stable
checkpoint proofs) is signed individually; MACs would be cheaper but cannot be checked by a
replica that was not the receiver, and per-batch signatures cost little next to per-transaction
client signature checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger import ed25519
from ledger.encoding import canonical

MSG_DOMAIN = b"wattmesh/pbft/v1\x00"


def signing_bytes(header: Mapping[str, Any]) -> bytes:
    """The bytes a replica signs: domain tag plus canonical encoding of the message header."""
    return MSG_DOMAIN + canonical(header, checked=False)


class Keyring:
    """The replicas' public keys, by replica id: ``Keyring(keys)`` numbers them 0..n-1,
    ``Keyring.of(replicas)`` takes each one's own id (ids may have holes after a
    reconfiguration)."""

    __slots__ = ("_keys",)

    def __init__(self, public_keys: Iterable[bytes] | Mapping[int, bytes]) -> None:
        pairs = public_keys.items() if isinstance(public_keys, Mapping) else enumerate(public_keys)
        # parsed once to refuse a malformed key at start-up; checks use the raw bytes
        self._keys = {
            i: Ed25519PublicKey.from_public_bytes(k).public_bytes_raw() for i, k in pairs
        }

    @classmethod
    def of(cls, replicas: Iterable[Any]) -> Keyring:
        """The keys of ``replicas`` (anything with ``id`` and ``public_key``, raw bytes)."""
        return cls({r.id: r.public_key for r in replicas})

    def __len__(self) -> int:
        return len(self._keys)

    def known(self, replica: int) -> bool:
        return replica in self._keys

    def verify(self, replica: int, signature: bytes, header: Mapping[str, Any]) -> bool:
        key = self._keys.get(replica)
        if key is None:
            return False
        return ed25519.verify(key, signature, signing_bytes(header))


class Signer:
    __slots__ = ("_key", "replica")

    def __init__(self, replica: int, key: Ed25519PrivateKey) -> None:
        self.replica = replica
        self._key = key

    def sign(self, header: Mapping[str, Any]) -> bytes:
        return self._key.sign(signing_bytes(header))
