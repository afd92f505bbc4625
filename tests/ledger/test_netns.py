"""Keys held where they are used: each replica on its own "host" (a Linux network namespace
with its own address on a bridge), its key made there with ``ledger keygen``; ``cluster.json``
assembled from public keys and addresses with ``ledger genesis``; no directory ever holds
another's secret. The cluster commits, the operator's own mint is refused, a meter key cannot
spend, and a member's personal data, held off the chain by the operator, is erased with every
replica still agreeing and every chain verifying.

Needs root and ``ip netns`` (iproute2); skipped, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ledger.cli import _statuses
from ledger.cluster import load_cluster
from ledger.keys import load_key, new_key, public_hex
from ledger.personal import PersonalStore
from ledger_client.client import LedgerClient, RejectedError

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 4
PORT = 7400

pytestmark = pytest.mark.timeout(300)


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)


@dataclass
class Hosts:
    """A bridge in this namespace (the operator's host) and one namespace per replica."""

    tag: str
    subnet: str  # "10.213.N"
    base: Path
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{i + 1}"

    def host_dir(self, i: int) -> Path:
        return self.base / f"host-{i}"

    def make(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        _run("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i in range(REPLICAS):
            ns, inside, outside = f"{self.tag}-{i}", f"{self.tag}h{i}", f"{self.tag}b{i}"
            _run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            _run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
            self.links.append(outside)
            _run("ip", "link", "set", inside, "netns", ns)
            _run("ip", "link", "set", outside, "master", self.bridge, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.address(i)}/24",
                 "dev", inside)  # fmt: skip
            _run("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def python(self, i: int | None, *args: str) -> list[str]:
        """``python -m ...`` on host i (inside its namespace), or on the operator's (None)."""
        cmd = [sys.executable, *args]
        return cmd if i is None else ["ip", "netns", "exec", self.namespaces[i], *cmd]

    def start(self, i: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log = open(self.base / f"replica-{i}.log", "wb")  # noqa: SIM115 - the process keeps it
        self.procs[i] = subprocess.Popen(
            self.python(i, "-m", "ledger", "run", "--dir", str(self.host_dir(i)),
                        "--replica", str(i)),
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def remove(self) -> None:
        self.stop()
        for ns in self.namespaces:  # deleting a namespace deletes the veth end inside it
            _run("ip", "netns", "del", ns, check=False)
        for link in reversed(self.links):
            _run("ip", "link", "del", link, check=False)


def _namespaces_or_skip(tag: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("network namespaces need iproute2's `ip`")
    probe = _run("ip", "netns", "add", f"{tag}-probe", check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.strip()}")
    _run("ip", "netns", "del", f"{tag}-probe", check=False)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    tag = f"wm{os.getpid() % 100000}"  # interface names stay under 16 characters
    _namespaces_or_skip(tag)
    h = Hosts(tag, f"10.213.{os.getpid() % 250}", tmp_path_factory.mktemp("hosts"))
    try:
        h.make()
        yield h
    finally:
        h.remove()
        left = _run("ip", "netns", "list").stdout
        assert tag not in left, f"namespaces left behind: {left}"


@pytest.fixture(scope="module")
def cluster(hosts: Hosts) -> Path:
    """Each host makes its key, the operator assembles cluster.json from public keys, each
    host gets that public file, and the replicas start, one per namespace."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    specs = []
    for i in range(REPLICAS):
        out = subprocess.run(
            hosts.python(i, "-m", "ledger", "keygen", "--dir", str(hosts.host_dir(i)),
                         "--replica", str(i)),
            env=env, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        public = json.loads(out.stdout)["public_key"]
        specs += ["--replica", f"{hosts.address(i)}:{PORT}:{public}"]
    op_dir = hosts.base / "operator"
    out = subprocess.run(
        hosts.python(None, "-m", "ledger", "keygen", "--dir", str(op_dir), "--operator"),
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    subprocess.run(
        hosts.python(None, "-m", "ledger", "genesis", *specs,
                     "--operator-key", json.loads(out.stdout)["public_key_file"],
                     "--treasury", str(10**12), "--view-change-ms", "500",
                     "--out", str(op_dir / "cluster.json")),
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    for i in range(REPLICAS):
        shutil.copy(op_dir / "cluster.json", hosts.host_dir(i) / "cluster.json")
        hosts.start(i)
    return op_dir


async def _wait_ready(hosts: Hosts) -> None:
    deadline = time.monotonic() + 60
    for i in range(REPLICAS):
        while True:
            try:
                socket.create_connection((hosts.address(i), PORT), timeout=1).close()
                break
            except OSError:
                assert hosts.procs[i].poll() is None, f"replica {i} exited"
                assert time.monotonic() < deadline, f"replica {i} never listened"
                await asyncio.sleep(0.1)  # polling a real process's port


async def _converged(hosts: Hosts) -> list[dict[str, Any]]:
    """Every replica's status once all four are at one height with one state digest."""
    addresses = [(hosts.address(i), PORT) for i in range(REPLICAS)]
    deadline = time.monotonic() + 60
    while True:
        statuses = await _statuses(addresses, 2.0)
        if all("error" not in s for s in statuses) and (
            len({(s["height"], s["state_digest"]) for s in statuses}) == 1
        ):
            return statuses
        assert time.monotonic() < deadline, f"replicas never agreed: {statuses}"
        await asyncio.sleep(0.2)  # polling real replicas


def test_each_host_holds_only_its_own_secret(hosts: Hosts, cluster: Path) -> None:
    for i in range(REPLICAS):
        secrets = sorted(p.name for p in hosts.host_dir(i).iterdir() if p.suffix == ".key")
        assert secrets == [f"replica-{i}.key"]
        assert (hosts.host_dir(i) / f"replica-{i}.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in cluster.iterdir() if p.suffix == ".key") == ["operator.key"]
    doc = load_cluster(cluster / "cluster.json")
    assert [r.host for r in doc.replicas] == [hosts.address(i) for i in range(REPLICAS)]
    for i, r in enumerate(doc.replicas):
        assert r.public_key.hex() == public_hex(load_key(hosts.host_dir(i) / f"replica-{i}.key"))
    # nothing secret in the public file: no key file's content appears in it
    text = (cluster / "cluster.json").read_text()
    for path in [*hosts.base.glob("host-*/*.key"), cluster / "operator.key"]:
        assert path.read_text().strip() not in text


async def test_separate_hosts_commit_and_the_operators_powers_are_bounded(
    hosts: Hosts, cluster: Path
) -> None:
    await _wait_ready(hosts)
    operator = load_key(cluster / "operator.key")
    wallet, meter = new_key(), new_key()
    path = cluster / "cluster.json"
    async with LedgerClient.from_cluster_file(path, operator, timeout_s=60) as op:
        admit = {"id_grid": "PT0001", "commitment": "ab" * 32,
                 "public_key": public_hex(wallet), "role": "prosumer"}  # fmt: skip
        assert (await op.submit_new("registry.admit", admit)).ok
        meter_body = {"meter_id": "m1", "owner": "PT0001", "gateway_key": public_hex(wallet),
                      "import_limit_w": 6_900, "export_limit_w": 3_680}  # fmt: skip
        refused = await op.submit_new("registry.add_meter", meter_body)
        assert refused.code == "KEY_IN_USE"  # a gateway never holds the wallet key
        meter_body["gateway_key"] = public_hex(meter)
        assert (await op.submit_new("registry.add_meter", meter_body)).ok
        assert (await op.submit_new("token.transfer", {"to": "PT0001", "amount": 1_000})).ok
        minted = await op.submit_new("token.mint", {"to": "OPERATOR", "amount": 10**15})
        assert minted.code == "QUORUM_REQUIRED"
    async with LedgerClient.from_cluster_file(path, meter, timeout_s=60) as gw:
        with pytest.raises(RejectedError) as stolen:  # refused before ordering, never stored
            await gw.submit_new("token.transfer", {"to": "OPERATOR", "amount": 1_000})
        assert stolen.value.code == "NOT_ADMITTED"
    async with LedgerClient.from_cluster_file(path, wallet, timeout_s=60) as member:
        assert (await member.submit_new("meter.confirm", {"meter_id": "m1"})).ok
        paid = await member.submit_new("token.transfer", {"to": "OPERATOR", "amount": 400})
        assert paid.ok and paid.result["balance"] == 600
        assert (await member.query("grid"))["supply"] == 10**12
    statuses = await _converged(hosts)
    assert statuses[0]["height"] >= 6


async def test_personal_data_erased_and_replicas_still_agree(hosts: Hosts, cluster: Path) -> None:
    await _wait_ready(hosts)
    operator = load_key(cluster / "operator.key")
    register = cluster / "personal.sqlite"
    name, email = "Ana Quintela Sobral", "ana.sobral@example.org"
    with PersonalStore(register) as personal:
        commitment, _opening = personal.add("PT0002", name, email, "Rua das Flores 7, Porto")
    assert register.stat().st_mode & 0o777 == 0o600
    path = cluster / "cluster.json"
    async with LedgerClient.from_cluster_file(path, operator, timeout_s=60) as op:
        admit = {"id_grid": "PT0002", "commitment": commitment,
                 "public_key": public_hex(new_key()), "role": "consumer"}  # fmt: skip
        assert (await op.submit_new("registry.admit", admit)).ok
        member = await op.query("member", id_grid="PT0002")
        assert member["commitment"] == commitment and "name" not in member
        before = await _converged(hosts)
        with PersonalStore(register) as personal:  # the member leaves and asks for erasure
            assert personal.erase("PT0002") and personal.get("PT0002") is None
        assert (await op.submit_new("token.transfer", {"to": "PT0002", "amount": 5})).ok
    after = await _converged(hosts)
    assert after[0]["height"] > before[0]["height"]
    left = register.read_bytes()
    assert name.encode() not in left and email.encode() not in left
    hosts.stop()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for i in range(REPLICAS):
        stores = list(hosts.host_dir(i).glob("replica-*.sqlite*"))
        assert stores
        for store in stores:  # the personal data never reached any replica's disk
            raw = store.read_bytes()
            assert name.encode() not in raw and email.encode() not in raw
        verified = subprocess.run(
            hosts.python(i, "-m", "ledger", "verify", "--dir", str(hosts.host_dir(i)),
                         "--replica", str(i)),
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["ok"] is True
