"""View change: replacing a primary that does not get requests executed.

``ViewChanges`` owns the view-change timer (``viewtimer.ViewTimer``), the latest VIEW-CHANGE of
each replica with the batches it attached, and the NEW-VIEW this replica entered its view with
(relayed to replicas left behind). Its methods append the actions they cause to ``out``.
Entering a view rebuilds the message log from the NEW-VIEW's pre-prepares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from ledger.pbft.actions import Action, Broadcast, Send
from ledger.pbft.block import NULL_BATCH, NULL_DIGEST, Batch, batch_bytes
from ledger.pbft.epochs import NextEpochViews
from ledger.pbft.messages import (
    NewView,
    PrePrepare,
    Status,
    ViewChange,
    ViewChangeRef,
    sign,
    verify,
)
from ledger.pbft.viewtimer import ViewTimer
from ledger.pbft.wire import WireError

if TYPE_CHECKING:
    from ledger.pbft.replica import Replica

# Batches attached to one VIEW-CHANGE or NEW-VIEW at most (bytes as block.batch_bytes counts):
# with the batch bound, the message stays well inside a frame.
VC_ATTACH_BYTES = 4 * 1024 * 1024


def compute_o(
    vcs: tuple[ViewChange, ...], floor: int = 0
) -> tuple[int, list[tuple[int, bytes]]]:
    """(min-s, [(seq, digest)]) of the paper's NEW-VIEW computation. ``floor``: where the
    epoch begins (every replica in it has executed that far; nothing at or below it is
    proposed again, see epochs.py)."""
    min_s = max(floor, *(vc.stable_seq for vc in vcs))
    best: dict[int, tuple[int, bytes]] = {}
    for vc in vcs:
        for proof in vc.prepared:
            pp = proof.pre_prepare
            if pp.seq > min_s and (pp.seq not in best or pp.view > best[pp.seq][0]):
                best[pp.seq] = (pp.view, pp.digest)
    max_s = max(best, default=min_s)
    entries = [(n, best[n][1] if n in best else NULL_DIGEST) for n in range(min_s + 1, max_s + 1)]
    return min_s, entries


class ViewChanges:
    def __init__(self, core: Replica) -> None:
        self.core = core
        self.timer = ViewTimer(core)
        self.by_replica: dict[int, ViewChange] = {}
        self.digests: dict[int, bytes] = {}  # ViewChange.digest of each by_replica entry
        self.batches: dict[int, dict[bytes, Batch]] = {}  # per sender, its latest VIEW-CHANGE
        # digests of view-changes whose every signature this replica checked (see valid)
        self.fully_checked: set[bytes] = set()
        # a NEW-VIEW (signature checked) naming view-changes this replica does not hold yet
        self.pending: NewView | None = None
        self.pending_view, self.pending_at = -1, 0  # its view, and since when (ms)
        self.heard: set[int] = set()  # replicas whose VIEW-CHANGE for this view arrived
        self.hinted_view = -1  # the view whose primary the IO layer last reported unreachable
        self.new_view_msg: NewView | None = None  # with its view-changes attached
        self.nv_sent_at: dict[int, int] = {}
        self.resend = False  # restored while changing views: send the VIEW-CHANGE again
        self.early = NextEpochViews()  # the next epoch's, held until this replica switches

    def take_early(self, now_ms: int, out: list[Action]) -> None:
        """This replica switched: the held messages of its new epoch are taken now."""
        for msg in self.early.take(self.core.epoch.number):
            if isinstance(msg, NewView):
                self.on_new_view(msg, now_ms, out)
            else:
                self.on_view_change(msg, now_ms, out)

    def new_epoch(self) -> None:
        """A new epoch began: view-changes and the NEW-VIEW of the old one are another set's."""
        self.by_replica.clear()
        self.digests.clear()
        self.batches.clear()
        self.fully_checked.clear()
        self.pending = None
        self.heard.clear()
        self.new_view_msg = None
        self.nv_sent_at.clear()

    def primary_unreachable(self, now_ms: int) -> None:
        """The IO layer lost its connection to this view's primary (refused or reset, for a
        while): while requests wait, the timer fires now rather than at its deadline, once per
        view. A hint only: it brings forward what the timer would do, so safety is untouched;
        where the transport cannot tell (a host gone without closing its connections), the
        timer decides as before."""
        core = self.core
        if core.is_primary or self.timer.deadline is None or self.timer.deadline <= now_ms:
            return
        if self.hinted_view == core.view:
            return
        self.hinted_view = core.view
        core.count("primary_unreachable")
        self.timer.deadline = now_ms

    def start(self, new_view: int, now_ms: int, out: list[Action]) -> None:
        core = self.core
        if not core.is_member:
            return  # a joining or removed replica has no say in views
        if new_view <= core.view and not (new_view == core.view and core.active):
            return
        if new_view == core.view:
            return
        core.count("view_changes")
        core.view = new_view
        core.active = False
        core.ex.save_view(new_view, False)
        self.send(now_ms, out)

    def send(self, now_ms: int, out: list[Action]) -> None:
        """Sign and send this replica's VIEW-CHANGE for ``core.view`` (being changed to)."""
        core = self.core
        new_view = core.view
        self.new_view_msg = None
        core.batcher.deadline = None
        stable_seq = core.stable_seq
        since = max(stable_seq, core.epoch.start)  # an earlier epoch's slots are executed
        prepared = tuple(
            slot.proof
            for seq, slot in sorted(core.log.slots.items())
            if seq > since and slot.proof is not None
        )
        # Attach only batches not executed here: executed ones are in this replica's store
        # (and others'), so a view change stays small even with a full window of batches.
        batches: dict[bytes, Batch] = {}
        budget = VC_ATTACH_BYTES
        for p in prepared:  # lowest sequence numbers first, within a byte budget
            digest = p.pre_prepare.digest
            batch = core.log.batches.get(digest)
            if p.pre_prepare.seq <= core.last_executed or digest == NULL_DIGEST or batch is None:
                continue
            budget -= batch_bytes(batch.txs)
            if budget < 0:
                # the rest the new primary holds itself (it saw those pre-prepares) or fetches
                core.count("view_change_batches_left_out")
                break
            batches[digest] = batch
        proof = core.checkpoints.stable_proof
        epoch = core.epoch.number
        vc = ViewChange(new_view, stable_seq, proof, prepared, core.me, epoch=epoch)
        vc = sign(vc, core.signer)
        vc = replace(vc, batches=batches)
        self.by_replica[core.me] = vc
        self.digests[core.me] = vc.digest()
        self.batches[core.me] = batches
        if self.pending is not None and self.pending.view < new_view:
            self.pending = None
        self._send_view_change(vc, out)
        self.timer.back_off(now_ms)
        if core.is_primary:
            self.try_new_view(now_ms, out)

    def on_timeout(self, now_ms: int, out: list[Action]) -> None:
        core = self.core
        if core.active:
            if core.transfer.catching_up():
                # Behind, not stalled: the others are executing; catch up instead.
                self.timer.deadline = now_ms + self.timer.timeout
                return
            self.start(core.view + 1, now_ms, out)
            return
        # Waiting for NEW-VIEW. Give up on this view only if a quorum is in it (its primary is
        # then to blame); alone, stay and re-send, so an isolated replica does not run ahead
        # through views the others will never reach.
        joined = sum(1 for vc in self.by_replica.values() if vc.view >= core.view)
        if joined >= core.cfg.quorum:
            self.start(core.view + 1, now_ms, out)
            return
        mine = self.by_replica.get(core.me)
        if mine is not None:
            self._send_view_change(mine, out)
        self.timer.back_off(now_ms)

    def _send_view_change(self, vc: ViewChange, out: list[Action]) -> None:
        """The batches a VIEW-CHANGE attaches go to the new view's primary only, the one that
        builds the NEW-VIEW from them; the others get it without (same signature: the
        attachments are outside the signed header). Broadcast to every replica they cost a
        thin link n-1 times a window of batches per replica and view change."""
        core = self.core
        if not vc.batches:
            out.append(Broadcast(vc))
            return
        primary = core.cfg.primary(vc.view)
        stripped = vc.stripped()
        for r in core.peers():
            out.append(Send(r, vc if r == primary else stripped))

    def valid(self, vc: ViewChange, *, full: bool = False) -> bool:
        """The view-change's signature and its proofs. A claim this replica holds a checked
        certificate of its own for (its stable checkpoint; a prepared certificate for the same
        view, sequence number and digest) is taken without checking the proof's signatures,
        unless ``full``: a true claim is as good as a proven one, and this is most of a
        view-change after a primary crash (at n = 31, 20 signatures per prepared slot).
        Only the epoch's members' view-changes, for its sequence numbers (epochs.py)."""
        core = self.core
        cfg, keyring = core.cfg, core.keyring
        if vc.epoch != core.epoch.number or vc.replica not in core.members:
            return False
        if not verify(vc, keyring):
            return False
        if vc.stable_seq % cfg.checkpoint_interval:
            return False
        if vc.stable_seq > 0:
            if not vc.checkpoint_proof or any(
                cp.seq != vc.stable_seq or cp.digest != vc.checkpoint_proof[0].digest
                for cp in vc.checkpoint_proof
            ):
                return False
            known = (
                not full
                and vc.stable_seq == core.stable_seq
                and vc.checkpoint_proof[0].digest == core.checkpoints.stable_digest
            )
            signed_by = core.epoch_of(vc.stable_seq)  # an earlier epoch's set may have signed it
            signers = set()
            for cp in vc.checkpoint_proof:
                if (
                    cp.replica not in signers
                    and cp.replica in signed_by.members
                    and (known or verify(cp, signed_by.keyring))
                ):
                    signers.add(cp.replica)
            if len(signers) < signed_by.config.quorum:
                return False
        seen: set[int] = set()
        for proof in vc.prepared:
            pp = proof.pre_prepare
            if (
                pp.seq in seen
                or pp.seq <= core.epoch.start
                or not vc.stable_seq < pp.seq <= vc.stable_seq + cfg.log_window
                or pp.view >= vc.view
                or pp.replica != cfg.primary(pp.view)
            ):
                return False
            seen.add(pp.seq)
            known = not full and self._known_prepared(pp)
            if not known and not verify(pp, keyring):
                return False
            backers = set()
            for p in proof.prepares:
                if (
                    p.view == pp.view
                    and p.seq == pp.seq
                    and p.digest == pp.digest
                    and p.replica != pp.replica
                    and p.replica not in backers
                    and (known or verify(p, keyring))
                ):
                    backers.add(p.replica)
            if len(backers) < cfg.quorum - 1:
                return False
        return True

    def _known_prepared(self, pp: PrePrepare) -> bool:
        """This replica holds a prepared certificate (checked when it formed) for the same
        view, sequence number and digest as ``pp``."""
        slot = self.core.log.slots.get(pp.seq)
        mine = slot.proof.pre_prepare if slot is not None and slot.proof is not None else None
        return mine is not None and mine.view == pp.view and mine.digest == pp.digest

    def _fully_valid(self, vc: ViewChange) -> bool:
        """Every signature of ``vc`` checked (the primary puts in a NEW-VIEW only such, so
        that a replica without this one's knowledge accepts it too); one that fails is
        forgotten."""
        digest = self.digests.get(vc.replica)
        if vc.replica == self.core.me or digest in self.fully_checked:
            return True
        if self.valid(vc, full=True):
            if digest is not None:
                self.fully_checked.add(digest)
            return True
        self.core.count("rejected_bad_view_change")
        self.by_replica.pop(vc.replica, None)
        self.digests.pop(vc.replica, None)
        self.batches.pop(vc.replica, None)
        return False

    def _of_this_set(self, msg: ViewChange | NewView) -> bool:
        """Whether ``msg`` belongs to this replica's set and epoch. Another set's is dropped
        (the replica behind catches up by state transfer); the next epoch's is held until
        this replica switches."""
        core = self.core
        if msg.epoch == core.epoch.number and core.is_member:
            return True
        kept = self.early.hold(msg, core.epoch.number, core.peer_set)
        core.count("held_next_epoch" if kept else "rejected_other_epoch")
        return False

    def _settled(self, view: int) -> bool:
        """Whether ``view`` is behind this replica's, or is its view and already entered."""
        core = self.core
        return view < core.view or (view == core.view and core.active)

    def on_view_change(self, vc: ViewChange, now_ms: int, out: list[Action]) -> None:
        core = self.core
        if not self._of_this_set(vc):
            return
        if self._settled(vc.view):
            self._answer_late(vc, now_ms, out)
            return
        known = self.by_replica.get(vc.replica)
        if known is not None and known.view >= vc.view:
            core.count("duplicate_msg")
            return
        if not self.valid(vc):
            core.count("rejected_bad_view_change")
            return
        self.by_replica[vc.replica] = vc
        self.digests[vc.replica] = vc.digest()
        # Kept: the sender's latest view-change only, and only batches its prepared proofs name
        # (a faulty replica sending view-changes for ever higher views holds no more memory).
        named = {p.pre_prepare.digest for p in vc.prepared}
        self.batches[vc.replica] = {d: b for d, b in vc.batches.items() if d in named}
        # Liveness: f+1 replicas want a higher view, so at least one correct one does: join.
        higher = sorted(v.view for r, v in self.by_replica.items() if v.view > core.view)
        if len(higher) >= core.cfg.weak:
            self.start(higher[0], now_ms, out)
        if vc.view == core.view and not core.active and core.is_primary:
            self.try_new_view(now_ms, out)
        pending = self.pending
        if pending is not None and vc.view == pending.view:
            self.pending = None
            self.on_new_view(pending, now_ms, out)  # (held again if still incomplete)

    def _answer_late(self, vc: ViewChange, now_ms: int, out: list[Action]) -> None:
        """A view-change for a view this replica has settled: its sender missed the NEW-VIEW."""
        self.core.count("stale_view_change")
        if vc.view < self.core.view or vc.replica in self.heard:
            self.send_new_view_to(vc.replica, now_ms, out)
        else:
            # The first view-change for this view from it, arriving after the NEW-VIEW
            # was entered: the NEW-VIEW (broadcast) is on its way to it. A second one asks
            # for it (ask_full, or a timeout) and gets it with its view-changes.
            self.heard.add(vc.replica)

    def send_new_view_to(self, replica: int, now_ms: int, out: list[Action]) -> None:
        core = self.core
        nv = self.new_view_msg
        if nv is None or not core.active or replica == core.me:
            return
        last = self.nv_sent_at.get(replica)
        if last is not None and now_ms - last < core.cfg.status_interval_ms:
            return
        self.nv_sent_at[replica] = now_ms
        out.append(Send(replica, nv))

    def _batch_for(self, seq: int, digest: bytes, extra: Mapping[bytes, Batch]) -> Batch | None:
        core = self.core
        batch = extra.get(digest) or core.log.batches.get(digest)
        if batch is None:
            batch = next((b[digest] for b in self.batches.values() if digest in b), None)
        if batch is None and seq <= core.last_executed:
            stored = core.ex.blocks_from(seq, 1)
            if stored and stored[0].batch_digest() == digest:
                block = stored[0]
                try:
                    batch = Batch.from_wire({"ts": block.timestamp_ms, "txs": list(block.txs)})
                except WireError:
                    return None
                core.log.batch_ids.setdefault(digest, block.ids())
        return batch

    def try_new_view(self, now_ms: int, out: list[Action]) -> None:
        core = self.core
        candidates = sorted(
            (vc for vc in self.by_replica.values() if vc.view == core.view),
            key=lambda vc: (vc.replica != core.me, vc.replica),
        )
        if len(candidates) < core.cfg.quorum:
            return
        # V: my own view-change and the lowest-numbered others, a quorum in all, each with
        # every signature checked.
        chosen: list[ViewChange] = []
        for vc in candidates:
            if self._fully_valid(vc):
                chosen.append(vc)
                if len(chosen) == core.cfg.quorum:
                    break
        if len(chosen) < core.cfg.quorum:
            return
        vcs = tuple(chosen)
        min_s, entries = compute_o(vcs, core.epoch.start)
        if self.core.transfer.behind_new_view(entries, [vc.replica for vc in vcs], now_ms, out):
            return
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
                if seq > core.last_executed and budget >= batch_bytes(batch.txs):
                    # executed ones can be fetched from any store; past the budget a backup
                    # agrees on the digest and fetches the block once committed
                    budget -= batch_bytes(batch.txs)
                    attach[digest] = batch
        if missing:
            # Every replica that prepared these has executed them (or it would have attached
            # them): catch up first, then build the NEW-VIEW (retried when blocks arrive).
            core.count("new_view_missing_batch")
            core.transfer.start_fetch(max(missing), [vc.replica for vc in vcs], now_ms, out)
            return
        pps = tuple(sign(PrePrepare(core.view, n, d, core.me), core.signer) for n, d in entries)
        refs = tuple(ViewChangeRef(vc.replica, self.digests[vc.replica]) for vc in vcs)
        nv = sign(NewView(core.view, refs, pps, core.me, epoch=core.epoch.number), core.signer)
        # Sent without attachments: every replica received the view-changes (broadcast) and
        # holds most batches (the pre-prepares); one that lacks a view-change asks for the
        # NEW-VIEW with them (ask_full), one that lacks a batch agrees on its digest and
        # fetches the block once committed. In full, at n = 31, this was 21 view-changes
        # with a window of prepared certificates each: about 1 MB, 8 s at 1 Mbit/s.
        out.append(Broadcast(nv))
        full = NewView(
            nv.view, refs, pps, core.me, nv.sig, tuple(vc.stripped() for vc in vcs), attach,
            epoch=nv.epoch,
        )  # fmt: skip
        self._enter(full, vcs, min_s, batches, now_ms, out)

    def on_new_view(self, nv: NewView, now_ms: int, out: list[Action]) -> None:
        core = self.core
        if not self._of_this_set(nv):
            return
        if self._settled(nv.view):
            core.count("stale_new_view")
            return
        if nv.replica != core.cfg.primary(nv.view):
            core.count("rejected_not_primary")
            return
        if not verify(nv, core.keyring):
            core.count("rejected_bad_sig")
            return
        signers = {ref.replica for ref in nv.refs}
        if len(signers) != len(nv.refs) or len(signers) < core.cfg.quorum:
            core.count("rejected_bad_new_view")
            return
        attached = {vc.replica: vc for vc in nv.view_changes}
        if len(attached) != len(nv.view_changes) or not attached.keys() <= signers:
            core.count("rejected_bad_new_view")
            return
        vcs: list[ViewChange] = []
        missing = False
        for ref in nv.refs:
            held = self.by_replica.get(ref.replica)
            if held is not None and self.digests.get(ref.replica) == ref.digest:
                vcs.append(held)  # checked when it arrived
                continue
            vc = attached.get(ref.replica)
            if vc is None:
                missing = True
                continue
            if vc.digest() != ref.digest or vc.view != nv.view or not self.valid(vc):
                core.count("rejected_bad_new_view")
                return
            vcs.append(vc)
        if missing:
            # A view-change not here yet: most often still on its way (the NEW-VIEW is small,
            # a view-change is not), so the NEW-VIEW is held and taken when the view-changes
            # come; if they have not by the next status tick, the NEW-VIEW with its
            # view-changes is asked of the primary (ask_full). Asked at once, at n = 31, 27
            # backups each drew a 1 MB NEW-VIEW through their 1 Mbit/s link.
            if self.pending_view != nv.view:
                core.count("new_view_incomplete")
                self.pending_view, self.pending_at = nv.view, now_ms
            self.pending = nv
            return
        for vc in vcs:
            if vc.view != nv.view:
                core.count("rejected_bad_new_view")
                return
        view_changes = tuple(vcs)
        min_s, entries = compute_o(view_changes, core.epoch.start)
        if [(pp.seq, pp.digest) for pp in nv.pre_prepares] != entries or any(
            pp.view != nv.view or pp.replica != nv.replica or not verify(pp, core.keyring)
            for pp in nv.pre_prepares
        ):
            core.count("rejected_bad_new_view")
            return
        peers = [vc.replica for vc in view_changes]
        if core.transfer.behind_new_view(entries, peers, now_ms, out):
            return  # peers send the NEW-VIEW again once this replica's status is past it
        batches: dict[bytes, Batch] = {}
        for seq, digest in entries:
            if digest != NULL_DIGEST:
                batch = self._batch_for(seq, digest, nv.batches)
                if batch is not None:
                    batches[digest] = batch
        full = NewView(
            nv.view,
            nv.refs,
            nv.pre_prepares,
            nv.replica,
            nv.sig,
            tuple(vc.stripped() for vc in view_changes),
            nv.batches,
            epoch=nv.epoch,
        )
        self._enter(full, view_changes, min_s, batches, now_ms, out)

    def ask_full(self, now_ms: int, out: list[Action]) -> None:
        """At a status tick, once the held NEW-VIEW has waited half a status period for its
        view-changes, ask its primary for it with them: a replica in that view sends its own
        VIEW-CHANGE again (the primary answers a second one for its current view with the
        NEW-VIEW), one in a lower view its status (answered alike)."""
        core, nv = self.core, self.pending
        if nv is None or now_ms - self.pending_at < core.cfg.status_interval_ms // 2:
            return
        mine = self.by_replica.get(core.me)
        if core.view == nv.view and mine is not None and mine.view == nv.view:
            out.append(Send(nv.replica, mine.stripped()))
        else:
            status = Status(
                core.view, core.last_executed, core.stable_seq, core.me, epoch=core.epoch.number
            )
            out.append(Send(nv.replica, sign(status, core.signer)))

    def _enter(
        self,
        nv: NewView,
        vcs: tuple[ViewChange, ...],
        min_s: int,
        batches: Mapping[bytes, Batch],
        now_ms: int,
        out: list[Action],
    ) -> None:
        core, log = self.core, self.core.log
        core.count("new_views")
        core.view = nv.view
        core.active = True
        log.above_window.clear()  # the old view's
        log.votes_above.clear()
        core.ex.save_view(nv.view, True)
        self.new_view_msg = nv  # relayed as is to replicas left behind (bounded attachments)
        self.timer.deadline = None
        self.heard = {r for r, vc in self.by_replica.items() if vc.view == nv.view}
        self.by_replica = {r: vc for r, vc in self.by_replica.items() if vc.view > nv.view}
        self.digests = {r: d for r, d in self.digests.items() if r in self.by_replica}
        self.batches = {r: b for r, b in self.batches.items() if r in self.by_replica}
        self.fully_checked = {d for d in self.fully_checked if d in self.digests.values()}
        self.pending = None
        source = next((vc for vc in vcs if vc.stable_seq == min_s), None)
        if min_s > core.stable_seq and source is not None:
            core.checkpoints.stabilize(
                min_s, source.checkpoint_proof[0].digest, source.checkpoint_proof
            )
            if min_s > core.last_executed:
                peers = [vc.replica for vc in vcs if vc.stable_seq == min_s]
                core.transfer.start_fetch(min_s, peers, now_ms, out)
        o_seqs = {pp.seq for pp in nv.pre_prepares}
        for seq in [s for s in log.slots if s > min_s and s not in o_seqs]:
            log.discard(seq)
        max_s = max(o_seqs, default=min_s)
        core.next_seq = max(max_s, core.stable_seq, core.last_executed) + 1
        for pp in nv.pre_prepares:
            slot = log.slots.get(pp.seq)
            if slot is not None and slot.pp is not None and slot.digest != pp.digest:
                log.discard(pp.seq)
                slot = None
            batch = NULL_BATCH if pp.digest == NULL_DIGEST else batches.get(pp.digest)
            ids: tuple[str, ...] = ()
            if batch is not None:
                known = log.batch_ids.get(pp.digest)
                ids = known if known is not None else tuple(tx.tx_id for tx in batch.txs)
                if pp.seq > core.last_executed:
                    core.batcher.add_pending(ids, batch)
            keep = log.slots.get(pp.seq)
            committed = keep.committed if keep else False
            cert = keep.cert if keep else None
            log.accept(pp, batch, ids, out)
            if committed:
                fresh = log.slots[pp.seq]
                fresh.committed, fresh.cert = True, cert
        # Requests not yet ordered: the new primary batches them, backups relay them to it.
        core.batcher.new_view(now_ms, out)
        self.timer.deadline = None
        core.arm_request_timer(now_ms)
        log.replay_future(out, now_ms)
        core.execute_ready(out)
