"""The outbox: ledger transactions the gateway owes, delivered exactly once.

Exactly once = at least once (a row stays pending until the ledger answers) + at most once (the
nonce is fixed when the row is written, Ed25519 signatures are deterministic, so every retry is
the same transaction with the same ``tx_id`` and the ledger applies it only once).

``next_state`` is the sans-IO core: a row and the outcome of one attempt in, the row's next state
out. ``deliver_due`` is the thin adapter that signs and submits through a ``Deliverer``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import Backoff
from ledger.tx import SignedTx, sign_tx

log = logging.getLogger(__name__)

PENDING = "pending"
DELIVERED = "delivered"
REJECTED = "rejected"
NO_KEY = "NO_KEY"  # a row's code when no key on this gateway may sign its kind (gateway.signers)

# Receipt codes that mean "the ledger already has this": delivered, not an error. (A retried
# transaction gets its original receipt back; DUPLICATE_REPORT means the ledger holds a report
# for that meter and interval already, e.g. after the gateway's database was restored.)
ALREADY_APPLIED = frozenset({"DUPLICATE", "DUPLICATE_TX", "DUPLICATE_REPORT"})
# Receipt codes that mean "not yet": the operator has not registered the meter, so the ledger
# does not know it (UNKNOWN_METER) or, with admission before ordering, does not know the
# gateway's key at all (NOT_ADMITTED), or the member has not confirmed it (METER_UNCONFIRMED).
# The row stays pending and is retried after a backoff with a fresh nonce (the ledger keeps an
# executed refusal under the old tx_id). Only meter reports: the ledger takes one report per
# meter and interval, so a new nonce can never make a report count twice.
RETRY_LATER = frozenset({"UNKNOWN_METER", "NOT_ADMITTED", "METER_UNCONFIRMED"})
RETRY_LATER_KINDS = frozenset({"meter.report"})
WAIT_REGISTRATION_MS = 60_000  # first wait after UNKNOWN_METER, doubling up to Backoff.max_ms


class Deliverer(Protocol):
    async def submit(self, tx: SignedTx) -> Any:
        """Submit one transaction; return its receipt (anything with a ``code`` attribute, "OK" or
        a stable error code). Raise on transport failure (the row is retried)."""
        ...


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    kind: str
    body: Mapping[str, Any]
    nonce: int
    state: str = PENDING
    attempts: int = 0
    next_ms: int = 0
    code: str = ""
    message: str = ""


def next_state(
    row: OutboxRow, now_ms: int, policy: Backoff, *, code: str | None, error: str = ""
) -> OutboxRow:
    """``code`` is the receipt code, or ``None`` if the attempt failed before the ledger answered
    (then ``error`` says why and the row is retried after a backoff)."""
    attempts = row.attempts + 1
    if code is None:
        return replace(
            row, attempts=attempts, next_ms=now_ms + policy.delay_ms(attempts), message=error[:200]
        )
    if code == "OK" or code in ALREADY_APPLIED:
        return replace(row, state=DELIVERED, attempts=attempts, code=code, message="")
    if code in RETRY_LATER and row.kind in RETRY_LATER_KINDS:
        wait = Backoff(WAIT_REGISTRATION_MS, max(policy.max_ms, WAIT_REGISTRATION_MS))
        return replace(row, attempts=attempts, next_ms=now_ms + wait.delay_ms(attempts),
                       code=code, message=error[:200])  # fmt: skip
    return replace(row, state=REJECTED, attempts=attempts, code=code, message=error[:200])


class OutboxStore(Protocol):
    def outbox_due(self, now_ms: int, limit: int) -> list[OutboxRow]: ...

    def outbox_save(self, row: OutboxRow) -> None: ...


KeyFor = Callable[[str], Ed25519PrivateKey | None]


async def deliver_due(
    store: OutboxStore,
    key: Ed25519PrivateKey | KeyFor,
    deliverer: Deliverer,
    now_ms: int,
    policy: Backoff,
    *,
    limit: int = 100,
    new_nonce: Callable[[], int] | None = None,
) -> tuple[int, int]:
    """Try every row that is due, oldest first; stop at the first transport failure (the ledger
    is unreachable, so the rest would fail too). Returns (delivered or rejected, failed).
    ``key``: one key for every row, or the key for a row's kind (``gateway.signers``); a row
    with no key to sign it is rejected here (``NO_KEY``), never sent. A row
    to retry later (``RETRY_LATER``) gets a nonce from ``new_nonce``."""
    done = failed = 0
    due = store.outbox_due(now_ms, limit)
    for k, row in enumerate(due):
        signer = key if isinstance(key, Ed25519PrivateKey) else key(row.kind)
        if signer is None:
            why = f"{row.kind}: this gateway holds no key that may sign it"
            store.outbox_save(next_state(row, now_ms, policy, code=NO_KEY, error=why))
            log.warning("outbox %d (%s): no key on this gateway may sign it", row.id, row.kind)
            done += 1
            continue
        tx = sign_tx(signer, row.kind, row.body, row.nonce)
        try:
            receipt = await deliverer.submit(tx)
        except Exception as exc:  # any transport failure: retry later, never lose the row
            later = next_state(row, now_ms, policy, code=None, error=repr(exc))
            store.outbox_save(later)
            for rest in due[k + 1 :]:  # the ledger is unreachable: the queue waits as a whole
                store.outbox_save(replace(rest, next_ms=later.next_ms))
            failed += 1
            log.info("outbox %d: ledger unreachable (%r), retrying", row.id, exc)
            break
        code = str(getattr(receipt, "code", "OK"))
        message = str(getattr(receipt, "message", ""))
        new = next_state(row, now_ms, policy, code=code, error=message)
        if new.state == REJECTED:
            log.warning(
                "outbox %d (%s) rejected by the ledger: %s %s", row.id, row.kind, code, message
            )
        elif new.state == PENDING:  # RETRY_LATER: the next try is a new transaction
            if new_nonce is not None:
                new = replace(new, nonce=new_nonce())
            (log.warning if row.code != code else log.info)(
                "outbox %d (%s): %s %s; is it registered? (`wattmesh operator meter add`); "
                "retrying in %d s", row.id, row.kind, code, message,
                (new.next_ms - now_ms) // 1000,
            )  # fmt: skip
        store.outbox_save(new)
        done += 1
    return done, failed
