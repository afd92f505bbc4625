"""The core's backend: the ``Executor`` protocol, the seam between the consensus core and
storage and contract.

The IO layer implements it over SQLite and the contract; ``MemoryExecutor`` (in
``ledger.pbft.memory``) is the in-memory double used by the core's own tests and simulations.
All calls are synchronous and made by the core in order; ``execute`` must be atomic (a crash
leaves the block either fully applied and stored, or not at all).

The journal is the replica's protocol log across a restart: its view, and for each sequence
number above the stable checkpoint the pre-prepare it accepted (with the batch) and its prepared
certificate. The core writes an entry before any message that depends on it leaves, so a
restarted replica never signs a PREPARE or COMMIT that contradicts one it sent before, its
VIEW-CHANGE carries its prepared certificates, and a whole cluster restarted at once finishes
the batches it had prepared.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from ledger.pbft.block import Block

# a receipt in its wire form (JSON-like, float-free): {"code": "OK", "result": {...}, "message": ""}
# (``ledger.contract.api.Receipt`` is the contract's dataclass; ``receipt_to_wire`` makes this)
ReceiptWire = dict[str, Any]


class Executor(Protocol):
    def last_executed(self) -> int:
        """Height of the last block applied (0 before the first)."""
        ...

    def last_block_hash(self) -> bytes:
        """Hash of the last block applied (``GENESIS_HASH`` or a genesis-specific value)."""
        ...

    def execute(self, block: Block) -> Sequence[ReceiptWire]:
        """Append ``block`` (height = last_executed() + 1, with its certificate) and apply its
        transactions in order, atomically; one receipt per transaction. A ``tx_id`` executed
        before (here or in an earlier block) is not applied again: its stored receipt is
        returned. ``block.tx_ids`` holds the ids, filled in by the core."""
        ...

    def receipt(self, tx_id: str) -> tuple[int, ReceiptWire] | None:
        """(height, receipt) of an executed transaction, or None."""
        ...

    def known(self, tx_ids: Sequence[str]) -> Collection[str]:
        """Which of these transactions have been executed (one lookup for a frame of them)."""
        ...

    def state_digest(self) -> bytes:
        """SHA-256 digest of the contract state after the last applied block."""
        ...

    def blocks_from(self, height: int, limit: int) -> Sequence[Block]:
        """Up to ``limit`` consecutive stored blocks starting at ``height`` (with certificates);
        serves state transfer to lagging replicas."""
        ...

    def save_checkpoint(self, seq: int, digest: bytes, proof: Sequence[dict[str, Any]]) -> None:
        """Persist a stable checkpoint: sequence number, digest, and the quorum of signed
        checkpoint messages (wire dicts) that prove it."""
        ...

    def load_checkpoint(self) -> tuple[int, bytes, Sequence[dict[str, Any]]] | None:
        """The last stable checkpoint saved, or None."""
        ...

    def state_digest_at(self, height: int) -> bytes | None:
        """The state digest after block ``height`` if it is a checkpoint height still kept (the
        newest ones at least), else None: a restarted replica signs its checkpoint again."""
        ...

    def save_journal(self, seq: int, parts: Mapping[str, bytes | None]) -> None:
        """Write (bytes) or drop (None) parts of the journal entry of ``seq`` at once: ``pp``,
        ``batch`` and ``proof`` are written as they change, so the batch is written once. They
        must survive the process being killed once this returns."""
        ...

    def save_view(self, view: int, active: bool) -> None:
        """Keep the replica's view, and whether it is working in it (False: changing to it)."""
        ...

    def load_journal(self) -> tuple[int, bool, dict[int, dict[str, bytes]]]:
        """(view, active, parts by sequence number); (0, True, {}) for a new replica."""
        ...

    def reconfigurations(self) -> Sequence[tuple[int, Sequence[Mapping[str, Any]]]]:
        """Every change of the replica set the executed blocks made, in order: (height of the
        block that executed it, the new replicas ``[{"id", "host", "port", "public_key"}]``).
        Asked after every block; cheap (the contract's own list, not a copy). See epochs.py."""
        ...

    def prune_journal(self, upto: int) -> None:
        """Drop the entries of sequence numbers up to ``upto`` (now below a stable checkpoint)."""
        ...
