"""Re-checking a stored chain from disk (``wattmesh ledger verify``): heights without gaps, each
block's hash recomputed from its contents, each block linked to the one before, and each commit
certificate signed by a quorum of replicas for exactly that block's batch at that height: the
replica set of the block's epoch, after reconfigurations (``epochs_of_store``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ledger.encoding import EncodingError, decode
from ledger.executor import decode_block
from ledger.pbft.block import GENESIS_HASH, Block
from ledger.pbft.config import PbftConfig
from ledger.pbft.epochs import Epochs
from ledger.pbft.signing import Keyring
from ledger.store import BlockRow, BlockStore, StoreError

MAX_SNAPSHOT_BYTES = 1 << 30  # the replica's own snapshot (as the contract reads it back)


def certificate_checker(
    keyring: Keyring, quorum: int, epochs: Epochs | None = None
) -> Callable[[Block], bool]:
    """A block's certificate check: ``keyring`` and ``quorum``, or with ``epochs`` those of the
    epoch that ordered the block."""

    def check(block: Block) -> bool:
        cert = block.certificate
        ring, need = keyring, quorum
        if epochs is not None:
            epoch = epochs.at(block.height)
            ring, need = epoch.keyring, epoch.config.quorum
        return (
            cert is not None
            and cert.seq == block.height
            and cert.digest == block.batch_digest()
            and cert.verify(ring, need)
        )

    return check


def epochs_of_store(store: BlockStore, config: PbftConfig) -> Epochs:
    """The epochs a store's chain went through: the cluster file's set, then the replica sets
    recorded in its newest contract snapshot (a snapshot is taken at every checkpoint, and a set
    takes effect at a checkpoint after its block, so it holds every set a stored block needs).
    A contract without replica sets (the IO tests' toy): the cluster file's only."""
    epochs = Epochs(config)
    snapshot = store.latest_checkpoint()
    if snapshot is None:
        return epochs
    try:
        data = decode(snapshot.snapshot, strict=False, max_bytes=MAX_SNAPSHOT_BYTES)
    except EncodingError:
        return epochs
    sets = data.get("replica_sets") if isinstance(data, dict) else None
    if isinstance(sets, list):
        changes = [c for c in sets if isinstance(c, dict)]
        epochs.learn([(c.get("height", 0), c.get("replicas", [])) for c in changes])
    return epochs


def verify_chain(rows: Iterator[BlockRow], check_cert: Callable[[Block], bool]) -> list[str]:
    """Re-check a stored chain: heights without gaps, hashes recomputed from the contents, each
    block linked to the one before, each certificate valid for its block. Returns the breaks."""
    problems: list[str] = []
    prev_hash, expected = GENESIS_HASH, 1
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except StoreError as exc:
            problems.append(str(exc))
            break
        if row.height != expected:
            problems.append(f"block {row.height}: expected height {expected}")
        try:
            block = decode_block(row)
        except StoreError as exc:
            problems.append(str(exc))
            expected = row.height + 1
            prev_hash = row.hash
            continue
        if block.height != row.height:
            problems.append(f"block {row.height}: body says height {block.height}")
        if block.prev_hash != prev_hash or row.prev_hash != prev_hash:
            problems.append(f"block {row.height}: does not link to the previous block")
        if block.hash() != row.hash:
            problems.append(f"block {row.height}: hash does not match its contents")
        if not check_cert(block):
            problems.append(f"block {row.height}: commit certificate does not verify")
        prev_hash, expected = row.hash, row.height + 1
    return problems
