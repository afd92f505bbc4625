"""Replicas on separate hosts (``tools.hosts``: a network namespace each, or a loopback address
each where namespaces cannot be made) with every replica-to-replica link shaped
(``tools.netem``): real replica processes commit, the cluster file names the hosts, the relay
saw every directed pair, and nothing is left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.cli import _statuses
from ledger.cluster import load_cluster
from ledger.keys import new_key
from ledger.setup import init_cluster
from ledger_client.client import LedgerClient
from tools.hosts import make_hosts, relay_routes
from tools.netem import ShapedRelay, parse_link, uniform_plan

ROOT = Path(__file__).resolve().parents[2]
TOY = "tests.ledger.toy_contract:make_contract"

pytestmark = pytest.mark.timeout(240)


def test_loopback_fallback_gives_distinct_addresses_and_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    hosts = make_hosts(7, namespaces=False)
    assert hosts.mode == "loopback" and len(set(hosts.addresses)) == 7
    assert all(a.startswith("127.") for a in hosts.addresses)
    assert "namespaces not asked for" in capsys.readouterr().err
    ports = hosts.ports(2)
    assert all(len(set(p)) == 2 for p in ports)
    assert hosts.command(3, ["true"]) == ["true"]
    hosts.remove()


@pytest.mark.parametrize("namespaces", [True, False], ids=["netns", "loopback"])
async def test_a_cluster_on_separate_hosts_commits_over_shaped_links(
    tmp_path: Path, namespaces: bool
) -> None:
    hosts = make_hosts(4, namespaces=namespaces)
    if namespaces and hosts.mode != "netns":
        hosts.remove()
        pytest.skip(f"no namespaces here: {hosts.reason}")
    procs: list[subprocess.Popen[bytes]] = []
    relay = None
    try:
        ports = hosts.ports(2)
        advertised, private = [p[0] for p in ports], [p[1] for p in ports]
        init_cluster(
            tmp_path,
            4,
            hosts=hosts.addresses,
            ports=advertised,
            timers={"view_change_ms": 1000, "request_timeout_ms": 1000, "status_ms": 200},
            batch={"max_txs": 50, "max_delay_ms": 2},
            genesis={"toy": 1},
        )
        cluster = load_cluster(tmp_path / "cluster.json")
        assert [r.host for r in cluster.replicas] == hosts.addresses
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for i in range(4):
            cmd = [sys.executable, "-m", "ledger", "run", "--dir", str(tmp_path),
                   "--replica", str(i), "--contract", TOY,
                   "--listen-port", str(private[i])]  # fmt: skip
            log = open(tmp_path / f"replica-{i}.log", "wb")  # noqa: SIM115 - the child owns it
            procs.append(subprocess.Popen(hosts.command(i, cmd), env=env, stdout=log,
                                          stderr=subprocess.STDOUT))  # fmt: skip
            log.close()
        relay = ShapedRelay(
            relay_routes(hosts, advertised, private),
            uniform_plan(parse_link("20ms/5ms,2mbit,2%")),
            seed=3,
        )
        await relay.start()
        user = new_key()
        async with LedgerClient.from_cluster_file(
            tmp_path / "cluster.json", user, timeout_s=90, request_timeout_s=2.0
        ) as client:
            receipts = await asyncio.gather(
                *(client.submit_new("toy.add", {"amount": 1}) for _ in range(60))
            )
        assert all(r.ok for r in receipts)
        assert max(r.result["total"] for r in receipts) == 60
        addresses = [(r.host, r.port) for r in cluster.replicas]
        # every directed replica pair goes through the shaper: a replica whose links came up
        # late may have caught up from one peer, but its status gossip (every 200 ms) then
        # crosses each of its links
        pairs = {(i, j) for i in range(4) for j in range(4) if i != j}
        deadline = time.monotonic() + 60
        while True:
            statuses = await _statuses(addresses, 3.0)
            heads = {(s.get("height"), s.get("state_digest")) for s in statuses}
            shaped = {pair for pair, sent in relay.sent.items() if sent}
            # a 2% segment loss over few segments may not have struck yet: the gossip goes on
            # until it has (the shaper dropping nothing for a minute fails the test)
            lossy = sum(relay.lost.values()) > 0
            converged = all("error" not in s for s in statuses) and len(heads) == 1
            if converged and shaped == pairs and lossy:
                break
            assert time.monotonic() < deadline, (statuses, pairs - shaped, relay.lost)
            await asyncio.sleep(0.2)  # polling real replicas
    finally:
        if relay is not None:
            await relay.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        hosts.remove()
    if hosts.tag:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{hosts.tag}-" not in listed
