"""Checkpoints: what replicas agree on every K blocks, and the stable checkpoint (low watermark).

``Checkpoints`` owns the CHECKPOINT messages collected per sequence number (a few per replica),
the stable checkpoint (sequence number, digest and the quorum of signed checkpoints proving it)
and when its proof was last shown to each replica. Its methods append the actions they cause to
``out``; a checkpoint becoming stable prunes the message log and opens the window.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from ledger.encoding import canonical
from ledger.pbft.actions import Action, Broadcast, Send
from ledger.pbft.messages import Blocks, Checkpoint, sign, verify

if TYPE_CHECKING:
    from ledger.pbft.replica import Replica

CHECKPOINT_DOMAIN = b"wattmesh/pbft/checkpoint/v1\x00"
CHECKPOINTS_PER_REPLICA = 8  # kept per peer at most (bounded memory under a flooding replica)


def checkpoint_digest(seq: int, block_hash: bytes, state_digest: bytes) -> bytes:
    """What replicas agree on at a checkpoint: the chain head and the contract state."""
    body = {"block": block_hash.hex(), "n": seq, "state": state_digest.hex()}
    return hashlib.sha256(CHECKPOINT_DOMAIN + canonical(body, checked=False)).digest()


class Checkpoints:
    def __init__(self, core: Replica) -> None:
        self.core = core
        self.votes: dict[int, dict[int, Checkpoint]] = {}  # seq -> replica -> checkpoint
        self.stable_seq = 0
        self.stable_digest = b""
        self.stable_proof: tuple[Checkpoint, ...] = ()
        self.proof_sent_at: dict[int, int] = {}
        saved = core.ex.load_checkpoint()
        if saved is not None:
            seq, digest, proof = saved
            self.stable_seq, self.stable_digest = seq, digest
            self.stable_proof = tuple(Checkpoint.from_wire(w) for w in proof)

    def sign_again(self) -> None:
        """A replica restarted after executing a checkpoint height that is not stable yet signs
        its CHECKPOINT again (the status tick re-sends it): the messages it sent before may have
        been lost with the others' memory, and if a quorum of replicas restarted that way the
        checkpoint would never become stable and the window would stay shut."""
        core = self.core
        height = core.last_executed - core.last_executed % core.cfg.checkpoint_interval
        if height <= self.stable_seq or core.me not in core.epoch_of(height).members:
            return
        state = core.ex.state_digest_at(height)
        blocks = [] if height == core.last_executed else core.ex.blocks_from(height, 1)
        if state is None or (height != core.last_executed and not blocks):
            return  # no longer kept here: the others' checkpoints or state transfer will do
        block_hash = blocks[0].hash() if blocks else core.last_hash
        cp = sign(
            Checkpoint(height, checkpoint_digest(height, block_hash, state), core.me), core.signer
        )
        self.votes.setdefault(height, {})[core.me] = cp

    def executed(self, height: int, out: list[Action]) -> None:
        """Block ``height`` was executed: at a checkpoint height, sign and send a checkpoint."""
        core = self.core
        if height % core.cfg.checkpoint_interval or core.me not in core.epoch_of(height).members:
            return  # (a replica joining signs no checkpoint of blocks its set did not order)
        cp_digest = checkpoint_digest(height, core.last_hash, core.ex.state_digest())
        cp = sign(Checkpoint(height, cp_digest, core.me), core.signer)
        out.append(Broadcast(cp))
        self.votes.setdefault(height, {})[core.me] = cp
        self.check_stable(height, out)

    def newest_unstable_own(self) -> Checkpoint | None:
        """This replica's newest checkpoint that is not stable yet (the status tick re-sends it:
        a lost checkpoint must not stall the window)."""
        core = self.core
        mine = [s for s, votes in self.votes.items() if s > self.stable_seq and core.me in votes]
        return self.votes[max(mine)][core.me] if mine else None

    def on_checkpoint(self, msg: Checkpoint, now_ms: int, out: list[Action]) -> None:
        core = self.core
        if msg.seq % core.cfg.checkpoint_interval or msg.seq == 0:
            core.count("rejected_bad_checkpoint")
            return
        if msg.seq <= self.stable_seq:
            core.count("stale_checkpoint")
            # The sender is still working on a checkpoint that is stable here: show it the proof
            # (it may have missed the others' checkpoints), at most once per status interval.
            last = self.proof_sent_at.get(msg.replica)
            if self.stable_proof and (last is None or now_ms - last >= core.cfg.status_interval_ms):
                self.proof_sent_at[msg.replica] = now_ms
                out.append(Send(msg.replica, Blocks((), core.me, self.stable_proof)))
            return
        votes = self.votes.get(msg.seq)
        if votes is not None and msg.replica in votes:
            core.count("duplicate_msg")
            return
        epoch = core.epoch_of(msg.seq)  # the set that ordered the blocks up to it signs it
        if msg.replica not in epoch.members:
            core.count("rejected_other_epoch")
            return
        if not verify(msg, epoch.keyring):
            core.count("rejected_bad_sig")
            return
        mine = [s for s, v in self.votes.items() if msg.replica in v]
        if len(mine) >= CHECKPOINTS_PER_REPLICA:
            del self.votes[min(mine)][msg.replica]
        self.votes.setdefault(msg.seq, {})[msg.replica] = msg
        self.check_stable(msg.seq, out, now_ms)

    def check_stable(self, seq: int, out: list[Action], now_ms: int | None = None) -> None:
        core = self.core
        now = core.now if now_ms is None else now_ms
        votes = self.votes.get(seq, {})
        epoch = core.epoch_of(seq)
        by_digest: dict[bytes, list[Checkpoint]] = {}
        for cp in votes.values():
            if cp.replica in epoch.members:
                by_digest.setdefault(cp.digest, []).append(cp)
        quorum = epoch.config.quorum
        for digest, cps in by_digest.items():
            if len(cps) >= quorum and seq > self.stable_seq:
                own = votes.get(core.me)
                if own is not None and own.digest != digest:
                    core.count("checkpoint_mismatch")
                self.stabilize(seq, digest, tuple(cps[:quorum]))
                if seq > core.last_executed:
                    core.transfer.start_fetch(seq, [c.replica for c in cps], now, out)
                if core.log.above_window or core.log.votes_above:
                    core.log.take_held(now, out)
                core.batcher.cut_if_primary(now, out)
                return

    def stabilize(self, seq: int, digest: bytes, proof: tuple[Checkpoint, ...]) -> None:
        """``seq`` is the stable checkpoint: kept (with its proof), the log below dropped."""
        core = self.core
        self.stable_seq, self.stable_digest, self.stable_proof = seq, digest, proof
        core.ex.save_checkpoint(seq, digest, [c.to_wire() for c in proof])
        core.ex.prune_journal(seq)
        core.count("checkpoints_stable")
        core.log.prune(seq)
        for s in [s for s in self.votes if s < seq]:
            del self.votes[s]
        if core.next_seq <= seq:
            core.next_seq = seq + 1
        core.stable_moved()

    def adopt_proof(self, proof: tuple[Checkpoint, ...], now_ms: int, out: list[Action]) -> None:
        """Take a stable checkpoint proven by a quorum of signed checkpoints."""
        core = self.core
        if (
            not proof
            or proof[0].seq <= self.stable_seq
            or proof[0].seq % core.cfg.checkpoint_interval
        ):
            return
        seq, digest = proof[0].seq, proof[0].digest
        epoch = core.epoch_of(seq)
        signers: dict[int, Checkpoint] = {}
        for cp in proof:
            if cp.seq != seq or cp.digest != digest or cp.replica in signers:
                core.count("rejected_bad_checkpoint")
                return
            if not verify(cp, epoch.keyring):
                core.count("rejected_bad_sig")
                return
            signers[cp.replica] = cp
        if len(signers) < epoch.config.quorum:
            core.count("rejected_bad_checkpoint")
            return
        votes = self.votes.setdefault(seq, {})
        for r, cp in signers.items():
            votes.setdefault(r, cp)
        self.check_stable(seq, out, now_ms)
