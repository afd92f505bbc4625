"""Admission: which signed transactions the ledger takes in at all, and how a newcomer applies.

A replica orders a transaction only if ``admit`` passes it against the state the replica has
executed (see the ledger README, "Admission"). The predicate depends on the state and the
transaction only, so every replica reaches the same verdict on the same state; the executor
asks it again for every transaction of a committed block, against the state that block executes
on, so a transaction a faulty primary ordered anyway becomes a ``NOT_ADMITTED`` no-op on every
replica alike.

Who may sign what (each key is one of these, never two: ``ContractState.key_in_use``):

- a member's live wallet key: any transaction kind the contract knows (its handler checks the
  role); a revoked one (``member.revoke_key``, rotated away) nothing at all;
- a member's order key (``member.set_order_key``): its orders only, ``auction.offer`` and
  ``auction.bid``, or sealed ``auction.commit`` and ``auction.reveal`` (``registry.ORDER_KINDS``),
  never a transfer, vote or key change;
- a meter's live reporting key (``gateway_key``): ``meter.report`` only; a revoked or rotated
  one nothing. (A meter its owner has not confirmed yet is admitted and refused at execution,
  ``METER_UNCONFIRMED``, like any other handler check.)
- any other key that was never used: ``registry.apply`` only, the one form in which a newcomer
  applies. Its body is exactly ``{"id_grid", "role", "commitment"}``: ``commitment`` is the
  salted hash of the applicant's personal data (``ledger.personal``), which goes to the operator
  off the chain, never in the application. The key that signs it is the key the applicant asks
  to be admitted with (so the application proves the applicant holds it). At most
  ``max_applications`` are open at once (genesis params), one per key; an application is
  dropped when its key becomes a member's, when the operator dismisses it
  (``registry.dismiss``) or ``APPLICATION_TTL_MS`` of block time after it was made. The operator
  admits the applicant with ``registry.admit`` (the same commitment) after checking, off the
  chain, who it is. A retired key (rotated away or revoked) may not apply again.

The identities come from ``ContractState``'s key indexes, which every key-changing handler
updates in the same step as the state itself: nothing here is cached across transactions, so a
key change takes effect for the very next transaction of the same block.

Each kind has a size bound (the transaction's canonical unsigned bytes): far above what an
honest transaction of that kind needs, far below ``ledger.tx.MAX_TX_BYTES``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final

from ledger.contract import fields as f
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.codes import (
    APPLICATION_EXISTS,
    APPLICATIONS_FULL,
    KEY_IN_USE,
    MEMBER_EXISTS,
    NOT_ADMITTED,
    NOT_OPERATOR,
    TX_TOO_LARGE,
    UNKNOWN_APPLICATION,
    UNKNOWN_KIND,
    Rejected,
)
from ledger.contract.registry import ORDER_KINDS
from ledger.contract.state import ContractState

APPLY: Final = "registry.apply"
DISMISS: Final = "registry.dismiss"
METER_KINDS: Final = frozenset({"meter.report"})
APPLICANT_ROLES: Final = ("consumer", "producer", "prosumer")
APPLICATION_TTL_MS: Final = 7 * 24 * 3600 * 1000  # a week of block time
# canonical unsigned bytes of one transaction, per kind (DEFAULT_MAX_BYTES for the others)
DEFAULT_MAX_BYTES: Final = 1024
MAX_BYTES: Final[Mapping[str, int]] = {
    "registry.admit": 512,  # id, commitment, key and role: no personal data
    APPLY: 512,
    DISMISS: 512,
    "token.transfer": 512,
    "token.mint": 512,
    "quorum.propose": 8192,  # a new replica set names up to 64 replicas (about 120 bytes each)
}


def max_bytes(kind: str) -> int:
    return MAX_BYTES.get(kind, DEFAULT_MAX_BYTES)


def admit(
    st: ContractState,
    known_kinds: Collection[str],
    sender: bytes,
    kind: str,
    size: int,
    now_ms: int,
) -> tuple[str, str] | None:
    """None if the transaction may be ordered, else (code, message). ``size``: its canonical
    unsigned bytes (0: not checked); ``now_ms``: block time (applications older than
    ``APPLICATION_TTL_MS`` do not count)."""
    if kind not in known_kinds:
        return UNKNOWN_KIND, f"unknown transaction kind {kind!r}"
    if size > max_bytes(kind):
        return TX_TOO_LARGE, f"{kind} of {size} bytes exceeds {max_bytes(kind)}"
    if st.member_of(sender) is not None:
        return None
    if kind in ORDER_KINDS and st.orderer_of(sender) is not None:
        return None
    if kind in METER_KINDS and st.meter_of(sender) is not None:
        return None
    if kind == APPLY and not st.key_in_use(sender.hex()):
        live = _live(st, now_ms)
        if sender.hex() in live:
            return APPLICATION_EXISTS, "this key has applied already"
        if len(live) >= st.data["params"]["max_applications"]:
            return APPLICATIONS_FULL, "the community takes no more applications for now"
        return None
    return NOT_ADMITTED, _why(st, sender, kind)


def _why(st: ContractState, sender: bytes, kind: str) -> str:
    if st.orderer_of(sender) is not None:
        return f"an order key signs its member's orders only, not {kind}"
    if st.meter_of(sender) is not None:
        return f"a meter key signs meter reports only, not {kind}"
    if st.key_in_use(sender.hex()):
        return "the signer's key was revoked or rotated away"
    return "the signer is no member, no meter and not the operator"


def _live(st: ContractState, now_ms: int) -> list[str]:
    apps = st.data["applications"]
    return [k for k, a in apps.items() if a["at_ms"] + APPLICATION_TTL_MS > now_ms]


def open_applications(st: ContractState, now_ms: int) -> int:
    return len(_live(st, now_ms))


def _purge(st: ContractState, now_ms: int) -> None:
    """Drop applications whose key became a member's or that expired (block time)."""
    apps = st.data["applications"]
    for key in sorted(apps):
        if st.key_in_use(key) or apps[key]["at_ms"] + APPLICATION_TTL_MS <= now_ms:
            del apps[key]


