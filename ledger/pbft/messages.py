"""Consensus messages: one definition of each wire form, parsed strictly.

Every message is a dict with a type tag ``"t"``. Replica messages carry the sender ``"r"`` and an
Ed25519 signature ``"sig"`` over the domain-tagged canonical encoding of the *header*: the wire
dict without ``sig`` and without the attachments (``batch`` of a pre-prepare, ``batches`` of a
view-change or new-view). Attachments are bound by digest (the header names the batch digest),
so a proof can travel without them and still be checked by a third replica.

``parse(wire)`` turns any value into a message or raises ``WireError``; it checks form, not
signatures (the replica checks those against its keyring, because it also counts them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self, TypeVar

from ledger.encoding import canonical
from ledger.pbft.block import Batch, Block, KnownTx
from ledger.pbft.signing import Keyring, Signer
from ledger.pbft.wire import WireError, exact_keys, hex_bytes, listed, nat
from ledger.tx import SignedTx, TxError

MAX_REPLICA_ID = 255
MAX_PROOF = 4096  # prepared entries in one view-change
MAX_BLOCKS = 1024  # blocks in one state-transfer answer


def _rid(wire: dict[str, Any]) -> int:
    return nat(wire, "r", MAX_REPLICA_ID)


def _sig(wire: dict[str, Any]) -> bytes:
    return hex_bytes(wire, "sig", 64)


@dataclass(frozen=True, slots=True)
class Request:
    """A client transaction (``SignedTx`` wire dict) sent to a replica."""

    tx: SignedTx

    def to_wire(self) -> dict[str, Any]:
        return {"t": "request", "tx": self.tx.to_wire()}

    @classmethod
    def from_wire(cls, wire: Any) -> Request:
        exact_keys(wire, ("t", "tx"), "request")
        try:
            return cls(SignedTx.from_wire(wire["tx"]))
        except TxError as exc:
            raise WireError(f"request.tx: {exc}") from exc


@dataclass(frozen=True, slots=True)
class PrePrepare:
    view: int
    seq: int
    digest: bytes
    replica: int
    sig: bytes = b""
    batch: Batch | None = None  # attachment; absent inside proofs

    def header(self) -> dict[str, Any]:
        return {
            "d": self.digest.hex(),
            "n": self.seq,
            "r": self.replica,
            "t": "pre-prepare",
            "v": self.view,
        }

    def stripped(self) -> PrePrepare:
        return replace(self, batch=None) if self.batch is not None else self

    def to_wire(self) -> dict[str, Any]:
        wire = self.header()
        wire["sig"] = self.sig.hex()
        if self.batch is not None:
            wire["batch"] = self.batch.to_wire()
        return wire

    def encoded(self) -> bytes:
        """``canonical(self.to_wire())`` with the batch's own bytes spliced in (``batch`` sorts
        before every other key), so the primary does not encode a batch again to send it; a
        test holds the two ways equal."""
        wire = self.header()
        wire["sig"] = self.sig.hex()
        rest = canonical(wire, checked=False)
        if self.batch is None:
            return rest
        return b'{"batch":' + self.batch.encoded() + b"," + rest[1:]

    @classmethod
    def from_wire(cls, wire: Any, known: KnownTx | None = None) -> PrePrepare:
        keys: tuple[str, ...] = ("batch", "d", "n", "r", "sig", "t", "v")
        if isinstance(wire, dict) and "batch" not in wire:
            keys = keys[1:]
        exact_keys(wire, keys, "pre-prepare")
        batch = Batch.from_wire(wire["batch"], known) if "batch" in wire else None
        return cls(
            nat(wire, "v"), nat(wire, "n"), hex_bytes(wire, "d", 32), _rid(wire), _sig(wire), batch
        )


@dataclass(frozen=True, slots=True)
class _Vote:
    """A replica's vote for (view, seq, batch digest): PREPARE and COMMIT share this form and
    differ only in their type tag, which the signature covers."""

    TAG: ClassVar[str] = ""
    view: int
    seq: int
    digest: bytes
    replica: int
    sig: bytes = b""

    def header(self) -> dict[str, Any]:
        return {
            "d": self.digest.hex(),
            "n": self.seq,
            "r": self.replica,
            "t": self.TAG,
            "v": self.view,
        }

    def to_wire(self) -> dict[str, Any]:
        wire = self.header()
        wire["sig"] = self.sig.hex()
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> Self:
        exact_keys(wire, ("d", "n", "r", "sig", "t", "v"), cls.TAG)
        return cls(nat(wire, "v"), nat(wire, "n"), hex_bytes(wire, "d", 32), _rid(wire), _sig(wire))


@dataclass(frozen=True, slots=True)
class Prepare(_Vote):
    TAG: ClassVar[str] = "prepare"


@dataclass(frozen=True, slots=True)
class Commit(_Vote):
    TAG: ClassVar[str] = "commit"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A replica's state digest after executing ``seq`` (see ``checkpoint_digest``)."""

    seq: int
    digest: bytes
    replica: int
    sig: bytes = b""

    def header(self) -> dict[str, Any]:
        return {"d": self.digest.hex(), "n": self.seq, "r": self.replica, "t": "checkpoint"}

    def to_wire(self) -> dict[str, Any]:
        wire = self.header()
        wire["sig"] = self.sig.hex()
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> Checkpoint:
        exact_keys(wire, ("d", "n", "r", "sig", "t"), "checkpoint")
        return cls(nat(wire, "n"), hex_bytes(wire, "d", 32), _rid(wire), _sig(wire))


