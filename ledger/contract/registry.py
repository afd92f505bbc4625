"""Registry and token transactions (issue #2, Table 9): members, RES, meters, transfer.

Each handler validates everything first and raises ``Rejected`` before touching the state, then
commits; so a rejected transaction changes nothing.

A member is on the chain as its id, role, wallet key and a *commitment* to its personal data
(``ledger.personal``: SHA-256 over a random salt and the name, e-mail and address, which stay
with the operator and the member). The operator admits members and registers RES and meters, but
mints nothing on its own (``mint``: a quorum of members, see quorum.py) and never moves a
member's tokens: ``transfer`` moves only the sender's own.
"""

from __future__ import annotations

from typing import Any

from ledger.contract import fields as f
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.codes import (
    INSUFFICIENT_FUNDS,
    KEY_IN_USE,
    MEMBER_EXISTS,
    METER_EXISTS,
    NOT_MEMBER,
    NOT_OPERATOR,
    QUORUM_REQUIRED,
    RES_EXISTS,
    ROLE_FORBIDDEN,
    SELF_TRANSFER,
    UNKNOWN_MEMBER,
    Rejected,
)
from ledger.contract.state import ContractState

ROLES = ("consumer", "producer", "prosumer", "operator")
SELLER_ROLES = ("producer", "prosumer")
BUYER_ROLES = ("consumer", "prosumer")
RES_KINDS_MAX = 32
MAX_RATED_POWER_W = 10**8  # 100 MW
# A meter is a member's billing meter, or the community's own meter at its grid connection (the
# feeder or transformer), read by the operator's gateway or signed by the DSO's key.
METER_ROLES = ("member", "feeder")


# what a member's order key may sign for it: its open orders, and its sealed ones (commit, reveal)
ORDER_KINDS = ("auction.offer", "auction.bid", "auction.commit", "auction.reveal")


def sender_member(st: ContractState, tx: Transaction) -> str:
    who = st.member_of(tx.sender)
    if who is None and tx.kind in ORDER_KINDS:
        who = st.orderer_of(tx.sender)
    if who is None:
        raise Rejected(NOT_MEMBER, "the sender's key belongs to no member")
    return who


def sender_operator(st: ContractState, tx: Transaction) -> str:
    who = st.member_of(tx.sender)
    if who is None or st.role(who) != "operator":
        raise Rejected(NOT_OPERATOR, f"{tx.kind} is for the community operator only")
    return who


def known_member(st: ContractState, id_grid: str) -> None:
    if id_grid not in st.data["members"]:
        raise Rejected(UNKNOWN_MEMBER, f"no member {id_grid}")


def member_record(body: Any) -> tuple[str, dict[str, Any]]:
    """``(id_grid, {commitment, public_key, role})`` of an admission (or a genesis member)."""
    f.exact(body, ("id_grid", "commitment", "public_key", "role"))
    id_grid = f.ident(body, "id_grid")
    return id_grid, {
        "commitment": f.digest_hex(body, "commitment"),
        "public_key": f.key_hex(body, "public_key"),
        "role": f.choice(body, "role", ROLES),
        "order_key": None,
    }


def admit(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    id_grid, record = member_record(body)
    sender_operator(st, tx)
    if id_grid in st.data["members"]:
        raise Rejected(MEMBER_EXISTS, f"member {id_grid} already exists")
    if st.key_in_use(record["public_key"]):
        raise Rejected(KEY_IN_USE, "that key belongs to a member or meter, or was retired")
    st.add_member(id_grid, record)
    return {"id_grid": id_grid}


def add_res(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("res_id", "owner", "kind", "rated_power_w"))
    res_id = f.ident(body, "res_id")
    owner = f.ident(body, "owner")
    kind = f.ident(body, "kind")
    rated = f.positive(body, "rated_power_w", MAX_RATED_POWER_W)
    if len(kind) > RES_KINDS_MAX:
        raise Rejected("BAD_BODY", f"kind must be at most {RES_KINDS_MAX} characters")
    sender_operator(st, tx)
    known_member(st, owner)
    if st.role(owner) not in SELLER_ROLES:
        raise Rejected(
            ROLE_FORBIDDEN, f"a RES owner must be a producer or prosumer, not {st.role(owner)}"
        )
    if res_id in st.data["res"]:
        raise Rejected(RES_EXISTS, f"RES {res_id} already exists")
    st.data["res"][res_id] = {"owner": owner, "kind": kind, "rated_power_w": rated}
    return {"res_id": res_id}


METER_FIELDS = ("meter_id", "owner", "gateway_key", "import_limit_w", "export_limit_w")


def add_meter(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """A meter with its connection's physical limits: the contracted import power and the
    inverter's (or the connection's) export limit, in W. Reports are held to limit x interval.
    ``role`` is ``member`` (the default, a billing meter) or ``feeder`` (the community's grid
    connection, owned by an operator; its reports balance the members' and bill nobody)."""
    body = tx.body
    f.exact(body, (*METER_FIELDS, "role") if "role" in body else METER_FIELDS)
    meter_id = f.ident(body, "meter_id")
    owner = f.ident(body, "owner")
    gateway_key = f.key_hex(body, "gateway_key")
    import_limit = f.non_negative(body, "import_limit_w", MAX_RATED_POWER_W)
    export_limit = f.non_negative(body, "export_limit_w", MAX_RATED_POWER_W)
    role = f.choice(body, "role", METER_ROLES) if "role" in body else "member"
    sender_operator(st, tx)
    known_member(st, owner)
    if role == "feeder" and st.role(owner) != "operator":
        raise Rejected(ROLE_FORBIDDEN, f"a feeder meter belongs to an operator, not {owner}")
    if meter_id in st.data["meters"]:
        raise Rejected(METER_EXISTS, f"meter {meter_id} already exists")
    if st.key_in_use(gateway_key):  # a wallet key would let a stolen gateway spend
        raise Rejected(KEY_IN_USE, "gateway_key belongs to a member or meter, or was retired")
    st.add_meter(
        meter_id,
        {
            "owner": owner,
            "gateway_key": gateway_key,
            "import_limit_w": import_limit,
            "export_limit_w": export_limit,
            "role": role,
        },
    )
    st.data["unconfirmed_meters"][meter_id] = ctx.height  # reports wait for the owner's consent
    return {"meter_id": meter_id}


def mint(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    """The operator's mint of old: refused. Supply is fixed in the genesis; more is minted only
    by a proposal a quorum of members approves (``quorum.propose`` / ``quorum.approve``)."""
    raise Rejected(QUORUM_REQUIRED, "tokens are minted only with a quorum of members' approval")


def transfer(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("to", "amount"))
    to = f.ident(body, "to")
    amount = f.positive(body, "amount", f.MAX_AMOUNT)
    sender = sender_member(st, tx)
    known_member(st, to)
    if to == sender:
        raise Rejected(SELF_TRANSFER, "cannot transfer to oneself")
    have = st.balance(sender)
    if have < amount:
        raise Rejected(INSUFFICIENT_FUNDS, f"balance {have} < amount {amount}")
    st.debit(sender, amount)
    st.credit(to, amount)
    return {"from": sender, "to": to, "amount": amount, "balance": have - amount}
