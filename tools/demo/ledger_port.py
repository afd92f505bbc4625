"""How the demo reaches the ledger: the replica cluster (separate processes over loopback TCP,
through ``ledger_client.LedgerClient``), or, only when the cluster part is not installed, the
contract executed in this process (reported as such in the summary and the self-checks).

Both offer the same three calls the demo needs: ``submit(tx) -> Receipt``,
``query(path, **params)`` and ``digests() -> {replica: hex digest}``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from ledger.contract.api import BlockContext, Receipt
from ledger.tx import SignedTx


class LedgerPort(Protocol):
    kind: str

    async def submit(self, tx: SignedTx) -> Receipt: ...

    async def query(self, path: str, **params: Any) -> Any: ...

    async def digests(self) -> dict[str, str]: ...

    async def close(self) -> None: ...


class InProcessLedger:
    """The contract alone, one transaction per block, timestamps from the wall clock as a primary
    would stamp them. Used only when the replica cluster is not available."""

    kind = "in-process contract (the replica cluster part is not installed)"

    def __init__(self, genesis: Mapping[str, Any]) -> None:
        from ledger.contract import make_contract

        self.contract = make_contract(genesis)
        self.height = 0
        self.receipts: dict[str, Receipt] = {}

    async def submit(self, tx: SignedTx) -> Receipt:
        if tx.tx_id in self.receipts:
            return self.receipts[tx.tx_id]
        if not tx.verify():
            return Receipt(code="BAD_SIGNATURE", message="transaction signature does not verify")
        self.height += 1
        ctx = BlockContext(height=self.height, index=0, timestamp_ms=time.time_ns() // 1_000_000)
        receipt = self.contract.apply(tx.to_contract(), ctx)
        self.receipts[tx.tx_id] = receipt
        return receipt

    async def query(self, path: str, **params: Any) -> Any:
        return self.contract.query(path, params)

    async def digests(self) -> dict[str, str]:
        return {"in-process": self.contract.state_digest().hex()}

    async def close(self) -> None:
        return None
