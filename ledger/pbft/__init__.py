"""PBFT consensus core (sans-IO): see README.md for the API and how the IO layer drives it."""

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
from ledger.pbft.messages import (
    Blocks,
    Checkpoint,
    Commit,
    FetchBlocks,
    Message,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Reply,
    Request,
    Status,
    ViewChange,
    parse,
)
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
    "Blocks",
    "Broadcast",
    "Certificate",
    "Checkpoint",
    "Commit",
    "Executed",
    "Executor",
    "FetchBlocks",
    "Keyring",
    "MemoryExecutor",
    "Message",
    "NewView",
    "PbftConfig",
    "PbftConfigError",
    "PrePrepare",
    "Prepare",
    "PreparedProof",
    "ReceiptWire",
    "Replica",
    "ReplicaInfo",
    "Reply",
    "ReplyTo",
    "Request",
    "Send",
    "Signer",
    "Status",
    "ViewChange",
    "WireError",
    "batch_digest",
    "block_hash",
    "checkpoint_digest",
    "parse",
]
