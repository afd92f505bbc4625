"""An in-memory ledger that dedups by tx_id, for testing the outbox against the Deliverer
interface; the real-cluster test uses the real ledger client when it is available."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger.tx import SignedTx


@dataclass
class Receipt:
    code: str = "OK"
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)


class MemoryLedger:
    def __init__(self) -> None:
        self.applied: dict[str, SignedTx] = {}
        self.submissions = 0
        self.up = True
        self.lose_reply = 0  # apply, then fail as if the reply was lost this many times
        self.reject_kinds: set[str] = set()

    async def submit(self, tx: SignedTx) -> Receipt:
        self.submissions += 1
        if not self.up:
            raise ConnectionRefusedError("ledger down")
        assert tx.verify()
        if tx.kind in self.reject_kinds:
            return Receipt("BAD_KIND", "rejected")
        dup = tx.tx_id in self.applied
        self.applied.setdefault(tx.tx_id, tx)
        if self.lose_reply:
            self.lose_reply -= 1
            raise TimeoutError("reply lost")
        return Receipt("DUPLICATE" if dup else "OK")
