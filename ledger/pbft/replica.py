"""The PBFT replica as a pure state machine (Castro and Liskov, OSDI 1999 / TOCS 2002).

``Replica`` takes events (a client request, a message from a replica, a clock tick) and returns
actions (``ledger.pbft.actions``). It never reads a clock, opens a socket or sleeps; time comes in
as ``now_ms`` with each event. Storage and the contract are behind ``Executor``.

Protocol summary (names as in the paper):

* normal case: the primary of view v batches requests and sends PRE-PREPARE(v, n, d) with the
  batch; backups check every client signature and send PREPARE; with the pre-prepare and 2f
  matching prepares a replica is *prepared* and sends COMMIT; with 2f+1 matching commits it is
  *committed-local* and executes blocks in sequence order, replying to clients. The 2f+1 signed
  commits are the block's certificate.
* checkpoints every K: CHECKPOINT(n, digest); 2f+1 matching make it stable: the low watermark
  moves to n and the log below is dropped. Sequence numbers are accepted in (low, low + L].
* view change: a backup waiting too long for a request to execute (or seeing a provably faulty
  primary) sends VIEW-CHANGE(v+1, stable checkpoint proof, prepared certificates); the new
  primary, with 2f+1 of them, sends NEW-VIEW(v+1, V, O) where O re-proposes the highest-view
  prepared batch at each sequence number and null batches in the gaps. Timeouts double on each
  view change without progress. f+1 view-changes (or status messages) for higher views make a
  replica join; a replica left behind in an old view gets the NEW-VIEW from its peers.
* state transfer: a replica that sees a stable checkpoint (or f+1 replicas) beyond what it
  executed fetches the blocks with their certificates, checks certificate and hash chain, and
  executes them.
* restart: the view and the log above the stable checkpoint are journaled through ``Executor``
  before each vote leaves, and taken up again by a new ``Replica`` over the same executor.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.encoding import EncodingError, canonical, decode
from ledger.pbft.actions import Action, BlockReplies, Broadcast, Executed, ReplyTo, Send
from ledger.pbft.block import (
    NULL_BATCH,
    NULL_DIGEST,
    Batch,
    Block,
    Certificate,
    batch_bytes,
    tx_bytes,
)
from ledger.pbft.config import PbftConfig
from ledger.pbft.executor import Executor
from ledger.pbft.messages import (
    Blocks,
    Checkpoint,
    Commit,
    FetchBlocks,
    Message,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Reply,
    Request,
    Status,
    ViewChange,
    parse,
    sign,
    verify,
)
from ledger.pbft.signing import Keyring, Signer
from ledger.pbft.wire import WireError
from ledger.tx import SignedTx, TxError

CHECKPOINT_DOMAIN = b"wattmesh/pbft/checkpoint/v1\x00"
FUTURE_BUFFER = 8192  # messages kept for a view this replica has not entered yet
# Batches attached to one VIEW-CHANGE or NEW-VIEW at most (bytes as block.batch_bytes counts):
# with the batch bound, the message stays well inside a frame.
VC_ATTACH_BYTES = 4 * 1024 * 1024
VERIFIED_CACHE = 200_000  # client transactions whose signature this replica already checked
MAX_PENDING = 100_000  # client transactions known but not yet executed
VoteIndex = dict[tuple[int, int], bytes]  # (view, replica) -> digest voted for
VoteSets = dict[tuple[int, bytes], dict[int, Any]]  # (view, digest) -> replica -> vote
FETCH_REPEAT_MS = 100  # a state-transfer page is served at most once per peer in this time
Fault = Literal["silent", "equivocate"] | None


def fast_tx_id(tx: SignedTx) -> str:
    """``tx.tx_id``: a parsed transaction carries its canonical bytes and id, computed once when
    it was parsed or signed (a test pins this to ``SignedTx.tx_id``)."""
    return tx.tx_id


def checkpoint_digest(seq: int, block_hash: bytes, state_digest: bytes) -> bytes:
    """What replicas agree on at a checkpoint: the chain head and the contract state."""
    body = {"block": block_hash.hex(), "n": seq, "state": state_digest.hex()}
    return hashlib.sha256(CHECKPOINT_DOMAIN + canonical(body, checked=False)).digest()


class Slot:
    """Everything the log holds for one sequence number."""

    __slots__ = (
        "cert",
        "commit_sent",
        "commit_votes",
        "commits",
        "committed",
        "digest",
        "pp",
        "prepare_votes",
        "prepared",
        "prepares",
        "proof",
        "seq",
        "view",
    )

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.view = -1  # view of the accepted pre-prepare
        self.pp: PrePrepare | None = None  # accepted pre-prepare (without batch) in self.view
        self.digest = b""
        self.prepares: dict[tuple[int, bytes], dict[int, Prepare]] = {}
        self.commits: dict[tuple[int, bytes], dict[int, Commit]] = {}
        self.prepare_votes: dict[tuple[int, int], bytes] = {}  # (view, replica) -> digest
        self.commit_votes: dict[tuple[int, int], bytes] = {}
        self.prepared = False  # prepared in self.view
        self.commit_sent = False
        self.committed = False
        self.cert: Certificate | None = None
        self.proof: PreparedProof | None = None  # highest-view prepared certificate


class Replica:
    def __init__(
        self,
        config: PbftConfig,
        me: int,
        signing_key: Ed25519PrivateKey,
        executor: Executor,
        *,
        now_ms: int,
        fault: Fault = None,
        relay_requests: bool = True,
        tx_verifier: Callable[[Sequence[SignedTx], Sequence[str]], list[bool]] | None = None,
    ) -> None:
        if not 0 <= me < config.n:
            raise ValueError(f"replica id {me} is not in the cluster")
        self.cfg = config
        self.me = me
        self.fault = fault  # TEST FAULT INJECTION ONLY: "silent" | "equivocate"
        self.relay_requests = relay_requests
        # (txs, their ids) -> is each signature valid? Lets the IO layer share one verdict cache
        # between the requests it checks and the pre-prepares the core checks, and check a
        # pre-prepare's transactions together (a batch check). Default: ``tx.verify()`` each.
        self.tx_verifier = tx_verifier
        self.signer = Signer(me, signing_key)
        self.keyring = Keyring(r.public_key for r in config.replicas)
        self.ex = executor
        self.metrics: dict[str, int] = {}
        self.view = 0
        self.active = True
        self.last_executed = executor.last_executed()
        self.last_hash = executor.last_block_hash()
        self.stable_seq = 0
        self.stable_digest = b""
        self.stable_proof: tuple[Checkpoint, ...] = ()
        saved = executor.load_checkpoint()
        if saved is not None:
            seq, digest, proof = saved
            self.stable_seq, self.stable_digest = seq, digest
            self.stable_proof = tuple(Checkpoint.from_wire(w) for w in proof)
        self.next_seq = max(self.last_executed, self.stable_seq) + 1
        self.last_ts = 0
        self.slots: dict[int, Slot] = {}
        self.batches: dict[bytes, Batch] = {NULL_DIGEST: NULL_BATCH}
        self.batch_ids: dict[bytes, tuple[str, ...]] = {NULL_DIGEST: ()}
        self.pending: dict[str, tuple[SignedTx, dict[str, Any]]] = {}
        self.queue: dict[str, int] = {}  # pending, not in the log: tx_id -> arrival ms
        self.in_log: dict[str, int] = {}  # tx_id -> seq of the pre-prepare holding it
        self.verified: dict[str, str] = {}  # sig hex -> tx_id of a request whose sig was checked
        # pre-prepares and votes of this view just above the window, taken when it moves (see
        # _hold_above_window); votes by (seq, 0 prepare / 1 commit, voter)
        self.above_window: dict[int, PrePrepare] = {}
        self.votes_above: dict[tuple[int, int, int], Prepare | Commit] = {}
        self.batch_deadline: int | None = None
        self.vc_timeout = config.view_change_timeout_ms
        # a backup relays a request no pre-prepare carried in this time (see _relay_stale)
        self.relay_after = max(1, config.view_change_timeout_ms // 2)
        self.to_relay: dict[str, int] = {}  # backup: tx_id -> arrival ms, each relayed once
        self.vc_deadline: int | None = None
        self.vc_by_replica: dict[int, ViewChange] = {}
        self.vc_batches: dict[int, dict[bytes, Batch]] = {}  # per sender, its latest VIEW-CHANGE
        self.new_view_msg: NewView | None = None
        self.nv_sent_at: dict[int, int] = {}
        self.proof_sent_at: dict[int, int] = {}
        self.fetch_served: dict[int, tuple[int, int]] = {}  # replica -> (from_seq, at ms)
        self.future: deque[tuple[PrePrepare | Prepare | Commit, int]] = deque(maxlen=FUTURE_BUFFER)
        self.checkpoints: dict[int, dict[int, Checkpoint]] = {}
        self.peer_view: dict[int, int] = {}
        self.peer_exec: dict[int, int] = {}
        self.behind_target: int | None = None
        self.next_status = now_ms + config.status_interval_ms
        self.fetch_target = 0
        self.fetch_peer = -1
        self.fetch_deadline: int | None = None
        self.fetch_retries = 0
        self.now = now_ms
        self.resend: list[Prepare | Commit] = []  # restored votes, sent again on the first tick
        self.resend_view_change = False
        self._restore()
        self._sign_checkpoint_again()

    # ------------------------------------------------------------------ public API

    @property
    def is_primary(self) -> bool:
        return self.cfg.primary(self.view) == self.me

    @property
    def high(self) -> int:
        return self.stable_seq + self.cfg.log_window

    def next_deadline(self) -> int | None:
        """Earliest ``now_ms`` at which ``on_tick`` has work to do."""
        times = [self.next_status]
        for t in (self.vc_deadline, self.fetch_deadline):
            if t is not None:
                times.append(t)
        if self.batch_deadline is not None and self.is_primary and self.active:
            times.append(self.batch_deadline)
        relay_at = self._relay_due()
        if relay_at is not None:
            times.append(relay_at)
        return min(times)

    def knows_request(self, tx_id: str) -> bool:
        """This replica holds the request, or a pre-prepare in its log carries it (the IO layer
        asks clients for requests they only announced and the primary has not ordered)."""
        return tx_id in self.pending or tx_id in self.in_log

    def _relay_due(self) -> int | None:
        """When a backup's oldest request not yet relayed is due (``to_relay`` is in order of
        arrival)."""
        if not self.to_relay or self.is_primary or not self.active:
            return None
        return next(iter(self.to_relay.values())) + self.relay_after

    def on_request(
        self,
        tx: SignedTx | dict[str, Any],
        now_ms: int,
        *,
        verified: bool = False,
        tx_id: str | None = None,
    ) -> list[Action]:
        """A client transaction (parsed, or its wire dict). ``verified=True``: the IO layer has
        already checked its signature. ``tx_id``: ``tx.tx_id`` if the IO layer computed it."""
        if self.fault == "silent":
            return []
        self.now = now_ms
        out: list[Action] = []
        self._request(tx, now_ms, verified, out, tx_id)
        return out

    def on_requests(self, txs: Sequence[SignedTx], now_ms: int) -> list[Action]:
        """Client transactions whose signatures the IO layer has checked, arriving together:
        one executor lookup for which were executed already instead of one per transaction."""
        if self.fault == "silent" or not txs:
            return []
        self.now = now_ms
        out: list[Action] = []
        ids = [fast_tx_id(tx) for tx in txs]
        done = self.ex.known(ids)
        for tx, tx_id in zip(txs, ids, strict=True):
            self._request(tx, now_ms, True, out, tx_id, maybe_done=tx_id in done)
        return out

    def on_message(self, msg: Message | dict[str, Any], sender: int, now_ms: int) -> list[Action]:
        """A message received from replica ``sender`` (authenticated link id)."""
        if self.fault == "silent":
            return []
        if not isinstance(msg, dict) and not hasattr(msg, "to_wire"):
            self._count("malformed")
            return []
        if isinstance(msg, dict):
            try:
                msg = parse(msg, self._known_tx)
            except WireError:
                self._count("malformed")
                return []
        out: list[Action] = []
        self.now = now_ms
        if isinstance(msg, Request):
            self._request(msg.tx, now_ms, False, out)
            return out
        if isinstance(msg, Reply):
            self._count("unexpected")
            return out
        if not self.keyring.known(sender) or sender == self.me:
            self._count("rejected_unknown_sender")
            return out
        if msg.replica != sender and not isinstance(msg, NewView):
            # (a NEW-VIEW is self-certifying and is relayed by any replica to one left behind)
            self._count("rejected_sender_mismatch")
            return out
        if isinstance(msg, Prepare):
            self._on_prepare(msg, out)
        elif isinstance(msg, Commit):
            self._on_commit(msg, out)
        elif isinstance(msg, PrePrepare):
            self._on_pre_prepare(msg, now_ms, out)
        elif isinstance(msg, Checkpoint):
            self._on_checkpoint(msg, now_ms, out)
        elif isinstance(msg, ViewChange):
            self._on_view_change(msg, now_ms, out)
        elif isinstance(msg, NewView):
            self._on_new_view(msg, now_ms, out)
        elif isinstance(msg, Status):
            self._on_status(msg, now_ms, out)
        elif isinstance(msg, FetchBlocks):
            self._on_fetch(msg, out)
        elif isinstance(msg, Blocks):
            self._on_blocks(msg, now_ms, out)
        return out

    def on_tick(self, now_ms: int) -> list[Action]:
        if self.fault == "silent":
            return []
        self.now = now_ms
        out: list[Action] = []
        if self.resend:
            # Votes restored from the journal go out again (the same signed bytes: Ed25519 is
            # deterministic); peers drop what they already had, a cluster restarted as a whole
            # gathers the commits it lost.
            out.extend(Broadcast(vote) for vote in self.resend)
            self.resend = []
        if self.resend_view_change:
            self.resend_view_change = False
            self._send_view_change(now_ms, out)
        if (
            self.is_primary
            and self.active
            and self.batch_deadline is not None
            and now_ms >= self.batch_deadline
        ):
            self._cut_batches(now_ms, out, force=True)
        relay_at = self._relay_due()
        if relay_at is not None and now_ms >= relay_at:
            self._relay_stale(now_ms, out)
        if self.vc_deadline is not None and now_ms >= self.vc_deadline:
            self._count("timeouts")
            self._on_timeout(now_ms, out)
        if self.fetch_deadline is not None and now_ms >= self.fetch_deadline:
            self.fetch_retries += 1
            if self.fetch_retries > 2 * self.cfg.n:  # nobody has it: give up until told again
                self.fetch_target, self.fetch_deadline, self.fetch_retries = 0, None, 0
            else:
                self._send_fetch(now_ms, out, rotate=True)
        if now_ms >= self.next_status:
            self.next_status = now_ms + self.cfg.status_interval_ms
            self._status_tick(now_ms, out)
        return out

    # ------------------------------------------------------------------ journal

    def _journal_pre_prepare(self, slot: Slot, batch: Batch | None) -> None:
        """Keep the pre-prepare ``slot`` accepted, with its batch, in the journal before the
        PREPARE (or, at the primary, the PRE-PREPARE) leaves: see ``Executor``. The prepared
        certificate is written when it forms, on its own, so the batch is written once."""
        assert slot.pp is not None
        parts: dict[str, bytes | None] = {"pp": canonical(slot.pp.to_wire(), checked=False)}
        if batch is not None and slot.pp.digest != NULL_DIGEST:
            parts["batch"] = batch.encoded()
        self.ex.save_journal(slot.seq, parts)

    def _restore(self) -> None:
        """Take up the view and log this replica had before a restart (nothing for a new one).
        Its own PREPAREs and COMMITs are signed again, identical to those it sent, and go out on
        the first tick; a replica that was changing views sends its VIEW-CHANGE again. The
        requests of restored batches are not pending here: clients re-send what they still wait
        for, and a transaction is applied at most once whichever block holds it."""
        view, active, entries = self.ex.load_journal()
        self.view, self.active = view, active
        if not active:
            self.resend_view_change = True
            self.vc_deadline = self.now + self.vc_timeout
        for seq in sorted(entries):
            if seq <= self.stable_seq:
                continue
            try:
                parts = {k: decode(v, strict=False) for k, v in entries[seq].items()}
                self._restore_slot(seq, parts)
            except (EncodingError, WireError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"journal entry {seq} does not decode: {exc}") from exc
        self.ex.prune_journal(self.stable_seq)

    def _sign_checkpoint_again(self) -> None:
        """A replica restarted after executing a checkpoint height that is not stable yet signs
        its CHECKPOINT again (the status tick re-sends it): the messages it sent before may have
        been lost with the others' memory, and if a quorum of replicas restarted that way the
        checkpoint would never become stable and the window would stay shut."""
        height = self.last_executed - self.last_executed % self.cfg.checkpoint_interval
        if height <= self.stable_seq:
            return
        state = self.ex.state_digest_at(height)
        blocks = [] if height == self.last_executed else self.ex.blocks_from(height, 1)
        if state is None or (height != self.last_executed and not blocks):
            return  # no longer kept here: the others' checkpoints or state transfer will do
        block_hash = blocks[0].hash() if blocks else self.last_hash
        cp = sign(
            Checkpoint(height, checkpoint_digest(height, block_hash, state), self.me), self.signer
        )
        self.checkpoints.setdefault(height, {})[self.me] = cp

    def _restore_slot(self, seq: int, entry: dict[str, Any]) -> None:
        slot = self._slot(seq)
        if "batch" in entry:
            batch = Batch.from_wire(entry["batch"])
            ids = tuple(fast_tx_id(tx) for tx in batch.txs)
            self.batches[batch.digest()] = batch
            self.batch_ids[batch.digest()] = ids
            self.last_ts = max(self.last_ts, batch.timestamp_ms)
        if "proof" in entry:
            slot.proof = PreparedProof.from_wire(entry["proof"])
        if "pp" not in entry:
            return
        pp = PrePrepare.from_wire(entry["pp"])
        slot.view, slot.pp, slot.digest = pp.view, pp, pp.digest
        key = (pp.view, pp.digest)
        if pp.replica != self.me:
            prepare = sign(Prepare(pp.view, seq, pp.digest, self.me), self.signer)
            slot.prepares.setdefault(key, {})[self.me] = prepare
            slot.prepare_votes[(pp.view, self.me)] = pp.digest
            self.resend.append(prepare)
        proof = slot.proof
        if proof is not None and (proof.pre_prepare.view, proof.pre_prepare.digest) == key:
            for p in proof.prepares:
                slot.prepares.setdefault(key, {})[p.replica] = p
                slot.prepare_votes[(pp.view, p.replica)] = pp.digest
            slot.prepared = slot.commit_sent = True
            commit = sign(Commit(pp.view, seq, pp.digest, self.me), self.signer)
            slot.commits.setdefault(key, {})[self.me] = commit
            slot.commit_votes[(pp.view, self.me)] = pp.digest
            self.resend.append(commit)
        if pp.view == self.view:
            self.next_seq = max(self.next_seq, seq + 1)

    # ------------------------------------------------------------------ helpers

    def _count(self, name: str, by: int = 1) -> None:
        self.metrics[name] = self.metrics.get(name, 0) + by

    def _in_window(self, seq: int) -> bool:
        return self.stable_seq < seq <= self.high

    def _slot(self, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot(seq)
        return slot

    def _arm_request_timer(self, now_ms: int) -> None:
        if self.pending and self.vc_deadline is None and self.active:
            self.vc_deadline = now_ms + self.vc_timeout

    # ------------------------------------------------------------------ requests and batching

    def _request(
        self,
        raw: SignedTx | dict[str, Any],
        now_ms: int,
        verified: bool,
        out: list[Action],
        known_id: str | None = None,
        *,
        maybe_done: bool = True,
    ) -> None:
        if isinstance(raw, SignedTx):
            tx, wire = raw, raw.wire()
        else:
            try:
                tx, wire = SignedTx.from_wire(raw), raw
            except TxError:
                self._count("rejected_bad_tx")
                return
            known_id = None  # a wire dict's id is computed here, never taken on trust
        tx_id = known_id or fast_tx_id(tx)
        if tx_id in self.pending:
            self._count("duplicate_tx")
            return
        done = self.ex.receipt(tx_id) if maybe_done else None
        if done is not None:
            self._count("duplicate_tx")
            height, receipt = done
            out.append(ReplyTo(tx_id, Reply(self.view, tx_id, height, receipt, self.me)))
            return
        if len(self.pending) >= MAX_PENDING:
            self._count("rejected_overload")  # the client retries; nothing is half-accepted
            return
        if not verified and not self._verify_txs((tx,), (tx_id,))[0]:
            self._count("rejected_bad_tx")
            return
        self._remember_verified(tx, tx_id)
        self.pending[tx_id] = (tx, wire)
        self._arm_request_timer(now_ms)
        if tx_id in self.in_log:
            return
        self.queue[tx_id] = now_ms
        if self.is_primary and self.active:
            if self.batch_deadline is None:
                self.batch_deadline = now_ms + self.cfg.batch_delay_ms
            if len(self.queue) >= self.cfg.batch_max or self.cfg.batch_delay_ms == 0:
                self._cut_batches(now_ms, out, force=self.cfg.batch_delay_ms == 0)
        elif self.relay_requests and self.active:
            self.to_relay[tx_id] = now_ms

    def _relay_stale(self, now_ms: int, out: list[Action]) -> None:
        """A backup forwards to the primary, once, each request it holds that no pre-prepare has
        carried for half a view-change timeout (Castro and Liskov relay at once; here a client
        sends to the primary too, so relaying everything at once made the primary parse each
        request n times: 0.06 ms of its CPU per transaction under load). If the primary still
        does not order it, the view-change timer replaces the primary, and the backups relay
        what waits to the new one at once (``_enter_view``). Once, so an overloaded primary is
        not sent a copy of everything that waits every half timeout."""
        cutoff = now_ms - self.relay_after
        primary = self.cfg.primary(self.view)
        due: list[str] = []
        for tx_id, since in self.to_relay.items():
            if since > cutoff:
                break
            due.append(tx_id)
        relayed = 0
        for tx_id in due:
            del self.to_relay[tx_id]
            if tx_id in self.queue:  # not carried by a pre-prepare (nor executed) since
                out.append(Send(primary, Request(self.pending[tx_id][0])))
                relayed += 1
        if relayed:
            self._count("requests_relayed", relayed)

    def _verify_txs(self, txs: Sequence[SignedTx], tx_ids: Sequence[str]) -> list[bool]:
        self._count("tx_signature_checks", len(txs))
        if self.tx_verifier is not None:
            return self.tx_verifier(txs, tx_ids)
        return [tx.verify() for tx in txs]

    def _known_tx(self, wire: Any) -> SignedTx | None:
        """The parsed transaction a pre-prepare carries if this replica holds it already (a
        client sent it here too): found by signature, taken only if the wire forms encode to
        the same bytes (so ``1`` in one and ``true`` in the other is a different transaction).
        Two encodings cost less than parsing and hashing it again."""
        sig = wire.get("sig") if type(wire) is dict else None
        tx_id = self.verified.get(sig) if type(sig) is str else None
        held = self.pending.get(tx_id) if tx_id is not None else None
        if held is None:
            return None
        try:
            same = canonical(wire, checked=False) == canonical(held[1], checked=False)
        except EncodingError:
            return None
        return held[0] if same else None

    def _remember_verified(self, tx: SignedTx, tx_id: str) -> None:
        if len(self.verified) >= VERIFIED_CACHE:
            self.verified.pop(next(iter(self.verified)))
        self.verified[tx.signature.hex()] = tx_id

    def _cut_batches(self, now_ms: int, out: list[Action], *, force: bool) -> None:
        cfg = self.cfg
        while (
            self.queue
            and self.next_seq <= self.high
            and self.next_seq <= self.last_executed + cfg.max_inflight
        ):
            if not force and len(self.queue) < cfg.batch_max:
                break
            ids: list[str] = []
            size = 0
            for tx_id in self.queue:
                tx_size = tx_bytes(self.pending[tx_id][0])
                if ids and size + tx_size > cfg.batch_max_bytes:
                    break
                ids.append(tx_id)
                size += tx_size
                if len(ids) == cfg.batch_max:
                    break
            for tx_id in ids:
                del self.queue[tx_id]
            txs = tuple(self.pending[i][0] for i in ids)
            wires = tuple(self.pending[i][1] for i in ids)
            self.last_ts = max(self.last_ts, now_ms)
            batch = Batch(self.last_ts, txs, wires)
            digest = batch.digest()
            seq = self.next_seq
            self.next_seq += 1
            pp = sign(PrePrepare(self.view, seq, digest, self.me), self.signer)
            self._accept_pre_prepare(pp, batch, tuple(ids), out)
            if self.fault == "equivocate":
                # TEST FAULT: a different batch (another timestamp) to every backup.
                for i, r in enumerate(x for x in range(cfg.n) if x != self.me):
                    other = Batch(self.last_ts + i, txs, wires)
                    other_pp = sign(
                        PrePrepare(self.view, seq, other.digest(), self.me), self.signer
                    )
                    out.append(
                        Send(
                            r,
                            PrePrepare(
                                self.view, seq, other_pp.digest, self.me, other_pp.sig, other
                            ),
                        )
                    )
            else:
                out.append(Broadcast(PrePrepare(pp.view, seq, digest, self.me, pp.sig, batch)))
            self._count("batches_proposed")
        self.batch_deadline = now_ms + cfg.batch_delay_ms if self.queue else None

    # ------------------------------------------------------------------ normal case

    def _buffer_future(self, msg: PrePrepare | Prepare | Commit, sender: int) -> bool:
        if msg.view > self.view or (msg.view == self.view and not self.active):
            if isinstance(msg, PrePrepare) and not self._worth_buffering(msg):
                self._count("rejected_future_pre_prepare")
                return True
            self.future.append((msg, sender))
            self._count("buffered_future")
            return True
        return False

    def _worth_buffering(self, pp: PrePrepare) -> bool:
        """A pre-prepare for a view not entered yet carries a whole batch: kept only if it is
        signed by that view's primary, within the batch bounds, and one of at most
        ``max_ahead`` such (so a faulty peer cannot fill the buffer with batches)."""
        batch = pp.batch
        if pp.replica != self.cfg.primary(pp.view) or not verify(pp, self.keyring):
            return False
        if batch is not None and (
            len(batch.txs) > self.cfg.batch_max or batch_bytes(batch.txs) > self.cfg.batch_max_bytes
        ):
            return False
        held = sum(1 for m, _ in self.future if isinstance(m, PrePrepare))
        return held < self.cfg.max_ahead

    def _on_pre_prepare(self, pp: PrePrepare, now_ms: int, out: list[Action]) -> None:
        if pp.view != self.view or not self.active:
            if not self._buffer_future(pp, pp.replica):
                self._count("rejected_wrong_view")
            return
        if pp.replica != self.cfg.primary(pp.view):
            self._count("rejected_not_primary")
            return
        if not self._in_window(pp.seq):
            if not self._hold_above_window(pp):
                self._count("rejected_out_of_window")
            return
        if not verify(pp, self.keyring):
            self._count("rejected_bad_sig")
            return
        batch = pp.batch
        if batch is None or batch.digest() != pp.digest or pp.digest == NULL_DIGEST:
            self._count("rejected_bad_digest")
            return
        slot = self.slots.get(pp.seq)
        if slot is not None and slot.view == pp.view and slot.pp is not None:
            if slot.digest == pp.digest:
                self._count("duplicate_msg")
            else:
                self._count("equivocations_seen")
                self._start_view_change(self.view + 1, now_ms, out)
            return
        if pp.seq <= self.last_executed:
            self._count("rejected_out_of_window")
            return
        if pp.seq > self.last_executed + self.cfg.max_ahead:
            # far ahead of what this replica executed: not held (memory), fetched if committed
            self._count("rejected_too_far_ahead")
            return
        if len(batch.txs) > self.cfg.batch_max or batch_bytes(batch.txs) > self.cfg.batch_max_bytes:
            self._count("rejected_bad_batch")
            self._start_view_change(self.view + 1, now_ms, out)
            return
        if batch.timestamp_ms > now_ms + self.cfg.max_clock_skew_ms:
            self._count("rejected_timestamp")
            self._start_view_change(self.view + 1, now_ms, out)
            return
        ids: list[str] = []
        unchecked: list[SignedTx] = []
        unchecked_ids: list[str] = []
        verified = self.verified
        for tx, wire in zip(batch.txs, batch.wires, strict=True):
            tx_id = fast_tx_id(tx)
            ids.append(tx_id)
            # Verified already if the same signature is over the same bytes: the id hashes the
            # canonical bytes. (Comparing wire dicts would take ``true`` for ``1``, and so a
            # transaction nobody signed for one that was.)
            if verified.get(wire["sig"]) != tx_id:
                unchecked.append(tx)
                unchecked_ids.append(tx_id)
        if unchecked and not all(self._verify_txs(unchecked, unchecked_ids)):
            # A correctly signed pre-prepare with a forged transaction: the primary is faulty.
            self._count("rejected_bad_batch")
            self._start_view_change(self.view + 1, now_ms, out)
            return
        self._count("txs_verified", len(batch.txs))
        for tx_id, tx, wire in zip(ids, batch.txs, batch.wires, strict=True):
            if tx_id not in self.pending:
                self.pending[tx_id] = (tx, wire)
        self._arm_request_timer(now_ms)
        self._accept_pre_prepare(pp.stripped(), batch, tuple(ids), out)

    def _just_above_window(self, seq: int) -> bool:
        return self.high < seq <= self.high + self.cfg.log_window

    def _hold_above_window(self, pp: PrePrepare) -> bool:
        """A pre-prepare of this view's primary for a sequence number above this replica's
        window by less than a window: the primary moved its window on a checkpoint this replica
        has not collected yet. Kept (at most ``max_ahead``) and taken when the window gets
        there. Dropped, it would be sent no more, and once f+1 replicas lagged so, the slot
        could not prepare until a view change."""
        if (
            not self._just_above_window(pp.seq)
            or pp.seq in self.above_window
            or len(self.above_window) >= self.cfg.max_ahead
            or not verify(pp, self.keyring)
        ):
            return False
        self.above_window[pp.seq] = pp
        self._count("held_above_window")
        return True

    def _hold_vote_above_window(self, vote: Prepare | Commit) -> bool:
        """A PREPARE or COMMIT of this view for a sequence number just above the window, held
        like the pre-prepare (see ``_hold_above_window``) so that the slot can prepare and
        commit here once the window moves, without fetching the block later. One per voter,
        kind and sequence number; the signature is checked when the vote is taken."""
        key = (vote.seq, 0 if isinstance(vote, Prepare) else 1, vote.replica)
        if (
            not self._just_above_window(vote.seq)
            or key in self.votes_above
            or len(self.votes_above) >= 2 * self.cfg.n * self.cfg.max_ahead
        ):
            return False
        self.votes_above[key] = vote
        self._count("held_above_window")
        return True

    def _take_held(self, now_ms: int, out: list[Action]) -> None:
        """The window moved: the pre-prepares, then the votes, held above it that it now
        covers."""
        for seq in sorted(self.above_window):
            if seq > self.high:
                break
            pp = self.above_window.pop(seq, None)  # (taking one may have moved the window)
            if pp is not None and pp.view == self.view and self.active and seq > self.stable_seq:
                self._on_pre_prepare(pp, now_ms, out)
        for key in sorted(k for k in self.votes_above if k[0] <= self.high):
            vote = self.votes_above.pop(key, None)
            if vote is None or vote.view != self.view or not self.active:
                continue
            if vote.seq <= self.stable_seq:
                continue  # (taking a pre-prepare may have moved the window past it)
            if isinstance(vote, Prepare):
                self._on_prepare(vote, out)
            else:
                self._on_commit(vote, out)

    def _accept_pre_prepare(
        self, pp: PrePrepare, batch: Batch | None, ids: tuple[str, ...], out: list[Action]
    ) -> None:
        """Enter ``pp`` (without batch) into the log for the current view; backups prepare.
        ``batch`` is None only for a re-proposal (NEW-VIEW) whose batch this replica does not
        hold: agreement needs only the digest; the block is fetched once committed."""
        slot = self._slot(pp.seq)
        slot.view, slot.pp, slot.digest = pp.view, pp.stripped(), pp.digest
        slot.prepared = slot.commit_sent = False
        if batch is not None:
            self.batches[pp.digest] = batch
            self.batch_ids[pp.digest] = ids
        for tx_id in ids:
            self.in_log[tx_id] = pp.seq
            self.queue.pop(tx_id, None)
        self._journal_pre_prepare(slot, batch)
        if pp.replica != self.me:
            prepare = sign(Prepare(pp.view, pp.seq, pp.digest, self.me), self.signer)
            slot.prepares.setdefault((pp.view, pp.digest), {})[self.me] = prepare
            slot.prepare_votes[(pp.view, self.me)] = pp.digest
            out.append(Broadcast(prepare))
        self._check_prepared(slot, out)

    def _record_vote(
        self, msg: Prepare | Commit, tables: Callable[[Slot], tuple[VoteIndex, VoteSets]]
    ) -> tuple[Slot, dict[int, Any]] | None:
        """The checks PREPARE and COMMIT share, then the vote entered in the slot's tables
        (``tables`` picks them). Returns the slot and the votes for the message's (view,
        digest), or None if the message was dropped."""
        if msg.view != self.view or not self.active:
            if not self._buffer_future(msg, msg.replica):
                self._count("rejected_wrong_view")
            return None
        if not self._in_window(msg.seq):
            if not self._hold_vote_above_window(msg):
                self._count("rejected_out_of_window")
            return None
        slot = self._slot(msg.seq)
        by_voter, by_digest = tables(slot)
        voter = (msg.view, msg.replica)
        earlier = by_voter.get(voter)
        if earlier is not None:
            # one vote per replica, view and sequence number: replays are dropped, and a
            # replica voting for two digests cannot grow the log
            self._count("duplicate_msg" if earlier == msg.digest else "conflicting_votes")
            return None
        if not verify(msg, self.keyring):
            self._count("rejected_bad_sig")
            return None
        by_voter[voter] = msg.digest
        votes = by_digest.setdefault((msg.view, msg.digest), {})
        votes[msg.replica] = msg
        return slot, votes

    def _on_prepare(self, msg: Prepare, out: list[Action]) -> None:
        if msg.view == self.view and self.active and msg.replica == self.cfg.primary(msg.view):
            self._count("rejected_not_backup")
            return
        recorded = self._record_vote(msg, lambda slot: (slot.prepare_votes, slot.prepares))
        if recorded is not None:
            self._check_prepared(recorded[0], out)

    def _check_prepared(self, slot: Slot, out: list[Action]) -> None:
        pp = slot.pp
        if pp is None or slot.prepared or slot.view != self.view:
            return
        votes = slot.prepares.get((pp.view, pp.digest))
        if votes is None or len(votes) < self.cfg.quorum - 1:
            return
        slot.prepared = True
        slot.proof = PreparedProof(pp, tuple(votes.values())[: self.cfg.quorum - 1])
        self.ex.save_journal(slot.seq, {"proof": canonical(slot.proof.to_wire(), checked=False)})
        if not slot.commit_sent:
            slot.commit_sent = True
            commit = sign(Commit(pp.view, pp.seq, pp.digest, self.me), self.signer)
            slot.commits.setdefault((pp.view, pp.digest), {})[self.me] = commit
            slot.commit_votes[(pp.view, self.me)] = pp.digest
            out.append(Broadcast(commit))
        self._check_committed(slot, out)

    def _on_commit(self, msg: Commit, out: list[Action]) -> None:
        # (self.now is the time of the event being handled; set by on_message)
        recorded = self._record_vote(msg, lambda slot: (slot.commit_votes, slot.commits))
        if recorded is None:
            return
        slot, votes = recorded
        if (
            len(votes) >= self.cfg.quorum
            and (msg.digest != slot.digest or msg.digest not in self.batches)
            and msg.seq > self.last_executed
        ):
            # A quorum committed a batch this replica does not hold (an equivocating primary
            # showed it another one, or its pre-prepare was lost): fetch the certified block.
            self._count("fetch_on_commit_quorum")
            self._start_fetch(msg.seq, list(votes), self.now, out)
        self._check_committed(slot, out)

    def _check_committed(self, slot: Slot, out: list[Action]) -> None:
        if slot.committed or not slot.prepared or slot.pp is None:
            return
        key = (slot.pp.view, slot.digest)
        votes = slot.commits.get(key)
        if votes is None or len(votes) < self.cfg.quorum:
            return
        slot.committed = True
        slot.cert = Certificate(
            key[0], slot.seq, slot.digest, tuple((r, c.sig) for r, c in votes.items())
        )
        self._execute_ready(out)

    # ------------------------------------------------------------------ execution

    def _execute_ready(self, out: list[Action]) -> None:
        progressed = False
        while True:
            slot = self.slots.get(self.last_executed + 1)
            if slot is None or not slot.committed or slot.cert is None:
                break
            batch = self.batches.get(slot.digest)
            if batch is None:
                # committed without the batch here (re-proposed in a NEW-VIEW): fetch the block
                voters = [r for r, _ in slot.cert.commits]
                self._start_fetch(slot.seq, voters, self.now, out)
                break
            block = Block(
                slot.seq,
                batch.timestamp_ms,
                self.last_hash,
                batch.wires,
                slot.cert,
                self.batch_ids[slot.digest],
                slot.digest,
                batch.encoded(),
            )
            self._execute_block(block, slot.digest, out)
            progressed = True
        if progressed:
            self._after_progress(out)
            if self.is_primary and self.active and len(self.queue) >= self.cfg.batch_max:
                # full batches that waited for the pipeline (max_inflight) go now
                self._cut_batches(self.now, out, force=False)

    def _execute_block(self, block: Block, digest: bytes, out: list[Action]) -> None:
        receipts = tuple(self.ex.execute(block))
        self.last_executed = block.height
        self.last_hash = block.hash(digest)
        self.last_ts = max(self.last_ts, block.timestamp_ms)
        self._count("executed_blocks")
        self._count("executed_txs", len(block.txs))
        out.append(Executed(block, receipts))
        height = block.height
        out.append(BlockReplies(self.view, height, self.me, block.tx_ids, receipts))
        pending, queue, in_log, verified = self.pending, self.queue, self.in_log, self.verified
        for tx_id, wire in zip(block.tx_ids, block.txs, strict=True):
            pending.pop(tx_id, None)
            queue.pop(tx_id, None)
            in_log.pop(tx_id, None)
            verified.pop(wire["sig"], None)
        if height % self.cfg.checkpoint_interval == 0:
            cp_digest = checkpoint_digest(height, self.last_hash, self.ex.state_digest())
            cp = sign(Checkpoint(height, cp_digest, self.me), self.signer)
            out.append(Broadcast(cp))
            self.checkpoints.setdefault(height, {})[self.me] = cp
            self._check_stable(height, out)

    def _after_progress(self, out: list[Action]) -> None:
        if self.fetch_target <= self.last_executed:
            self.fetch_deadline = None
        if not self.active:
            return  # blocks fetched during a view change: the wait for NEW-VIEW goes on
        # Progress in this view: reset the backoff; keep waiting only if requests are pending.
        self.vc_timeout = self.cfg.view_change_timeout_ms
        self.vc_deadline = None
        self._arm_request_timer(self.now)

    def _rearm(self, now_ms: int) -> None:
        if self.vc_deadline is None:
            self._arm_request_timer(now_ms)

    # ------------------------------------------------------------------ checkpoints

    def _on_checkpoint(self, msg: Checkpoint, now_ms: int, out: list[Action]) -> None:
        if msg.seq % self.cfg.checkpoint_interval or msg.seq == 0:
            self._count("rejected_bad_checkpoint")
            return
        if msg.seq <= self.stable_seq:
            self._count("stale_checkpoint")
            # The sender is still working on a checkpoint that is stable here: show it the proof
            # (it may have missed the others' checkpoints), at most once per status interval.
            last = self.proof_sent_at.get(msg.replica)
            if self.stable_proof and (last is None or now_ms - last >= self.cfg.status_interval_ms):
                self.proof_sent_at[msg.replica] = now_ms
                out.append(Send(msg.replica, Blocks((), self.me, self.stable_proof)))
            return
        votes = self.checkpoints.get(msg.seq)
        if votes is not None and msg.replica in votes:
            self._count("duplicate_msg")
            return
        if not verify(msg, self.keyring):
            self._count("rejected_bad_sig")
            return
        # Keep at most a few checkpoints per replica (bounded memory under a flooding replica).
        mine = [s for s, v in self.checkpoints.items() if msg.replica in v]
        if len(mine) >= 8:
            del self.checkpoints[min(mine)][msg.replica]
        self.checkpoints.setdefault(msg.seq, {})[msg.replica] = msg
        self._check_stable(msg.seq, out, now_ms)

    def _check_stable(self, seq: int, out: list[Action], now_ms: int | None = None) -> None:
        now = self.now if now_ms is None else now_ms
        votes = self.checkpoints.get(seq, {})
        by_digest: dict[bytes, list[Checkpoint]] = {}
        for cp in votes.values():
            by_digest.setdefault(cp.digest, []).append(cp)
        for digest, cps in by_digest.items():
            if len(cps) >= self.cfg.quorum and seq > self.stable_seq:
                own = votes.get(self.me)
                if own is not None and own.digest != digest:
                    self._count("checkpoint_mismatch")
                self._stabilize(seq, digest, tuple(cps[: self.cfg.quorum]))
                if seq > self.last_executed:
                    self._start_fetch(seq, [c.replica for c in cps], now, out)
                if self.above_window or self.votes_above:
                    self._take_held(now, out)
                self._cut_if_primary(now, out)
                return

    def _stabilize(self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        self.stable_seq, self.stable_digest, self.stable_proof = seq, digest, proof
        self.ex.save_checkpoint(seq, digest, [c.to_wire() for c in proof])
        self.ex.prune_journal(seq)
        self._count("checkpoints_stable")
        for s in [s for s in self.slots if s <= seq]:
            slot = self.slots.pop(s)
            if slot.digest and slot.digest != NULL_DIGEST:
                for tx_id in self.batch_ids.get(slot.digest, ()):
                    if self.in_log.get(tx_id) == s:
                        del self.in_log[tx_id]
                        if tx_id in self.pending:
                            self.queue[tx_id] = 0
        live = {slot.digest for slot in self.slots.values()}
        live.update(slot.proof.pre_prepare.digest for slot in self.slots.values() if slot.proof)
        live.add(NULL_DIGEST)
        for d in [d for d in self.batches if d not in live]:
            del self.batches[d]
            self.batch_ids.pop(d, None)
        for s in [s for s in self.checkpoints if s < seq]:
            del self.checkpoints[s]
        if self.next_seq <= seq:
            self.next_seq = seq + 1

    def _cut_if_primary(self, now_ms: int, out: list[Action]) -> None:
        if self.is_primary and self.active and self.queue:
            self._cut_batches(now_ms, out, force=False)

    # ------------------------------------------------------------------ view change

    def _start_view_change(self, new_view: int, now_ms: int, out: list[Action]) -> None:
        if new_view <= self.view and not (new_view == self.view and self.active):
            return
        if new_view == self.view:
            return
        self._count("view_changes")
        self.view = new_view
        self.active = False
        self.ex.save_view(new_view, False)
        self._send_view_change(now_ms, out)

    def _send_view_change(self, now_ms: int, out: list[Action]) -> None:
        """Sign and send this replica's VIEW-CHANGE for ``self.view`` (being changed to)."""
        new_view = self.view
        self.new_view_msg = None
        self.batch_deadline = None
        prepared = tuple(
            slot.proof
            for seq, slot in sorted(self.slots.items())
            if seq > self.stable_seq and slot.proof is not None
        )
        # Attach only batches not executed here: executed ones are in this replica's store
        # (and others'), so a view change stays small even with a full window of batches.
        batches: dict[bytes, Batch] = {}
        budget = VC_ATTACH_BYTES
        for p in prepared:  # lowest sequence numbers first, within a byte budget
            digest = p.pre_prepare.digest
            batch = self.batches.get(digest)
            if p.pre_prepare.seq <= self.last_executed or digest == NULL_DIGEST or batch is None:
                continue
            budget -= batch_bytes(batch.txs)
            if budget < 0:
                # the rest the new primary holds itself (it saw those pre-prepares) or fetches
                self._count("view_change_batches_left_out")
                break
            batches[digest] = batch
        vc = sign(
            ViewChange(new_view, self.stable_seq, self.stable_proof, prepared, self.me),
            self.signer,
        )
        vc = ViewChange(
            vc.view, vc.stable_seq, vc.checkpoint_proof, vc.prepared, self.me, vc.sig, batches
        )
        self.vc_by_replica[self.me] = vc
        self.vc_batches[self.me] = batches
        out.append(Broadcast(vc))
        self.vc_deadline = now_ms + self.vc_timeout
        self.vc_timeout = min(2 * self.vc_timeout, self.cfg.max_view_change_timeout_ms)
        if self.is_primary:
            self._try_new_view(now_ms, out)

    def _on_timeout(self, now_ms: int, out: list[Action]) -> None:
        if self.active:
            if self.fetch_deadline is not None and self.fetch_target > self.last_executed:
                # Behind, not stalled: the others are executing; catch up instead.
                self.vc_deadline = now_ms + self.vc_timeout
                return
            self._start_view_change(self.view + 1, now_ms, out)
            return
        # Waiting for NEW-VIEW. Give up on this view only if a quorum is in it (its primary is
        # then to blame); alone, stay and re-send, so an isolated replica does not run ahead
        # through views the others will never reach.
        joined = sum(1 for vc in self.vc_by_replica.values() if vc.view >= self.view)
        if joined >= self.cfg.quorum:
            self._start_view_change(self.view + 1, now_ms, out)
            return
        mine = self.vc_by_replica.get(self.me)
        if mine is not None:
            out.append(Broadcast(mine))
        self.vc_deadline = now_ms + self.vc_timeout
        self.vc_timeout = min(2 * self.vc_timeout, self.cfg.max_view_change_timeout_ms)

    def _valid_view_change(self, vc: ViewChange) -> bool:
        cfg = self.cfg
        if not verify(vc, self.keyring):
            return False
        if vc.stable_seq % cfg.checkpoint_interval:
            return False
        if vc.stable_seq > 0:
            signers = set()
            for cp in vc.checkpoint_proof:
                if cp.seq != vc.stable_seq or cp.digest != vc.checkpoint_proof[0].digest:
                    return False
                if cp.replica not in signers and verify(cp, self.keyring):
                    signers.add(cp.replica)
            if len(signers) < cfg.quorum:
                return False
        seen: set[int] = set()
        for proof in vc.prepared:
            pp = proof.pre_prepare
            if (
                pp.seq in seen
                or not vc.stable_seq < pp.seq <= vc.stable_seq + cfg.log_window
                or pp.view >= vc.view
                or pp.replica != cfg.primary(pp.view)
                or not verify(pp, self.keyring)
            ):
                return False
            seen.add(pp.seq)
            backers = set()
            for p in proof.prepares:
                if (
                    p.view == pp.view
                    and p.seq == pp.seq
                    and p.digest == pp.digest
                    and p.replica != pp.replica
                    and p.replica not in backers
                    and verify(p, self.keyring)
                ):
                    backers.add(p.replica)
            if len(backers) < cfg.quorum - 1:
                return False
        return True

    def _on_view_change(self, vc: ViewChange, now_ms: int, out: list[Action]) -> None:
        if vc.view < self.view or (vc.view == self.view and self.active):
            self._count("stale_view_change")
            self._send_new_view_to(vc.replica, now_ms, out)
            return
        known = self.vc_by_replica.get(vc.replica)
        if known is not None and known.view >= vc.view:
            self._count("duplicate_msg")
            return
        if not self._valid_view_change(vc):
            self._count("rejected_bad_view_change")
            return
        self.vc_by_replica[vc.replica] = vc
        # Kept: the sender's latest view-change only, and only batches its prepared proofs name
        # (a faulty replica sending view-changes for ever higher views holds no more memory).
        named = {p.pre_prepare.digest for p in vc.prepared}
        self.vc_batches[vc.replica] = {d: b for d, b in vc.batches.items() if d in named}
        # Liveness: f+1 replicas want a higher view, so at least one correct one does: join.
        higher = sorted(v.view for r, v in self.vc_by_replica.items() if v.view > self.view)
        if len(higher) >= self.cfg.weak:
            self._start_view_change(higher[0], now_ms, out)
        if vc.view == self.view and not self.active and self.is_primary:
            self._try_new_view(now_ms, out)

    def _send_new_view_to(self, replica: int, now_ms: int, out: list[Action]) -> None:
        nv = self.new_view_msg
        if nv is None or not self.active or replica == self.me:
            return
        last = self.nv_sent_at.get(replica)
        if last is not None and now_ms - last < self.cfg.status_interval_ms:
            return
        self.nv_sent_at[replica] = now_ms
        out.append(Send(replica, nv))

    def _compute_o(self, vcs: tuple[ViewChange, ...]) -> tuple[int, list[tuple[int, bytes]]]:
        """(min-s, [(seq, digest)]) of the paper's NEW-VIEW computation."""
        min_s = max(vc.stable_seq for vc in vcs)
        best: dict[int, tuple[int, bytes]] = {}
        for vc in vcs:
            for proof in vc.prepared:
                pp = proof.pre_prepare
                if pp.seq > min_s and (pp.seq not in best or pp.view > best[pp.seq][0]):
                    best[pp.seq] = (pp.view, pp.digest)
        max_s = max(best, default=min_s)
        entries = [
            (n, best[n][1] if n in best else NULL_DIGEST) for n in range(min_s + 1, max_s + 1)
        ]
        return min_s, entries

    def _batch_for(self, seq: int, digest: bytes, extra: Mapping[bytes, Batch]) -> Batch | None:
        batch = extra.get(digest) or self.batches.get(digest)
        if batch is None:
            batch = next((b[digest] for b in self.vc_batches.values() if digest in b), None)
        if batch is None and seq <= self.last_executed:
            stored = self.ex.blocks_from(seq, 1)
            if stored and stored[0].batch_digest() == digest:
                block = stored[0]
                try:
                    batch = Batch.from_wire({"ts": block.timestamp_ms, "txs": list(block.txs)})
                except WireError:
                    return None
                self.batch_ids.setdefault(digest, block.ids())
        return batch

    def _try_new_view(self, now_ms: int, out: list[Action]) -> None:
        vcs = tuple(
            sorted(
                (vc for vc in self.vc_by_replica.values() if vc.view == self.view),
                key=lambda vc: vc.replica,
            )
        )
        if len(vcs) < self.cfg.quorum:
            return
        # V: my own view-change and the lowest-numbered others, a quorum in all.
        vcs = tuple(sorted(vcs, key=lambda vc: vc.replica != self.me)[: self.cfg.quorum])
        min_s, entries = self._compute_o(vcs)
        batches: dict[bytes, Batch] = {}
        attach: dict[bytes, Batch] = {}
        budget = VC_ATTACH_BYTES
        missing: list[int] = []
        for seq, digest in entries:
            if digest != NULL_DIGEST:
                batch = self._batch_for(seq, digest, {})
                if batch is None:
                    missing.append(seq)
                    continue
                batches[digest] = batch
                if seq > self.last_executed and budget >= batch_bytes(batch.txs):
                    # executed ones can be fetched from any store; past the budget a backup
                    # agrees on the digest and fetches the block once committed
                    budget -= batch_bytes(batch.txs)
                    attach[digest] = batch
        if missing:
            # Every replica that prepared these has executed them (or it would have attached
            # them): catch up first, then build the NEW-VIEW (retried when blocks arrive).
            self._count("new_view_missing_batch")
            self._start_fetch(max(missing), [vc.replica for vc in vcs], now_ms, out)
            return
        pps = tuple(sign(PrePrepare(self.view, n, d, self.me), self.signer) for n, d in entries)
        nv = sign(NewView(self.view, tuple(vc.stripped() for vc in vcs), pps, self.me), self.signer)
        nv = NewView(nv.view, nv.view_changes, nv.pre_prepares, self.me, nv.sig, attach)
        out.append(Broadcast(nv))
        self._enter_view(nv, vcs, min_s, batches, now_ms, out)

    def _on_new_view(self, nv: NewView, now_ms: int, out: list[Action]) -> None:
        if nv.view < self.view or (nv.view == self.view and self.active):
            self._count("stale_new_view")
            return
        if nv.replica != self.cfg.primary(nv.view):
            self._count("rejected_not_primary")
            return
        if not verify(nv, self.keyring):
            self._count("rejected_bad_sig")
            return
        signers = {vc.replica for vc in nv.view_changes}
        if len(signers) != len(nv.view_changes) or len(signers) < self.cfg.quorum:
            self._count("rejected_bad_new_view")
            return
        for vc in nv.view_changes:
            if vc.view != nv.view or not self._valid_view_change(vc):
                self._count("rejected_bad_new_view")
                return
        min_s, entries = self._compute_o(nv.view_changes)
        if [(pp.seq, pp.digest) for pp in nv.pre_prepares] != entries or any(
            pp.view != nv.view or pp.replica != nv.replica or not verify(pp, self.keyring)
            for pp in nv.pre_prepares
        ):
            self._count("rejected_bad_new_view")
            return
        batches: dict[bytes, Batch] = {}
        for seq, digest in entries:
            if digest != NULL_DIGEST:
                batch = self._batch_for(seq, digest, nv.batches)
                if batch is not None:
                    batches[digest] = batch
        self._enter_view(nv, nv.view_changes, min_s, batches, now_ms, out)

    def _enter_view(
        self,
        nv: NewView,
        vcs: tuple[ViewChange, ...],
        min_s: int,
        batches: Mapping[bytes, Batch],
        now_ms: int,
        out: list[Action],
    ) -> None:
        self._count("new_views")
        self.view = nv.view
        self.active = True
        self.above_window.clear()  # the old view's
        self.votes_above.clear()
        self.ex.save_view(nv.view, True)
        self.new_view_msg = nv  # relayed as is to replicas left behind (bounded attachments)
        self.vc_deadline = None
        self.vc_by_replica = {r: vc for r, vc in self.vc_by_replica.items() if vc.view > nv.view}
        self.vc_batches = {r: b for r, b in self.vc_batches.items() if r in self.vc_by_replica}
        if min_s > self.stable_seq:
            source = next(vc for vc in vcs if vc.stable_seq == min_s)
            self._stabilize(min_s, source.checkpoint_proof[0].digest, source.checkpoint_proof)
            if min_s > self.last_executed:
                self._start_fetch(
                    min_s, [vc.replica for vc in vcs if vc.stable_seq == min_s], now_ms, out
                )
        o_seqs = {pp.seq for pp in nv.pre_prepares}
        for seq in [s for s in self.slots if s > min_s and s not in o_seqs]:
            self._discard_slot(seq)
        max_s = max(o_seqs, default=min_s)
        self.next_seq = max(max_s, self.stable_seq, self.last_executed) + 1
        for pp in nv.pre_prepares:
            slot = self.slots.get(pp.seq)
            if slot is not None and slot.pp is not None and slot.digest != pp.digest:
                self._discard_slot(pp.seq)
                slot = None
            batch = NULL_BATCH if pp.digest == NULL_DIGEST else batches.get(pp.digest)
            ids: tuple[str, ...] = ()
            if batch is not None:
                known = self.batch_ids.get(pp.digest)
                ids = known if known is not None else tuple(fast_tx_id(tx) for tx in batch.txs)
                for tx_id, tx, wire in zip(ids, batch.txs, batch.wires, strict=True):
                    if tx_id not in self.pending and pp.seq > self.last_executed:
                        self.pending[tx_id] = (tx, wire)
            keep = self.slots.get(pp.seq)
            committed = keep.committed if keep else False
            cert = keep.cert if keep else None
            self._accept_pre_prepare(pp, batch, ids, out)
            if committed:
                fresh = self.slots[pp.seq]
                fresh.committed, fresh.cert = True, cert
        # Requests not yet ordered: the new primary batches them, backups relay them to it.
        self.to_relay.clear()
        if self.queue:
            if self.is_primary:
                self.batch_deadline = now_ms + self.cfg.batch_delay_ms
            elif self.relay_requests:
                # at once: the old primary may never have had them (the reason for the change)
                primary = self.cfg.primary(self.view)
                for tx_id in self.queue:
                    out.append(Send(primary, Request(self.pending[tx_id][0])))
        self.vc_deadline = None
        self._arm_request_timer(now_ms)
        self._replay_future(out, now_ms)
        self._execute_ready(out)

    def _discard_slot(self, seq: int) -> None:
        slot = self.slots.pop(seq, None)
        if slot is None:
            return
        if not slot.digest:  # votes only, or a certificate kept from an earlier view: gone
            if slot.proof is not None:
                self.ex.save_journal(seq, {"pp": None, "batch": None, "proof": None})
            return
        for tx_id in self.batch_ids.get(slot.digest, ()):
            if self.in_log.get(tx_id) == seq:
                del self.in_log[tx_id]
                if tx_id in self.pending:
                    self.queue[tx_id] = 0
        if slot.proof is not None:
            # keep the prepared certificate for later view changes
            fresh = self._slot(seq)
            fresh.proof = slot.proof
            self.ex.save_journal(seq, {"pp": None})  # the proof's batch stays with it
        else:
            self.ex.save_journal(seq, {"pp": None, "batch": None, "proof": None})

    def _replay_future(self, out: list[Action], now_ms: int) -> None:
        keep: deque[tuple[PrePrepare | Prepare | Commit, int]] = deque(maxlen=FUTURE_BUFFER)
        ready = []
        for msg, sender in self.future:
            if msg.view == self.view:
                ready.append(msg)
            elif msg.view > self.view:
                keep.append((msg, sender))
        self.future = keep
        for msg in ready:
            if isinstance(msg, PrePrepare):
                self._on_pre_prepare(msg, now_ms, out)
            elif isinstance(msg, Prepare):
                self._on_prepare(msg, out)
            else:
                self._on_commit(msg, out)

    # ------------------------------------------------------------------ status and state transfer

    def _status_tick(self, now_ms: int, out: list[Action]) -> None:
        out.append(
            Broadcast(
                sign(Status(self.view, self.last_executed, self.stable_seq, self.me), self.signer)
            )
        )
        # Re-send my newest checkpoint that is not stable yet: a lost checkpoint must not stall
        # the window (the primary stops at the high watermark until one becomes stable).
        mine = [
            s for s, votes in self.checkpoints.items() if s > self.stable_seq and self.me in votes
        ]
        if mine:
            out.append(Broadcast(self.checkpoints[max(mine)][self.me]))
        ahead = sorted(self.peer_exec.values(), reverse=True)
        target = ahead[self.cfg.f] if len(ahead) > self.cfg.f else 0
        if self.behind_target is not None and self.last_executed < self.behind_target:
            peers = [r for r, e in self.peer_exec.items() if e >= self.behind_target]
            self._start_fetch(self.behind_target, peers, now_ms, out)
        self.behind_target = target if target > self.last_executed else None
        views = sorted(self.peer_view.values(), reverse=True)
        if len(views) > self.cfg.f:
            w = views[self.cfg.f]
            if w > self.view or (
                w == self.view
                and not self.active
                and self.new_view_msg is None
                and self.vc_deadline is None
            ):
                self._count("behind_in_view")
                self._start_view_change(w, now_ms, out)
        self._rearm(now_ms)

    def _on_status(self, msg: Status, now_ms: int, out: list[Action]) -> None:
        if not verify(msg, self.keyring):
            self._count("rejected_bad_sig")
            return
        self.peer_view[msg.replica] = msg.view
        self.peer_exec[msg.replica] = msg.last_executed
        ahead = sorted(self.peer_exec.values(), reverse=True)
        if len(ahead) > self.cfg.f and ahead[self.cfg.f] > self.last_executed + self.cfg.log_window:
            # f+1 replicas are beyond my whole window: the normal case cannot catch me up.
            target = ahead[self.cfg.f]
            peers = [r for r, e in self.peer_exec.items() if e >= target]
            self._start_fetch(target, peers, now_ms, out)
        if msg.view < self.view:
            self._send_new_view_to(msg.replica, now_ms, out)

    def _start_fetch(self, target: int, peers: list[int], now_ms: int, out: list[Action]) -> None:
        peers = [p for p in peers if p != self.me]
        if target <= self.last_executed or not peers:
            return
        if target <= self.fetch_target and self.fetch_deadline is not None:
            return
        self.fetch_target = max(self.fetch_target, target)
        if self.fetch_peer not in peers:
            self.fetch_peer = peers[(self.last_executed + now_ms) % len(peers)]
        self._count("fetches")
        self._send_fetch(now_ms, out, rotate=False)

    def _send_fetch(self, now_ms: int, out: list[Action], *, rotate: bool) -> None:
        if self.last_executed >= self.fetch_target:
            self.fetch_deadline = None
            return
        if rotate or self.fetch_peer < 0:
            self.fetch_peer = (self.fetch_peer + 1) % self.cfg.n
            if self.fetch_peer == self.me:
                self.fetch_peer = (self.fetch_peer + 1) % self.cfg.n
        msg = sign(FetchBlocks(self.last_executed + 1, self.me), self.signer)
        out.append(Send(self.fetch_peer, msg))
        self.fetch_deadline = now_ms + self.cfg.view_change_timeout_ms

    def _on_fetch(self, msg: FetchBlocks, out: list[Action]) -> None:
        if not verify(msg, self.keyring):
            self._count("rejected_bad_sig")
            return
        last = self.fetch_served.get(msg.replica)
        if last is not None and last[0] == msg.from_seq and self.now - last[1] < FETCH_REPEAT_MS:
            self._count("duplicate_msg")  # the same page asked again at once: not re-sent
            return
        self.fetch_served[msg.replica] = (msg.from_seq, self.now)
        if msg.from_seq == 0 or msg.from_seq > self.last_executed:
            out.append(Send(msg.replica, Blocks((), self.me, self.stable_proof)))
            return
        blocks = tuple(self.ex.blocks_from(msg.from_seq, self.cfg.fetch_limit))
        self._count("blocks_served", len(blocks))
        out.append(Send(msg.replica, Blocks(blocks, self.me, self.stable_proof)))

    def _on_blocks(self, msg: Blocks, now_ms: int, out: list[Action]) -> None:
        applied = 0
        for block in msg.blocks:
            if block.height <= self.last_executed:
                continue
            cert = block.certificate
            digest = block.batch_digest()
            if (
                block.height != self.last_executed + 1
                or cert is None
                or cert.seq != block.height
                or cert.digest != digest
                or block.prev_hash != self.last_hash
                or not cert.verify(self.keyring, self.cfg.quorum)
            ):
                self._count("rejected_bad_block")
                break
            self._register_batch(digest, block)
            slot = self.slots.get(block.height)
            if slot is not None and slot.digest and slot.digest != digest:
                self._count("equivocations_seen")
            self._execute_block(block, digest, out)
            applied += 1
        self._count("blocks_fetched", applied)
        self._adopt_proof(msg.proof, now_ms, out)
        if applied:
            self.next_seq = max(self.next_seq, self.last_executed + 1)
            self._after_progress(out)
            self._execute_ready(out)
            if not self.active and self.is_primary:
                self._try_new_view(now_ms, out)  # it may have waited for these blocks
        if self.last_executed >= self.fetch_target:
            self.fetch_target = self.last_executed
            self.fetch_deadline = None
            self.fetch_retries = 0
        elif applied:
            self.fetch_retries = 0
            self._send_fetch(now_ms, out, rotate=False)  # next page from the same peer
        # else: nothing usable; the fetch deadline retries with another peer
        self._rearm(now_ms)

    def _adopt_proof(self, proof: tuple[Checkpoint, ...], now_ms: int, out: list[Action]) -> None:
        """Take a stable checkpoint proven by a quorum of signed checkpoints."""
        if (
            not proof
            or proof[0].seq <= self.stable_seq
            or proof[0].seq % self.cfg.checkpoint_interval
        ):
            return
        seq, digest = proof[0].seq, proof[0].digest
        signers: dict[int, Checkpoint] = {}
        for cp in proof:
            if cp.seq != seq or cp.digest != digest or cp.replica in signers:
                self._count("rejected_bad_checkpoint")
                return
            if not verify(cp, self.keyring):
                self._count("rejected_bad_sig")
                return
            signers[cp.replica] = cp
        if len(signers) < self.cfg.quorum:
            self._count("rejected_bad_checkpoint")
            return
        votes = self.checkpoints.setdefault(seq, {})
        for r, cp in signers.items():
            votes.setdefault(r, cp)
        self._check_stable(seq, out, now_ms)

    def _register_batch(self, digest: bytes, block: Block) -> None:
        if digest not in self.batch_ids:
            self.batch_ids[digest] = block.ids()