def apply(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """``registry.apply``: a newcomer's key asks to be admitted as ``id_grid`` in ``role``, with
    ``commitment`` to the personal data it gives the operator off the chain."""
    body = tx.body
    f.exact(body, ("id_grid", "role", "commitment"))
    id_grid = f.ident(body, "id_grid")
    role = f.choice(body, "role", APPLICANT_ROLES)
    commitment = f.digest_hex(body, "commitment")
    key = tx.sender.hex()
    _purge(st, ctx.timestamp_ms)
    if st.key_in_use(key):
        raise Rejected(KEY_IN_USE, "that key belongs to a member or meter, or was retired")
    if id_grid in st.data["members"]:
        raise Rejected(MEMBER_EXISTS, f"member {id_grid} already exists")
    apps = st.data["applications"]
    if key in apps:
        raise Rejected(APPLICATION_EXISTS, "this key has applied already")
    if len(apps) >= st.data["params"]["max_applications"]:
        raise Rejected(APPLICATIONS_FULL, "the community takes no more applications for now")
    apps[key] = {
        "id_grid": id_grid,
        "role": role,
        "commitment": commitment,
        "at_ms": ctx.timestamp_ms,
    }
    return {"id_grid": id_grid, "public_key": key}


def dismiss(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """``registry.dismiss``: the operator drops an application (``{"public_key"}``)."""
    body = tx.body
    f.exact(body, ("public_key",))
    key = f.key_hex(body, "public_key")
    who = st.member_of(tx.sender)
    if who is None or st.role(who) != "operator":
        raise Rejected(NOT_OPERATOR, f"{tx.kind} is for the community operator only")
    if key not in st.data["applications"]:
        raise Rejected(UNKNOWN_APPLICATION, "no application from that key")
    del st.data["applications"][key]
    _purge(st, ctx.timestamp_ms)
    return {"public_key": key}