@dataclass(frozen=True, slots=True)
class PreparedProof:
    """A prepared certificate: the pre-prepare (without batch) and 2f matching prepares."""

    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"pp": self.pre_prepare.to_wire(), "prepares": [p.to_wire() for p in self.prepares]}

    @classmethod
    def from_wire(cls, wire: Any) -> PreparedProof:
        exact_keys(wire, ("pp", "prepares"), "prepared proof")
        pp = PrePrepare.from_wire(wire["pp"])
        if pp.batch is not None:
            raise WireError("prepared proof: pre-prepare must not carry its batch")
        prepares = tuple(Prepare.from_wire(p) for p in listed(wire, "prepares", MAX_REPLICA_ID))
        return cls(pp, prepares)


def _batches_to_wire(batches: Mapping[bytes, Batch]) -> dict[str, Any]:
    return {d.hex(): b.to_wire() for d, b in batches.items()}


def _batches_from_wire(wire: Any) -> dict[bytes, Batch]:
    if not isinstance(wire, dict) or len(wire) > MAX_PROOF:
        raise WireError("batches: must be an object")
    out: dict[bytes, Batch] = {}
    for key, value in wire.items():
        digest = hex_bytes({"batch": key}, "batch", 32)
        batch = Batch.from_wire(value)
        if batch.digest() != digest:
            raise WireError("batches: a batch does not match its digest")
        out[digest] = batch
    return out


@dataclass(frozen=True, slots=True)
class ViewChange:
    view: int  # the view being moved to
    stable_seq: int
    checkpoint_proof: tuple[Checkpoint, ...]  # quorum of matching checkpoints at stable_seq
    prepared: tuple[PreparedProof, ...]  # one per sequence number above stable_seq
    replica: int
    sig: bytes = b""
    batches: Mapping[bytes, Batch] = field(default_factory=dict)  # attachment, by digest

    def header(self) -> dict[str, Any]:
        return {
            "c": [c.to_wire() for c in self.checkpoint_proof],
            "n": self.stable_seq,
            "p": [p.to_wire() for p in self.prepared],
            "r": self.replica,
            "t": "view-change",
            "v": self.view,
        }

    def stripped(self) -> ViewChange:
        return replace(self, batches={}) if self.batches else self

    def to_wire(self) -> dict[str, Any]:
        wire = self.header()
        wire["sig"] = self.sig.hex()
        if self.batches:
            wire["batches"] = _batches_to_wire(self.batches)
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> ViewChange:
        keys: tuple[str, ...] = ("batches", "c", "n", "p", "r", "sig", "t", "v")
        if isinstance(wire, dict) and "batches" not in wire:
            keys = keys[1:]
        exact_keys(wire, keys, "view-change")
        return cls(
            view=nat(wire, "v"),
            stable_seq=nat(wire, "n"),
            checkpoint_proof=tuple(
                Checkpoint.from_wire(c) for c in listed(wire, "c", MAX_REPLICA_ID)
            ),
            prepared=tuple(PreparedProof.from_wire(p) for p in listed(wire, "p", MAX_PROOF)),
            replica=_rid(wire),
            sig=_sig(wire),
            batches=_batches_from_wire(wire["batches"]) if "batches" in wire else {},
        )


