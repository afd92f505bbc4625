"""A gateway whose HCI link to the plug process vanishes (the gateway process was killed: its
TCP connection closes with no HCI goodbye) is replaced by a new one, which must reach the same
plugs again: the plug process tears down the dead host's links, as a radio's supervision timeout
would, and the plugs advertise again."""

from __future__ import annotations

import asyncio
import json
import sys

from bumble import hci
from bumble.device import Device
from bumble.transport import open_transport

from gateway.sources.ble import BleNode, BleNodeSource
from hardware.ble.bleak_bumble import BumbleCentral, bumble_backend
from hardware.ble.profile import GATEWAY_ADDRESS
from tests.ble.conftest import KEYS, received


async def plug_process(*extra: str) -> tuple[asyncio.subprocess.Process, dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hardware.ble.cli", "plug", "--hci", "tcp-server:127.0.0.1:0",
        "--node", f"1:{KEYS[1].hex()}", "--node", f"2:{KEYS[2].hex()}",
        "--interval-s", "0.1", "--duration-s", "120", *extra,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
    return proc, hello


async def a_hostile_host_is_cut_off(spec: str) -> None:
    """Bytes that are not HCI end that host's connection (and never the plug process)."""
    host, _, port = spec.removeprefix("tcp-client:").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"\xff" + bytes(range(64)))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the plug process
    writer.close()


async def test_a_new_gateway_reaches_the_plugs_after_the_old_one_vanished() -> None:
    proc, hello = await plug_process()
    spec = str(hello["hci"])
    plugs: dict[str, str] = hello["plugs"]  # type: ignore[assignment]
    nodes = [BleNode(int(k), a) for k, a in plugs.items()]
    try:
        for generation in range(3):
            if generation == 1:
                await a_hostile_host_is_cut_off(spec)
            # one gateway "process": its own HCI connection, host and BLE source
            transport = await open_transport(spec)
            device = Device.with_hci(
                "gw", hci.Address(GATEWAY_ADDRESS), transport.source, transport.sink
            )
            central = BumbleCentral(device)
            sink = received()
            source = BleNodeSource(
                nodes,
                backend=bumble_backend(central),
                reconnect_initial_s=0.01,
                reconnect_max_s=0.05,
                connect_timeout_s=2.0,
            )
            task = asyncio.create_task(source.run(sink))
            try:
                await sink.until(lambda s=sink: all(len(s.of(n)) >= 3 for n in (1, 2)), timeout=15)
            except TimeoutError:
                raise AssertionError(
                    f"gateway {generation}: no readings from every plug: {source.stats()}"
                ) from None
            finally:
                # killed: the HCI connection closes with no disconnect, no reset
                await transport.close()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
