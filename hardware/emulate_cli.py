"""``wattmesh emulate meter|node|plug``: emulated hardware for tests, the demo and installers
who want to try the gateway without devices."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import math
import os
import re
import signal
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from hardware.meters import MODELS
from ledger.argtypes import float_in, int_in


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("emulate", help="emulated meters, nodes and plugs")
    sub = p.add_subparsers(dest="emulate_command", metavar="DEVICE", required=True)

    m = sub.add_parser("meter", help="a Modbus meter (SDM120, SDM630, PZEM-004T) on TCP or RTU")
    m.add_argument("--model", required=True, choices=MODELS)
    where = m.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT", help="serve Modbus TCP here (loopback)")
    where.add_argument(
        "--serial",
        metavar="PATH|pty",
        help="serve Modbus RTU on this serial port; 'pty' makes a pseudo-terminal pair and "
        "prints the path the gateway should open",
    )
    m.add_argument("--unit", type=int, action="append", help="unit id (repeat for several)")
    m.add_argument("--baudrate", type=_baudrate, default=9600)
    m.add_argument("--profile", default="house", help="house, pv, prosumer or constant:<W>")
    m.add_argument(
        "--import-kwh",
        type=float_in(0.0, MAX_IMPORT_KWH),
        default=0.0,
        help=f"initial import counter, 0..{MAX_IMPORT_KWH:.0f} kWh",
    )
    m.add_argument("--fault", choices=("silence", "crc", "wrong", "exception"))
    m.add_argument("--fault-rate", type=float_in(0.0, 1.0), default=1.0, help="0..1")
    m.set_defaults(func=cmd_meter)

    n = sub.add_parser("node", help="a wattmesh node on MQTT")
    n.add_argument("--node-id", type=int, required=True)
    key = n.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="the node's 32-byte key as 64 hex characters")
    key.add_argument("--keystore", help="keystore JSON (wattmesh provision node)")
    n.add_argument("--mqtt", metavar="HOST:PORT",
                   help="the broker (default: the account's, else 127.0.0.1:1883)")
    n.add_argument("--topic", help="node topic (default wattmesh_<id>)")
    n.add_argument("--account", metavar="CONFIG_JSON",
                   help="the node's config.json (provision node): its broker, user and "
                   "password, and TLS against the CA file beside it")
    n.add_argument(
        "--period", type=float_in(0.0, MAX_PERIOD_S), default=5.0, help="seconds between readings"
    )
    n.add_argument("--profile", default="house")
    n.add_argument("--seq", type=_seq, default=1, help="first sequence number")
    n.add_argument("--fault", choices=("tamper", "replay", "garbage"))
    n.set_defaults(func=cmd_node)

    try:  # the BLE plug emulator lives with the BLE code
        ble_cli = importlib.import_module("hardware.ble.plug_cli")
    except ModuleNotFoundError as exc:
        if exc.name is None or not "hardware.ble.plug_cli".startswith(exc.name):
            raise
    else:
        ble_cli.register_plug(sub)


MAX_IMPORT_KWH = 1e9  # beyond any meter's display; keeps the mWh counter an exact integer
MAX_PERIOD_S = 86_400.0
MAX_CONSTANT_W = 1e6  # a constant:<W> profile: what a house connection (or a node frame) can carry
MAX_BAUDRATE = 4_000_000


def _baudrate(text: str) -> int:
    return int_in(1, MAX_BAUDRATE)(text)


def _seq(text: str) -> int:
    return int_in(0, 0xFFFFFFFF)(text)


def _profile(spec: str) -> Any:
    """``parse_profile`` with a finite, bounded constant: nan, inf or a wild wattage would only
    fail later, inside the emulator, on the first request."""
    from hardware.emulators.profiles import parse_profile

    if spec.startswith("constant:"):
        try:
            watts = float(spec.split(":", 1)[1])
        except ValueError:
            watts = math.nan
        if not math.isfinite(watts) or abs(watts) > MAX_CONSTANT_W:
            raise ValueError(
                f"--profile: constant:<W> needs a finite number of watts within "
                f"±{MAX_CONSTANT_W:.0f}, got {spec!r}"
            )
    try:
        return parse_profile(spec)
    except ValueError as exc:
        raise ValueError(f"--profile: {exc}") from None


def _host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # [::1]:502
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag}: expected HOST:PORT, got {value!r}")
    return host, int(port)


def _check_listen(host: str, port: int) -> None:
    """Bind HOST:PORT once, so a port in use or an address not of this host is refused with
    its reason before the server starts (pymodbus only says it could not listen)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as exc:  # socket.gaierror included
        raise ValueError(f"--tcp: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _check_serial(port: str) -> None:
    try:
        mode = os.stat(port).st_mode
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL
        reason = getattr(exc, "strerror", None) or exc
        raise ValueError(f"--serial: cannot open {port!r}: {reason}") from None
    if not stat.S_ISCHR(mode):
        raise ValueError(f"--serial: {port!r} is not a serial port (not a character device)")


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def cmd_meter(args: argparse.Namespace) -> int:
    from hardware.emulators.modbus_meter import (
        EmulatedMeter,
        Faults,
        PtyPair,
        serve_serial,
        serve_tcp,
        stats,
    )

    units = args.unit or [1]
    try:
        if any(not 1 <= u <= 247 for u in units) or len(set(units)) != len(units):
            raise ValueError("--unit: unit ids are distinct integers in [1, 247]")
        tcp = _host_port(args.tcp, "--tcp") if args.tcp else None
        profile = _profile(args.profile)
        meters = {
            u: EmulatedMeter(
                args.model,
                profile,
                faults=Faults(args.fault, args.fault_rate, seed=u),
                import_mwh=round(args.import_kwh * 1_000_000),
            )
            for u in units
        }
        if tcp is not None:
            _check_listen(*tcp)
        else:
            rates = meters[units[0]].map.baudrates
            if rates and args.baudrate not in rates:  # it would sit on the line, never answering
                raise ValueError(
                    f"--baudrate {args.baudrate}: the {args.model} can be set to "
                    f"{', '.join(map(str, rates))} baud"
                )
            if args.serial != "pty":
                _check_serial(args.serial)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        pty = None
        flag = f"--tcp {args.tcp}" if tcp is not None else f"--serial {args.serial}"
        try:
            if tcp is not None:
                server: Any = await serve_tcp(meters, *tcp)
                host = f"[{tcp[0]}]" if ":" in tcp[0] else tcp[0]
                where = {"tcp": f"{host}:{tcp[1]}"}
            else:
                port = args.serial
                if port == "pty":
                    pty = PtyPair().start()
                    port = pty.device_path
                server = await serve_serial(meters, port, args.baudrate)
                where = {"serial": pty.host_path if pty else port}
        except (RuntimeError, OSError, ValueError) as exc:
            # pymodbus raises RuntimeError when it cannot listen; pyserial a SerialException
            # (an OSError) or a ValueError for a port it cannot open.
            if pty is not None:
                pty.close()
            what = "cannot listen there" if tcp is not None else "cannot open it as a serial port"
            print(f"error: {flag}: {what} ({exc})", file=sys.stderr)
            return 2
        print(json.dumps({"model": args.model, "units": units, **where}), flush=True)
        try:
            await _until_signal()
        finally:
            await server.shutdown()
            if pty is not None:
                pty.close()
        print(json.dumps({"stats": stats(meters)}), flush=True)
        return 0

    return asyncio.run(main())


def cmd_node(args: argparse.Namespace) -> int:
    from hardware.emulators.mqtt_node import MqttNodeEmulator, NodeAccount, node_account

    try:
        if not 0 <= args.node_id <= 0xFFFF:
            raise ValueError("--node-id: must be in [0, 65535]")
        if args.key is not None:
            hexkey = args.key
        else:
            doc = json.loads(Path(args.keystore).read_text())
            hexkey = doc["nodes"][str(args.node_id)]["key"]
        if not isinstance(hexkey, str) or not re.fullmatch(r"[0-9a-f]{64}", hexkey):
            raise ValueError("key: expected 64 lowercase hex characters")
        if not args.period > 0:
            raise ValueError("--period: must be positive")
        profile = _profile(args.profile)
        # as the device does: broker, account and TLS trust from its config.json
        account = (NodeAccount("127.0.0.1", 1883, None, None, None) if args.account is None
                   else node_account(Path(args.account)))
        if args.mqtt is not None:
            host, port = _host_port(args.mqtt, "--mqtt")
            account = dataclasses.replace(account, host=host, port=port)
        emu = MqttNodeEmulator.with_account(
            args.node_id,
            bytes.fromhex(hexkey),
            account,
            topic=args.topic,
            profile=profile,
            period_s=args.period,
            seq=args.seq,
            fault=args.fault,
        )
    except (ValueError, OSError, KeyError, TypeError) as exc:
        print(f"error: {exc!r}" if isinstance(exc, KeyError) else f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        task = asyncio.create_task(emu.run())
        stop = asyncio.create_task(_until_signal())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        if task.done() and not task.cancelled() and task.exception() is not None:
            print(f"error: node {emu.node_id}, broker {emu.host}:{emu.port}: "
                  f"{task.exception()}", file=sys.stderr)
            return 1
        print(json.dumps({"sent": emu.sent, "commands": emu.commands, "dropped": emu.dropped}),
              flush=True)
        return 0

    return asyncio.run(main())
