"""BLE figures on the virtual stack, as JSON: ``wattmesh bench ble [--plugs N] [--frames M]``
(also ``python -m tools.ble_bench``).

Measures, through the gateway's ``BleNodeSource`` and the real bleak API on the bumble backend:
time to connect and subscribe to N plugs, notification throughput plug -> sink, the time from a
link drop to the next delivered frame, a relay command's round trip (write -> ACK frame), and,
over HCI on loopback TCP as across processes, the time from a gateway host vanishing (its HCI
connection closed with no goodbye, as when the process is killed) to a new host having every
plug connected again.
Wall-clock figures of this machine's CPU, not of a radio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bumble import hci
from bumble.device import Device
from bumble.link import LocalLink
from bumble.transport import open_transport

from firmware import ble_guard, frame
from gateway.sources.ble import BleNode, BleNodeSource
from hardware.ble.bleak_bumble import BumbleCentral, bumble_backend
from hardware.ble.controller import HciServer
from hardware.ble.plug import PlugEmulator, constant_load
from hardware.ble.profile import GATEWAY_ADDRESS
from ledger.argtypes import int_in


def _exceeds(value: Callable[[], int], floor: int) -> bool:
    return value() > floor


async def _until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise TimeoutError("benchmark condition not met")
        await asyncio.sleep(0.001)


async def bench(plugs: int, frames: int) -> dict[str, object]:
    link = LocalLink()  # type: ignore[no-untyped-call]
    keys = {nid: bytes([nid % 256]) * 32 for nid in range(1, plugs + 1)}
    emus = {
        nid: PlugEmulator.on_link(link, nid, key, load=constant_load(100.0), now_ms=lambda: 0)
        for nid, key in keys.items()
    }
    for emu in emus.values():
        await emu.start()
    central = BumbleCentral.on_link(link)
    got: list[float] = []
    source = BleNodeSource(
        [BleNode(nid, e.address, ble_guard.passkey(keys[nid])) for nid, e in emus.items()],
        backend=bumble_backend(central),
        reconnect_initial_s=0.001,
        reconnect_max_s=0.002,
    )
    t0 = time.perf_counter()
    task = asyncio.create_task(source.run(lambda raw, _t, _ms: got.append(time.perf_counter())))
    try:
        await _until(lambda: source.stats()["connected"] == plugs)
        connect_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        for _ in range(frames):
            for emu in emus.values():
                await emu.tick()
        await _until(lambda: len(got) == frames * plugs)
        stream_s = time.perf_counter() - t1

        first = emus[1]
        drops = []
        for _ in range(5):
            before = source.stats()["reconnects"]
            t2 = time.perf_counter()
            await first.drop_link()
            await _until(partial(_exceeds, lambda: source.stats()["reconnects"], before))
            await _until(lambda: source.is_connected(1))
            n = len(got)
            await first.tick()
            await _until(partial(_exceeds, got.__len__, n))
            drops.append(time.perf_counter() - t2)

        acks: list[float] = []
        for seq in range(1, 21):
            cmd = frame.encode(keys[1], frame.T_COMMAND, 1, seq, frame.pack_command(0, 2))
            n = len(got)
            t3 = time.perf_counter()
            await source.send_command(1, cmd)
            await _until(partial(_exceeds, got.__len__, n))
            acks.append(time.perf_counter() - t3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await central.close()
    acks.sort()
    return {
        "bench": "ble",
        "plugs": plugs,
        "connect_all_s": round(connect_s, 4),
        "frames": frames * plugs,
        "frames_per_s": round(frames * plugs / stream_s, 1),
        "drop_to_next_frame_ms_max": round(max(drops) * 1000, 2),
        "command_ack_ms_median": round(acks[len(acks) // 2] * 1000, 3),
        "stats": source.stats(),
    }


def _all_connected(source: BleNodeSource, plugs: int) -> bool:
    return source.stats()["connected"] == plugs


async def bench_restart(plugs: int) -> dict[str, object]:
    """Gateway host killed and replaced over HCI/TCP: seconds until the new host has every plug
    connected (its first connects as the old links end at the plugs)."""
    link = LocalLink()  # type: ignore[no-untyped-call]
    emus = [
        PlugEmulator.on_link(link, nid, bytes(32), load=constant_load(1.0), now_ms=lambda: 0)
        for nid in range(1, plugs + 1)
    ]
    for emu in emus:
        await emu.start()
    server = HciServer(link)
    await server.start("127.0.0.1", 0)
    spec = f"tcp-client:127.0.0.1:{server.port}"
    nodes = [BleNode(e.core.node_id, e.address, ble_guard.passkey(bytes(32))) for e in emus]
    times: list[float] = []
    bonds = tempfile.TemporaryDirectory()
    try:
        for _generation in range(2):
            transport = await open_transport(spec)
            device = Device.with_hci(
                "gateway", hci.Address(GATEWAY_ADDRESS), transport.source, transport.sink
            )
            # the new host finds the bonds the old one stored: it encrypts, no pairing
            central = BumbleCentral(device, bond_store=Path(bonds.name) / "ble-bonds.json")
            source = BleNodeSource(
                nodes,
                backend=bumble_backend(central),
                reconnect_initial_s=0.001,
                reconnect_max_s=0.002,
            )
            t0 = time.perf_counter()
            task = asyncio.create_task(source.run(lambda raw, _t, _ms: None))
            await _until(partial(_all_connected, source, plugs))
            times.append(time.perf_counter() - t0)
            await transport.close()  # killed: no disconnect, no reset
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await server.close()
        bonds.cleanup()
    return {
        "first_host_all_connected_s": round(times[0], 4),
        "after_kill_all_connected_s": round(times[1], 4),
        "hosts_served": server.hosts_served,
    }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugs", type=int_in(1, 200, "--plugs"), default=10, help="emulated plugs (1..200)"
    )
    parser.add_argument(
        "--frames",
        type=int_in(1, 10_000, "--frames"),
        default=50,
        help="readings per plug (1..10000)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON only (the default output)")


def cmd_ble(args: argparse.Namespace) -> int:
    async def both() -> dict[str, object]:
        out = await bench(args.plugs, args.frames)
        out["gateway_restart"] = await bench_restart(args.plugs)
        return out

    print(json.dumps(asyncio.run(both())), flush=True)
    return 0


def register_bench(bench_subparsers: Any) -> None:
    """``wattmesh bench ble`` (``tools/cli.py`` lists this module in ``BENCH_MODULES``)."""
    p = bench_subparsers.add_parser(
        "ble", help="BLE plugs through the real bleak API on bumble's virtual controller"
    )
    _add_arguments(p)
    p.set_defaults(func=cmd_ble)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.ble_bench", description=__doc__)
    _add_arguments(parser)
    return cmd_ble(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
