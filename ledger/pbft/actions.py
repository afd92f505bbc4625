"""What the core asks its IO layer to do. The IO layer performs them in the order returned."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.pbft.block import Block
from ledger.pbft.executor import Receipt
from ledger.pbft.messages import Blocks, Message, Reply


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` (``msg.to_wire()``) to replica ``to``."""

    to: int
    msg: Message | Blocks


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``msg`` to every other replica."""

    msg: Message


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Route ``reply`` to the client connection(s) waiting for ``tx_id`` (drop if none)."""

    tx_id: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class Executed:
    """A block was executed and stored (informational: metrics, subscribers, logs)."""

    block: Block
    receipts: tuple[Receipt, ...]


Action = Send | Broadcast | ReplyTo | Executed
