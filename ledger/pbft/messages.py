"""Consensus messages: each declared once, as field specifications, parsed strictly.

Every message is a dict with a type tag ``"t"``. Replica messages carry the sender ``"r"`` and an
Ed25519 signature ``"sig"`` over the domain-tagged canonical encoding of the *header*: the wire
dict without ``sig`` and without the attachments (``batch`` of a pre-prepare, ``batches`` of a
view-change or new-view). Attachments are bound by digest (the header names the batch digest),
so a proof can travel without them and still be checked by a third replica.

Each dataclass field names its wire key and its codec (``on_wire(key, CODEC)``), as bumble
declares HCI fields once; ``to_wire``, ``from_wire`` and ``header`` are written once, here, for
all of them. Test vectors pin the bytes (``tests/ledger/test_pbft_wire_vectors.py``).

``parse(wire)`` turns any value into a message or raises ``WireError``; it checks form, not
signatures (the replica checks those against its keyring, because it also counts them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal, Self, TypeVar, get_args

from ledger.contract.api import MAX_REPLICA_ID
from ledger.encoding import canonical
from ledger.pbft.block import MAX_BATCH_WIRE, Batch, Block, KnownTx
from ledger.pbft.signing import Keyring, Signer
from ledger.pbft.wire import MAX_INT, READ, WireError
from ledger.tx import SignedTx, TxError

MAX_PROOF = 4096  # prepared entries in one view-change
MAX_BLOCKS = 1024  # blocks in one state-transfer answer
VIEW_CHANGE_DOMAIN = b"wattmesh/pbft/view-change/v1\x00"

Part = Literal["header", "optional", "sig", "attachment", "body"]


@dataclass(frozen=True, slots=True)
class Codec:
    """How one field travels: ``encode`` the attribute into a JSON value, ``decode`` the wire
    dict's value at a key into the attribute (raising ``WireError``; ``known`` is handed to a
    batch, see ``Batch.from_wire``)."""

    encode: Callable[[Any], Any]
    decode: Callable[[Mapping[str, Any], str, KnownTx | None], Any]


@dataclass(frozen=True, slots=True)
class Spec:
    attr: str
    key: str
    codec: Codec
    part: Part


def on_wire(key: str, codec: Codec, part: Part = "header") -> dict[str, Any]:
    """A message field's specification, as ``field(metadata=on_wire(...))``: its wire key, its
    codec, and which part of the message it is (signed ``header``; ``optional``, signed and
    sent only when not zero, so older messages keep their bytes; the ``sig``, an
    ``attachment`` sent only when not empty, or the ``body`` of an unsigned form)."""
    return {"wire": (key, codec, part)}


def _same(value: Any) -> Any:
    return value


def _nat(limit: int) -> Codec:
    return Codec(_same, lambda w, k, _: READ.nat(w, k, limit))


def _hex(size: int) -> Codec:
    return Codec(bytes.hex, lambda w, k, _: READ.hex_bytes(w, k, size))


def _listed(item: Callable[[Any], Any], limit: int, *, check: str = "") -> Codec:
    """A list of forms (each ``item.from_wire``); with ``check``, none may carry attachments."""

    def decode(wire: Mapping[str, Any], key: str, _: KnownTx | None) -> tuple[Any, ...]:
        items = tuple(item(w) for w in READ.listed(wire, key, limit))
        if check and any(
            getattr(x, "batch", None) or getattr(x, "batches", None) or getattr(x, "ids", None)
            for x in items
        ):
            raise WireError(check)
        return items

    return Codec(lambda xs: [x.to_wire() for x in xs], decode)


def _batches_from_wire(wire: Mapping[str, Any], key: str, _: KnownTx | None) -> dict[bytes, Batch]:
    raw = wire[key]
    if not isinstance(raw, dict) or len(raw) > MAX_PROOF:
        raise WireError("batches: must be an object")
    out: dict[bytes, Batch] = {}
    for digest_hex, value in raw.items():
        digest = READ.hex_bytes({"batch": digest_hex}, "batch", 32)
        batch = Batch.from_wire(value)
        if batch.digest() != digest:
            raise WireError("batches: a batch does not match its digest")
        out[digest] = batch
    return out


def _tx(wire: Mapping[str, Any], key: str, _: KnownTx | None) -> SignedTx:
    try:
        return SignedTx.from_wire(wire[key])
    except TxError as exc:
        raise WireError(f"request.tx: {exc}") from exc


def _tx_id(wire: Mapping[str, Any], key: str, _: KnownTx | None) -> str:
    tx_id = wire[key]
    if not isinstance(tx_id, str) or len(tx_id) != 64:
        raise WireError(f"{key}: must be a 64-character transaction id")
    READ.hex_bytes(wire, key, 32)
    return tx_id


def _receipt(wire: Mapping[str, Any], key: str, _: KnownTx | None) -> Mapping[str, Any]:
    if not isinstance(wire[key], dict):
        raise WireError(f"{key}: must be an object")
    return wire[key]  # type: ignore[no-any-return]


def _batch(wire: Mapping[str, Any], key: str, known: KnownTx | None) -> Batch:
    return Batch.from_wire(wire[key], known)


NAT = _nat(MAX_INT)
REPLICA = _nat(MAX_REPLICA_ID)
DIGEST = _hex(32)
SIGNATURE = _hex(64)
BATCH = Codec(lambda b: b.to_wire(), _batch)
BATCHES = Codec(lambda bs: {d.hex(): b.to_wire() for d, b in bs.items()}, _batches_from_wire)
TX = Codec(lambda tx: tx.to_wire(), _tx)
TX_ID = Codec(_same, _tx_id)


def _tx_ids(wire: Mapping[str, Any], key: str, _: KnownTx | None) -> tuple[str, ...]:
    return tuple(_tx_id({key: w}, key, None) for w in READ.listed(wire, key, MAX_BATCH_WIRE))


TX_IDS = Codec(list, _tx_ids)
RECEIPT = Codec(_same, _receipt)


def _epoch(wire: Mapping[str, Any], key: str, _: KnownTx | None) -> int:
    value = READ.nat(wire, key, MAX_INT)
    if value == 0:
        raise WireError(f"{key}: epoch 0 is sent by leaving it out")
    return value


EPOCH = Codec(_same, _epoch)  # an optional field: absent means epoch 0 (ledger.pbft.epochs)


class WireForm:
    """A form declared by its fields' specifications (``on_wire``); ``TAG`` is its ``"t"``
    (none for a part of another message) and ``WHAT`` how errors name it."""

    __slots__ = ()
    TAG: ClassVar[str] = ""
    WHAT: ClassVar[str] = ""
    _SPECS: ClassVar[tuple[Spec, ...]] = ()
    _KEYS: ClassVar[tuple[str, ...]] = ()  # every wire key, sorted
    _OPTIONAL: ClassVar[tuple[str, ...]] = ()  # attachment keys

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"t": self.TAG} if self.TAG else {}
        for spec in self._SPECS:
            value = getattr(self, spec.attr)
            if value or spec.part not in ("attachment", "optional"):
                wire[spec.key] = spec.codec.encode(value)
        return wire

    @classmethod
    def from_wire(cls, wire: Any, known: KnownTx | None = None) -> Self:
        keys = cls._KEYS
        if cls._OPTIONAL and isinstance(wire, dict):
            keys = tuple(k for k in keys if k not in cls._OPTIONAL or k in wire)
        READ.exact(wire, keys, cls.WHAT)
        values = {
            spec.attr: spec.codec.decode(wire, spec.key, known)
            for spec in cls._SPECS
            if spec.key in wire
        }
        return cls(**values)


class SignedForm(WireForm):
    """A replica message signed over its header."""

    __slots__ = ()

    def header(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"t": self.TAG}
        for spec in self._SPECS:
            if spec.part == "header" or (spec.part == "optional" and getattr(self, spec.attr)):
                wire[spec.key] = spec.codec.encode(getattr(self, spec.attr))
        return wire


F = TypeVar("F", bound=type[WireForm])


def form(tag: str, what: str = "") -> Callable[[F], F]:
    """Read the field specifications of a message dataclass once, when it is defined."""

    def declare(cls: F) -> F:
        specs = []
        for f in fields(cls):  # type: ignore[arg-type]
            if "wire" in f.metadata:
                key, codec, part = f.metadata["wire"]
                specs.append(Spec(f.name, key, codec, part))
        cls.TAG, cls.WHAT = tag, what or tag
        cls._SPECS = tuple(specs)
        cls._KEYS = tuple(sorted([s.key for s in specs] + (["t"] if tag else [])))
        cls._OPTIONAL = tuple(s.key for s in specs if s.part in ("attachment", "optional"))
        return cls

    return declare


@form("request")
@dataclass(frozen=True, slots=True)
class Request(WireForm):
    """A client transaction (``SignedTx`` wire dict) sent to a replica."""

    tx: SignedTx = field(metadata=on_wire("tx", TX, "body"))


@dataclass(frozen=True, slots=True)
class _Ordering(SignedForm):
    """(view, seq, batch digest) signed by a replica: the fields a pre-prepare and the votes
    on it (PREPARE, COMMIT) share."""

    view: int = field(metadata=on_wire("v", NAT))
    seq: int = field(metadata=on_wire("n", NAT))
    digest: bytes = field(metadata=on_wire("d", DIGEST))
    replica: int = field(metadata=on_wire("r", REPLICA))
    sig: bytes = field(default=b"", metadata=on_wire("sig", SIGNATURE, "sig"))


@form("", "batch by id")
@dataclass(frozen=True, slots=True)
class BatchIds(WireForm):
    """A pre-prepare's batch named by its transactions' ids, for backups that hold them (the
    clients send every request to every replica): the timestamp and the ids in order. A
    backup rebuilds the batch from its own requests, and the pre-prepare's digest (signed)
    says whether it rebuilt the batch the primary signed."""

    timestamp_ms: int = field(metadata=on_wire("ts", NAT))
    tx_ids: tuple[str, ...] = field(metadata=on_wire("ids", TX_IDS))


BATCH_IDS = Codec(lambda b: b.to_wire(), lambda w, k, _: BatchIds.from_wire(w[k]))


@form("pre-prepare")
@dataclass(frozen=True, slots=True)
class PrePrepare(_Ordering):
    # attachments, at most one of them; neither inside proofs
    batch: Batch | None = field(default=None, metadata=on_wire("batch", BATCH, "attachment"))
    ids: BatchIds | None = field(default=None, metadata=on_wire("ids", BATCH_IDS, "attachment"))

    def __post_init__(self) -> None:
        if self.batch is not None and self.ids is not None:
            raise WireError("pre-prepare: a batch or its ids, not both")

    def stripped(self) -> PrePrepare:
        if self.batch is None and self.ids is None:
            return self
        return replace(self, batch=None, ids=None)

    def encoded(self) -> bytes:
        """``canonical(self.to_wire())`` with the batch's own bytes spliced in (``batch`` sorts
        before every other key), so the primary does not encode a batch again to send it; a
        test holds the two ways equal."""
        if self.ids is not None:
            return canonical(self.to_wire(), checked=False)
        wire = self.header()
        wire["sig"] = self.sig.hex()
        rest = canonical(wire, checked=False)
        if self.batch is None:
            return rest
        return b'{"batch":' + self.batch.encoded() + b"," + rest[1:]


@dataclass(frozen=True, slots=True)
class _Vote(_Ordering):
    """A replica's vote for (view, seq, batch digest): PREPARE and COMMIT share this form and
    differ only in their type tag, which the signature covers."""


@form("prepare")
@dataclass(frozen=True, slots=True)
class Prepare(_Vote):
    pass


@form("commit")
@dataclass(frozen=True, slots=True)
class Commit(_Vote):
    pass


@form("checkpoint")
@dataclass(frozen=True, slots=True)
class Checkpoint(SignedForm):
    """A replica's state digest after executing ``seq`` (see ``checkpoint_digest``)."""

    seq: int = field(metadata=on_wire("n", NAT))
    digest: bytes = field(metadata=on_wire("d", DIGEST))
    replica: int = field(metadata=on_wire("r", REPLICA))
    sig: bytes = field(default=b"", metadata=on_wire("sig", SIGNATURE, "sig"))


