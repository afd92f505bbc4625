"""Status gossip and state transfer: noticing this replica is behind, and catching up.

``StateTransfer`` owns what the peers last reported (view and height), the status timer, the
fetch in progress (target height, the peer asked, its deadline and retries) and when each peer
was last served a page of blocks. Fetched blocks are checked (certificate, hash chain) and
executed in order. Its methods append the actions they cause to ``out``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger.pbft.actions import Action, Broadcast, Send
from ledger.pbft.messages import Blocks, FetchBlocks, Status, sign, verify

if TYPE_CHECKING:
    from ledger.pbft.replica import Replica

FETCH_REPEAT_MS = 100  # a state-transfer page is served at most once per peer in this time


class StateTransfer:
    def __init__(self, core: Replica, now_ms: int) -> None:
        self.core = core
        self.peer_view: dict[int, int] = {}
        self.peer_exec: dict[int, int] = {}
        self.behind_target: int | None = None
        self.next_status = now_ms + core.cfg.status_interval_ms
        self.target = 0
        self.peer = -1
        self.deadline: int | None = None
        self.retries = 0
        self.served: dict[int, tuple[int, int]] = {}  # replica -> (from_seq, at ms)

    def new_epoch(self) -> None:
        """Forget what replicas outside the new peer set reported."""
        peers = self.core.peer_set
        for table in (self.peer_view, self.peer_exec):
            for r in [r for r in table if r not in peers]:
                del table[r]

    def catching_up(self) -> bool:
        """A fetch is under way for blocks beyond what this replica executed."""
        return self.deadline is not None and self.target > self.core.last_executed

    def progress(self) -> None:
        """Blocks were executed: a fetch they complete is over."""
        if self.target <= self.core.last_executed:
            self.deadline = None

    def tick(self, now_ms: int, out: list[Action]) -> None:
        if self.deadline is not None and now_ms >= self.deadline:
            self.retries += 1
            if self.retries > 2 * max(1, len(self.core.peer_set)):
                # nobody has it: give up until told again
                self.target, self.deadline, self.retries = 0, None, 0
            else:
                self._send_fetch(now_ms, out, rotate=True)
        if now_ms >= self.next_status:
            self.next_status = now_ms + self.core.cfg.status_interval_ms
            self._status_tick(now_ms, out)

    def _target_of(self, f: int) -> int:
        """The height f+1 peers have reached (0 if fewer reported)."""
        ahead = sorted(self.peer_exec.values(), reverse=True)
        return ahead[f] if len(ahead) > f else 0

    def _status_tick(self, now_ms: int, out: list[Action]) -> None:
        core, cfg = self.core, self.core.cfg
        epoch = core.epoch.number
        status = Status(core.view, core.last_executed, core.stable_seq, core.me, epoch=epoch)
        out.append(Broadcast(sign(status, core.signer)))
        # Re-send my newest checkpoint that is not stable yet: a lost checkpoint must not stall
        # the window (the primary stops at the high watermark until one becomes stable).
        own = core.checkpoints.newest_unstable_own()
        if own is not None:
            out.append(Broadcast(own))
        target = self._target_of(cfg.f)
        if self.behind_target is not None and core.last_executed < self.behind_target:
            peers = [r for r, e in self.peer_exec.items() if e >= self.behind_target]
            self.start_fetch(self.behind_target, peers, now_ms, out)
        self.behind_target = target if target > core.last_executed else None
        core.views.ask_full(now_ms, out)  # a NEW-VIEW still held for a view-change
        views = sorted(self.peer_view.values(), reverse=True)
        if len(views) > cfg.f:
            w = views[cfg.f]
            if w > core.view or (
                w == core.view
                and not core.active
                and core.views.new_view_msg is None
                and core.views.timer.deadline is None
            ):
                core.count("behind_in_view")
                core.views.start(w, now_ms, out)
        core.rearm(now_ms)

    def on_status(self, msg: Status, now_ms: int, out: list[Action]) -> None:
        core, cfg = self.core, self.core.cfg
        if not verify(msg, core.peer_keyring):
            core.count("rejected_bad_sig")
            return
        self.peer_exec[msg.replica] = msg.last_executed
        target = self._target_of(cfg.f)
        if len(self.peer_exec) > cfg.f and target > core.last_executed + cfg.log_window:
            # f+1 replicas are beyond my whole window: the normal case cannot catch me up.
            peers = [r for r, e in self.peer_exec.items() if e >= target]
            self.start_fetch(target, peers, now_ms, out)
        if msg.epoch != core.epoch.number:
            # another epoch's view says nothing about this one's: the one behind catches up
            # by state transfer, switches, and then follows the views of its new set
            self.peer_view.pop(msg.replica, None)
            return
        self.peer_view[msg.replica] = msg.view
        if msg.view < core.view:
            core.views.send_new_view_to(msg.replica, now_ms, out)

    def behind_new_view(
        self, entries: list[tuple[int, bytes]], peers: list[int], now_ms: int, out: list[Action]
    ) -> bool:
        """A NEW-VIEW proposing sequence numbers more than ``max_ahead`` past what this replica
        executed is not entered (nor made): it catches up first. So a correct replica votes
        only for sequence numbers within ``max_ahead`` of its own execution, in a new view as
        in the normal case, which is what makes a reconfiguration's switch point safe
        (epochs.py, README "Reconfiguration")."""
        core = self.core
        if not entries or entries[-1][0] <= core.last_executed + core.cfg.max_ahead:
            return False
        core.count("new_view_too_far_ahead")
        self.start_fetch(entries[-1][0] - core.cfg.max_ahead, peers, now_ms, out)
        return True

    def start_fetch(self, target: int, peers: list[int], now_ms: int, out: list[Action]) -> None:
        core = self.core
        peers = [p for p in peers if p != core.me]
        if target <= core.last_executed or not peers:
            return
        if target <= self.target and self.deadline is not None:
            return
        self.target = max(self.target, target)
        if self.peer not in peers:
            self.peer = peers[(core.last_executed + now_ms) % len(peers)]
        core.count("fetches")
        self._send_fetch(now_ms, out, rotate=False)

    def _send_fetch(self, now_ms: int, out: list[Action], *, rotate: bool) -> None:
        core = self.core
        if core.last_executed >= self.target:
            self.deadline = None
            return
        peers = sorted(core.peer_set)
        if not peers:
            self.deadline = None
            return
        if rotate or self.peer not in core.peer_set:
            self.peer = next((p for p in peers if p > self.peer), peers[0])
        msg = sign(FetchBlocks(core.last_executed + 1, core.me), core.signer)
        out.append(Send(self.peer, msg))
        self.deadline = now_ms + core.cfg.view_change_timeout_ms

    def on_fetch(self, msg: FetchBlocks, out: list[Action]) -> None:
        core = self.core
        if not verify(msg, core.peer_keyring):
            core.count("rejected_bad_sig")
            return
        last = self.served.get(msg.replica)
        if last is not None and last[0] == msg.from_seq and core.now - last[1] < FETCH_REPEAT_MS:
            core.count("duplicate_msg")  # the same page asked again at once: not re-sent
            return
        self.served[msg.replica] = (msg.from_seq, core.now)
        proof = core.checkpoints.stable_proof
        if msg.from_seq == 0 or msg.from_seq > core.last_executed:
            out.append(Send(msg.replica, Blocks((), core.me, proof)))
            return
        blocks = tuple(core.ex.blocks_from(msg.from_seq, core.cfg.fetch_limit))
        core.count("blocks_served", len(blocks))
        out.append(Send(msg.replica, Blocks(blocks, core.me, proof)))

    def on_blocks(self, msg: Blocks, now_ms: int, out: list[Action]) -> None:
        core, log = self.core, self.core.log
        applied = 0
        for block in msg.blocks:
            if block.height <= core.last_executed:
                continue
            cert = block.certificate
            digest = block.batch_digest()
            # certified by the set of the epoch that ordered it: executing in order, this
            # replica knows every reconfiguration executed before it (epochs.py)
            epoch = core.epoch_of(block.height)
            if (
                block.height != core.last_executed + 1
                or cert is None
                or cert.seq != block.height
                or cert.digest != digest
                or block.prev_hash != core.last_hash
                or not cert.verify(epoch.keyring, epoch.config.quorum)
            ):
                core.count("rejected_bad_block")
                break
            if digest not in log.batch_ids:
                log.batch_ids[digest] = block.ids()
            slot = log.slots.get(block.height)
            if slot is not None and slot.digest and slot.digest != digest:
                core.count("equivocations_seen")
            core.execute_block(block, digest, out)
            applied += 1
        core.count("blocks_fetched", applied)
        core.checkpoints.adopt_proof(msg.proof, now_ms, out)
        if applied:
            core.next_seq = max(core.next_seq, core.last_executed + 1)
            core.after_progress(out)
            core.execute_ready(out)
            if not core.active and core.is_primary:
                core.views.try_new_view(now_ms, out)  # it may have waited for these blocks
        if core.last_executed >= self.target:
            self.target = core.last_executed
            self.deadline = None
            self.retries = 0
        elif applied:
            self.retries = 0
            self._send_fetch(now_ms, out, rotate=False)  # next page from the same peer
        # else: nothing usable; the fetch deadline retries with another peer
        core.rearm(now_ms)
