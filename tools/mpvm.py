"""Run the node firmware under the real MicroPython VM on the host, from Python.

The VM is the WebAssembly port of MicroPython (npm
``@micropython/micropython-webassembly-pyscript``)
run by ``node`` through ``firmware/host/run_vm.mjs``. Two uses:

* :func:`run_job` runs one MicroPython script (or a list of them, as separate calls into one VM)
  with every firmware module importable and returns what it reported with ``emit(obj)`` (a line
  ``@@<json>`` on stdout). Tests batch many cases into one script because each VM start costs a
  node process. This VM frees garbage only between calls: a script that measures the heap does
  its ``gc.collect()`` in a later call.
* :class:`HostNode` starts the firmware's main loop on the VM with the emulated HAL and a load
  profile, and streams its frames: ``frames()`` yields the raw bytes of each frame the node sends,
  ``send(frame)`` hands the node a command frame. The community demo relays these to the gateway.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "firmware" / "host" / "run_vm.mjs"
VM_PACKAGE = REPO / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
RESULT_PREFIX = "@@"

# Prepended to every job script: the one way a script reports a result to Python.
_PRELUDE = (
    "import json as _json\n"
    "def emit(obj):\n"
    "    print('" + RESULT_PREFIX + "' + _json.dumps(obj))\n"
)


class VmError(RuntimeError):
    """The VM could not start, or the script raised: ``args[0]`` holds MicroPython's traceback."""


@dataclass
class VmResult:
    results: list[Any] = field(default_factory=list)
    output: list[str] = field(default_factory=list)


def check_vm() -> str:
    """Path of ``node``; raises VmError with the fix when node or the VM package is missing."""
    node = shutil.which("node")
    if node is None:
        raise VmError("node (Node.js >= 18) is required to run the MicroPython VM")
    if not (VM_PACKAGE / "micropython.mjs").is_file():
        raise VmError(
            "the MicroPython VM is missing: run `npm install` at the repository root "
            "(package @micropython/micropython-webassembly-pyscript)"
        )
    return node


def run_job(
    script: str | list[str],
    files: dict[str, str] | None = None,
    heapsize: int = 1024 * 1024,
    timeout: float = 120.0,
    binfiles: dict[str, bytes] | None = None,
) -> VmResult:
    node = check_vm()
    spec = {
        "script": _PRELUDE + script if isinstance(script, str) else [_PRELUDE, *script],
        "files": files or {},
        "binfiles": {path: data.hex() for path, data in (binfiles or {}).items()},
        "heapsize": heapsize,
    }
    proc = subprocess.run(
        [node, str(RUNNER), "job"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        # MicroPython's traceback is the end of stderr; a JS-level crash can be very long.
        raise VmError(proc.stderr.strip()[-4000:] or f"VM exited with {proc.returncode}")
    out = VmResult()
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            out.results.append(json.loads(line[len(RESULT_PREFIX) :]))
        else:
            out.output.append(line)
    return out


class HostNode:
    """The firmware's main loop on the VM, on a simulated clock advancing ``step_ms`` per tick.

    ``config`` and ``key`` are the files ``wattmesh provision node`` wrote; ``profile`` is the load
    the emulated HAL feeds the meters (see firmware/README.md). ``ticks=0`` runs until
    :meth:`close_input`; ``speed`` paces simulated time at that many times wall time (0: as fast
    as the VM can; 1: real time).
    """

    def __init__(
        self,
        config: Path,
        key: Path,
        profile: dict[str, Any] | None = None,
        step_ms: int = 1000,
        ticks: int = 0,
        speed: float = 0.0,
    ) -> None:
        node = check_vm()
        args = [node, str(RUNNER), "stream", "--config", str(config), "--key", str(key)]
        args += ["--profile", json.dumps(profile or {}), "--step-ms", str(step_ms)]
        args += ["--ticks", str(ticks), "--speed", str(speed)]
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def send(self, frame: bytes) -> None:
        """Deliver one command frame to the node (it answers with an ACK frame)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(frame.hex() + "\n")
        self.proc.stdin.flush()

    def reboot(self) -> None:
        """Reset the node: it starts again from what its flash holds (the clock runs on)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("reboot\n")
        self.proc.stdin.flush()

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def frames(self) -> Iterator[bytes]:
        """Each frame the node sends, in order, until the VM stops; other lines are skipped."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("F "):
                yield bytes.fromhex(line[2:].strip())

    def wait(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout)
        if rc != 0:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise VmError(err.strip() or f"VM exited with {rc}")
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