def _bare_pre_prepare(wire: Mapping[str, Any], key: str, _: KnownTx | None) -> PrePrepare:
    pp = PrePrepare.from_wire(wire[key])
    if pp.batch is not None or pp.ids is not None:
        raise WireError("prepared proof: pre-prepare must not carry its batch")
    return pp


BARE_PRE_PREPARE = Codec(lambda pp: pp.to_wire(), _bare_pre_prepare)
PREPARES = _listed(Prepare.from_wire, MAX_REPLICA_ID)


@form("", "prepared proof")
@dataclass(frozen=True, slots=True)
class PreparedProof(WireForm):
    """A prepared certificate: the pre-prepare (without batch) and 2f matching prepares."""

    pre_prepare: PrePrepare = field(metadata=on_wire("pp", BARE_PRE_PREPARE))
    prepares: tuple[Prepare, ...] = field(metadata=on_wire("prepares", PREPARES))


CHECKPOINTS = _listed(Checkpoint.from_wire, MAX_REPLICA_ID)
PREPARED = _listed(PreparedProof.from_wire, MAX_PROOF)
ATTACHED_BATCHES = on_wire("batches", BATCHES, "attachment")


@form("view-change")
@dataclass(frozen=True, slots=True)
class ViewChange(SignedForm):
    view: int = field(metadata=on_wire("v", NAT))  # the view being moved to
    stable_seq: int = field(metadata=on_wire("n", NAT))
    # a quorum of matching checkpoints at stable_seq
    checkpoint_proof: tuple[Checkpoint, ...] = field(metadata=on_wire("c", CHECKPOINTS))
    # one per sequence number above stable_seq
    prepared: tuple[PreparedProof, ...] = field(metadata=on_wire("p", PREPARED))
    replica: int = field(metadata=on_wire("r", REPLICA))
    sig: bytes = field(default=b"", metadata=on_wire("sig", SIGNATURE, "sig"))
    # attachment, by digest
    batches: Mapping[bytes, Batch] = field(default_factory=dict, metadata=ATTACHED_BATCHES)
    # the epoch (replica set) the view change is made in: views do not carry over its end
    epoch: int = field(default=0, metadata=on_wire("e", EPOCH, "optional"))

    def stripped(self) -> ViewChange:
        return replace(self, batches={}) if self.batches else self

    def digest(self) -> bytes:
        """What a NEW-VIEW names this view-change by: the hash of its wire form without
        batches, signature included (so it names exactly the message its sender signed)."""
        wire = canonical(self.stripped().to_wire(), checked=False)
        return hashlib.sha256(VIEW_CHANGE_DOMAIN + wire).digest()


