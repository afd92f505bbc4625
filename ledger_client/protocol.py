"""The client protocol between ``ledger_client`` and a replica: one definition of its messages.

Frames are ``ledger.framing`` frames (4-byte length + canonical JSON). On connect the replica
sends ``{"t": "challenge", "nonce": <hex>, "replica": i}``. Then:

client -> replica
- ``{"t": "hello", "key": <public key hex>, "sig": <hex>}`` (first, once): the client proves it
  holds ``key`` by signing ``hello_bytes(nonce, replica, key)``; the replica answers its queries
  as that key may read them (the read policy, ledger README) and sends ``{"t": "hello",
  "replica": i, "ok": bool}``. Without it a connection reads as anonymous.
- ``{"t": "request", "tx": <SignedTx wire>}``: order and execute this transaction.
- ``{"t": "requests", "txs": [<SignedTx wire>, ...]}``: the same for up to 1000 transactions
  (the client coalesces what it submits in one turn of its event loop).
- ``{"t": "await", "tx_ids": [<hex>, ...]}`` (or ``"tx_id": <hex>``): send me the reply for these
  transactions when they execute (sent to the replicas that did not get the full request, so
  they know where to reply; answered at once for one already executed).
- ``{"t": "query", "id": <int>, "path": <str>, "params": {...}}``: read-only query. Paths starting
  with ``ledger.`` are answered by the replica (``ledger.height``, ``ledger.block`` {height},
  ``ledger.receipt`` {tx_id}, ``ledger.status``, ``ledger.replicas``: the replica set ordering
  the ledger, ``{"epoch", "since", "f", "replicas": [{"id", "host", "port", "public_key"}]}``);
  any other path goes to the contract.

replica -> client
- ``{"t": "reply", "r": i, "v": view, "tx": <tx_id hex>, "h": height,
  "receipt": {"code", "result", "message"}}``: the transaction executed in block h (the core's
  ``ledger.pbft.messages.Reply``).
- ``{"t": "replies", "replies": [<reply>, ...]}``: up to 1000 replies in one frame (a replica
  sends a block's replies for one client connection together; a single one goes as ``reply``).
- ``{"t": "reject", "replica": i, "tx_id": <hex>, "code": <str>, "message": <str>}``: the replica
  refuses the request before ordering it: `MALFORMED_TX`, `BAD_SIGNATURE`, or admission's
  `NOT_ADMITTED`, `UNKNOWN_KIND`, `TX_TOO_LARGE`, `OVER_LIMIT`, `APPLICATION_EXISTS`,
  `APPLICATIONS_FULL` (ledger README, "Admission").
- ``{"t": "answer", "replica": i, "id": <int>, "ok": bool, "value": ..., "error": <str>}``.
- ``{"t": "want", "replica": i, "tx_ids": [<hex>, ...]}``: send me these transactions in full
  (ones this client awaited at that replica which it has neither received nor seen in a
  pre-prepare for half a view-change timeout; holding them, it can time a stalled primary out).
  The client answers with ``requests`` for those it still waits for, and ignores the others.

A client frame is at most ``ledger.limits.MAX_CLIENT_FRAME`` (1 MiB) long; a replica closes a
connection that sends a longer one, sends nothing for ``limits.client_idle_ms`` (the client
reconnects and announces again what it waits for), or leaves too many replies unread.

A client accepts a result once f+1 replicas sent the same one: at least one of them is correct.
"""

from __future__ import annotations

from typing import Any

from ledger.client_wire import (
    HELLO_DOMAIN,
    LEDGER_QUERY_PREFIX,
    hello_bytes,
    receipt_from_wire,
    receipt_is_wire,
    receipt_to_wire,
)
from ledger.encoding import canonical

# the receipt's wire form, the hello and the query prefix are the replica's (ledger.client_wire)
__all__ = [
    "HELLO_DOMAIN",
    "LEDGER_QUERY_PREFIX",
    "answer_key",
    "hello_bytes",
    "receipt_from_wire",
    "receipt_is_wire",
    "receipt_to_wire",
    "reply_key",
]


def reply_key(message: dict[str, Any]) -> bytes:
    """What f+1 replies must agree on: the transaction, the block, and its receipt."""
    return canonical([message.get("tx"), message.get("h"), message.get("receipt")], checked=False)


def answer_key(message: dict[str, Any]) -> bytes:
    """What f+1 query answers must agree on. A block's commit certificate is left out: each
    replica holds its own 2f+1 of the commits, all valid, so certificates differ while the block
    (height, previous hash, timestamp, transactions) is the same."""
    value = message.get("value")
    if isinstance(value, dict) and "cert" in value and "prev" in value:
        value = {k: v for k, v in value.items() if k != "cert"}
    return canonical([message.get("ok"), value, message.get("error")], checked=False)
