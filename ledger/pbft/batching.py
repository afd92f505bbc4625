"""Client requests a replica holds, and the batches its primary cuts from them.

``Batcher`` owns the requests known and not yet executed (``pending``), those no pre-prepare
carries yet (``queue``, in order of arrival), which sequence number carries each of the others
(``in_log``), the signatures already checked (``verified``), what a backup will relay to the
primary (``to_relay``) and the primary's batch timer. Its methods append the actions they cause
to ``out``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ledger.encoding import EncodingError, canonical
from ledger.pbft.actions import Action, Broadcast, ReplyTo, Send
from ledger.pbft.block import Batch, Block, tx_bytes
from ledger.pbft.messages import BatchIds, PrePrepare, Reply, Request, sign
from ledger.tx import SignedTx, TxError

if TYPE_CHECKING:
    from ledger.pbft.replica import Replica

VERIFIED_CACHE = 200_000  # client transactions whose signature this replica already checked
MAX_PENDING = 100_000  # client transactions known but not yet executed


class Batcher:
    def __init__(self, core: Replica) -> None:
        self.core = core
        self.pending: dict[str, tuple[SignedTx, dict[str, Any]]] = {}
        self.queue: dict[str, int] = {}  # pending, not in the log: tx_id -> arrival ms
        self.in_log: dict[str, int] = {}  # tx_id -> seq of the pre-prepare holding it
        self.verified: dict[str, str] = {}  # sig hex -> tx_id of a request whose sig was checked
        self.deadline: int | None = None  # primary: when the next batch is cut anyway
        self.last_ts = 0  # the highest batch timestamp seen (a primary's stamps never go back)
        # a backup relays a request no pre-prepare carried in this time (see relay_stale)
        self.relay_after = max(1, core.cfg.view_change_timeout_ms // 2)
        self.to_relay: dict[str, int] = {}  # backup: tx_id -> arrival ms, each relayed once

    def request(
        self,
        raw: SignedTx | dict[str, Any],
        now_ms: int,
        verified: bool,
        out: list[Action],
        known_id: str | None = None,
        *,
        maybe_done: bool = True,
    ) -> None:
        core = self.core
        if isinstance(raw, SignedTx):
            tx, wire = raw, raw.wire()
        else:
            try:
                tx, wire = SignedTx.from_wire(raw), raw
            except TxError:
                core.count("rejected_bad_tx")
                return
            known_id = None  # a wire dict's id is computed here, never taken on trust
        tx_id = known_id or tx.tx_id
        if tx_id in self.pending:
            core.count("duplicate_tx")
            return
        done = core.ex.receipt(tx_id) if maybe_done else None
        if done is not None:
            core.count("duplicate_tx")
            height, receipt = done
            out.append(ReplyTo(tx_id, Reply(core.view, tx_id, height, receipt, core.me)))
            return
        if len(self.pending) >= MAX_PENDING:
            core.count("rejected_overload")  # the client retries; nothing is half-accepted
            return
        if not verified and not core.verify_txs((tx,), (tx_id,))[0]:
            core.count("rejected_bad_tx")
            return
        self.remember_verified(tx, tx_id)
        self.pending[tx_id] = (tx, wire)
        core.arm_request_timer(now_ms)
        if tx_id in self.in_log:
            return
        self.queue[tx_id] = now_ms
        cfg = core.cfg
        if core.is_primary and core.active:
            if self.deadline is None:
                self.deadline = now_ms + cfg.batch_delay_ms
            if len(self.queue) >= cfg.batch_max or cfg.batch_delay_ms == 0:
                self.cut(now_ms, out, force=cfg.batch_delay_ms == 0)
        elif core.relay_requests and core.active:
            self.to_relay[tx_id] = now_ms

    def add_pending(self, ids: tuple[str, ...] | list[str], batch: Batch) -> None:
        """The transactions of a batch this replica takes into its log, known from now on."""
        pending = self.pending
        for tx_id, tx, wire in zip(ids, batch.txs, batch.wires, strict=True):
            if tx_id not in pending:
                pending[tx_id] = (tx, wire)

    def logged(self, ids: tuple[str, ...], seq: int) -> None:
        """A pre-prepare at ``seq`` carries these transactions."""
        for tx_id in ids:
            self.in_log[tx_id] = seq
            self.queue.pop(tx_id, None)

    def unlogged(self, ids: tuple[str, ...], seq: int) -> None:
        """The pre-prepare at ``seq`` is gone (a view change, a stable checkpoint without it):
        what it carried and is still pending waits for a batch again."""
        for tx_id in ids:
            if self.in_log.get(tx_id) == seq:
                del self.in_log[tx_id]
                if tx_id in self.pending:
                    self.queue[tx_id] = 0

    def executed(self, block: Block) -> None:
        pending, queue, in_log, verified = self.pending, self.queue, self.in_log, self.verified
        for tx_id, wire in zip(block.tx_ids, block.txs, strict=True):
            pending.pop(tx_id, None)
            queue.pop(tx_id, None)
            in_log.pop(tx_id, None)
            verified.pop(wire["sig"], None)

    def relay_due(self) -> int | None:
        """When a backup's oldest request not yet relayed is due (``to_relay`` is in order of
        arrival)."""
        core = self.core
        if not self.to_relay or core.is_primary or not core.active:
            return None
        return next(iter(self.to_relay.values())) + self.relay_after

    def relay_stale(self, now_ms: int, out: list[Action]) -> None:
        """A backup forwards to the primary, once, each request it holds that no pre-prepare has
        carried for half a view-change timeout (Castro and Liskov relay at once; here a client
        sends to the primary too, so relaying everything at once made the primary parse each
        request n times: 0.06 ms of its CPU per transaction under load). If the primary still
        does not order it, the view-change timer replaces the primary, and the backups relay
        what waits to the new one at once (``new_view``). Once, so an overloaded primary is
        not sent a copy of everything that waits every half timeout."""
        cutoff = now_ms - self.relay_after
        primary = self.core.cfg.primary(self.core.view)
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
            self.core.count("requests_relayed", relayed)

    def new_view(self, now_ms: int, out: list[Action]) -> None:
        """A view began: the new primary batches what is not ordered yet; backups relay to it,
        once, what it has not ordered in half a view-change timeout (``relay_stale``). Not at
        once: a client whose primary's connection dropped, or whose wait ran out, gave the
        request to every replica, the new primary too; relayed at once, at n = 31 after a
        primary kill with 500 requests waiting, 29 backups sent it 150 KB each (1.2 s on a
        1 Mbit/s link, ahead of their votes) and it parsed 14,500 copies."""
        core = self.core
        self.to_relay.clear()
        if not self.queue:
            return
        if core.is_primary:
            self.deadline = now_ms + core.cfg.batch_delay_ms
        elif core.relay_requests:
            for tx_id in self.queue:
                self.to_relay[tx_id] = now_ms

    def known_tx(self, wire: Any) -> SignedTx | None:
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

    def remember_verified(self, tx: SignedTx, tx_id: str) -> None:
        if len(self.verified) >= VERIFIED_CACHE:
            self.verified.pop(next(iter(self.verified)))
        self.verified[tx.signature.hex()] = tx_id

    def cut(self, now_ms: int, out: list[Action], *, force: bool) -> None:
        """The primary proposes batches of what waits, while its window and pipeline allow;
        without ``force`` only full batches. With a reconfiguration executed, nothing past the
        epoch's last sequence number, and up to it batches even if empty: an idle cluster
        reaches the switch point too (epochs.py)."""
        core = self.core
        cfg = core.cfg
        end = core.epoch_end
        while (
            (self.queue or end is not None)
            and core.next_seq <= core.high
            and core.next_seq <= core.last_executed + cfg.max_inflight
            and (end is None or core.next_seq <= end)
        ):
            if not force and end is None and len(self.queue) < cfg.batch_max:
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
            seq = core.next_seq
            core.next_seq += 1
            pp = sign(PrePrepare(core.view, seq, digest, core.me), core.signer)
            core.log.accept(pp, batch, tuple(ids), out)
            if core.pre_prepare_ids:
                named = BatchIds(batch.timestamp_ms, tuple(ids))
                out.append(Broadcast(PrePrepare(pp.view, seq, digest, core.me, pp.sig, ids=named)))
            else:
                out.append(Broadcast(PrePrepare(pp.view, seq, digest, core.me, pp.sig, batch)))
            core.count("batches_proposed")
        self.deadline = now_ms + cfg.batch_delay_ms if self.queue else None

    def cut_if_primary(self, now_ms: int, out: list[Action]) -> None:
        core = self.core
        if core.is_primary and core.active and self.queue:
            self.cut(now_ms, out, force=False)
