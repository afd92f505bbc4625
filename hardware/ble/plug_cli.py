"""``wattmesh emulate plug``: emulated plugs on a virtual BLE link, reachable from another process.

The plugs live on a bumble ``LocalLink`` in this process. One more virtual controller on that link
is served over an HCI transport (``--hci``, default ``tcp-server:127.0.0.1:9001``); the gateway
opens the matching client (BLE backend ``bumble:tcp-client:127.0.0.1:9001``) and becomes a BLE
host on the same link. On start one JSON line on stdout says where to connect and which address
each plug has. ``hardware/emulate_cli.py`` calls ``register_plug`` under ``wattmesh emulate``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bumble.link import LocalLink

from hardware.ble.controller import serve_controller, transport_port
from hardware.ble.plug import KEY_LEN, PlugEmulator, constant_load

DEFAULT_HCI = "tcp-server:127.0.0.1:9001"
SERVER_SCHEMES = ("tcp-server", "unix-server", "ws-server")


def _node(text: str) -> tuple[int, bytes]:
    ident, sep, key_hex = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"--node {text!r}: expected ID:KEYHEX")
    try:
        node_id = int(ident, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--node {text!r}: node id must be an integer") from None
    if not 0 <= node_id <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"--node {text!r}: node id must be in 0..65535")
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--node {text!r}: key is not hex") from None
    if len(key) != KEY_LEN:
        raise argparse.ArgumentTypeError(
            f"--node {text!r}: key must be {KEY_LEN} bytes ({2 * KEY_LEN} hex chars)"
        )
    return node_id, key


def _hci(text: str) -> str:
    scheme, sep, rest = text.partition(":")
    if scheme not in SERVER_SCHEMES or not sep or not rest:
        raise argparse.ArgumentTypeError(
            f"--hci {text!r}: expected a bumble server transport such as {DEFAULT_HCI}"
        )
    if scheme == "tcp-server":
        host, _, port = rest.rpartition(":")
        if host != "127.0.0.1" and host != "localhost":
            raise argparse.ArgumentTypeError(f"--hci {text!r}: serve on loopback (127.0.0.1) only")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise argparse.ArgumentTypeError(f"--hci {text!r}: port must be 0..65535")
    return text


def _positive(name: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r}: not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{name} {text!r}: must be a positive number")
        return value

    return parse


def _count(name: str) -> Any:
    def parse(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"{name} {text!r}: must be a whole number >= 0")
        return int(text)

    return parse


def _power(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--power-w {text!r}: not a number") from None
    if not -100_000 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"--power-w {text!r}: must be within +-100000 W")
    return value


def load_keystore(path: Path) -> list[tuple[int, bytes]]:
    """BLE nodes of a keystore written by ``wattmesh provision node`` (format in
    ``hardware/node_profile.json``). Raises ValueError naming what is wrong."""
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"keystore {path}: {exc}") from None
    nodes = raw.get("nodes") if isinstance(raw, dict) else None
    if not isinstance(nodes, dict):
        raise ValueError(f"keystore {path}: expected an object with 'nodes'")
    out = []
    for ident, entry in nodes.items():
        if not isinstance(entry, dict) or entry.get("transport", "ble") != "ble":
            continue
        try:
            out.append(_node(f"{ident}:{entry.get('key', '')}"))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"keystore {path}: nodes.{ident}: {exc}") from None
    return out


def register_plug(emulate_subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = emulate_subparsers.add_parser(
        "plug",
        help="emulated wattmesh plugs on a virtual BLE link (bumble), served over HCI",
        description=__doc__,
    )
    p.add_argument(
        "--node",
        type=_node,
        action="append",
        default=[],
        metavar="ID:KEYHEX",
        help="a plug and its 32-byte HMAC key (repeat for more plugs)",
    )
    p.add_argument("--keystore", type=Path, help="take the BLE nodes of this keystore JSON")
    p.add_argument(
        "--hci",
        type=_hci,
        default=DEFAULT_HCI,
        help=f"HCI server transport for the gateway's controller (default {DEFAULT_HCI};"
        " port 0 picks a free one)",
    )
    p.add_argument(
        "--power-w",
        type=_power,
        default=100.0,
        help="constant real power of each plug's load, W (negative: export)",
    )
    # the emulated clock and the faults: (option, parser, default, help)
    numbers: tuple[tuple[str, Any, float | None, str], ...] = (
        ("--interval-s", _positive, 5.0, "seconds of emulated time between readings (default 5)"),
        ("--speed", _positive, 1.0, "emulated seconds per real second (default 1)"),
        ("--duration-s", _positive, None,
         "stop after this many emulated seconds (default: run until interrupted)"),
        ("--drop-every-s", _positive, None,
         "fault: drop each plug's link every this many emulated seconds"),
        ("--corrupt-every", _count, 0, "fault: corrupt every Nth reading (0: never)"),
        ("--replay-every", _count, 0,
         "fault: replay an old frame instead of every Nth reading (0: never)"),
    )  # fmt: skip
    for option, parser, default, text in numbers:
        p.add_argument(option, type=parser(option), default=default, help=text)
    p.set_defaults(func=run_plug)
    return p


def _nodes_from_args(args: argparse.Namespace) -> list[tuple[int, bytes]]:
    nodes: list[tuple[int, bytes]] = list(args.node)
    if args.keystore is not None:
        nodes += load_keystore(args.keystore)
    if not nodes:
        raise ValueError("no plugs: give --node ID:KEYHEX or --keystore PATH")
    ids = [n for n, _ in nodes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate node id among {sorted(ids)}")
    return nodes


def run_plug(args: argparse.Namespace) -> int:
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` prints where every thread is
        with contextlib.suppress(ValueError, OSError, AttributeError):  # stderr not a real file
            faulthandler.register(signal.SIGUSR1)
    try:
        nodes = _nodes_from_args(args)
    except ValueError as exc:
        print(f"wattmesh emulate plug: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args, nodes))
    except OSError as exc:
        print(f"wattmesh emulate plug: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(args: argparse.Namespace, nodes: list[tuple[int, bytes]]) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    speed: float = args.speed
    start_ms = 0

    def now_ms() -> int:
        return start_ms + int((loop.time() - t0) * 1000 * speed)

    async def sleep(emulated_s: float) -> None:
        await asyncio.sleep(emulated_s / speed)

    link = LocalLink()  # type: ignore[no-untyped-call]
    plugs = [
        PlugEmulator.on_link(link, nid, key, load=constant_load(args.power_w), now_ms=now_ms)
        for nid, key in nodes
    ]
    for plug in plugs:
        await plug.start()
    transport = await serve_controller(link, args.hci)
    port = transport_port(transport)
    spec = args.hci if port is None else f"tcp-client:127.0.0.1:{port}"
    hello = {
        "hci": spec,
        "backend": f"bumble:{spec}",
        "plugs": {str(p.core.node_id): p.address for p in plugs},
    }
    print(json.dumps(hello), flush=True)

    async def plug_loop(plug: PlugEmulator) -> None:
        n = 0
        next_drop = args.drop_every_s
        elapsed = 0.0
        while True:
            await sleep(args.interval_s)
            elapsed += args.interval_s
            n += 1
            if args.corrupt_every and n % args.corrupt_every == 0:
                plug.faults.corrupt_next += 1
            if args.replay_every and n % args.replay_every == 0:
                plug.faults.replay_next += 1
            await plug.tick()
            if next_drop is not None and elapsed >= next_drop:
                next_drop += args.drop_every_s
                await plug.drop_link()

    tasks = [asyncio.create_task(plug_loop(p)) for p in plugs]
    try:
        if args.duration_s is not None:
            await sleep(args.duration_s)
        else:
            await asyncio.Event().wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await transport.close()


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m hardware.ble.plug_cli plug ...``), same sub-command."""
    parser = argparse.ArgumentParser(prog="wattmesh emulate")
    register_plug(parser.add_subparsers(dest="what", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
