"""Measure the consensus core's CPU cost per committed transaction in the simulated network.

    python3 -m ledger.pbft.measure [--txs N] [--batch B] [--replicas N]

Prints JSON. Runs all replicas in one process on the simulated clock, so the figure is the sum
over replicas of core CPU time (plus the in-memory executor), divided by committed
transactions. Three runs: client signatures checked by the core (the primary on request,
each backup in the pre-prepare), requests pre-verified by the IO layer (``verified=True`` and
``tx_id`` at every replica: the protocol's own overhead), and the latter with every message
going through canonical bytes (adds the encoding the IO layer does). The in-memory executor's
cost is included in all three.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ledger.pbft.simulation import Network, make_config, make_txs


def run(n: int, txs: int, batch: int, *, verify: bool, wire: bool) -> dict[str, Any]:
    cfg = make_config(n, batch_max=batch, batch_delay_ms=2, checkpoint_interval=64, log_window=256)
    net = Network(cfg, wire=wire, delay=(1, 1))
    for replica in net.replicas:
        replica.relay_requests = False
    signed = make_txs(txs)
    ids = [tx.tx_id for tx in signed]
    start = time.process_time()
    for i, tx in enumerate(signed):
        if verify:  # as the ledger client does: the full request to the primary only
            net.submit(tx, to=[0])
        else:  # signatures checked (and ids computed) by the IO layer at every replica
            net.submit(tx, to=range(n), verified=True, tx_id=ids[i])
        if i % batch == batch - 1:
            net.run(1)
    net.run(100)
    cpu = time.process_time() - start
    committed = sum(net.committed(tx_id) for tx_id in ids)
    if committed != txs:
        raise RuntimeError(f"only {committed} of {txs} transactions committed")
    return {
        "replicas": n,
        "txs": txs,
        "batch_max": batch,
        "client_signatures_checked_by_core": verify,
        "through_canonical_bytes": wire,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_tx_all_replicas": round(cpu / txs * 1e6, 1),
        "cpu_us_per_tx_per_replica": round(cpu / txs / n * 1e6, 1),
        "blocks": net.replicas[0].last_executed,
        "messages": net.sent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--txs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--replicas", type=int, default=4)
    args = parser.parse_args()
    results = [
        run(args.replicas, args.txs, args.batch, verify=True, wire=False),
        run(args.replicas, args.txs, args.batch, verify=False, wire=False),
        run(args.replicas, args.txs, args.batch, verify=False, wire=True),
    ]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
