"""Keys changed on chain: a member's wallet and order keys, a meter's reporting key.

A wallet key spends (transfers, orders, votes); a meter's reporting key (held by the home's
gateway) only reports; an order key, which a member may delegate to its gateway's trading agent,
signs only that member's offers and bids, open or sealed (``registry.ORDER_KINDS``): it buys
and sells energy in the tariff band, never transfers a token, votes or changes a key. All are
distinct keys (``ContractState.key_in_use`` spans them), and a key that was rotated away or
revoked is retired for good, so a stolen key never comes back.

| kind | body | who |
| --- | --- | --- |
| ``member.rotate_key`` | ``public_key`` | the member, signing with its current key |
| ``member.revoke_key`` | ``id_grid`` | the member itself, or the operator (freezes the account) |
| ``member.set_order_key`` | ``id_grid, public_key`` (null: none) | the member; operator: clear |
| ``meter.confirm`` | ``meter_id`` | the meter's owner (wallet key) |
| ``meter.rotate_key`` | ``meter_id, gateway_key`` | the meter's owner (wallet key) |
| ``meter.revoke`` | ``meter_id`` | the meter's owner, or the operator (a stolen gateway) |

A revoked member keeps its tokens; nobody can move them until a quorum of members gives it a new
key (``quorum.py``, action ``rekey``). The operator can stop a key, never choose one.

A meter the operator registers (``registry.add_meter``) takes no report until its owner confirms
it (``meter.confirm``) or sets its key (``meter.rotate_key``): reports bill the owner at
settlement, so without that consent an operator holding a meter key of its own choosing could
move a member's tokens to the grid account.
"""

from __future__ import annotations

from typing import Any

from ledger.contract import fields as f
from ledger.contract.api import BlockContext, Transaction
from ledger.contract.codes import (
    KEY_IN_USE,
    KEY_REVOKED,
    METER_CONFIRMED,
    NOT_OWNER,
    UNKNOWN_METER,
    Rejected,
)
from ledger.contract.registry import known_member, sender_member
from ledger.contract.state import ContractState

IN_USE = "that key belongs to a member or meter, or was retired"


def rotate_member_key(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("public_key",))
    new = f.key_hex(body, "public_key")
    who = sender_member(st, tx)
    if st.key_in_use(new):
        raise Rejected(KEY_IN_USE, IN_USE)
    st.set_member_key(who, new, ctx.height)
    return {"id_grid": who, "public_key": new}


def revoke_member_key(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("id_grid",))
    target = f.ident(body, "id_grid")
    who = sender_member(st, tx)
    known_member(st, target)
    if who != target and st.role(who) != "operator":
        raise Rejected(NOT_OWNER, "only the member itself or the operator revokes its key")
    if st.data["members"][target]["public_key"] is None:
        raise Rejected(KEY_REVOKED, f"the key of {target} is already revoked")
    st.set_member_key(target, None, ctx.height)
    st.set_order_key(target, None, ctx.height)  # a frozen account places no orders either
    return {"id_grid": target}


def set_order_key(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("id_grid", "public_key"))
    target = f.ident(body, "id_grid")
    new = None if body["public_key"] is None else f.key_hex(body, "public_key")
    who = sender_member(st, tx)
    known_member(st, target)
    if who != target and not (new is None and st.role(who) == "operator"):
        raise Rejected(NOT_OWNER, "a member sets its own order key (the operator may clear one)")
    if new is not None and st.key_in_use(new):
        raise Rejected(KEY_IN_USE, IN_USE)
    st.set_order_key(target, new, ctx.height)
    return {"id_grid": target, "order_key": new}


def _meter(st: ContractState, tx: Transaction, body: Any, operator_may: bool) -> str:
    meter_id = f.ident(body, "meter_id")
    who = sender_member(st, tx)
    meter = st.data["meters"].get(meter_id)
    if meter is None:
        raise Rejected(UNKNOWN_METER, f"no meter {meter_id}")
    if who != meter["owner"] and not (operator_may and st.role(who) == "operator"):
        allowed = "its owner or the operator" if operator_may else "its owner"
        raise Rejected(NOT_OWNER, f"the key of {meter_id} is changed only by {allowed}")
    return meter_id


def confirm_meter(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("meter_id",))
    meter_id = _meter(st, tx, body, operator_may=False)
    if meter_id not in st.data["unconfirmed_meters"]:
        raise Rejected(METER_CONFIRMED, f"{meter_id} is already confirmed")
    del st.data["unconfirmed_meters"][meter_id]
    return {"meter_id": meter_id, "gateway_key": st.data["meters"][meter_id]["gateway_key"]}


def rotate_meter_key(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("meter_id", "gateway_key"))
    new = f.key_hex(body, "gateway_key")
    meter_id = _meter(st, tx, body, operator_may=False)
    if st.key_in_use(new):
        raise Rejected(KEY_IN_USE, IN_USE)
    st.set_meter_key(meter_id, new, ctx.height)
    st.data["unconfirmed_meters"].pop(meter_id, None)  # a key the owner chose is its consent
    return {"meter_id": meter_id, "gateway_key": new}


def revoke_meter(st: ContractState, tx: Transaction, ctx: BlockContext) -> dict[str, Any]:
    body = tx.body
    f.exact(body, ("meter_id",))
    meter_id = _meter(st, tx, body, operator_may=True)
    if st.data["meters"][meter_id]["gateway_key"] is None:
        raise Rejected(KEY_REVOKED, f"the key of {meter_id} is already revoked")
    st.set_meter_key(meter_id, None, ctx.height)
    return {"meter_id": meter_id}