@dataclass(frozen=True, slots=True)
class NewView:
    view: int
    view_changes: tuple[ViewChange, ...]  # V: a quorum of view-changes (without batches)
    pre_prepares: tuple[PrePrepare, ...]  # O: pre-prepares for the new view (without batches)
    replica: int
    sig: bytes = b""
    batches: Mapping[bytes, Batch] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        return {
            "o": [p.to_wire() for p in self.pre_prepares],
            "r": self.replica,
            "t": "new-view",
            "v": self.view,
            "vc": [vc.to_wire() for vc in self.view_changes],
        }

    def to_wire(self) -> dict[str, Any]:
        wire = self.header()
        wire["sig"] = self.sig.hex()
        if self.batches:
            wire["batches"] = _batches_to_wire(self.batches)
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> NewView:
        keys: tuple[str, ...] = ("batches", "o", "r", "sig", "t", "v", "vc")
        if isinstance(wire, dict) and "batches" not in wire:
            keys = keys[1:]
        exact_keys(wire, keys, "new-view")
        vcs = tuple(ViewChange.from_wire(v) for v in listed(wire, "vc", MAX_REPLICA_ID))
        if any(vc.batches for vc in vcs):
            raise WireError("new-view: view-changes inside must not carry batches")
        pps = tuple(PrePrepare.from_wire(p) for p in listed(wire, "o", MAX_PROOF))
        if any(pp.batch is not None for pp in pps):
            raise WireError("new-view: pre-prepares inside must not carry batches")
        return cls(
            nat(wire, "v"),
            vcs,
            pps,
            _rid(wire),
            _sig(wire),
            _batches_from_wire(wire["batches"]) if "batches" in wire else {},
        )


@dataclass(frozen=True, slots=True)
class Status:
    """Periodic gossip: lets a lagging replica notice it is behind (in view or in blocks)."""

    view: int
    last_executed: int
    stable_seq: int
    replica: int
    sig: bytes = b""

    def header(self) -> dict[str, Any]:
        return {
            "e": self.last_executed,
            "n": self.stable_seq,
            "r": self.replica,
            "t": "status",
            "v": self.view,
        }

    def to_wire(self) -> dict[str, Any]:
        wire = self.header()
        wire["sig"] = self.sig.hex()
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> Status:
        exact_keys(wire, ("e", "n", "r", "sig", "t", "v"), "status")
        return cls(nat(wire, "v"), nat(wire, "e"), nat(wire, "n"), _rid(wire), _sig(wire))


@dataclass(frozen=True, slots=True)
class FetchBlocks:
    """State transfer: 'send me your blocks from height ``from_seq`` on'."""

    from_seq: int
    replica: int
    sig: bytes = b""

    def header(self) -> dict[str, Any]:
        return {"n": self.from_seq, "r": self.replica, "t": "fetch"}

    def to_wire(self) -> dict[str, Any]:
        wire = self.header()
        wire["sig"] = self.sig.hex()
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> FetchBlocks:
        exact_keys(wire, ("n", "r", "sig", "t"), "fetch")
        return cls(nat(wire, "n"), _rid(wire), _sig(wire))


