"""The emulated RS-485 line behaves like one: bytes take the time their speed takes, a meter set
to a speed its datasheet does not list never answers, and ends at different speeds garble."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException

from hardware.emulators.modbus_meter import (
    BITS_PER_BYTE,
    EmulatedMeter,
    PtyPair,
    serve_serial,
)
from hardware.emulators.profiles import constant
from hardware.meters import load_map


@pytest.fixture
async def pty() -> AsyncIterator[PtyPair]:
    pair = PtyPair().start()
    try:
        yield pair
    finally:
        pair.close()


async def _read(pty: PtyPair, line_baud: int, client_baud: int, count: int) -> float | None:
    """Seconds one read of ``count`` input registers of an SDM120 took, None if it failed."""
    server = await serve_serial({1: EmulatedMeter("sdm120", constant(500.0))}, pty.device_path,
                                line_baud)  # fmt: skip
    client = AsyncModbusSerialClient(pty.host_path, baudrate=client_baud, timeout=1.5, retries=0)
    try:
        assert await client.connect()
        started = time.monotonic()
        try:
            reply = await client.read_input_registers(0, count=count, device_id=1)
        except ModbusException:
            return None
        return None if reply.isError() else time.monotonic() - started
    finally:
        client.close()
        await server.shutdown()


def test_the_maps_list_the_speeds_of_their_datasheets() -> None:
    assert load_map("pzem004t").baudrates == (9600,)
    assert load_map("sdm120").baudrates == (1200, 2400, 4800, 9600)
    assert 115200 not in load_map("sdm630").baudrates


async def test_a_reply_takes_the_time_its_bytes_take_at_the_line_speed(pty: PtyPair) -> None:
    took = await _read(pty, 2400, 2400, 40)  # 8 request + 85 reply bytes at 2400 baud
    assert took is not None and took >= (8 + 5 + 2 * 40) * BITS_PER_BYTE / 2400


async def test_a_meter_set_to_a_speed_it_does_not_have_never_answers(pty: PtyPair) -> None:
    assert await _read(pty, 19200, 19200, 2) is None  # the SDM120 stops at 9600


async def test_ends_at_different_speeds_garble_each_other(pty: PtyPair) -> None:
    assert await _read(pty, 9600, 4800, 2) is None
    assert await _read(pty, 9600, 9600, 2) is not None  # the same line at one speed answers
