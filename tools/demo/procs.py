"""Child processes of the demo: started in their own process group, always stopped.

Every process the demo starts goes through ``Supervisor.spawn``; ``Supervisor.close`` (called from
a ``finally`` and from the signal handlers) terminates each one by its own id, then kills what
did not exit, so the demo leaves nothing behind on success, error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ledger.setup import free_ports

TERM_GRACE_S = 3.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    return free_ports(1, host)[0]


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes]
    cwd: Path | None = None
    env: dict[str, str] | None = None
    restarts: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Supervisor:
    """Owns the demo's child processes."""

    log_dir: Path
    children: dict[str, Child] = field(default_factory=dict)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout_pipe: bool = False,
    ) -> Child:
        if name in self.children and self.children[name].alive():
            raise RuntimeError(f"{name} is already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=subprocess.PIPE if stdout_pipe else fh,
                stderr=fh,
                start_new_session=True,  # its own process group: Ctrl-C reaches only the demo
            )
        old = self.children.get(name)
        child = Child(name, list(argv), log, proc, cwd, env, old.restarts + 1 if old else 0)
        self.children[name] = child
        return child

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        child = self.children[name]
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)
            child.proc.wait(timeout=10)

    def restart(self, name: str) -> Child:
        old = self.children[name]
        if old.alive():
            self.kill(name)
        return self.spawn(name, old.argv, cwd=old.cwd, env=old.env)

    def stop(self, name: str) -> None:
        self._stop([self.children[name]])

    def close(self) -> None:
        self._stop(list(self.children.values()))

    def _stop(self, children: list[Child]) -> None:
        live = [c for c in children if c.alive()]
        for c in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE_S
        for c in live:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                c.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.pid, signal.SIGKILL)
                c.proc.wait(timeout=10)
        for c in children:
            if c.proc.stdout is not None:
                c.proc.stdout.close()


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def wait_port(host: str, port: int, timeout_s: float, child: Child | None = None) -> None:
    """Block until something accepts on (host, port); raises ``RuntimeError`` naming the child."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(
                f"{child.name} exited with code {child.proc.returncode}; see {child.log}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    name = child.name if child else f"{host}:{port}"
    raise RuntimeError(f"{name} did not start listening on {host}:{port} in {timeout_s:.0f} s")


@dataclass
class DemoBroker:
    """The demo's mosquitto, as a home runs it (README): TLS with a CA made now, no anonymous
    clients, an account per gateway and node with its ACL. Accounts added later are loaded with
    SIGHUP."""

    port: int  # TLS, for gateways and nodes
    ca_file: Path
    folder: Path
    child: Child

    def add_accounts(self, lines: Path) -> None:
        """Append the ``mosquitto.passwd`` and ``mosquitto.acl`` lines ``wattmesh provision``
        wrote in ``lines`` and make the broker load them."""
        with (self.folder / "passwd").open("a", encoding="utf-8") as f:
            f.write((lines / "mosquitto.passwd").read_text(encoding="utf-8"))
        with (self.folder / "acl").open("a", encoding="utf-8") as f:
            f.write("\n" + (lines / "mosquitto.acl").read_text(encoding="utf-8"))
        os.kill(self.child.pid, signal.SIGHUP)

    def gateway_account(self, gateway_id: str, base_topic: str) -> tuple[str, Path]:
        """``wattmesh provision gateway`` for one home: (user, password file)."""
        from tools.mqtt_auth import provision_gateway

        out = self.folder / f"gateway-{gateway_id}"
        done = provision_gateway(gateway_id, out, base_topic=base_topic)
        self.add_accounts(out)
        return done["user"], Path(done["password_file"])


def start_mosquitto(sup: Supervisor, run_dir: Path) -> DemoBroker:
    """Start a private mosquitto on free loopback ports (TLS, accounts, ACL)."""
    from tools.mqtt_auth import make_tls, mosquitto_conf

    exe = find_mosquitto()
    if exe is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    folder = run_dir / "mosquitto"
    folder.mkdir(parents=True, exist_ok=True)
    tls = make_tls(folder / "tls", "wattmesh demo")
    for name in ("passwd", "acl"):
        (folder / name).write_text("", encoding="utf-8")
    conf = run_dir / "mosquitto.conf"
    conf.write_text(
        mosquitto_conf(port, tls, folder / "passwd", folder / "acl",
                       extra="log_dest stderr\nlog_type error\nlog_type warning\n"),
        encoding="utf-8",
    )
    child = sup.spawn("mosquitto", [exe, "-c", str(conf)])
    wait_port("127.0.0.1", port, 10.0, child)
    return DemoBroker(port, tls.ca_cert, folder, child)
