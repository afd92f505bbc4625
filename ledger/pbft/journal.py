"""Taking up the journal after a restart: the view, and the log above the stable checkpoint.

The core writes the journal as it goes (``MessageLog.journal_pre_prepare``, the prepared
certificate when it forms, ``Executor.save_view``); ``restore`` reads it back into a new
``Replica`` once, before its first event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ledger.encoding import EncodingError, decode
from ledger.pbft.block import Batch
from ledger.pbft.messages import Commit, Prepare, PreparedProof, PrePrepare, sign
from ledger.pbft.wire import WireError

if TYPE_CHECKING:
    from ledger.pbft.replica import Replica


def restore(core: Replica) -> None:
    """Take up the view and log this replica had before a restart (nothing for a new one).
    Its own PREPAREs and COMMITs are signed again, identical to those it sent, and go out on
    the first tick (``core.resend``); a replica that was changing views sends its VIEW-CHANGE
    again. The requests of restored batches are not pending here: clients re-send what they
    still wait for, and a transaction is applied at most once whichever block holds it."""
    view, active, entries = core.ex.load_journal()
    core.view, core.active = view, active
    if not active:
        core.views.resend = True
        core.views.timer.deadline = core.now + core.views.timer.timeout
    for seq in sorted(entries):
        if seq <= core.stable_seq:
            continue
        try:
            parts = {k: decode(v, strict=False) for k, v in entries[seq].items()}
            _restore_slot(core, seq, parts)
        except (EncodingError, WireError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"journal entry {seq} does not decode: {exc}") from exc
    core.ex.prune_journal(core.stable_seq)


def _restore_slot(core: Replica, seq: int, entry: dict[str, Any]) -> None:
    log = core.log
    slot = log.slot(seq)
    if "batch" in entry:
        batch = Batch.from_wire(entry["batch"])
        log.keep_batch(batch.digest(), batch, tuple(tx.tx_id for tx in batch.txs))
        core.batcher.last_ts = max(core.batcher.last_ts, batch.timestamp_ms)
    if "proof" in entry:
        slot.proof = PreparedProof.from_wire(entry["proof"])
    if "pp" not in entry:
        return
    pp = PrePrepare.from_wire(entry["pp"])
    slot.view, slot.pp, slot.digest = pp.view, pp, pp.digest
    key = (pp.view, pp.digest)
    if pp.replica != core.me:
        prepare = sign(Prepare(pp.view, seq, pp.digest, core.me), core.signer)
        slot.add_vote(prepare)
        core.resend.append(prepare)
    proof = slot.proof
    if proof is not None and (proof.pre_prepare.view, proof.pre_prepare.digest) == key:
        for p in proof.prepares:
            slot.prepares.setdefault(key, {})[p.replica] = p
            slot.prepare_votes[(pp.view, p.replica)] = pp.digest
        slot.prepared = slot.commit_sent = True
        commit = sign(Commit(pp.view, seq, pp.digest, core.me), core.signer)
        slot.add_vote(commit)
        core.resend.append(commit)
    if pp.view == core.view:
        core.next_seq = max(core.next_seq, seq + 1)
