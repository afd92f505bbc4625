"""Executing committed blocks: the contract in memory, the block store on disk, kept in step.

``LedgerState`` is what the consensus core calls once a block is committed. For each transaction,
in order, it either applies it to the contract or, if its ``tx_id`` already has a receipt from an
earlier block, skips it (a retried or re-proposed transaction is never applied twice). Then the
block row, the new receipts and (every ``checkpoint_interval`` blocks) a contract snapshot are
written in one SQLite transaction.

Restart: restore the newest snapshot (or the genesis state) and re-apply the blocks after it.
Whether a transaction was applied is decided by its receipt's (height, index), so replay takes
exactly the same decisions as the first execution did.

Client signatures are not checked again here: the consensus core verifies every transaction of
a pre-prepare before it prepares it (once per transaction per replica, see ``SigCache`` used by
the node for requests), so a committed block carries only transactions at least f+1 correct
replicas verified, and a block fetched by state transfer carries a 2f+1 certificate. Checking
again would double the replica's largest CPU cost. ``verify_signatures=True`` turns the check
on for a deployment that wants defence in depth; it is deterministic either way.

Admission is asked again here (a contract that is ``Admitting``): a transaction whose signer the
state it executes on does not admit gets that refusal as its receipt and never reaches the
contract. Replicas admit requests against their own executed state before ordering (see
``ledger.gate``); this second look is what makes a faulty primary's unadmitted transaction the
same no-op on every replica.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ledger import ed25519
from ledger.client_wire import receipt_from_wire, receipt_to_wire
from ledger.contract.api import Admitting, BlockContext, Receipt, Reconfiguring, Transaction
from ledger.encoding import EncodingError, canonical, decode
from ledger.pbft.block import GENESIS_HASH, Block
from ledger.setup import ContractFactory
from ledger.store import BlockRow, BlockStore, StateSnapshot, StoreError
from ledger.tx import SignedTx, TxError

SIG_CACHE_SIZE = 200_000
STABLE_CHECKPOINT = "stable_checkpoint"
VIEW = "view"  # the replica's view and whether it is active in it (the journal's meta value)


class SigCache:
    """Verdicts of client-signature checks; Ed25519 verification is the replica's largest CPU
    cost, so each transaction is verified at most once per replica. Keyed by ``tx_id`` AND the
    signature: the id hashes the unsigned payload only, so a faulty primary could otherwise
    re-propose a transaction the backups checked before with its signature replaced by any 64
    bytes, and they would take the cached verdict for it."""

    def __init__(self, size: int = SIG_CACHE_SIZE) -> None:
        self.size = size
        # Two generations of plain dicts instead of an LRU: a verdict is kept for between
        # size/2 and size checks, and nothing is moved or unlinked per check (an OrderedDict's
        # insert and eviction were 1-2 % of a backup's CPU under load).
        self._seen: dict[tuple[str, bytes], bool] = {}
        self._older: dict[tuple[str, bytes], bool] = {}
        self.verified = 0

    def check(self, tx: SignedTx, tx_id: str | None = None) -> bool:
        return self.check_many([tx], [tx_id or tx.tx_id])[0]

    def check_many(self, txs: Sequence[SignedTx], tx_ids: Sequence[str]) -> list[bool]:
        """``[self.check(tx, i) for ...]``, the uncached ones checked together (one batch
        check, see ``ed25519.verify_many``)."""
        keys = [(tx_id, tx.signature) for tx, tx_id in zip(txs, tx_ids, strict=True)]
        verdicts: list[bool | None] = []
        misses: list[int] = []
        for n, key in enumerate(keys):
            verdict = self._seen.get(key)
            if verdict is None:
                verdict = self._older.get(key)
            if verdict is None:
                misses.append(n)
            verdicts.append(verdict)
        if misses:
            checked = ed25519.verify_many(
                [(txs[n].sender, txs[n].signature, txs[n].signing_bytes()) for n in misses]
            )
            self.verified += len(misses)
            for n, verdict in zip(misses, checked, strict=True):
                if len(self._seen) >= max(1, self.size // 2):
                    self._older, self._seen = self._seen, {}
                self._seen[keys[n]] = verdict
                verdicts[n] = verdict
        return [bool(v) for v in verdicts]

    def __len__(self) -> int:
        return len(self._seen) + len(self._older)


class LedgerState:
    def __init__(
        self,
        path: Path,
        genesis: Mapping[str, Any],
        factory: ContractFactory,
        checkpoint_interval: int,
        sig_cache: SigCache | None = None,
        *,
        verify_signatures: bool = False,
        merge_phase: int = 0,
    ) -> None:
        self.store = BlockStore(path, merge_phase=merge_phase)
        self.genesis = genesis
        self.factory = factory
        self.checkpoint_interval = checkpoint_interval
        self.sigs = sig_cache or SigCache()
        self.verify_signatures = verify_signatures
        self.contract = factory(genesis)
        # admission is checked again at execution, on the state the transaction executes on
        # (deterministic): what a faulty primary ordered without it is a no-op everywhere
        self.admission = self.contract if isinstance(self.contract, Admitting) else None
        self.not_admitted = 0
        # the replica sets members decided (a contract without them: the cluster file's only)
        self.reconfiguring = self.contract if isinstance(self.contract, Reconfiguring) else None
        self.height, self.head_hash = 0, GENESIS_HASH
        self.replayed = 0
        self._recover()

    # -- restart --------------------------------------------------------------------------------

    def _recover(self) -> None:
        cp = self.store.latest_checkpoint()
        after = 0
        if cp is not None:
            self.contract.restore(cp.snapshot)
            if self.contract.state_digest() != cp.state_digest:
                raise StoreError(f"checkpoint {cp.height}: snapshot does not match its digest")
            after = cp.height
            row = self.store.block(cp.height)
            if row is None:
                raise StoreError(f"checkpoint {cp.height} has no block")
            self.height, self.head_hash = row.height, row.hash
        for row in self.store.blocks(after=after):
            block = decode_block(row)
            if block.prev_hash != self.head_hash or block.height != self.height + 1:
                raise StoreError(f"block {row.height} does not extend the chain")
            self._apply(block)
            self.height, self.head_hash = row.height, row.hash
            self.replayed += 1

    # -- execution ------------------------------------------------------------------------------

    def execute(self, block: Block) -> list[dict[str, Any]]:
        """Apply a committed block and persist it; one receipt (wire dict) per transaction, the
        stored original for a transaction executed before (the same dict for a transaction
        repeated within the block: treat receipts as read-only)."""
        if block.height != self.height + 1:
            raise StoreError(f"block {block.height} does not follow height {self.height}")
        if block.prev_hash != self.head_hash:
            raise StoreError(f"block {block.height} does not link to the head")
        results, new = self._apply(block)
        checkpoint = None
        if block.height % self.checkpoint_interval == 0:
            checkpoint = StateSnapshot(
                block.height, self.contract.state_digest(), self.contract.snapshot()
            )
        block_hash = block.hash()
        row = BlockRow(
            height=block.height,
            view=block.view,
            prev_hash=block.prev_hash,
            hash=block_hash,
            body=block.encoded(),
        )
        self.store.append(row, new, checkpoint)
        self.height, self.head_hash = block.height, block_hash
        return results

    def _apply(self, block: Block) -> tuple[list[dict[str, Any]], list[tuple[str, int, Any]]]:
        """Receipts of the block (wire dicts) and the new ones to store. On a restart the block
        is stored already, so its own transactions are found in the index at this very (height,
        index) and are applied again, exactly as the first time."""
        ids = list(block.ids())
        located = self.store.locate(ids)
        results: list[dict[str, Any]] = []
        new: list[tuple[str, int, Any]] = []
        in_block: dict[str, int] = {}
        for index, (wire, tx_id) in enumerate(zip(block.txs, ids, strict=True)):
            earlier = located.get(tx_id)
            if earlier is not None and earlier != (block.height, index):
                stored = self.store.receipt(tx_id)
                assert stored is not None
                results.append(receipt_to_wire(receipt_from_wire(stored[2])))
                continue
            if tx_id in in_block:
                results.append(results[in_block[tx_id]])
                continue
            receipt = receipt_to_wire(self._apply_one(wire, tx_id, block, index))
            in_block[tx_id] = index
            results.append(receipt)
            new.append((tx_id, index, receipt))
        return results, new

    def _apply_one(self, wire: dict[str, Any], tx_id: str, block: Block, index: int) -> Receipt:
        if self.verify_signatures:
            try:
                tx = SignedTx.from_wire(wire)
            except TxError as exc:
                return Receipt(code="MALFORMED_TX", message=str(exc))
            if not self.sigs.check(tx, tx_id):
                return Receipt(code="BAD_SIGNATURE", message="signature does not verify")
        # Every path that builds a Block parsed its transactions with SignedTx.from_wire (the
        # core's Batch/Block.from_wire, or a request), and tx_id comes from the core: building
        # the contract's view directly saves a second parse and hash per transaction.
        # (positional: keyword arguments cost a fifth more per transaction)
        sender = bytes.fromhex(wire["sender"])
        if self.admission is not None:
            refused = self.admission.admit(sender, wire["kind"], 0, block.timestamp_ms)
            if refused is not None:  # (sizes were bounded at admission and by MAX_TX_BYTES)
                self.not_admitted += 1
                return Receipt(code=refused[0], message=refused[1])
        contract_tx = Transaction(tx_id, sender, wire["kind"], wire["body"], wire["nonce"])
        ctx = BlockContext(block.height, index, block.timestamp_ms)
        try:
            return self.contract.apply(contract_tx, ctx)
        except Exception as exc:  # a contract bug must not stop the replica; it is deterministic
            return Receipt(code="CONTRACT_ERROR", message=f"{type(exc).__name__}: {exc}")

    # -- the rest of the core's Executor protocol ---------------------------------------------

    def last_executed(self) -> int:
        return self.height

    def last_block_hash(self) -> bytes:
        return self.head_hash

    def state_digest(self) -> bytes:
        return self.contract.state_digest()

    def blocks_from(self, height: int, limit: int) -> list[Block]:
        rows = self.store.blocks(after=max(height, 1) - 1, limit=max(limit, 0))
        return [decode_block(row) for row in rows]

    def receipt(self, tx_id: str) -> tuple[int, dict[str, Any]] | None:
        found = self.store.receipt(tx_id)
        return None if found is None else (found[0], found[2])

    def signer(self, tx_id: str) -> bytes | None:
        """The key that signed an executed transaction (read from its block)."""
        found = self.store.receipt(tx_id)
        block = None if found is None else self.block(found[0])
        if found is None or block is None:
            return None
        return bytes.fromhex(block.txs[found[1]]["sender"])

    def known(self, tx_ids: Sequence[str]) -> set[str]:
        return self.store.known(tx_ids)

    def save_checkpoint(self, seq: int, digest: bytes, proof: Sequence[dict[str, Any]]) -> None:
        value = {"seq": seq, "digest": digest.hex(), "proof": list(proof)}
        self.store.set_meta(STABLE_CHECKPOINT, canonical(value, checked=False))

    def load_checkpoint(self) -> tuple[int, bytes, Sequence[dict[str, Any]]] | None:
        raw = self.store.get_meta(STABLE_CHECKPOINT)
        if raw is None:
            return None
        value = decode(raw, strict=False)
        return int(value["seq"]), bytes.fromhex(value["digest"]), list(value["proof"])

    def state_digest_at(self, height: int) -> bytes | None:
        return self.store.checkpoint_digest(height)

    def save_journal(self, seq: int, parts: Mapping[str, bytes | None]) -> None:
        self.store.put_journal(seq, parts)

    def save_view(self, view: int, active: bool) -> None:
        self.store.put_journal_meta(VIEW, canonical({"view": view, "active": active}))

    def load_journal(self) -> tuple[int, bool, dict[int, dict[str, bytes]]]:
        raw = self.store.get_meta(VIEW)
        view, active = 0, True
        if raw is not None:
            try:
                value = decode(raw, strict=False)
                view, active = value["view"], value["active"]
            except (EncodingError, KeyError, TypeError) as exc:
                raise StoreError(f"stored view does not decode: {exc}") from exc
            if type(view) is not int or view < 0 or type(active) is not bool:
                raise StoreError(f"stored view is not a view: {raw!r}")
        return view, active, self.store.journal()

    def prune_journal(self, upto: int) -> None:
        self.store.prune_journal(upto)

    def reconfigurations(self) -> Sequence[tuple[int, Sequence[Mapping[str, Any]]]]:
        return () if self.reconfiguring is None else self.reconfiguring.reconfigurations()

    # -- reads for clients and tools ------------------------------------------------------------

    def block(self, height: int) -> Block | None:
        row = self.store.block(height)
        return None if row is None else decode_block(row)

    def close(self) -> None:
        self.store.close()


def decode_block(row: BlockRow) -> Block:
    try:
        return Block.from_wire(decode(row.body, strict=False))
    except (EncodingError, ValueError) as exc:
        raise StoreError(f"block {row.height}: stored body does not decode: {exc}") from exc
