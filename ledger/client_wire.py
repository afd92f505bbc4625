"""The parts of the client protocol a replica itself speaks: a receipt's wire form and the
prefix of the queries a replica answers, and what a client signs to prove its key on a
connection (``hello``) (rather than its contract).

Defined here, on the replica's side, so that ``ledger`` never imports ``ledger_client``; the
client protocol (``ledger_client.protocol``) takes them from here.
"""

from __future__ import annotations

from typing import Any

from ledger.contract.api import Receipt
from ledger.encoding import canonical

LEDGER_QUERY_PREFIX = "ledger."
HELLO_DOMAIN = b"wattmesh/client-hello/v1\x00"


def hello_bytes(nonce: str, replica: int, key_hex: str) -> bytes:
    """What a client signs to authenticate one connection: the replica's fresh challenge bound
    to that replica and the key (so the proof is good for this connection only)."""
    body = {"key": key_hex, "nonce": nonce, "replica": replica}
    return HELLO_DOMAIN + canonical(body, checked=False)


def receipt_to_wire(receipt: Receipt) -> dict[str, Any]:
    return {"code": receipt.code, "result": dict(receipt.result), "message": receipt.message}


def receipt_from_wire(wire: Any) -> Receipt:
    if not isinstance(wire, dict):
        raise ValueError("receipt must be an object")
    if not receipt_is_wire(wire):
        raise ValueError("receipt must have code (str), result (object) and message (str)")
    return Receipt(code=wire["code"], result=wire["result"], message=wire["message"])


def receipt_is_wire(wire: Any) -> bool:
    """``receipt_from_wire`` would accept it (checked without building the ``Receipt``: the
    client checks every reply of every replica)."""
    return (
        isinstance(wire, dict)
        and isinstance(wire.get("code"), str)
        and isinstance(wire.get("result"), dict)
        and isinstance(wire.get("message"), str)
    )
