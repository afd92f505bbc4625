"""The seam between consensus and the contract.

The replica orders signed transactions into blocks and hands each one, in order, to a
deterministic contract. The contract never sees sockets, clocks or randomness: only the
transaction (already signature-checked by the replica) and the block context agreed by consensus.

Values inside transaction bodies, receipts and query results are restricted to JSON-like data
with no floats: ``None``, ``bool``, ``int``, ``str``, ``list`` and ``dict`` with ``str`` keys.
Byte strings (public keys, signatures) travel as lowercase hex strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# JSON-like, float-free value carried in bodies, receipts and query results.
Value = Any


@dataclass(frozen=True, slots=True)
class Transaction:
    """A client transaction as the contract sees it.

    ``sender`` is the raw 32-byte Ed25519 public key that signed it (the replica has verified the
    signature before the contract is called). ``kind`` names the operation, e.g.
    ``"token.transfer"`` or ``"auction.bid"``. ``tx_id`` is the hex SHA-256 of the
    transaction's canonical unsigned encoding, unique per (sender, nonce).
    """

    tx_id: str
    sender: bytes
    kind: str
    body: Mapping[str, Value]
    nonce: int


@dataclass(frozen=True, slots=True)
class BlockContext:
    """What consensus agreed about the block a transaction is executed in."""

    height: int  # block height, 1 for the first block after genesis
    index: int  # position of the transaction inside the block
    timestamp_ms: int  # the primary's timestamp in the pre-prepare (agreed, so deterministic)


@dataclass(frozen=True, slots=True)
class Receipt:
    """Outcome of one transaction. ``code`` is ``"OK"`` or a stable upper-case error code
    (e.g. ``"LISTING_CLOSED"``); a rejected transaction leaves the state unchanged."""

    code: str = "OK"
    result: Mapping[str, Value] = field(default_factory=dict)
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.code == "OK"


class Contract(Protocol):
    """A deterministic state machine executed identically by every replica."""

    def apply(self, tx: Transaction, ctx: BlockContext) -> Receipt:
        """Execute one transaction. Must never raise for bad input: return an error receipt."""
        ...

    def query(self, path: str, params: Mapping[str, Value]) -> Value:
        """Read-only query, e.g. ``query("balance", {"id_grid": "PT0001"})``.
        Raises ``QueryError`` for an unknown path or bad parameters."""
        ...

    def state_digest(self) -> bytes:
        """SHA-256 of the canonical encoding of the whole state."""
        ...

    def snapshot(self) -> bytes:
        """Canonical bytes of the whole state; ``restore(snapshot())`` gives an equal state."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the state by a snapshot taken with ``snapshot``."""
        ...


@runtime_checkable
class Admitting(Protocol):
    """A contract that says which transactions may be ordered at all (admission before
    ordering, see the ledger README). A contract without it admits every signer."""

    def admit(self, sender: bytes, kind: str, size: int, now_ms: int) -> tuple[str, str] | None:
        """None if a transaction of ``kind`` signed by ``sender`` with ``size`` canonical
        unsigned bytes may be ordered on the current state at block time ``now_ms``, else
        (code, message). Deterministic: a function of the state and its arguments only.
        ``size`` 0: not checked."""
        ...

    def limits(self) -> tuple[int, int, int]:
        """Per signer: transactions pending, bytes per hour of block time; open applications."""
        ...

    def open_applications(self, now_ms: int) -> int:
        """Applications still open at block time ``now_ms``."""
        ...


@runtime_checkable
class ReadPolicy(Protocol):
    """A contract that answers queries under a read policy. ``reader`` is the public key a
    client connection proved it holds, None for an anonymous connection."""

    def read(self, path: str, params: Mapping[str, Value], reader: bytes | None) -> Value:
        """``query`` as ``reader`` may see it; ``QueryError`` (``NOT_PERMITTED: ...``) if not."""
        ...

    def may_read_chain(self, reader: bytes | None) -> bool:
        """Whether ``reader`` may read whole blocks and every receipt."""
        ...


# A replica set's bounds, the same for the contract (what a change may name) and the consensus
# core (what it runs and switches to): n = 3f+1 with f >= 1, up to 64 replicas; ids are never
# reused, so they outrun n.
MIN_REPLICAS = 4
MAX_REPLICAS = 64
MAX_REPLICA_ID = 255


@runtime_checkable
class Reconfiguring(Protocol):
    """A contract through which members decide the ledger's replica set (a quorum action)."""

    def reconfigurations(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """Every replica set decided, in order: (height of its block, its replicas
        ``[{"id", "host", "port", "public_key"}]``). Cheap: asked after every block."""
        ...


class QueryError(ValueError):
    """A query path or parameter that the contract does not know."""


class ContractFactory(Protocol):
    def __call__(self, genesis: Mapping[str, Value]) -> Contract: ...
