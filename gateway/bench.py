"""``wattmesh bench ingest``: node frames verified, aggregated and stored per second on one core,
and Modbus requests per poll cycle against the minimum the register maps allow.

The ingest figure runs the daemon's own frame path (``Gateway.on_frame``: tag and replay check,
decode, interval aggregation, reading queued) with the daemon's SQLite flushes (one transaction
per ``flush_ms`` of gateway time) and interval closes, for ``--nodes`` nodes sending one frame a
second each. Frames are encoded beforehand: the node's work is not the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from firmware import frame
from gateway.clock import ManualClock
from gateway.config import BusConfig, GatewayConfig, MeterConfig, NodeConfig
from gateway.intervals import INTERVAL_MS
from gateway.sources.modbus import ModbusBus, plan_summary
from hardware.meters import MODELS

TARGET_FRAMES_PER_S = 20_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % INTERVAL_MS


def register_bench(bench_subparsers: Any) -> None:
    p = bench_subparsers.add_parser("ingest", help="gateway frame ingest and Modbus polling")
    p.add_argument("--nodes", type=int, default=1000, help="nodes, one frame a second each")
    p.add_argument("--seconds", type=int, default=30, help="seconds of gateway time to ingest")
    p.add_argument("--cycles", type=int, default=20, help="Modbus poll cycles to measure")
    p.add_argument("--json", action="store_true", help="print JSON only (the default output)")
    p.set_defaults(func=cmd_ingest)


def _frames(nodes: int, seconds: int, keys: dict[int, bytes]) -> list[tuple[bytes, int]]:
    out = []
    for s in range(seconds):
        for n in range(nodes):
            reading = {
                "channel": 0, "uptime_s": s, "voltage_dv": 2300, "current_ma": 2000,
                "power_dw": 4600, "apparent_dva": 4600, "pf_milli": 1000, "relays": 1,
                "flags": 0, "import_mwh": 1_000_000 + s * 128, "export_mwh": 0,
            }  # fmt: skip
            raw = frame.encode(keys[n], frame.T_READING, n, s + 1, frame.pack_reading(reading))
            out.append((raw, T0 + s * 1000 + n * 1000 // nodes))
    return out


def bench_ingest(nodes: int, seconds: int, data_dir: Path) -> dict[str, Any]:
    """``frames_per_s`` is per second of CPU time of this one thread (one core), so that other
    work on a shared machine does not distort it; ``frames_per_wall_s`` is also given."""
    from gateway.daemon import Gateway
    from ledger.keys import new_key, write_key

    write_key(data_dir / "gateway.key", new_key())
    keys = {n: bytes([n & 0xFF, n >> 8]) * 16 for n in range(nodes)}
    cfg = GatewayConfig(
        gateway_id="bench",
        data_dir=data_dir,
        key_file=data_dir / "gateway.key",
        keystore=None,
        nodes=tuple(NodeConfig(n, "mqtt", f"node{n}", topic=f"n{n}") for n in range(nodes)),
    )
    clock = ManualClock(T0)
    gw = Gateway(cfg, clock=clock, node_keys=keys, node_sources=[])
    gw.open()
    frames = _frames(nodes, seconds, keys)
    next_flush = T0 + cfg.flush_ms
    flushes = 0
    start = time.perf_counter()
    cpu = time.process_time()
    for raw, t in frames:
        if t >= next_flush:
            clock._now = t  # the bench drives time synchronously; no sleepers are waiting
            gw.flush()
            gw.close_due()
            flushes += 1
            next_flush += cfg.flush_ms
        gw.on_frame(raw, "mqtt", t)
    gw.flush()
    wall = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    counts = gw.verifier.counts()
    assert gw.store is not None
    stored = gw.store.db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    gw.store.close()
    return {
        "frames": len(frames),
        "accepted": counts["accepted"],
        "stored": stored,
        "flushes": flushes,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu_s, 3),
        "frames_per_s": round(len(frames) / cpu_s),
        "frames_per_wall_s": round(len(frames) / wall),
    }


async def bench_modbus(cycles: int) -> dict[str, Any]:
    import socket

    from hardware.emulators.modbus_meter import EmulatedMeter, serve_tcp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = ManualClock(T0)
    meters = {i + 1: EmulatedMeter(m, clock=clock.now_ms) for i, m in enumerate(MODELS)}
    server = await serve_tcp(meters, "127.0.0.1", port)
    cfg = BusConfig(
        "bench",
        tuple(MeterConfig(m, m, i + 1) for i, m in enumerate(MODELS)),
        tcp=("127.0.0.1", port),
        timeout_s=2.0,
    )
    bus = ModbusBus(cfg, lambda r: None, clock)
    try:
        start = time.perf_counter()
        good = 0
        for _ in range(cycles):
            good += await bus.poll_cycle()
            await clock.advance(10_000)
        wall = time.perf_counter() - start
    finally:
        bus.close()
        await server.shutdown()  # type: ignore[no-untyped-call]
    plan = plan_summary(MODELS)
    return {
        "meters": len(MODELS),
        "cycles": cycles,
        "readings": good,
        "requests_per_poll": bus.counts["requests"] / cycles,
        "min_requests_per_poll": bus.min_requests_per_cycle(),
        "one_request_per_quantity": sum(p["per_quantity"] for p in plan.values()),
        "per_model": plan,
        "poll_cycle_ms": round(wall / cycles * 1000, 2),
    }


def cmd_ingest(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 65536 or args.seconds < 1 or args.cycles < 1:
        print(json.dumps({"error": "--nodes in [1, 65536], --seconds and --cycles >= 1"}))
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        ingest = bench_ingest(args.nodes, args.seconds, Path(tmp))
    modbus = asyncio.run(bench_modbus(args.cycles))
    out = {
        "frames_per_s": ingest["frames_per_s"],
        "target_frames_per_s": TARGET_FRAMES_PER_S,
        "nodes": args.nodes,
        "ingest": ingest,
        "modbus": modbus,
    }
    print(json.dumps(out))
    return 0