@form("", "view-change reference")
@dataclass(frozen=True, slots=True)
class ViewChangeRef(WireForm):
    """A VIEW-CHANGE named in a NEW-VIEW: its sender and ``ViewChange.digest``."""

    replica: int = field(metadata=on_wire("r", REPLICA))
    digest: bytes = field(metadata=on_wire("d", DIGEST))


def view_change_refs(view_changes: tuple[ViewChange, ...]) -> tuple[ViewChangeRef, ...]:
    return tuple(ViewChangeRef(vc.replica, vc.digest()) for vc in view_changes)


VIEW_CHANGE_REFS = _listed(ViewChangeRef.from_wire, MAX_REPLICA_ID)
BARE_VIEW_CHANGES = _listed(
    ViewChange.from_wire,
    MAX_REPLICA_ID,
    check="new-view: view-changes inside must not carry batches",
)
BARE_PRE_PREPARES = _listed(
    PrePrepare.from_wire, MAX_PROOF, check="new-view: pre-prepares inside must not carry batches"
)


@form("new-view")
@dataclass(frozen=True, slots=True)
class NewView(SignedForm):
    """V is signed as references (sender, digest) to the view-changes; the view-changes
    themselves are an attachment, like the batches: sent to a replica that may not hold them
    (one left behind, or one that asks), left out where the replicas received them already."""

    view: int = field(metadata=on_wire("v", NAT))
    # V: a quorum of view-changes, by reference
    refs: tuple[ViewChangeRef, ...] = field(metadata=on_wire("vd", VIEW_CHANGE_REFS))
    # O: pre-prepares for the new view (without batches)
    pre_prepares: tuple[PrePrepare, ...] = field(metadata=on_wire("o", BARE_PRE_PREPARES))
    replica: int = field(metadata=on_wire("r", REPLICA))
    sig: bytes = field(default=b"", metadata=on_wire("sig", SIGNATURE, "sig"))
    # attachments: the view-changes V names (without batches), and batches by digest
    view_changes: tuple[ViewChange, ...] = field(
        default=(), metadata=on_wire("vc", BARE_VIEW_CHANGES, "attachment")
    )
    batches: Mapping[bytes, Batch] = field(default_factory=dict, metadata=ATTACHED_BATCHES)
    epoch: int = field(default=0, metadata=on_wire("e", EPOCH, "optional"))

    def compact(self) -> NewView:
        """Without attachments (the same signature)."""
        return replace(self, view_changes=(), batches={})


