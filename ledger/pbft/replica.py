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

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.contract.api import MAX_REPLICA_ID
from ledger.pbft.actions import Action, BlockReplies, Broadcast, Executed, Peers
from ledger.pbft.backend import Executor
from ledger.pbft.batching import Batcher
from ledger.pbft.block import Block
from ledger.pbft.checkpoints import Checkpoints
from ledger.pbft.config import PbftConfig, ReplicaInfo
from ledger.pbft.epochs import Epoch, Epochs
from ledger.pbft.journal import restore
from ledger.pbft.log import FUTURE_BUFFER, MessageLog
from ledger.pbft.messages import (
    Blocks,
    Checkpoint,
    Commit,
    FetchBlocks,
    FetchPrePrepare,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    Status,
    ViewChange,
    parse,
)
from ledger.pbft.signing import Keyring, Signer
from ledger.pbft.transfer import StateTransfer
from ledger.pbft.viewchange import ViewChanges
from ledger.pbft.wire import WireError
from ledger.tx import SignedTx

__all__ = ["Replica"]

TxVerifier = Callable[[Sequence[SignedTx], Sequence[str]], list[bool]]


class Replica:
    """The façade: the events and the state every part reads (view, height, configuration,
    keys, executor, counters). The parts own the rest and are reached as attributes:

    * ``log`` (``MessageLog``): slots, votes, batches, held and future messages; the normal
      case (pre-prepare, prepare, commit);
    * ``batcher`` (``Batcher``): client requests pending, relaying, cutting batches;
    * ``checkpoints`` (``Checkpoints``): checkpoint votes and the stable checkpoint;
    * ``views`` (``ViewChanges``): the view-change timer (``views.timer``), view-changes, new-view;
    * ``transfer`` (``StateTransfer``): status gossip, fetching and serving blocks.
    """

    def __init__(
        self,
        config: PbftConfig,
        me: int,
        signing_key: Ed25519PrivateKey,
        executor: Executor,
        *,
        now_ms: int,
        relay_requests: bool = True,
        tx_verifier: TxVerifier | None = None,
        pre_prepare_ids: bool = False,
    ) -> None:
        self.me = me
        # Epochs: the cluster file's replica set, then each reconfiguration executed so far
        # (epochs.py). ``cfg``, ``keyring`` and ``members`` are the epoch that orders the next
        # block; ``peer_keyring`` holds every replica this one talks to (see ``peers``).
        self.epochs = Epochs(config)
        self.epochs.learn(executor.reconfigurations())
        self.epoch = self.epochs.at(executor.last_executed() + 1)
        self.cfg = self.epoch.config
        self.keyring = self.epoch.keyring
        self.members = self.epoch.members
        if not 0 <= me <= MAX_REPLICA_ID:
            raise ValueError(f"replica id {me} is not a replica id (0..{MAX_REPLICA_ID})")
        self.relay_requests = relay_requests
        # as primary, name a batch's transactions by id in the PRE-PREPARE (clients send every
        # request to every replica); a backup lacking one fetches the pre-prepare in full
        self.pre_prepare_ids = pre_prepare_ids
        # (txs, their ids) -> is each signature valid? Lets the IO layer share one verdict cache
        # between the requests it checks and the pre-prepares the core checks, and check a
        # pre-prepare's transactions together (a batch check). Default: ``tx.verify()`` each.
        self.tx_verifier = tx_verifier
        self.signer = Signer(me, signing_key)
        self.ex = executor
        self.metrics: dict[str, int] = {}
        self.view = 0
        self.active = True
        self.now = now_ms
        self.last_executed = executor.last_executed()
        self.last_hash = executor.last_block_hash()
        self.checkpoints = Checkpoints(self)
        self.next_seq = max(self.last_executed, self.stable_seq) + 1  # the primary's next
        self.log = MessageLog(self)
        self.batcher = Batcher(self)
        self.views = ViewChanges(self)
        self.transfer = StateTransfer(self, now_ms)
        self.resend: list[Prepare | Commit] = []  # restored votes, sent again on the first tick
        self.peer_keyring = Keyring({})
        self.peer_set: dict[int, ReplicaInfo] = {}
        self._update_peers()
        self.peers_dirty = False  # the IO layer builds its links from ``peer_set`` at start
        restore(self)
        self.checkpoints.sign_again()

    # ------------------------------------------------------------------ state every part reads

    @property
    def is_primary(self) -> bool:
        return self.cfg.primary(self.view) == self.me

    @property
    def is_member(self) -> bool:
        """This replica votes in the current epoch (a joining one only fetches and executes
        until its epoch begins; a removed one stops voting when the next begins)."""
        return self.me in self.members

    @property
    def epoch_end(self) -> int | None:
        """The last sequence number of the current epoch, once a reconfiguration is executed."""
        following = self.epochs.after(self.epoch)
        return None if following is None else following.start

    def epoch_of(self, seq: int) -> Epoch:
        return self.epochs.at(seq)

    def peers(self) -> list[int]:
        """The replicas this one sends to (``Broadcast``): see ``Epochs.live_peers``."""
        return list(self.peer_set)

    @property
    def stable_seq(self) -> int:
        return self.checkpoints.stable_seq

    @property
    def high(self) -> int:
        return self.checkpoints.stable_seq + self.cfg.log_window

    def in_window(self, seq: int) -> bool:
        return self.checkpoints.stable_seq < seq <= self.high

    def count(self, name: str, by: int = 1) -> None:
        self.metrics[name] = self.metrics.get(name, 0) + by

    def verify_txs(self, txs: Sequence[SignedTx], tx_ids: Sequence[str]) -> list[bool]:
        self.count("tx_signature_checks", len(txs))
        if self.tx_verifier is not None:
            return self.tx_verifier(txs, tx_ids)
        return [tx.verify() for tx in txs]

    # ------------------------------------------------------------------ events

    def next_deadline(self) -> int | None:
        """Earliest ``now_ms`` at which ``on_tick`` has work to do."""
        times = [self.transfer.next_status]
        for t in (self.views.timer.deadline, self.transfer.deadline):
            if t is not None:
                times.append(t)
        batch_at = self.batcher.deadline
        if batch_at is not None and self.is_primary and self.active:
            times.append(batch_at)
        relay_at = self.batcher.relay_due()
        if relay_at is not None:
            times.append(relay_at)
        return min(times)

    def knows_request(self, tx_id: str) -> bool:
        """This replica holds the request, or a pre-prepare in its log carries it (the IO layer
        asks clients for requests they only announced and the primary has not ordered)."""
        return tx_id in self.batcher.pending or tx_id in self.batcher.in_log

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
        self.now = now_ms
        out: list[Action] = []
        self.batcher.request(tx, now_ms, verified, out, tx_id)
        return out

    def on_requests(self, txs: Sequence[SignedTx], now_ms: int) -> list[Action]:
        """Client transactions whose signatures the IO layer has checked, arriving together:
        one executor lookup for which were executed already instead of one per transaction."""
        if not txs:
            return []
        self.now = now_ms
        out: list[Action] = []
        ids = [tx.tx_id for tx in txs]
        done = self.ex.known(ids)
        request = self.batcher.request
        for tx, tx_id in zip(txs, ids, strict=True):
            request(tx, now_ms, True, out, tx_id, maybe_done=tx_id in done)
        return out

    def on_message(self, msg: Message | dict[str, Any], sender: int, now_ms: int) -> list[Action]:
        """A message received from replica ``sender`` (authenticated link id)."""
        if not isinstance(msg, dict) and not hasattr(msg, "to_wire"):
            self.count("malformed")
            return []
        if isinstance(msg, dict):
            try:
                msg = parse(msg, self.batcher.known_tx)
            except WireError:
                self.count("malformed")
                return []
        out: list[Action] = []
        self.now = now_ms
        if isinstance(msg, Request):
            self.batcher.request(msg.tx, now_ms, False, out)
            return out
        if isinstance(msg, Reply):
            self.count("unexpected")
            return out
        if sender not in self.peer_set or sender == self.me:
            # (a removed replica, once the epoch that removed it has a stable checkpoint)
            self.count("rejected_unknown_sender")
            return out
        if msg.replica != sender and not isinstance(msg, NewView):
            # (a NEW-VIEW is self-certifying and is relayed by any replica to one left behind)
            self.count("rejected_sender_mismatch")
            return out
        if isinstance(msg, Prepare):
            self.log.on_prepare(msg, out)
        elif isinstance(msg, Commit):
            self.log.on_commit(msg, out)
        elif isinstance(msg, PrePrepare):
            self.log.on_pre_prepare(msg, now_ms, out)
        elif isinstance(msg, Checkpoint):
            self.checkpoints.on_checkpoint(msg, now_ms, out)
        elif isinstance(msg, ViewChange):
            self.views.on_view_change(msg, now_ms, out)
        elif isinstance(msg, NewView):
            self.views.on_new_view(msg, now_ms, out)
        elif isinstance(msg, Status):
            self.transfer.on_status(msg, now_ms, out)
        elif isinstance(msg, FetchBlocks):
            self.transfer.on_fetch(msg, out)
        elif isinstance(msg, FetchPrePrepare):
            self.log.on_fetch_pre_prepare(msg, out)
        elif isinstance(msg, Blocks):
            self.transfer.on_blocks(msg, now_ms, out)
        if self.peers_dirty:
            self._announce_peers(out)
        return out

    def in_epoch(self, seq: int, sender: int) -> bool:
        """The normal case runs within the current epoch: a pre-prepare or vote for a sequence
        number another epoch orders, by a replica that is not a member of this one, or reaching
        a replica that is not, is dropped (a later epoch's: state transfer brings its blocks).
        Asked where the log takes one, so also of those held above the window or for a later
        view and taken after this replica learned of a change."""
        epoch = self.epoch
        if seq <= epoch.start or sender not in self.members or self.me not in self.members:
            self.count("rejected_other_epoch")
            return False
        following = self.epochs.after(epoch)
        if following is not None and seq > following.start:
            self.count("rejected_other_epoch")
            return False
        return True

    def on_tick(self, now_ms: int) -> list[Action]:
        self.now = now_ms
        out: list[Action] = []
        if self.resend:
            # Votes restored from the journal go out again (the same signed bytes: Ed25519 is
            # deterministic); peers drop what they already had, a cluster restarted as a whole
            # gathers the commits it lost.
            out.extend(Broadcast(vote) for vote in self.resend)
            self.resend = []
        views = self.views
        if views.resend:
            views.resend = False
            views.send(now_ms, out)
        batcher = self.batcher
        if (
            self.is_primary
            and self.active
            and batcher.deadline is not None
            and now_ms >= batcher.deadline
        ):
            batcher.cut(now_ms, out, force=True)
        elif self.is_primary and self.active and self.epoch_end is not None:
            batcher.cut(now_ms, out, force=True)  # up to the switch point, batches or empty
        relay_at = batcher.relay_due()
        if relay_at is not None and now_ms >= relay_at:
            batcher.relay_stale(now_ms, out)
        if views.timer.deadline is not None and now_ms >= views.timer.deadline:
            self.count("timeouts")
            views.on_timeout(now_ms, out)
        self.transfer.tick(now_ms, out)
        if self.peers_dirty:
            self._announce_peers(out)
        return out

    def on_peer_unreachable(self, peer: int, now_ms: int) -> list[Action]:
        """The IO layer has not been able to reach replica ``peer`` for a while (its connection
        refused or reset). If that is the primary this replica waits on, the view-change timer
        fires now (``ViewChanges.primary_unreachable``)."""
        self.now = now_ms
        if peer == self.cfg.primary(self.view) and peer != self.me:
            self.views.primary_unreachable(now_ms)
        return self.on_tick(now_ms)

    # ------------------------------------------------------------------ timers

    def arm_request_timer(self, now_ms: int) -> None:
        """A request waits, or the blocks up to a reconfiguration's switch point do (the
        primary owes them even to an idle ledger): the view-change timer runs (if it does
        not already). A replica that is not a member has no timer (it changes no views)."""
        if (
            (self.batcher.pending or self.epoch_end is not None)
            and self.views.timer.deadline is None
            and self.active
            and self.me in self.members
        ):
            self.views.timer.arm(now_ms)

    def rearm(self, now_ms: int) -> None:
        if self.views.timer.deadline is None:
            self.arm_request_timer(now_ms)

    # ------------------------------------------------------------------ execution

    def execute_ready(self, out: list[Action]) -> None:
        """Execute the committed slots that follow the last executed block, in order."""
        progressed = False
        log = self.log
        while True:
            slot = log.slots.get(self.last_executed + 1)
            if slot is None or not slot.committed or slot.cert is None:
                break
            batch = log.batches.get(slot.digest)
            if batch is None:
                # committed without the batch here (re-proposed in a NEW-VIEW): fetch the block
                voters = [r for r, _ in slot.cert.commits]
                self.transfer.start_fetch(slot.seq, voters, self.now, out)
                break
            block = Block(
                slot.seq,
                batch.timestamp_ms,
                self.last_hash,
                batch.wires,
                slot.cert,
                log.batch_ids[slot.digest],
                slot.digest,
                batch.encoded(),
            )
            self.execute_block(block, slot.digest, out)
            progressed = True
        if progressed:
            self.after_progress(out)
            ending = self.epoch_end is not None
            if (
                self.is_primary
                and self.active
                and (ending or len(self.batcher.queue) >= self.cfg.batch_max)
            ):
                # full batches that waited for the pipeline (max_inflight) go now (before a
                # switch point, whatever waits, down to empty batches)
                self.batcher.cut(self.now, out, force=ending)

    def execute_block(self, block: Block, digest: bytes, out: list[Action]) -> None:
        receipts = tuple(self.ex.execute(block))
        self.last_executed = block.height
        self.last_hash = block.hash(digest)
        self.batcher.last_ts = max(self.batcher.last_ts, block.timestamp_ms)
        self.count("executed_blocks")
        self.count("executed_txs", len(block.txs))
        out.append(Executed(block, receipts))
        out.append(BlockReplies(self.view, block.height, self.me, block.tx_ids, receipts))
        self.batcher.executed(block)
        self.checkpoints.executed(block.height, out)
        changes = self.ex.reconfigurations()
        if len(changes) > self.epochs.seen:
            self._learn(changes)
        following = self.epochs.after(self.epoch)
        if following is not None and block.height >= following.start:
            self._switch(following, out)

    # ------------------------------------------------------------------ reconfiguration

    def _learn(self, changes: Sequence[Any]) -> None:
        """A reconfiguration was executed: the epoch it starts is known from now on (its new
        replicas are peers at once, so a joining one can fetch the chain)."""
        before = self.epochs.ignored
        new = self.epochs.learn(changes)
        self.count("reconfigurations", len(new))
        self.count("rejected_reconfigurations", self.epochs.ignored - before)
        if new:
            self._update_peers()

    def _switch(self, epoch: Epoch, out: list[Action]) -> None:
        """Block ``epoch.start`` is executed: the next epoch orders what follows, here as on
        every correct replica. Nothing above it was accepted in the old epoch (pre-prepares for
        it were refused), so the log above it holds only votes, dropped. The new epoch begins
        with a view change: its first NEW-VIEW is made by the new set's primary with the new
        quorum, which also replaces a primary that is no longer a member."""
        self.epoch = epoch
        self.cfg, self.keyring, self.members = epoch.config, epoch.keyring, epoch.members
        self.count("epochs_entered")
        log = self.log
        for seq in [s for s in log.slots if s > epoch.start]:
            log.discard(seq)
        log.above_window.clear()
        log.votes_above.clear()
        # messages held for a later view: those of the old epoch's sequence numbers are done
        log.future = deque(((m, r) for m, r in log.future if m.seq > epoch.start), FUTURE_BUFFER)
        self.views.new_epoch()
        self.transfer.new_epoch()
        self._update_peers()
        if self.is_member and self.active:
            self.views.start(self.view + 1, self.now, out)
        elif self.is_member:
            # in a view change of the old epoch: it goes on among the new set, for the same
            # view (the others, active at the switch, move one view up to it)
            self.ex.save_view(self.view, False)
            self.views.send(self.now, out)
        if self.is_member:
            self.views.take_early(self.now, out)
        else:
            self.active = False  # removed: it no longer votes; it still answers reads
            self.views.timer.deadline = None

    def _update_peers(self) -> None:
        peers = self.epochs.live_peers(self.me, self.checkpoints.stable_seq, self.epoch)
        if peers != self.peer_set:
            self.peer_set = peers
            self.peer_keyring = Keyring.of(peers.values())
            self.peers_dirty = True

    def _announce_peers(self, out: list[Action]) -> None:
        self.peers_dirty = False
        out.append(Peers(tuple(self.peer_set.values())))

    def stable_moved(self) -> None:
        """A checkpoint became stable: the previous epoch's replicas may be dropped now."""
        if self.epoch.number:
            self._update_peers()

    def after_progress(self, out: list[Action]) -> None:
        self.transfer.progress()
        if not self.active:
            return  # blocks fetched during a view change: the wait for NEW-VIEW goes on
        # Progress in this view: reset the backoff; keep waiting only if requests are pending.
        self.views.timer.progress(self.now)
        self.arm_request_timer(self.now)
