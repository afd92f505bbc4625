"""Which key signs which of the gateway's ledger transactions.

The gateway never holds the member's wallet key. It holds:

* the meter-reporting key (``gateway.key_file``, made on the gateway, registered with the meter):
  it signs ``meter.report`` and nothing else the ledger would take;
* optionally an order key (``gateway.order_key_file``), which the member delegated to it on
  chain (``member.set_order_key``, signed with the wallet key) so that its trading agent places
  the home's offers and bids (open, or sealed: commit and reveal); the ledger takes nothing
  else from it.

So a stolen gateway can report and trade energy within the tariff band until the owner or the
operator revokes its keys on chain (``meter.revoke``, ``member.set_order_key`` with null), but it
cannot transfer a token, vote or change a key.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import GatewayConfigError
from gateway.report import REPORT_KIND
from ledger.contract.registry import ORDER_KINDS
from ledger.keys import KeyFileError, load_key, public_hex


class SignerError(GatewayConfigError):
    """Keys that must not be used together (the order key equal to the meter key)."""


class Signers:
    """The meter key, and the order key when the member delegated one to this gateway."""

    __slots__ = ("meter", "order")

    def __init__(self, meter: Ed25519PrivateKey, order: Ed25519PrivateKey | None = None) -> None:
        if order is not None and public_hex(order) == public_hex(meter):
            raise SignerError("gateway.order_key_file: must not be the meter key (key_file)")
        self.meter = meter
        self.order = order

    def key_for(self, kind: str) -> Ed25519PrivateKey | None:
        """The key for a transaction of ``kind``; None: this gateway may not sign it."""
        if kind == REPORT_KIND:
            return self.meter
        return self.order if kind in ORDER_KINDS else None


def load_order_key(path: Path | None) -> Ed25519PrivateKey | None:
    """The order key, if configured. Never created here: the member makes it (``wattmesh ledger
    keygen --out ...``) and delegates its public key on chain (``member.set_order_key``)."""
    if path is None:
        return None
    try:
        return load_key(path)
    except KeyFileError as exc:
        raise SignerError(f"gateway.order_key_file: {exc}") from None
