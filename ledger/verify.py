"""Re-checking a stored chain from disk (``wattmesh ledger verify``): heights without gaps, each
block's hash recomputed from its contents, each block linked to the one before, and each commit
certificate signed by a quorum of replicas for exactly that block's batch at that height."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ledger.executor import decode_block
from ledger.pbft.block import GENESIS_HASH, Block
from ledger.pbft.signing import Keyring
from ledger.store import BlockRow, StoreError


def certificate_checker(keyring: Keyring, quorum: int) -> Callable[[Block], bool]:
    def check(block: Block) -> bool:
        cert = block.certificate
        return (
            cert is not None
            and cert.seq == block.height
            and cert.digest == block.batch_digest()
            and cert.verify(keyring, quorum)
        )

    return check


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
