"""Which key signs which of the gateway's ledger transactions.

The gateway holds the meter-reporting key (``gateway.key_file``, made on the gateway at first
start): it signs ``meter.report`` and nothing else the ledger would take, since the contract
never lets a meter key spend. The member's wallet key (``gateway.wallet_key_file``) is optional:
a member who lets its gateway trade for it puts it there, and then the outbox signs that home's
offers and bids with it. Without it the gateway reports only, and a stolen one can report (until
the owner or the operator revokes its key on chain) but cannot move a token.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import ConfigError
from gateway.report import REPORT_KIND
from ledger.keys import KeyFileError, load_key, public_hex


class SignerError(ConfigError):
    """Keys that must not be used together (the wallet key equal to the meter key)."""


class Signers:
    """The meter key, and the wallet key when the member gave one to this gateway."""

    __slots__ = ("meter", "wallet")

    def __init__(self, meter: Ed25519PrivateKey, wallet: Ed25519PrivateKey | None = None) -> None:
        if wallet is not None and public_hex(wallet) == public_hex(meter):
            raise SignerError("gateway.wallet_key_file: must not be the meter key (key_file)")
        self.meter = meter
        self.wallet = wallet

    def key_for(self, kind: str) -> Ed25519PrivateKey | None:
        """The key for a transaction of ``kind``; None: this gateway may not sign it."""
        return self.meter if kind == REPORT_KIND else self.wallet


def load_wallet_key(path: Path | None) -> Ed25519PrivateKey | None:
    """The member's wallet key, if configured. Never created here: the member makes it
    (``wattmesh ledger keygen --out ...``) and registers its public key when admitted."""
    if path is None:
        return None
    try:
        return load_key(path)
    except KeyFileError as exc:
        raise SignerError(f"gateway.wallet_key_file: {exc}") from None
