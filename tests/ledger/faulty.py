"""Byzantine replicas for the fault tests: a correct ``Replica`` with a fault around it.

The consensus core carries no fault injection; a test runs one of these classes instead of
``Replica`` (``Network(faults={i: SilentReplica})`` in the simulated network), or, for real
processes, a replica started as

    python -m tests.ledger.faulty --fault equivocate --dir D --replica I [--contract M:F]

which is ``wattmesh ledger run`` with that class as its core.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ledger.cli import DEFAULT_CONTRACT
from ledger.node import ReplicaNode, tune_gc
from ledger.pbft.actions import Action, Broadcast, Send
from ledger.pbft.block import Batch
from ledger.pbft.messages import Message, PrePrepare, sign
from ledger.pbft.replica import Replica
from ledger.setup import load_factory
from ledger.tx import SignedTx


class SilentReplica(Replica):
    """Connected but mute: takes no event in, sends nothing (a crash the links do not see)."""

    def on_request(self, tx: SignedTx | dict[str, Any], now_ms: int, **kw: Any) -> list[Action]:
        return []

    def on_requests(self, txs: Sequence[SignedTx], now_ms: int) -> list[Action]:
        return []

    def on_message(self, msg: Message | dict[str, Any], sender: int, now_ms: int) -> list[Action]:
        return []

    def on_tick(self, now_ms: int) -> list[Action]:
        return []


class EquivocatingReplica(Replica):
    """As primary, proposes a different batch (another timestamp) to every backup: each of its
    pre-prepares leaves as one per backup, the k-th backup's stamped k ms later."""

    def on_request(self, tx: SignedTx | dict[str, Any], now_ms: int, **kw: Any) -> list[Action]:
        return self._equivocate(super().on_request(tx, now_ms, **kw))

    def on_requests(self, txs: Sequence[SignedTx], now_ms: int) -> list[Action]:
        return self._equivocate(super().on_requests(txs, now_ms))

    def on_message(self, msg: Message | dict[str, Any], sender: int, now_ms: int) -> list[Action]:
        return self._equivocate(super().on_message(msg, sender, now_ms))

    def on_tick(self, now_ms: int) -> list[Action]:
        return self._equivocate(super().on_tick(now_ms))

    def _equivocate(self, actions: list[Action]) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            pp = action.msg if isinstance(action, Broadcast) else None
            if not isinstance(pp, PrePrepare) or pp.batch is None or pp.replica != self.me:
                out.append(action)
                continue
            batch = pp.batch
            backups = [r for r in range(self.cfg.n) if r != self.me]
            for k, backup in enumerate(backups):
                other = Batch(batch.timestamp_ms + k, batch.txs, batch.wires)
                signed = sign(PrePrepare(pp.view, pp.seq, other.digest(), self.me), self.signer)
                proposal = PrePrepare(pp.view, pp.seq, signed.digest, self.me, signed.sig, other)
                out.append(Send(backup, proposal))
        return out


FAULTS: dict[str, type[Replica]] = {"silent": SilentReplica, "equivocate": EquivocatingReplica}


async def _serve(
    directory: Path, replica: int, contract: str, core: type[Replica], port: int | None
) -> None:
    node = ReplicaNode(directory, replica, load_factory(contract), core=core, listen_port=port)
    tune_gc()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop)
    await node.run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.ledger.faulty")
    p.add_argument("--fault", choices=sorted(FAULTS), required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--replica", type=int, required=True)
    p.add_argument("--contract", default=DEFAULT_CONTRACT)
    p.add_argument("--listen-port", type=int, default=None)
    args = p.parse_args(argv)
    core = FAULTS[args.fault]
    asyncio.run(_serve(args.dir, args.replica, args.contract, core, args.listen_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