@form("status")
@dataclass(frozen=True, slots=True)
class Status(SignedForm):
    """Periodic gossip: lets a lagging replica notice it is behind (in view or in blocks)."""

    view: int = field(metadata=on_wire("v", NAT))
    last_executed: int = field(metadata=on_wire("e", NAT))
    stable_seq: int = field(metadata=on_wire("n", NAT))
    replica: int = field(metadata=on_wire("r", REPLICA))
    sig: bytes = field(default=b"", metadata=on_wire("sig", SIGNATURE, "sig"))
    # the epoch its view is in: a view is followed only within an epoch (omitted for epoch 0)
    epoch: int = field(default=0, metadata=on_wire("ep", EPOCH, "optional"))


@form("fetch")
@dataclass(frozen=True, slots=True)
class FetchBlocks(SignedForm):
    """State transfer: 'send me your blocks from height ``from_seq`` on'."""

    from_seq: int = field(metadata=on_wire("n", NAT))
    replica: int = field(metadata=on_wire("r", REPLICA))
    sig: bytes = field(default=b"", metadata=on_wire("sig", SIGNATURE, "sig"))


@form("fetch-pp")
@dataclass(frozen=True, slots=True)
class FetchPrePrepare(SignedForm):
    """'Send me your pre-prepare at (``view``, ``seq``) with its batch': a backup that does
    not hold every transaction a pre-prepare named by id."""

    view: int = field(metadata=on_wire("v", NAT))
    seq: int = field(metadata=on_wire("n", NAT))
    replica: int = field(metadata=on_wire("r", REPLICA))
    sig: bytes = field(default=b"", metadata=on_wire("sig", SIGNATURE, "sig"))


