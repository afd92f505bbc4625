"""The message log and the normal case: pre-prepares, prepares and commits per sequence number.

``MessageLog`` owns the slots (one per sequence number in the window: the accepted pre-prepare,
the votes by voter and by digest, whether prepared and committed, the certificate), the batches
by digest (with their transaction ids), the pre-prepares and votes held just above the window,
and those buffered for a view not entered yet. Its methods append the actions they cause to
``out``; committing a slot hands over to the replica's execution.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ledger.encoding import canonical
from ledger.pbft.actions import Action, Broadcast, Send
from ledger.pbft.block import NULL_BATCH, NULL_DIGEST, Batch, Certificate, batch_bytes
from ledger.pbft.messages import (
    Commit,
    FetchPrePrepare,
    Prepare,
    PreparedProof,
    PrePrepare,
    sign,
    verify,
)
from ledger.tx import SignedTx

if TYPE_CHECKING:
    from ledger.pbft.replica import Replica

FUTURE_BUFFER = 8192  # messages kept for a view this replica has not entered yet
VoteIndex = dict[tuple[int, int], bytes]  # (view, replica) -> digest voted for
VoteSets = dict[tuple[int, bytes], dict[int, Any]]  # (view, digest) -> replica -> vote
Future = deque[tuple[PrePrepare | Prepare | Commit, int]]


@dataclass(slots=True, eq=False)
class Slot:
    """Everything the log holds for one sequence number."""

    seq: int
    view: int = -1  # view of the accepted pre-prepare
    pp: PrePrepare | None = None  # accepted pre-prepare (without batch) in self.view
    digest: bytes = b""
    prepares: dict[tuple[int, bytes], dict[int, Prepare]] = field(default_factory=dict)
    commits: dict[tuple[int, bytes], dict[int, Commit]] = field(default_factory=dict)
    # (view, replica) -> digest
    prepare_votes: dict[tuple[int, int], bytes] = field(default_factory=dict)
    commit_votes: dict[tuple[int, int], bytes] = field(default_factory=dict)
    prepared: bool = False  # prepared in self.view
    commit_sent: bool = False
    committed: bool = False
    cert: Certificate | None = None
    proof: PreparedProof | None = None  # highest-view prepared certificate
    # replicas sent this slot's pre-prepare in full on request
    served: set[int] = field(default_factory=set)

    def add_vote(self, vote: Prepare | Commit) -> None:
        """Enter a signed PREPARE or COMMIT (this replica's own, or one checked before)."""
        key = (vote.view, vote.digest)
        if isinstance(vote, Prepare):
            self.prepares.setdefault(key, {})[vote.replica] = vote
            self.prepare_votes[(vote.view, vote.replica)] = vote.digest
        else:
            self.commits.setdefault(key, {})[vote.replica] = vote
            self.commit_votes[(vote.view, vote.replica)] = vote.digest


class MessageLog:
    def __init__(self, core: Replica) -> None:
        self.core = core
        self.slots: dict[int, Slot] = {}
        self.batches: dict[bytes, Batch] = {NULL_DIGEST: NULL_BATCH}
        self.batch_ids: dict[bytes, tuple[str, ...]] = {NULL_DIGEST: ()}
        # pre-prepares and votes of this view just above the window, taken when it moves (see
        # hold_above_window); votes by (seq, 0 prepare / 1 commit, voter)
        self.above_window: dict[int, PrePrepare] = {}
        self.votes_above: dict[tuple[int, int, int], Prepare | Commit] = {}
        self.future: Future = deque(maxlen=FUTURE_BUFFER)

    def slot(self, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot(seq)
        return slot

    def keep_batch(self, digest: bytes, batch: Batch, ids: tuple[str, ...]) -> None:
        self.batches[digest] = batch
        self.batch_ids[digest] = ids

    # -- pre-prepares

    def buffer_future(self, msg: PrePrepare | Prepare | Commit, sender: int) -> bool:
        core = self.core
        if msg.view > core.view or (msg.view == core.view and not core.active):
            if isinstance(msg, PrePrepare) and not self._worth_buffering(msg):
                core.count("rejected_future_pre_prepare")
                return True
            self.future.append((msg, sender))
            core.count("buffered_future")
            return True
        return False

    def _worth_buffering(self, pp: PrePrepare) -> bool:
        """A pre-prepare for a view not entered yet carries a whole batch: kept only if it is
        signed by that view's primary, within the batch bounds, and one of at most
        ``max_ahead`` such (so a faulty peer cannot fill the buffer with batches)."""
        cfg = self.core.cfg
        batch = pp.batch
        if pp.replica != cfg.primary(pp.view) or not verify(pp, self.core.keyring):
            return False
        if batch is not None and (
            len(batch.txs) > cfg.batch_max or batch_bytes(batch.txs) > cfg.batch_max_bytes
        ):
            return False
        held = sum(1 for m, _ in self.future if isinstance(m, PrePrepare))
        return held < cfg.max_ahead

    def on_pre_prepare(self, pp: PrePrepare, now_ms: int, out: list[Action]) -> None:
        core, cfg = self.core, self.core.cfg
        if not core.in_epoch(pp.seq, pp.replica):
            return
        if pp.view != core.view or not core.active:
            if not self.buffer_future(pp, pp.replica):
                core.count("rejected_wrong_view")
            return
        if pp.replica != cfg.primary(pp.view):
            core.count("rejected_not_primary")
            return
        if not core.in_window(pp.seq):
            if not self.hold_above_window(pp):
                core.count("rejected_out_of_window")
            return
        if not verify(pp, core.keyring):
            core.count("rejected_bad_sig")
            return
        if pp.ids is not None:
            pp = self._rebuilt(pp, out)
            if pp.batch is None:
                return  # asked of the primary in full
        batch = pp.batch
        if batch is None or batch.digest() != pp.digest or pp.digest == NULL_DIGEST:
            core.count("rejected_bad_digest")
            return
        slot = self.slots.get(pp.seq)
        if slot is not None and slot.view == pp.view and slot.pp is not None:
            if slot.digest == pp.digest:
                core.count("duplicate_msg")
            else:
                core.count("equivocations_seen")
                core.views.start(core.view + 1, now_ms, out)
            return
        if pp.seq <= core.last_executed:
            core.count("rejected_out_of_window")
            return
        if pp.seq > core.last_executed + cfg.max_ahead:
            # far ahead of what this replica executed: not held (memory), fetched if committed
            core.count("rejected_too_far_ahead")
            return
        if len(batch.txs) > cfg.batch_max or batch_bytes(batch.txs) > cfg.batch_max_bytes:
            core.count("rejected_bad_batch")
            core.views.start(core.view + 1, now_ms, out)
            return
        if batch.timestamp_ms > now_ms + cfg.max_clock_skew_ms:
            core.count("rejected_timestamp")
            core.views.start(core.view + 1, now_ms, out)
            return
        ids: list[str] = []
        unchecked: list[SignedTx] = []
        unchecked_ids: list[str] = []
        verified = core.batcher.verified
        for tx, wire in zip(batch.txs, batch.wires, strict=True):
            tx_id = tx.tx_id
            ids.append(tx_id)
            # Verified already if the same signature is over the same bytes: the id hashes the
            # canonical bytes. (Comparing wire dicts would take ``true`` for ``1``, and so a
            # transaction nobody signed for one that was.)
            if verified.get(wire["sig"]) != tx_id:
                unchecked.append(tx)
                unchecked_ids.append(tx_id)
        if unchecked and not all(core.verify_txs(unchecked, unchecked_ids)):
            # A correctly signed pre-prepare with a forged transaction: the primary is faulty.
            core.count("rejected_bad_batch")
            core.views.start(core.view + 1, now_ms, out)
            return
        core.count("txs_verified", len(batch.txs))
        core.batcher.add_pending(ids, batch)
        core.arm_request_timer(now_ms)
        self.accept(pp.stripped(), batch, tuple(ids), out)

    def _rebuilt(self, pp: PrePrepare, out: list[Action]) -> PrePrepare:
        """A pre-prepare that names its batch by ids, with the batch rebuilt from the requests
        this replica holds (the digest check that follows says whether it is the batch the
        primary signed); if one is missing, the pre-prepare is asked of its sender in full
        and returned without a batch."""
        core = self.core
        assert pp.ids is not None
        pending = core.batcher.pending
        held = [pending.get(tx_id) for tx_id in pp.ids.tx_ids]
        if any(h is None for h in held):
            core.count("pre_prepares_fetched")
            fetch = FetchPrePrepare(pp.view, pp.seq, core.me)
            out.append(Send(pp.replica, sign(fetch, core.signer)))
            return pp.stripped()
        txs = tuple(h[0] for h in held if h is not None)
        wires = tuple(h[1] for h in held if h is not None)
        return replace(pp, batch=Batch(pp.ids.timestamp_ms, txs, wires), ids=None)

    def on_fetch_pre_prepare(self, msg: FetchPrePrepare, out: list[Action]) -> None:
        """A backup lacks transactions this primary's pre-prepare named by id: the pre-prepare
        goes to it in full, once per replica and sequence number."""
        core = self.core
        slot = self.slots.get(msg.seq)
        if (
            slot is None
            or slot.pp is None
            or slot.view != msg.view
            or slot.pp.replica != core.me
            or msg.replica in slot.served
        ):
            core.count("stale_fetch")
            return
        batch = self.batches.get(slot.digest)
        if batch is None or not verify(msg, core.keyring):
            core.count("rejected_bad_sig" if batch is not None else "stale_fetch")
            return
        slot.served.add(msg.replica)
        pp = slot.pp
        full = PrePrepare(pp.view, pp.seq, pp.digest, pp.replica, pp.sig, batch)
        out.append(Send(msg.replica, full))

    def _just_above_window(self, seq: int) -> bool:
        high = self.core.high
        return high < seq <= high + self.core.cfg.log_window

    def hold_above_window(self, pp: PrePrepare) -> bool:
        """A pre-prepare of this view's primary for a sequence number above this replica's
        window by less than a window: the primary moved its window on a checkpoint this replica
        has not collected yet. Kept (at most ``max_ahead``) and taken when the window gets
        there. Dropped, it would be sent no more, and once f+1 replicas lagged so, the slot
        could not prepare until a view change."""
        if (
            not self._just_above_window(pp.seq)
            or pp.seq in self.above_window
            or len(self.above_window) >= self.core.cfg.max_ahead
            or not verify(pp, self.core.keyring)
        ):
            return False
        self.above_window[pp.seq] = pp
        self.core.count("held_above_window")
        return True

    def hold_vote_above_window(self, vote: Prepare | Commit) -> bool:
        """A PREPARE or COMMIT of this view for a sequence number just above the window, held
        like the pre-prepare (see ``hold_above_window``) so that the slot can prepare and
        commit here once the window moves, without fetching the block later. One per voter,
        kind and sequence number; the signature is checked when the vote is taken."""
        key = (vote.seq, 0 if isinstance(vote, Prepare) else 1, vote.replica)
        if (
            not self._just_above_window(vote.seq)
            or key in self.votes_above
            or len(self.votes_above) >= 2 * self.core.cfg.n * self.core.cfg.max_ahead
        ):
            return False
        self.votes_above[key] = vote
        self.core.count("held_above_window")
        return True

    def take_held(self, now_ms: int, out: list[Action]) -> None:
        """The window moved: the pre-prepares, then the votes, held above it that it now
        covers."""
        core = self.core
        for seq in sorted(self.above_window):
            if seq > core.high:
                break
            pp = self.above_window.pop(seq, None)  # (taking one may have moved the window)
            if pp is not None and pp.view == core.view and core.active and seq > core.stable_seq:
                self.on_pre_prepare(pp, now_ms, out)
        for key in sorted(k for k in self.votes_above if k[0] <= core.high):
            vote = self.votes_above.pop(key, None)
            if vote is None or vote.view != core.view or not core.active:
                continue
            if vote.seq <= core.stable_seq:
                continue  # (taking a pre-prepare may have moved the window past it)
            self.on_vote(vote, out)

    def accept(
        self, pp: PrePrepare, batch: Batch | None, ids: tuple[str, ...], out: list[Action]
    ) -> None:
        """Enter ``pp`` (without batch) into the log for the current view; backups prepare.
        ``batch`` is None only for a re-proposal (NEW-VIEW) whose batch this replica does not
        hold: agreement needs only the digest; the block is fetched once committed."""
        core = self.core
        slot = self.slot(pp.seq)
        slot.view, slot.pp, slot.digest = pp.view, pp.stripped(), pp.digest
        slot.prepared = slot.commit_sent = False
        if batch is not None:
            self.keep_batch(pp.digest, batch, ids)
        core.batcher.logged(ids, pp.seq)
        self.journal_pre_prepare(slot, batch)
        if pp.replica != core.me:
            prepare = sign(Prepare(pp.view, pp.seq, pp.digest, core.me), core.signer)
            slot.add_vote(prepare)
            out.append(Broadcast(prepare))
        self._check_prepared(slot, out)

    def journal_pre_prepare(self, slot: Slot, batch: Batch | None) -> None:
        """Keep the pre-prepare ``slot`` accepted, with its batch, in the journal before the
        PREPARE (or, at the primary, the PRE-PREPARE) leaves: see ``Executor``. The prepared
        certificate is written when it forms, on its own, so the batch is written once."""
        assert slot.pp is not None
        parts: dict[str, bytes | None] = {"pp": canonical(slot.pp.to_wire(), checked=False)}
        if batch is not None and slot.pp.digest != NULL_DIGEST:
            parts["batch"] = batch.encoded()
        self.core.ex.save_journal(slot.seq, parts)

    # -- prepares and commits

    def _record_vote(
        self, msg: Prepare | Commit, tables: Callable[[Slot], tuple[VoteIndex, VoteSets]]
    ) -> tuple[Slot, dict[int, Any]] | None:
        """The checks PREPARE and COMMIT share, then the vote entered in the slot's tables
        (``tables`` picks them). Returns the slot and the votes for the message's (view,
        digest), or None if the message was dropped."""
        core = self.core
        if not core.in_epoch(msg.seq, msg.replica):
            return None
        if msg.view != core.view or not core.active:
            if not self.buffer_future(msg, msg.replica):
                core.count("rejected_wrong_view")
            return None
        if not core.in_window(msg.seq):
            if not self.hold_vote_above_window(msg):
                core.count("rejected_out_of_window")
            return None
        slot = self.slot(msg.seq)
        by_voter, by_digest = tables(slot)
        voter = (msg.view, msg.replica)
        earlier = by_voter.get(voter)
        if earlier is not None:
            # one vote per replica, view and sequence number: replays are dropped, and a
            # replica voting for two digests cannot grow the log
            core.count("duplicate_msg" if earlier == msg.digest else "conflicting_votes")
            return None
        if _surplus(slot, msg):
            # The slot already has the quorum this vote would join: nothing it could change,
            # so its signature is not checked (about a third of the votes at n = 31).
            core.count("surplus_votes")
            return None
        if not verify(msg, core.keyring):
            core.count("rejected_bad_sig")
            return None
        by_voter[voter] = msg.digest
        votes = by_digest.setdefault((msg.view, msg.digest), {})
        votes[msg.replica] = msg
        return slot, votes

    def on_vote(self, msg: Prepare | Commit, out: list[Action]) -> None:
        if isinstance(msg, Prepare):
            self.on_prepare(msg, out)
        else:
            self.on_commit(msg, out)

    def on_prepare(self, msg: Prepare, out: list[Action]) -> None:
        core = self.core
        if msg.view == core.view and core.active and msg.replica == core.cfg.primary(msg.view):
            core.count("rejected_not_backup")
            return
        recorded = self._record_vote(msg, lambda slot: (slot.prepare_votes, slot.prepares))
        if recorded is not None:
            self._check_prepared(recorded[0], out)

    def _check_prepared(self, slot: Slot, out: list[Action]) -> None:
        core = self.core
        pp = slot.pp
        if pp is None or slot.prepared or slot.view != core.view:
            return
        votes = slot.prepares.get((pp.view, pp.digest))
        if votes is None or len(votes) < core.cfg.quorum - 1:
            return
        slot.prepared = True
        slot.proof = PreparedProof(pp, tuple(votes.values())[: core.cfg.quorum - 1])
        core.ex.save_journal(slot.seq, {"proof": canonical(slot.proof.to_wire(), checked=False)})
        if not slot.commit_sent:
            slot.commit_sent = True
            commit = sign(Commit(pp.view, pp.seq, pp.digest, core.me), core.signer)
            slot.add_vote(commit)
            out.append(Broadcast(commit))
        self._check_committed(slot, out)

    def on_commit(self, msg: Commit, out: list[Action]) -> None:
        core = self.core
        recorded = self._record_vote(msg, lambda slot: (slot.commit_votes, slot.commits))
        if recorded is None:
            return
        slot, votes = recorded
        if (
            len(votes) >= core.cfg.quorum
            and (msg.digest != slot.digest or msg.digest not in self.batches)
            and msg.seq > core.last_executed
        ):
            # A quorum committed a batch this replica does not hold (an equivocating primary
            # showed it another one, or its pre-prepare was lost): fetch the certified block.
            # (core.now is the time of the event being handled.)
            core.count("fetch_on_commit_quorum")
            core.transfer.start_fetch(msg.seq, list(votes), core.now, out)
        self._check_committed(slot, out)

    def _check_committed(self, slot: Slot, out: list[Action]) -> None:
        if slot.committed or not slot.prepared or slot.pp is None:
            return
        key = (slot.pp.view, slot.digest)
        votes = slot.commits.get(key)
        if votes is None or len(votes) < self.core.cfg.quorum:
            return
        slot.committed = True
        slot.cert = Certificate(
            key[0], slot.seq, slot.digest, tuple((r, c.sig) for r, c in votes.items())
        )
        self.core.execute_ready(out)

    # -- leaving the log

    def prune(self, seq: int) -> None:
        """A checkpoint at ``seq`` is stable: the slots up to it and the batches no slot or
        prepared certificate names any more are dropped."""
        batcher = self.core.batcher
        for s in [s for s in self.slots if s <= seq]:
            slot = self.slots.pop(s)
            if slot.digest and slot.digest != NULL_DIGEST:
                batcher.unlogged(self.batch_ids.get(slot.digest, ()), s)
        live = {slot.digest for slot in self.slots.values()}
        live.update(slot.proof.pre_prepare.digest for slot in self.slots.values() if slot.proof)
        live.add(NULL_DIGEST)
        for d in [d for d in self.batches if d not in live]:
            del self.batches[d]
            self.batch_ids.pop(d, None)

    def discard(self, seq: int) -> None:
        """A new view does not re-propose what this slot accepted: its requests wait for a batch
        again; a prepared certificate is kept for later view changes."""
        slot = self.slots.pop(seq, None)
        if slot is None:
            return
        save = self.core.ex.save_journal
        if not slot.digest:  # votes only, or a certificate kept from an earlier view: gone
            if slot.proof is not None:
                save(seq, {"pp": None, "batch": None, "proof": None})
            return
        self.core.batcher.unlogged(self.batch_ids.get(slot.digest, ()), seq)
        if slot.proof is not None:
            fresh = self.slot(seq)
            fresh.proof = slot.proof
            save(seq, {"pp": None})  # the proof's batch stays with it
        else:
            save(seq, {"pp": None, "batch": None, "proof": None})

    def replay_future(self, out: list[Action], now_ms: int) -> None:
        """A view was entered: the messages buffered for it are taken now."""
        view = self.core.view
        keep: Future = deque(maxlen=FUTURE_BUFFER)
        ready = []
        for msg, sender in self.future:
            if msg.view == view:
                ready.append(msg)
            elif msg.view > view:
                keep.append((msg, sender))
        self.future = keep
        for msg in ready:
            if isinstance(msg, PrePrepare):
                self.on_pre_prepare(msg, now_ms, out)
            else:
                self.on_vote(msg, out)


def _surplus(slot: Slot, msg: Prepare | Commit) -> bool:
    """A vote for what the slot has already reached in that view: a PREPARE once the slot is
    prepared, a COMMIT once it is committed, for the same view and digest."""
    pp = slot.pp
    if pp is None or msg.view != pp.view or msg.digest != slot.digest:
        return False
    return slot.committed if isinstance(msg, Commit) else slot.prepared
