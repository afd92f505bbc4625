"""A gateway whose HCI link to the plug process vanishes (the gateway process was killed: its
TCP connection closes with no HCI goodbye) is replaced by a new one, which must reach the same
plugs again: the plug process tears down the dead host's links, as a radio's supervision timeout
would, and the plugs advertise again."""

from __future__ import annotations

import asyncio
import contextlib
import json

from bleak import BleakClient
from bumble import hci
from bumble.device import Device
from bumble.link import LocalLink
from bumble.transport import open_transport
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import ble_guard
from gateway.clock import ManualClock
from gateway.sources.ble import BleNode, BleNodeSource
from hardware.ble.bleak_bumble import BumbleCentral, bumble_backend
from hardware.ble.controller import HciServer, serve_controller
from hardware.ble.plug import PlugEmulator, constant_load
from hardware.ble.profile import GATEWAY_ADDRESS, PROFILE
from tests.ble.conftest import KEYS, eventually, received, start_plugs


async def plug_process(*extra: str) -> tuple[asyncio.subprocess.Process, dict[str, object]]:
    proc = await start_plugs(
        "--node", f"1:{KEYS[1].hex()}", "--node", f"2:{KEYS[2].hex()}",
        "--interval-s", "0.1", "--duration-s", "120", *extra,
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
    # each new gateway host has no bond in memory: the plugs take its new Passkey Entry pairing
    # (same adapter address as the bond they hold)
    nodes = [BleNode(int(k), a, ble_guard.passkey(KEYS[int(k)])) for k, a in plugs.items()]
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


async def test_a_second_host_replaces_the_first_and_its_links_end_at_the_plug() -> None:
    """In process: an ``HciServer`` on a link with one plug. A host that never closed its socket
    (vanished without a FIN) must not lock out its successor: the new host takes over, the old
    host's link ends at the plug with "Connection Timeout", and the new host reaches the plug."""
    link = LocalLink()
    clock = ManualClock(0)
    plug = PlugEmulator.on_link(link, 1, KEYS[1], load=constant_load(10.0), now_ms=clock.now_ms)
    await plug.start()
    reasons: list[int] = []
    server = await serve_controller(link, "tcp-server:127.0.0.1:0")
    assert isinstance(server, HciServer) and server.port is not None
    spec = f"tcp-client:127.0.0.1:{server.port}"
    first = await BumbleCentral.open(spec)
    second: BumbleCentral | None = None
    try:
        async with BleakClient(plug.address, backend=bumble_backend(first), timeout=5) as old:
            assert plug.connected and server.hosts_served == 1
            (theirs,) = plug.device.connections.values()
            theirs.on("disconnection", reasons.append)
            second = await BumbleCentral.open(spec)  # the old host is still connected
            async with BleakClient(plug.address, backend=bumble_backend(second), timeout=5):
                assert server.hosts_served == 2
                assert reasons == [hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR]
                assert len(link.controllers) == 2  # the plug's and the new host's
                assert plug.connected
            await eventually(lambda: not old.is_connected, timeout=5)
    finally:
        await server.close()
        for central in (first, second):
            if central is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(central.close(), 3)


# reset, LE scan parameters/enable, LE create connection (+cancel), disconnect, advertising
# parameters/enable, read version, read BD_ADDR: commands a confused host might really send
OPCODES = (0x0C03, 0x200B, 0x200C, 0x200D, 0x200E, 0x0406, 0x2006, 0x200A, 0x1001, 0x1009)


def _hci_packet(kind: int, opcode: int, body: bytes, keep: int) -> bytes:
    if kind == 1:  # command: opcode, 1-byte length
        packet = bytes([1]) + opcode.to_bytes(2, "little") + bytes([len(body)]) + body
    else:  # ACL data: handle + flags, 2-byte length
        packet = bytes([2]) + (opcode & 0x0FFF).to_bytes(2, "little")
        packet += len(body).to_bytes(2, "little") + body
    return packet[: max(1, keep)]  # possibly truncated


HCI_CHUNK = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.builds(
        _hci_packet,
        st.sampled_from([1, 2]),
        st.one_of(st.sampled_from(OPCODES), st.integers(0, 0xFFFF)),
        st.binary(max_size=40),
        st.integers(1, 50),
    ),
)


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(HCI_CHUNK, min_size=1, max_size=6))
def test_hostile_hci_bytes_never_take_the_plug_process_down(chunks: list[bytes]) -> None:
    """Whatever a client writes to the HCI server (garbage, truncated or stray but valid HCI
    packets), the server survives: afterwards a real host still reaches the plug."""

    async def scenario() -> None:
        link = LocalLink()
        plug = PlugEmulator.on_link(link, 1, KEYS[1], load=constant_load(10.0), now_ms=lambda: 0)
        await plug.start()
        server = await serve_controller(link, "tcp-server:127.0.0.1:0")
        assert isinstance(server, HciServer)
        central: BumbleCentral | None = None
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for chunk in chunks:
                writer.write(chunk)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await eventually(lambda: server.controller is None, timeout=5)
            assert len(link.controllers) == 1  # only the plug's: the client's controller left
            central = await BumbleCentral.open(f"tcp-client:127.0.0.1:{server.port}")
            async with BleakClient(plug.address, backend=bumble_backend(central), timeout=5) as c:
                assert c.services.get_service(PROFILE.service_uuid) is not None
        finally:
            await server.close()
            if central is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(central.close(), 3)

    asyncio.run(scenario())
