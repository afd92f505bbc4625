"""Batches, blocks and commit certificates: the hash chain every replica keeps.

A *batch* is what the primary orders at one sequence number: its timestamp and the signed
transactions (wire dicts of ``ledger.tx.SignedTx``). Its digest is what pre-prepares, prepares and
commits agree on. A *block* is a committed batch placed in the chain: height (= sequence number),
the previous block's hash and the batch. The block hash covers height, previous hash and batch
digest; it leaves out the view and the certificate, because correct replicas may commit the same
batch at the same height in different views (before and after a view change) and must still
build the same chain. The certificate (2f+1 signed commits for (view, height, batch digest))
proves the block was committed; a lagging replica checks it during state transfer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.encoding import canonical
from ledger.pbft.signing import Keyring
from ledger.pbft.wire import WireError, exact_keys, hex_bytes, nat
from ledger.tx import SignedTx, TxError

BATCH_DOMAIN = b"wattmesh/pbft/batch/v1\x00"
BLOCK_DOMAIN = b"wattmesh/pbft/block/v1\x00"
GENESIS_HASH = bytes(32)  # prev_hash of block 1 unless the executor says otherwise
MAX_BATCH_WIRE = 100_000  # hard bound on transactions in one batch on the wire
KnownTx = Callable[[Any], "SignedTx | None"]  # see Batch.from_wire


TX_WIRE_OVERHEAD = 160  # a transaction's wire form beyond its unsigned bytes: signature, keys


def tx_bytes(tx: SignedTx) -> int:
    """The size the consensus bounds count for one transaction (about its wire size)."""
    return len(tx.payload) + TX_WIRE_OVERHEAD


def batch_bytes(txs: Sequence[SignedTx]) -> int:
    """The size the consensus bounds count for a batch: its transactions' ``tx_bytes``."""
    return sum(len(tx.payload) for tx in txs) + TX_WIRE_OVERHEAD * len(txs)


def batch_digest(timestamp_ms: int, tx_wires: Sequence[dict[str, Any]]) -> bytes:
    """Digest of a batch; ``tx_wires`` must already be validated (hot path: no type walk)."""
    body = {"ts": timestamp_ms, "txs": tx_wires}
    return hashlib.sha256(BATCH_DOMAIN + canonical(body, checked=False)).digest()


def commit_header(view: int, seq: int, digest: bytes, replica: int) -> dict[str, Any]:
    """Header a replica signs in a COMMIT; also what a certificate's signatures cover."""
    return {"d": digest.hex(), "n": seq, "r": replica, "t": "commit", "v": view}


@dataclass(frozen=True, slots=True)
class Batch:
    timestamp_ms: int
    txs: tuple[SignedTx, ...]
    wires: tuple[dict[str, Any], ...]  # the same transactions in wire form
    # cache (not a constructor argument): the canonical bytes, which both the digest and the
    # journal need (one encoding of the whole batch per replica and block instead of two)
    _encoded: bytes = field(default=b"", init=False, compare=False, repr=False)

    def encoded(self) -> bytes:
        """``canonical(self.to_wire())``, computed once."""
        if not self._encoded:
            object.__setattr__(self, "_encoded", canonical(self.to_wire(), checked=False))
        return self._encoded

    def digest(self) -> bytes:
        return hashlib.sha256(BATCH_DOMAIN + self.encoded()).digest()

    def to_wire(self) -> dict[str, Any]:
        return {"ts": self.timestamp_ms, "txs": list(self.wires)}

    @classmethod
    def from_txs(cls, timestamp_ms: int, txs: Sequence[SignedTx]) -> Batch:
        return cls(timestamp_ms, tuple(txs), tuple(tx.to_wire() for tx in txs))

    @classmethod
    def from_wire(cls, wire: Any, known: KnownTx | None = None) -> Batch:
        """``known``: a transaction this replica already parsed, if ``w`` is exactly its wire
        form (canonically equal, so ``1`` is not ``true``), else None; saves parsing again
        what a client sent this replica too."""
        exact_keys(wire, ("ts", "txs"), "batch")
        ts = nat(wire, "ts")
        raw = wire["txs"]
        if not isinstance(raw, list) or len(raw) > MAX_BATCH_WIRE:
            raise WireError("batch.txs: must be a list")
        try:
            if known is None:
                txs = tuple(SignedTx.from_wire(w) for w in raw)
            else:
                txs = tuple(known(w) or SignedTx.from_wire(w) for w in raw)
        except TxError as exc:
            raise WireError(f"batch.txs: {exc}") from exc
        return cls(ts, txs, tuple(raw))


NULL_BATCH = Batch(0, (), ())
NULL_DIGEST = NULL_BATCH.digest()


