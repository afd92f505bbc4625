"""Decisions a quorum of members takes on chain: minting tokens and re-keying a member.

The operator mints nothing on its own. Any member proposes (``quorum.propose``), members approve
(``quorum.approve``); the proposal executes in the transaction that brings its approvals to the
threshold: more than ``quorum_pct`` percent of the voting members (members with a live key whose
role is not ``operator``), counted at that moment. The proposer's own approval counts when it
votes. Every proposal and approval is a transaction in a block, so every member can audit who
asked for what and who agreed.

Actions (``action`` field of a proposal, exactly these fields):

* ``{"kind": "mint", "to", "amount"}``: ``amount`` new micro-tokens to member ``to``;
* ``{"kind": "rekey", "id_grid", "public_key"}``: a new wallet key for a member whose key was
  revoked (by itself, or by the operator when the member lost it). Both are needed: a quorum
  alone cannot take a live member's account, and the operator alone cannot choose its key.
* ``{"kind": "replicas", "replicas": [{"id", "host", "port", "public_key"}, ...]}``: the
  ledger's new replica set (``replicas.py``): adding or removing a replica.
"""

from __future__ import annotations

from typing import Any

from ledger.contract import fields as f
from ledger.contract import replicas
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.codes import (
    ALREADY_APPROVED,
    BAD_AMOUNT,
    BAD_BODY,
    KEY_IN_USE,
    NOT_REVOKED,
    PROPOSAL_CLOSED,
    PROPOSAL_EXISTS,
    ROLE_FORBIDDEN,
    TOO_MANY_PROPOSALS,
    UNKNOWN_PROPOSAL,
    Rejected,
)
from ledger.contract.registry import known_member, sender_member
from ledger.contract.state import ContractState

ACTIONS = ("mint", "rekey", "replicas")
OPEN = "OPEN"
EXECUTED = "EXECUTED"
MAX_SUPPLY = 10**18  # micro-tokens in all (a million million tokens), far below 2**63
MAX_OPEN_PER_PROPOSER = 16  # a member cannot fill the state with proposals


def read_action(body: Any) -> dict[str, Any]:
    action = body.get("action")
    if not isinstance(action, dict):
        raise Rejected(BAD_BODY, "action must be an object")
    kind = f.choice(action, "kind", ACTIONS)
    if kind == "replicas":
        f.exact(action, ("kind", "replicas"))
        return {"kind": kind, "replicas": replicas.read_replicas(action)}
    if kind == "mint":
        f.exact(action, ("kind", "to", "amount"))
        return {
            "kind": kind,
            "to": f.ident(action, "to"),
            "amount": f.positive(action, "amount", f.MAX_AMOUNT),
        }
    f.exact(action, ("kind", "id_grid", "public_key"))
    return {
        "kind": kind,
        "id_grid": f.ident(action, "id_grid"),
        "public_key": f.key_hex(action, "public_key"),
    }


def voters(st: ContractState) -> int:
    return sum(
        1
        for m in st.data["members"].values()
        if m["role"] != "operator" and m["public_key"] is not None
    )


def needed(st: ContractState) -> int:
    """Approvals that execute a proposal now: more than ``quorum_pct`` % of the voters."""
    return voters(st) * int(st.data["params"]["quorum_pct"]) // 100 + 1


def _check(st: ContractState, action: dict[str, Any]) -> None:
    """Everything execution needs, checked before anything changes (proposal and execution)."""
    if action["kind"] == "mint":
        known_member(st, action["to"])
        if st.data["supply"] + action["amount"] > MAX_SUPPLY:
            raise Rejected(BAD_AMOUNT, f"supply would exceed {MAX_SUPPLY}")
    elif action["kind"] == "replicas":
        replicas.check(st, action["replicas"])
    else:
        known_member(st, action["id_grid"])
        if st.data["members"][action["id_grid"]]["public_key"] is not None:
            raise Rejected(NOT_REVOKED, f"{action['id_grid']}'s key is live: it rotates its own")
        if st.key_in_use(action["public_key"]):
            raise Rejected(KEY_IN_USE, "that key belongs to a member or meter, or was retired")


def _execute(st: ContractState, action: dict[str, Any], height: int) -> dict[str, Any]:
    if action["kind"] == "mint":
        st.data["supply"] += action["amount"]
        st.credit(action["to"], action["amount"])
        return {"balance": st.balance(action["to"])}
    if action["kind"] == "replicas":
        return replicas.execute(st, action["replicas"], height)
    st.set_member_key(action["id_grid"], action["public_key"], height)
    return {}


def _result(pid: str, proposal: dict[str, Any], need: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "proposal_id": pid,
        "state": proposal["state"],
        "approvals": len(proposal["approvals"]),
        "needed": need,
        **extra,
    }


def propose(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("proposal_id", "action"))
    pid = f.ident(body, "proposal_id")
    action = read_action(body)
    proposer = sender_member(st, tx)
    if pid in st.data["proposals"]:
        raise Rejected(PROPOSAL_EXISTS, f"proposal {pid} already exists")
    mine = sum(
        1 for p in st.data["proposals"].values() if p["proposer"] == proposer and p["state"] == OPEN
    )
    if mine >= MAX_OPEN_PER_PROPOSER:
        raise Rejected(TOO_MANY_PROPOSALS, f"at most {MAX_OPEN_PER_PROPOSER} open proposals each")
    _check(st, action)
    votes = st.role(proposer) != "operator"
    proposal: dict[str, Any] = {
        "action": action,
        "proposer": proposer,
        "approvals": [proposer] if votes else [],
        "state": OPEN,
        "height": ctx.height,
    }
    need = needed(st)
    extra: dict[str, Any] = {}
    if len(proposal["approvals"]) >= need:
        extra = _execute(st, action, ctx.height)
        proposal["state"] = EXECUTED
    st.data["proposals"][pid] = proposal
    return _result(pid, proposal, need, extra)


def approve(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("proposal_id",))
    pid = f.ident(body, "proposal_id")
    voter = sender_member(st, tx)
    proposal = st.data["proposals"].get(pid)
    if proposal is None:
        raise Rejected(UNKNOWN_PROPOSAL, f"no proposal {pid}")
    if proposal["state"] != OPEN:
        raise Rejected(PROPOSAL_CLOSED, f"proposal {pid} is {proposal['state']}")
    if st.role(voter) == "operator":
        raise Rejected(ROLE_FORBIDDEN, "the operator proposes but does not approve")
    if voter in proposal["approvals"]:
        raise Rejected(ALREADY_APPROVED, f"{voter} already approved {pid}")
    need = needed(st)
    extra: dict[str, Any] = {}
    if len(proposal["approvals"]) + 1 >= need:
        _check(st, proposal["action"])
        extra = _execute(st, proposal["action"], ctx.height)
        proposal["state"] = EXECUTED
    proposal["approvals"] = sorted([*proposal["approvals"], voter])
    return _result(pid, proposal, need, extra)