BLOCKS = _listed(Block.from_wire, MAX_BLOCKS)


@form("blocks")
@dataclass(frozen=True, slots=True)
class Blocks(WireForm):
    """State transfer answer: blocks, and the sender's stable checkpoint proof (a quorum of
    signed checkpoints) so the receiver can move its watermarks too. Not signed itself: every
    block carries its commit certificate and the proof its signatures; the receiver checks them
    and the hash chain, so the sender need not be trusted."""

    blocks: tuple[Block, ...] = field(metadata=on_wire("blocks", BLOCKS, "body"))
    replica: int = field(metadata=on_wire("r", REPLICA, "body"))
    proof: tuple[Checkpoint, ...] = field(
        default=(), metadata=on_wire("proof", CHECKPOINTS, "body")
    )


@form("reply")
@dataclass(frozen=True, slots=True)
class Reply(WireForm):
    """A replica's answer to a client for one executed transaction. Not signed: the client
    gets it on its own connection to that replica and accepts a result once f+1 replicas sent
    matching replies (signing each reply would cost one signature per transaction)."""

    view: int = field(metadata=on_wire("v", NAT, "body"))
    tx_id: str = field(metadata=on_wire("tx", TX_ID, "body"))
    height: int = field(metadata=on_wire("h", NAT, "body"))
    receipt: Mapping[str, Any] = field(metadata=on_wire("receipt", RECEIPT, "body"))
    replica: int = field(metadata=on_wire("r", REPLICA, "body"))

    @staticmethod
    def wire(
        view: int, tx_id: str, height: int, receipt: Mapping[str, Any], replica: int
    ) -> dict[str, Any]:
        """The wire form, built without a ``Reply`` (the node answers a block's worth at once;
        a test holds it equal to ``to_wire``). ``receipt`` is put in as it is: encode the
        result before the receipt changes."""
        return {"h": height, "r": replica, "receipt": receipt, "t": "reply", "tx": tx_id, "v": view}


ReplicaMessage = (
    PrePrepare
    | Prepare
    | Commit
    | Checkpoint
    | ViewChange
    | NewView
    | Status
    | FetchBlocks
    | FetchPrePrepare
)
Message = Request | ReplicaMessage | Blocks | Reply

# the union above is the one list of message types
_FORMS: dict[str, type[WireForm]] = {cls.TAG: cls for cls in get_args(Message)}


def parse(wire: Any, known: KnownTx | None = None) -> Message:
    """Any decoded value -> a message, or ``WireError``. Never raises anything else.
    ``known`` is handed to a pre-prepare's batch (see ``Batch.from_wire``)."""
    if not isinstance(wire, dict):
        raise WireError("message: must be an object")
    kind = wire.get("t")
    cls = _FORMS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"message: unknown type {wire.get('t')!r}")
    try:
        return cls.from_wire(wire, known)  # type: ignore[return-value]
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, RecursionError) as exc:  # defence in depth
        raise WireError(f"{wire.get('t')}: malformed ({exc.__class__.__name__})") from exc


Signed = TypeVar("Signed", bound=ReplicaMessage | _Vote)  # (a _Vote: either of Prepare, Commit)


def sign(message: Signed, signer: Signer) -> Signed:
    """The message with its signature filled in by ``signer`` (whose id must be its sender)."""
    return replace(message, sig=signer.sign(message.header()))


def verify(message: Signed, keyring: Keyring) -> bool:
    return keyring.verify(message.replica, message.sig, message.header())
