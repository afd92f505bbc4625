"""The gateway's link to the ledger: ``LedgerDeliverer``, the outbox's ``Deliverer`` over the
real ledger client, also the EMS's reader of clearing results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.contract.market import AUTHORIZE_OFFERS
from ledger.tx import SignedTx


@dataclass(frozen=True, slots=True)
class Refusal:
    """A transaction the replicas refused to order, as the outbox reads a receipt."""

    code: str
    message: str


class LedgerDeliverer:
    """``Deliverer`` over the real ledger client; (re)connects lazily, so an unreachable
    cluster is just a failed attempt that the outbox retries."""

    def __init__(self, cluster: Path, key: Ed25519PrivateKey, timeout_s: float) -> None:
        self.cluster, self.key, self.timeout_s = cluster, key, timeout_s
        self._client: Any = None

    async def _connected(self) -> Any:
        from ledger_client.client import (
            LedgerClient,  # lazily: the gateway runs without a ledger too
        )

        if self._client is None:
            client = LedgerClient.from_cluster_file(
                self.cluster, self.key, timeout_s=self.timeout_s
            )
            try:
                await client.start()
            except BaseException:
                await client.close()
                raise
            self._client = client
        return self._client

    async def submit(self, tx: SignedTx) -> Any:
        from ledger_client.client import RejectedError

        client = await self._connected()
        try:
            return await client.submit(tx)
        except RejectedError as exc:  # refused before ordering (admission): an answer, with a
            # code the outbox judges like a receipt's, not a transport failure
            return Refusal(exc.code, str(exc))
        except Exception:
            await self.close()
            raise

    async def query(self, path: str, **params: Any) -> Any:
        """A read that 2f+1 replicas agree on (the client's ``query``)."""
        client = await self._connected()
        try:
            return await client.query(path, **params)
        except Exception:
            await self.close()
            raise

    async def clearing(self, listing_id: str) -> Mapping[str, Any] | None:
        """The EMS's view of a listing once it is cleared (its ``listing`` plus its ``trades``),
        None while it still takes orders."""
        listing = await self.query("listing", listing_id=listing_id)
        if not isinstance(listing, Mapping) or listing.get("state") == AUTHORIZE_OFFERS:
            return None
        trades = await self.query("trades", listing_id=listing_id)
        return {**listing, "trades": trades}

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