@dataclass(frozen=True, slots=True)
class Blocks:
    """State transfer answer: blocks, and the sender's stable checkpoint proof (a quorum of
    signed checkpoints) so the receiver can move its watermarks too. Not signed itself: every
    block carries its commit certificate and the proof its signatures; the receiver checks them
    and the hash chain, so the sender need not be trusted."""

    blocks: tuple[Block, ...]
    replica: int
    proof: tuple[Checkpoint, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "blocks": [b.to_wire() for b in self.blocks],
            "proof": [c.to_wire() for c in self.proof],
            "r": self.replica,
            "t": "blocks",
        }

    @classmethod
    def from_wire(cls, wire: Any) -> Blocks:
        exact_keys(wire, ("blocks", "proof", "r", "t"), "blocks")
        return cls(
            tuple(Block.from_wire(b) for b in listed(wire, "blocks", MAX_BLOCKS)),
            _rid(wire),
            tuple(Checkpoint.from_wire(c) for c in listed(wire, "proof", MAX_REPLICA_ID)),
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """A replica's answer to a client for one executed transaction. Not signed: the client
    gets it on its own connection to that replica and accepts a result once f+1 replicas sent
    matching replies (signing each reply would cost one signature per transaction)."""

    view: int
    tx_id: str
    height: int
    receipt: Mapping[str, Any]
    replica: int

    def to_wire(self) -> dict[str, Any]:
        return self.wire(self.view, self.tx_id, self.height, self.receipt, self.replica)

    @staticmethod
    def wire(
        view: int, tx_id: str, height: int, receipt: Mapping[str, Any], replica: int
    ) -> dict[str, Any]:
        """The wire form, built without a ``Reply`` (the node answers a block's worth at once).
        ``receipt`` is put in as it is: encode the result before the receipt changes."""
        return {"h": height, "r": replica, "receipt": receipt, "t": "reply", "tx": tx_id, "v": view}

    @classmethod
    def from_wire(cls, wire: Any) -> Reply:
        exact_keys(wire, ("h", "r", "receipt", "t", "tx", "v"), "reply")
        tx_id = wire["tx"]
        if not isinstance(tx_id, str) or len(tx_id) != 64:
            raise WireError("tx: must be a 64-character transaction id")
        hex_bytes(wire, "tx", 32)
        if not isinstance(wire["receipt"], dict):
            raise WireError("receipt: must be an object")
        return cls(nat(wire, "v"), tx_id, nat(wire, "h"), wire["receipt"], _rid(wire))


ReplicaMessage = (
    PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView | Status | FetchBlocks
)
Message = Request | ReplicaMessage | Blocks | Reply

_PARSERS: dict[str, Callable[[Any], Message]] = {
    "request": Request.from_wire,
    "pre-prepare": PrePrepare.from_wire,
    "prepare": Prepare.from_wire,
    "commit": Commit.from_wire,
    "checkpoint": Checkpoint.from_wire,
    "view-change": ViewChange.from_wire,
    "new-view": NewView.from_wire,
    "status": Status.from_wire,
    "fetch": FetchBlocks.from_wire,
    "blocks": Blocks.from_wire,
    "reply": Reply.from_wire,
}


def parse(wire: Any, known: KnownTx | None = None) -> Message:
    """Any decoded value -> a message, or ``WireError``. Never raises anything else.
    ``known`` is handed to a pre-prepare's batch (see ``Batch.from_wire``)."""
    if not isinstance(wire, dict):
        raise WireError("message: must be an object")
    kind = wire.get("t")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise WireError(f"message: unknown type {wire.get('t')!r}")
    try:
        if kind == "pre-prepare" and known is not None:
            return PrePrepare.from_wire(wire, known)
        return parser(wire)
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, RecursionError) as exc:  # defence in depth
        raise WireError(f"{wire.get('t')}: malformed ({exc.__class__.__name__})") from exc


Signed = TypeVar(
    "Signed",
    PrePrepare,
    Prepare,
    Commit,
    _Vote,  # either of the two above
    Checkpoint,
    ViewChange,
    NewView,
    Status,
    FetchBlocks,
)


def sign(message: Signed, signer: Signer) -> Signed:
    """The message with its signature filled in by ``signer`` (whose id must be its sender)."""
    return replace(message, sig=signer.sign(message.header()))


def verify(message: Signed, keyring: Keyring) -> bool:
    return keyring.verify(message.replica, message.sig, message.header())