@dataclass(frozen=True, slots=True)
class Certificate:
    """2f+1 commits for (view, seq, digest): ``commits`` is ((replica, signature), ...)."""

    view: int
    seq: int
    digest: bytes
    commits: tuple[tuple[int, bytes], ...]

    def verify(self, keyring: Keyring, quorum: int) -> bool:
        signers: set[int] = set()
        for replica, sig in self.commits:
            if replica in signers:
                continue
            if keyring.verify(
                replica, sig, commit_header(self.view, self.seq, self.digest, replica)
            ):
                signers.add(replica)
        return len(signers) >= quorum

    def to_wire(self) -> dict[str, Any]:
        return {
            "c": [[r, s.hex()] for r, s in self.commits],
            "d": self.digest.hex(),
            "n": self.seq,
            "v": self.view,
        }

    @classmethod
    def from_wire(cls, wire: Any) -> Certificate:
        exact_keys(wire, ("c", "d", "n", "v"), "certificate")
        raw = wire["c"]
        if not isinstance(raw, list) or len(raw) > 256:
            raise WireError("certificate.c: must be a list")
        commits = []
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or isinstance(item[0], bool)
                or not isinstance(item[0], int)
                or not 0 <= item[0] < 256
            ):
                raise WireError("certificate.c: items must be [replica, signature]")
            commits.append((item[0], hex_bytes({"s": item[1]}, "s", 64)))
        return cls(nat(wire, "v"), nat(wire, "n"), hex_bytes(wire, "d", 32), tuple(commits))


@dataclass(frozen=True, slots=True)
class Block:
    height: int
    timestamp_ms: int
    prev_hash: bytes
    txs: tuple[dict[str, Any], ...]  # SignedTx wire dicts, in execution order
    certificate: Certificate | None = None
    tx_ids: tuple[str, ...] = field(default=(), compare=False)  # derived; filled by the replica
    # derived: the batch's digest when the replica knows it already (it is what consensus agreed
    # on), so hashing the block does not encode the whole batch again
    digest: bytes = field(default=b"", compare=False, repr=False)
    # derived: the batch's canonical bytes (``Batch.encoded``), which the block's own encoding
    # ends with; filled by the replica, so storing the block does not encode the batch again
    batch_bytes: bytes = field(default=b"", compare=False, repr=False)

    @property
    def view(self) -> int:
        return self.certificate.view if self.certificate else 0

    def batch_digest(self) -> bytes:
        return self.digest or batch_digest(self.timestamp_ms, self.txs)

    def hash(self, batch_digest_: bytes | None = None) -> bytes:
        digest = batch_digest_ if batch_digest_ is not None else self.batch_digest()
        return block_hash(self.height, self.prev_hash, digest)

    def ids(self) -> tuple[str, ...]:
        """Transaction ids, in order (computed if the replica did not fill them)."""
        if self.tx_ids or not self.txs:
            return self.tx_ids
        return tuple(SignedTx.from_wire(w).tx_id for w in self.txs)

    def encoded(self) -> bytes:
        """``canonical(self.to_wire())``. With the batch's bytes at hand, the keys before the
        batch's (``cert``, ``height``, ``prev``: canonical order puts ``ts`` and ``txs`` last) are
        encoded and the batch's bytes follow them: a test holds the two ways equal."""
        if not self.batch_bytes:
            return canonical(self.to_wire(), checked=False)
        head = canonical(
            {
                "cert": self.certificate.to_wire() if self.certificate else None,
                "height": self.height,
                "prev": self.prev_hash.hex(),
            },
            checked=False,
        )
        return head[:-1] + b"," + self.batch_bytes[1:]

    def to_wire(self) -> dict[str, Any]:
        return {
            "cert": self.certificate.to_wire() if self.certificate else None,
            "height": self.height,
            "prev": self.prev_hash.hex(),
            "ts": self.timestamp_ms,
            "txs": list(self.txs),
        }

    @classmethod
    def from_wire(cls, wire: Any) -> Block:
        exact_keys(wire, ("cert", "height", "prev", "ts", "txs"), "block")
        batch = Batch.from_wire({"ts": wire["ts"], "txs": wire["txs"]})
        cert = None if wire["cert"] is None else Certificate.from_wire(wire["cert"])
        return cls(
            height=nat(wire, "height"),
            timestamp_ms=batch.timestamp_ms,
            prev_hash=hex_bytes(wire, "prev", 32),
            txs=batch.wires,
            certificate=cert,
            tx_ids=tuple(tx.tx_id for tx in batch.txs),
        )


def block_hash(height: int, prev_hash: bytes, batch_digest_: bytes) -> bytes:
    body = {"batch": batch_digest_.hex(), "height": height, "prev": prev_hash.hex()}
    return hashlib.sha256(BLOCK_DOMAIN + canonical(body, checked=False)).digest()
