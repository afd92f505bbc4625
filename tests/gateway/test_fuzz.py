"""Hostile input at every gateway entry point: Modbus answers (TCP and RTU on the wire), node
frames from any transport, and payloads the frame sink gets (the MQTT and BLE sources hand it
raw bytes unchanged)."""

from __future__ import annotations

import asyncio
import os
import struct
import termios
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import frame
from gateway.clock import ManualClock
from gateway.config import Backoff, BusConfig, GatewayConfig, MeterConfig, NodeConfig
from gateway.daemon import Gateway
from gateway.sources.modbus import MeterReading, ModbusBus
from hardware.emulators.modbus_meter import EmulatedMeter, PtyPair
from hardware.emulators.profiles import constant
from tests.gateway.conftest import free_port

T0 = 1_795_000_000_000
KEY = bytes(range(32))

answers = st.one_of(
    st.binary(max_size=40),  # noise
    st.binary(min_size=0, max_size=200).map(lambda b: b"\x00\x00\x00\x00" + b),  # MBAP-ish
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=170)).map(
        lambda t: bytes([1, t[0] & 0x84 | 0x04, t[1]]) + t[2]  # unit 1, fc 4 or 0x84, any count
    ),
)


def _good_registers(address: int, count: int) -> list[int]:
    regs = EmulatedMeter("sdm120", constant(100.0), clock=lambda: T0).registers(address, count)
    assert isinstance(regs, list)
    return regs


async def _hostile_tcp(payloads: list[bytes]) -> tuple[dict[str, int], list[MeterReading]]:
    """A Modbus TCP 'meter' that answers each request with the next hostile payload, keeping
    the request's transaction id in front of most of them so they reach the PDU decoder."""
    it = iter(payloads)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readexactly(12)
                p = next(it, None)
                if p is None:  # payloads used up: answer correctly from now on
                    tid, _, _, unit, _fc, addr, count = struct.unpack(">HHHBBHH", req)
                    body = struct.pack(f">BB{count}H", 4, 2 * count, *_good_registers(addr, count))
                    writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                elif p[:4] == b"\x00\x00\x00\x00":
                    writer.write(req[:2] + p[2:])
                else:
                    writer.write(p)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    clock = ManualClock(T0)
    got: list[MeterReading] = []
    cfg = BusConfig(
        "fuzz", (MeterConfig("m", "sdm120", 1),), tcp=("127.0.0.1", port),
        timeout_s=0.1, retries=0, backoff=Backoff(1, 1),
    )  # fmt: skip
    bus = ModbusBus(cfg, got.append, clock)
    try:
        for _ in range(len(payloads) + 2):
            await bus.poll_cycle()  # must never raise
            await clock.advance(1_000)
    finally:
        bus.close()
        server.close()
    return bus.stats(), got


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(answers, min_size=10, max_size=16))
def test_hostile_modbus_tcp_answers_are_counted_and_the_bus_recovers(payloads: list[bytes]) -> None:
    stats, got = asyncio.run(_hostile_tcp(payloads))
    failures = sum(stats.get(f"m.{k}", 0) for k in ("timeout", "crc", "exception", "bad_value"))
    assert failures + stats.get("m.ok", 0) >= 1
    assert stats.get("m.ok", 0) >= 1, stats  # once the meter talks sense again, it is read
    assert got[-1].power_dw == 1000


async def _hostile_rtu(payloads: list[bytes]) -> dict[str, int]:
    pty = PtyPair().start()
    fd = os.open(pty.device_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    attrs = termios.tcgetattr(fd)  # the hostile device talks at the bus's speed (no garbling)
    attrs[4] = attrs[5] = termios.B115200
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    it = iter(payloads)
    loop = asyncio.get_running_loop()

    def on_request() -> None:
        try:
            os.read(fd, 256)
        except OSError:
            return
        p = next(it, b"")
        if p:
            os.write(fd, p)

    loop.add_reader(fd, on_request)
    clock = ManualClock(T0)
    cfg = BusConfig(
        "fuzz", (MeterConfig("m", "pzem004t", 1),), serial=pty.host_path, baudrate=115200,
        timeout_s=0.1, retries=0, backoff=Backoff(1, 1),
    )  # fmt: skip
    bus = ModbusBus(cfg, lambda r: None, clock)
    try:
        for _ in range(len(payloads)):
            await bus.poll_cycle()
            await clock.advance(1_000)
    finally:
        bus.close()
        loop.remove_reader(fd)
        os.close(fd)
        pty.close()
    return bus.stats()


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(answers, min_size=8, max_size=12))
def test_hostile_rtu_bytes_on_the_wire_never_break_the_poller(payloads: list[bytes]) -> None:
    stats = asyncio.run(_hostile_rtu(payloads))
    assert stats["requests"] >= len(payloads) // 2
    assert sum(stats.get(f"m.{k}", 0) for k in ("timeout", "crc", "exception", "bad_value", "ok"))


def _gateway(tmp: Path) -> Gateway:
    cfg = GatewayConfig(
        gateway_id="fuzz", data_dir=tmp, key_file=tmp / "gw.key", keystore=None,
        nodes=(NodeConfig(7, "mqtt", "n7", topic="t7"),),
    )  # fmt: skip
    gw = Gateway(cfg, clock=ManualClock(T0), node_keys={7: KEY}, node_sources=[])
    gw.open()
    return gw


def _reading(seq: int) -> bytes:
    fields = dict.fromkeys(frame.READING_FIELDS, 0)
    fields["import_mwh"] = seq
    return frame.encode(KEY, frame.T_READING, 7, seq, frame.pack_reading(fields))


mutations = st.one_of(
    st.binary(max_size=100).map(lambda b: ("noise", b)),
    st.tuples(st.integers(1, 5_000), st.integers(0, 64), st.integers(0, 7)).map(
        lambda t: ("flip", t)
    ),
    st.tuples(st.integers(1, 5_000), st.integers(0, 64)).map(lambda t: ("cut", t)),
    st.tuples(st.integers(1, 5_000), st.binary(min_size=1, max_size=8)).map(lambda t: ("grow", t)),
    st.integers(1, 5_000).map(lambda s: ("good", s)),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(mutations, max_size=30))
def test_the_frame_sink_accepts_only_authentic_fresh_frames(tmp_path: Path, ops: list) -> None:  # type: ignore[type-arg]
    gw = _gateway(tmp_path)
    authentic: set[bytes] = set()
    accepted_seqs: list[int] = []
    try:
        for kind, arg in ops:
            if kind == "noise":
                raw = arg
            elif kind == "flip":
                raw = bytearray(_reading(arg[0]))
                raw[arg[1] % len(raw)] ^= 1 << arg[2]
                raw = bytes(raw)
            elif kind == "cut":
                raw = _reading(arg[0])[: arg[1]]
            elif kind == "grow":
                raw = _reading(arg[0]) + arg[1]
            else:
                raw = _reading(arg)
                authentic.add(raw)
            before = gw.verifier.accepted
            gw.on_frame(raw, "mqtt", T0 + len(accepted_seqs) + 1)  # never raises
            if gw.verifier.accepted > before:
                assert raw in authentic
                accepted_seqs.append(frame.peek(raw)[2])
        assert len(accepted_seqs) == len(set(accepted_seqs))  # no replay got through
        gw.flush()
    finally:
        assert gw.store is not None
        gw.store.close()
