"""Admission before ordering, the replica's side: who may put transactions into its queue.

``AdmissionGate`` is sans-IO (no clock, no socket): the node asks it about every client request
before the request reaches the consensus core, and tells it what was executed.

1. ``check`` (before the signature check, so a stranger costs no Ed25519 check): the contract's
   admission predicate (``Admitting.admit``: signer known to the executed state, kind known, size
   within the kind's bound), against the state this replica has executed; and whether the signer
   is over a limit already (then a flood of its transactions costs no signature checks either).
2. ``charge`` (after the signature check, so nobody can spend a member's budget by forging its
   key): per-signer limits from the genesis, counted by this replica over what it admitted:
   transactions admitted and not yet executed, and canonical bytes admitted in the current hour
   of block time (the hour of the newest block this replica executed), and, for strangers'
   ``registry.apply``, open plus pending applications at most ``max_applications``.

A refusal names its code (``NOT_ADMITTED``, ``UNKNOWN_KIND``, ``TX_TOO_LARGE``, ``OVER_LIMIT``,
``APPLICATION_EXISTS``, ``APPLICATIONS_FULL``) and is counted; one signer over its limit is
refused alone. Limits are local bookkeeping (each replica counts what it admitted); the signer
rule is also checked again at execution, deterministically, by the executor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Sequence

from ledger.contract.admission import APPLY
from ledger.contract.api import Admitting, Contract
from ledger.contract.codes import APPLICATIONS_FULL, OVER_LIMIT
from ledger.tx import SignedTx

HOUR_MS = 3_600_000

Refusal = tuple[str, str]


class AdmissionGate:
    def __init__(self, contract: Contract) -> None:
        self.contract = contract if isinstance(contract, Admitting) else None
        self.pending: dict[str, tuple[bytes, int, bool]] = {}  # tx_id -> (signer, bytes, apply)
        self.pending_count: Counter[bytes] = Counter()
        self.pending_applications = 0
        self.hour = -1
        self.block_ms = 0  # the timestamp of the newest block executed
        self.hour_bytes: Counter[bytes] = Counter()
        self.refused: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.contract is not None

    def check(self, tx: SignedTx) -> Refusal | None:
        if self.contract is None:
            return None
        verdict = self.contract.admit(tx.sender, tx.kind, len(tx.payload), self.block_ms)
        if verdict is not None:
            self.refused[verdict[0]] += 1
            return verdict
        # A signer over its limit already is refused here too, before its signature is checked:
        # a member flooding its replica costs no Ed25519 check per refused transaction. (Only
        # what a correctly signed transaction charged counts, so a forger cannot get here.)
        max_pending, max_bytes, _ = self.contract.limits()
        signer = tx.sender
        if self.pending_count[signer] >= max_pending and tx.tx_id not in self.pending:
            return self._refuse(OVER_LIMIT, f"{max_pending} transactions of this signer pending")
        if self.hour_bytes[signer] >= max_bytes:
            return self._refuse(OVER_LIMIT, f"{max_bytes} bytes this hour from this signer")
        return None

    def charge(self, tx: SignedTx, tx_id: str) -> Refusal | None:
        """Count an admitted, correctly signed transaction against its signer's limits, or
        refuse it. A transaction already counted (a client's re-send) is not counted again."""
        if self.contract is None or tx_id in self.pending:
            return None
        max_pending, max_bytes, max_apps = self.contract.limits()
        signer, size = tx.sender, len(tx.payload)
        if self.pending_count[signer] >= max_pending:
            return self._refuse(OVER_LIMIT, f"{max_pending} transactions of this signer pending")
        if self.hour_bytes[signer] + size > max_bytes:
            return self._refuse(OVER_LIMIT, f"{max_bytes} bytes this hour from this signer")
        is_apply = tx.kind == APPLY
        opened = self.contract.open_applications(self.block_ms) if is_apply else 0
        if is_apply and opened + self.pending_applications >= max_apps:
            return self._refuse(APPLICATIONS_FULL, "the community takes no more applications")
        self.pending[tx_id] = (signer, size, is_apply)
        self.pending_count[signer] += 1
        self.pending_applications += is_apply
        self.hour_bytes[signer] += size
        return None

    def _refuse(self, code: str, message: str) -> Refusal:
        self.refused[code] += 1
        return code, message

    def executed(self, timestamp_ms: int, tx_ids: Sequence[str]) -> None:
        """A block was executed: its transactions are no longer pending; its time moves the
        hour (the byte budgets start again in a new hour of block time)."""
        self.block_ms = max(self.block_ms, timestamp_ms)
        hour = timestamp_ms // HOUR_MS
        if hour > self.hour:
            self.hour = hour
            self.hour_bytes.clear()
        if self.pending:
            for tx_id in tx_ids:
                self._release(tx_id)

    def reconcile(self, live: Container[str]) -> None:
        """Forget admitted transactions the core no longer holds (refused by it, or executed
        while this replica caught up by state transfer), so no signer stays blocked."""
        for tx_id in [t for t in self.pending if t not in live]:
            self._release(tx_id)

    def _release(self, tx_id: str) -> None:
        held = self.pending.pop(tx_id, None)
        if held is None:
            return
        signer, _, is_apply = held
        self.pending_count[signer] -= 1
        if self.pending_count[signer] <= 0:
            del self.pending_count[signer]
        self.pending_applications -= is_apply

    def counters(self) -> dict[str, int]:
        return {f"refused_{code.lower()}": n for code, n in self.refused.items()}
