"""PBFT consensus core (sans-IO): see README.md for the API and how the IO layer drives it.

The face a driver needs; the consensus messages are imported from ``ledger.pbft.messages``,
their one home (a second list of them here would be one more to keep in step)."""

from ledger.pbft.actions import Action, BlockReplies, Broadcast, Executed, ReplyTo, Send
from ledger.pbft.backend import Executor, ReceiptWire
from ledger.pbft.block import (
    GENESIS_HASH,
    NULL_DIGEST,
    Batch,
    Block,
    Certificate,
    batch_digest,
    block_hash,
)
from ledger.pbft.checkpoints import checkpoint_digest
from ledger.pbft.config import PbftConfig, PbftConfigError, ReplicaInfo
from ledger.pbft.memory import MemoryExecutor
from ledger.pbft.replica import Replica
from ledger.pbft.signing import Keyring, Signer
from ledger.pbft.wire import WireError

__all__ = [
    "GENESIS_HASH",
    "NULL_DIGEST",
    "Action",
    "Batch",
    "Block",
    "BlockReplies",
    "Broadcast",
    "Certificate",
    "Executed",
    "Executor",
    "Keyring",
    "MemoryExecutor",
    "PbftConfig",
    "PbftConfigError",
    "ReceiptWire",
    "Replica",
    "ReplicaInfo",
    "ReplyTo",
    "Send",
    "Signer",
    "WireError",
    "batch_digest",
    "block_hash",
    "checkpoint_digest",
]
