"""``MemoryExecutor``: an in-memory ``Executor`` with a tiny deterministic key-value contract.

It is the stand-in for the SQLite store and the real contract in the core's own tests and
simulations (and a reference for what the IO layer's executor must do): blocks form a hash
chain, a transaction id is applied at most once, checkpoints are kept.

Contract: ``kv.put`` with body ``{"key": str, "value": int}`` sets a key; ``kv.add`` with
``{"key": str, "by": int}`` adds to it; ``kv.replicas`` with ``{"key": str, "replicas": [...]}``
records a new replica set (``Executor.reconfigurations``; the community contract takes it only
from a quorum of members); anything else gets an ``UNKNOWN_KIND`` receipt.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ledger.encoding import digest
from ledger.pbft.backend import ReceiptWire
from ledger.pbft.block import GENESIS_HASH, Block


class MemoryExecutor:
    def __init__(self, genesis_hash: bytes = GENESIS_HASH) -> None:
        self.genesis_hash = genesis_hash
        self.blocks: list[Block] = []
        self.hashes: list[bytes] = []
        self.state: dict[str, int] = {}
        self.receipts: dict[str, tuple[int, ReceiptWire]] = {}
        self.checkpoint: tuple[int, bytes, list[dict[str, Any]]] | None = None
        self.journal: dict[int, dict[str, bytes]] = {}
        self.digests: dict[int, bytes] = {}  # state digest after each block
        self.view: tuple[int, bool] = (0, True)
        self.replica_sets: list[tuple[int, Sequence[Mapping[str, Any]]]] = []

    def last_executed(self) -> int:
        return len(self.blocks)

    def last_block_hash(self) -> bytes:
        return self.hashes[-1] if self.hashes else self.genesis_hash

    def execute(self, block: Block) -> Sequence[ReceiptWire]:
        if block.height != len(self.blocks) + 1 or block.prev_hash != self.last_block_hash():
            raise ValueError(f"block {block.height} does not extend the chain")
        receipts: list[ReceiptWire] = []
        for tx_id, wire in zip(block.ids(), block.txs, strict=True):
            done = self.receipts.get(tx_id)
            if done is not None:
                receipts.append(done[1])
                continue
            receipt = self._apply(wire["kind"], wire["body"], block.height)
            self.receipts[tx_id] = (block.height, receipt)
            receipts.append(receipt)
        self.blocks.append(block)
        self.hashes.append(block.hash())
        self.digests[block.height] = self.state_digest()
        return receipts

    def _apply(self, kind: str, body: dict[str, Any], height: int) -> ReceiptWire:
        # Blocks hold transactions the replicas validated (or certified): read the wire dict.
        key = body.get("key")
        if not isinstance(key, str):
            return {"code": "BAD_KEY", "message": "", "result": {}}
        if kind == "kv.replicas":
            self.replica_sets.append((height, body.get("replicas", [])))
            self.state[key] = len(self.replica_sets)
            return {"code": "OK", "message": "", "result": {"value": self.state[key]}}
        if kind == "kv.put" and type(body.get("value")) is int:
            self.state[key] = body["value"]
        elif kind == "kv.add" and type(body.get("by")) is int:
            self.state[key] = self.state.get(key, 0) + body["by"]
        else:
            return {"code": "UNKNOWN_KIND", "message": "", "result": {}}
        return {"code": "OK", "message": "", "result": {"value": self.state[key]}}

    def receipt(self, tx_id: str) -> tuple[int, ReceiptWire] | None:
        return self.receipts.get(tx_id)

    def known(self, tx_ids: Sequence[str]) -> Collection[str]:
        return {t for t in tx_ids if t in self.receipts}

    def state_digest(self) -> bytes:
        return digest(self.state)

    def blocks_from(self, height: int, limit: int) -> Sequence[Block]:
        if height < 1:
            return []
        return self.blocks[height - 1 : height - 1 + limit]

    def save_checkpoint(self, seq: int, digest_: bytes, proof: Sequence[dict[str, Any]]) -> None:
        self.checkpoint = (seq, digest_, list(proof))

    def load_checkpoint(self) -> tuple[int, bytes, Sequence[dict[str, Any]]] | None:
        return self.checkpoint

    def state_digest_at(self, height: int) -> bytes | None:
        return self.digests.get(height)

    def save_journal(self, seq: int, parts: Mapping[str, bytes | None]) -> None:
        entry = self.journal.setdefault(seq, {})
        for part, value in parts.items():
            if value is None:
                entry.pop(part, None)
            else:
                entry[part] = value
        if not entry:
            del self.journal[seq]

    def save_view(self, view: int, active: bool) -> None:
        self.view = (view, active)

    def load_journal(self) -> tuple[int, bool, dict[int, dict[str, bytes]]]:
        return self.view[0], self.view[1], {seq: dict(p) for seq, p in self.journal.items()}

    def reconfigurations(self) -> Sequence[tuple[int, Sequence[Mapping[str, Any]]]]:
        return self.replica_sets

    def prune_journal(self, upto: int) -> None:
        for seq in [s for s in self.journal if s <= upto]:
            del self.journal[seq]
