"""Separate hosts for replicas on one machine: a network namespace each, or a loopback address each.

``make_hosts(n)`` gives each replica its own address. Where it can (root, iproute2's ``ip``, a
kernel that makes namespaces), each replica lives in its own network namespace, joined by a veth
pair to a bridge in this namespace (the operator's host: clients, the link shaper); its address
is ``10.214.X.(i+1)``, the bridge's ``10.214.X.254``. Where it cannot, it falls back to distinct
loopback addresses (``127.Y.X.(i+1)``: all of 127/8 is loopback on Linux) and says why on
stderr. Either way the cluster file names one address per replica.

``Hosts.command(i, argv)`` runs a command on host i (``ip netns exec``), ``Hosts.socket(i)``
makes a TCP socket in host i's network (for ``tools.netem.ShapedRelay``, which listens on each
replica's advertised address), ``Hosts.remove()`` deletes what ``make`` created.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from tools.netem import Route

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"
NETNS_PORT = 7400  # every namespace is empty, so every replica can take the same port
PRIVATE_PORT = 7401  # where a replica listens when the relay holds NETNS_PORT


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=60)


def namespaces_unavailable(tag: str) -> str | None:
    """Why network namespaces cannot be made here, or None when they can (probed for real)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip`"
    probe = _ip("netns", "add", f"{tag}-probe", check=False)
    if probe.returncode != 0:
        return f"cannot make a network namespace here: {probe.stderr.strip()}"
    _ip("netns", "del", f"{tag}-probe", check=False)
    return None


@contextlib.contextmanager
def in_namespace(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name`` (setns(2) through libc:
    ``os.setns`` arrives only in Python 3.12). Sockets made inside stay in that namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"{NETNS_DIR}/{name}", "rb") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail
                err = ctypes.get_errno()
                raise OSError(err, f"setns back: {os.strerror(err)}")


@dataclass
class Hosts:
    """``n`` hosts: their addresses, how to run a command and make a socket on each."""

    n: int
    mode: str  # "netns" or "loopback"
    addresses: list[str]
    tag: str = ""
    reason: str | None = None  # why the loopback fallback was taken
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def command(self, i: int, argv: list[str]) -> list[str]:
        if self.mode == "netns":
            return ["ip", "netns", "exec", self.namespaces[i], *argv]
        return list(argv)

    def socket(self, i: int) -> socket.socket:
        """A TCP socket in host i's network."""
        if self.mode == "netns":
            with in_namespace(self.namespaces[i]):
                return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def ports(self, count: int = 1) -> list[list[int]]:
        """``count`` ports per host that are free on it: fixed ones in a namespace (empty by
        construction), ports the kernel reports free at each loopback address otherwise."""
        if self.mode == "netns":
            fixed = [NETNS_PORT, PRIVATE_PORT][:count]
            return [list(fixed) for _ in range(self.n)]
        out = []
        for address in self.addresses:
            socks = []
            try:
                for _ in range(count):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(s)
                    s.bind((address, 0))
                out.append([int(s.getsockname()[1]) for s in socks])
            finally:
                for s in socks:
                    s.close()
        return out

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    def _make_namespaces(self, subnet: str) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        _ip("addr", "add", f"{subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(self.n):
            ns, inside, outside = f"{self.tag}-{i}", f"{self.tag}h{i}", f"{self.tag}b{i}"
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            self.links.append(outside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[i]}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        """Delete the namespaces and links ``make_hosts`` created (nothing in loopback mode)."""
        for ns in self.namespaces:  # deleting a namespace deletes the veth end inside it
            _ip("netns", "del", ns, check=False)
        for link in reversed(self.links):
            _ip("link", "del", link, check=False)
        self.namespaces.clear()
        self.links.clear()


def make_hosts(n: int, *, namespaces: bool = True, quiet: bool = False) -> Hosts:
    """``n`` hosts in namespaces if ``namespaces`` and they can be made, else on loopback
    addresses (the reason printed to stderr unless ``quiet``). Call ``remove()`` when done."""
    if not 1 <= n <= 250:
        raise ValueError(f"hosts: between 1 and 250, got {n}")
    pid = os.getpid()
    tag = f"wh{pid % 100000}"  # under 16 characters per interface name; "wm" is the keys test's
    reason = namespaces_unavailable(tag) if namespaces else "namespaces not asked for"
    if reason is None:
        subnet = f"10.214.{pid % 250}"
        hosts = Hosts(n, "netns", [f"{subnet}.{i + 1}" for i in range(n)], tag=tag)
        try:
            hosts._make_namespaces(subnet)
        except (subprocess.CalledProcessError, OSError) as exc:
            hosts.remove()
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
            reason = f"making the namespaces failed: {detail}"
        else:
            return hosts
    if not quiet:
        print(f"separate hosts: on loopback addresses ({reason})", file=sys.stderr)
    base = f"127.{100 + pid % 100}.{(pid // 100) % 250}"
    return Hosts(n, "loopback", [f"{base}.{i + 1}" for i in range(n)], tag=tag, reason=reason)


def relay_routes(hosts: Hosts, advertised: list[int], private: list[int]) -> list[Route]:
    """The relay's routes for replicas on ``hosts``: replica i advertised at (address i,
    ``advertised[i]``), listening at (address i, ``private[i]``), sockets made in its network."""
    return [
        Route(
            i,
            (hosts.addresses[i], advertised[i]),
            (hosts.addresses[i], private[i]),
            functools.partial(hosts.socket, i),
        )
        for i in range(hosts.n)
    ]
