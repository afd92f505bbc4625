"""What the core asks its IO layer to do. The IO layer performs them in the order returned."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ledger.pbft.backend import ReceiptWire
from ledger.pbft.block import Block
from ledger.pbft.config import ReplicaInfo
from ledger.pbft.messages import Blocks, Message, Reply


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` (``msg.to_wire()``) to replica ``to``."""

    to: int
    msg: Message | Blocks


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``msg`` to every other replica this one talks to (``Replica.peers()``)."""

    msg: Message


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Route ``reply`` to the client connection(s) waiting for ``tx_id`` (drop if none)."""

    tx_id: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class BlockReplies:
    """The replies of an executed block: ``receipts[k]`` answers ``tx_ids[k]``, each routed as a
    ``ReplyTo`` would be. One action per block: a ``ReplyTo`` and a ``Reply`` built for each of
    its transactions cost the replica more than routing the replies does."""

    view: int
    height: int
    replica: int
    tx_ids: tuple[str, ...]
    receipts: tuple[ReceiptWire, ...]

    def replies(self) -> Iterator[ReplyTo]:
        """The same replies one by one."""
        for tx_id, receipt in zip(self.tx_ids, self.receipts, strict=True):
            yield ReplyTo(tx_id, Reply(self.view, tx_id, self.height, receipt, self.replica))


@dataclass(frozen=True, slots=True)
class Executed:
    """A block was executed and stored (informational: metrics, subscribers, logs)."""

    block: Block
    receipts: tuple[ReceiptWire, ...]


@dataclass(frozen=True, slots=True)
class Peers:
    """The replicas this one talks to changed (a reconfiguration, see ``ledger.pbft.epochs``):
    links to each of ``replicas`` (and only those), and links from them only, are accepted."""

    replicas: tuple[ReplicaInfo, ...]


Action = Send | Broadcast | ReplyTo | BlockReplies | Executed | Peers
