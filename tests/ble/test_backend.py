"""The bumble backend behind bleak's public API: what the gateway (or anyone) calls on a
``BleakClient`` works against a bumble peripheral on the virtual controller."""

from __future__ import annotations

import asyncio

import pytest
from bleak import BleakClient
from bleak.exc import (
    BleakDeviceNotFoundError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)
from bumble.att import ATT_Error, ErrorCode
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.link import LocalLink

from hardware.ble.bleak_bumble import (
    BackendSpecError,
    BumbleCentral,
    backend_from_spec,
    bumble_backend,
)
from hardware.ble.controller import local_device
from hardware.ble.profile import PROFILE, plug_address
from tests.ble.conftest import World, eventually

EXTRA_SVC = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
WNR = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
RO = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
WO = "6e400004-b5a3-f393-e0a9-e50e24dcca9e"


async def test_services_characteristics_and_mtu_follow_the_node_profile(world: World) -> None:
    async with BleakClient(world.plugs[1].address, backend=world.backend(), timeout=2) as client:
        assert client.is_connected
        assert client.mtu_size >= PROFILE.min_mtu
        service = client.services.get_service(PROFILE.service_uuid)
        assert service is not None
        props = {c.uuid: set(c.properties) for c in service.characteristics}
        assert props[PROFILE.readings_uuid] == {"read", "notify"}
        assert props[PROFILE.ack_uuid] == {"read", "notify"}
        assert {"write", "write-without-response"} <= props[PROFILE.command_uuid]
        readings = client.services.get_characteristic(PROFILE.readings_uuid)
        assert readings is not None
        assert [d.uuid for d in readings.descriptors] == ["00002902-0000-1000-8000-00805f9b34fb"]
        assert readings.max_write_without_response_size == client.mtu_size - 3
    assert not client.is_connected


async def test_read_notify_stop_notify_and_both_write_kinds() -> None:
    link = LocalLink()
    peripheral = local_device(link, "periph", plug_address(77))
    written: list[bytes] = []
    wnr = Characteristic(
        WNR,
        Characteristic.Properties.WRITE_WITHOUT_RESPONSE | Characteristic.Properties.NOTIFY,
        Characteristic.WRITEABLE,
        CharacteristicValue(write=lambda _c, v: written.append(bytes(v))),
    )
    ro: Characteristic[bytes] = Characteristic(
        RO, Characteristic.Properties.READ, Characteristic.READABLE, b"\x01\x02\x03"
    )

    def refuse(_connection: object) -> bytes:
        raise ATT_Error(ErrorCode.READ_NOT_PERMITTED)

    wo: Characteristic[bytes] = Characteristic(
        WO,
        Characteristic.Properties.READ | Characteristic.Properties.WRITE,
        Characteristic.READABLE | Characteristic.WRITEABLE,
        CharacteristicValue(read=refuse),
    )
    peripheral.add_service(Service(EXTRA_SVC, [wnr, ro, wo]))
    await peripheral.power_on()
    await peripheral.start_advertising(
        auto_restart=True, advertising_interval_min=20, advertising_interval_max=20
    )
    central = BumbleCentral.on_link(link)
    got: list[bytearray] = []
    try:
        async with BleakClient(plug_address(77), backend=bumble_backend(central)) as client:
            assert await client.read_gatt_char(RO) == bytearray(b"\x01\x02\x03")
            await client.write_gatt_char(WNR, b"no-response", response=False)
            await eventually(lambda: written == [b"no-response"])
            # the peripheral refuses to read a write-only value: an ATT error, as bleak reports it
            with pytest.raises(BleakGATTProtocolError) as refused:
                await client.read_gatt_char(WO)
            assert refused.value.code == BleakGATTProtocolErrorCode.READ_NOT_PERMITTED
            await client.start_notify(WNR, lambda _c, data: got.append(data))
            await peripheral.notify_subscribers(wnr, b"one")
            await eventually(lambda: got == [bytearray(b"one")])
            await client.stop_notify(WNR)
            await peripheral.notify_subscribers(wnr, b"two")
            await client.read_gatt_char(RO)  # a round trip: a notification would be in by now
            assert got == [bytearray(b"one")]
    finally:
        await central.close()


async def test_disconnected_callback_runs_on_an_unsolicited_drop_only(world: World) -> None:
    drops: list[BleakClient] = []
    client = BleakClient(
        world.plugs[2].address, disconnected_callback=drops.append, backend=world.backend()
    )
    await client.connect()
    await world.plugs[2].drop_link()
    await eventually(lambda: drops == [client])
    assert not client.is_connected
    with pytest.raises(BleakError):
        await client.write_gatt_char(PROFILE.command_uuid, b"x", response=True)
    await client.connect()  # the same client object connects again
    assert client.is_connected
    await client.disconnect()
    assert drops == [client]  # our own disconnect is not reported as a drop


async def test_connect_to_an_absent_device_fails_cleanly_and_the_central_still_works(
    world: World,
) -> None:
    client = BleakClient(plug_address(999), backend=world.backend(), timeout=0.1)
    with pytest.raises(BleakDeviceNotFoundError):
        await client.connect()
    # a device that was advertising but vanished mid-connect is covered by the controller fix:
    # the central can still connect to a live plug right after
    async with BleakClient(world.plugs[1].address, backend=world.backend(), timeout=2) as c:
        assert c.is_connected


async def test_connect_timeout_cancels_the_pending_connection_in_the_controller() -> None:
    """The virtual controller's LE Create Connection Cancel ends the attempt, so a host that
    times out is told, and its next connect is accepted."""
    link = LocalLink()
    central = BumbleCentral.on_link(link)
    await central.start()
    from bumble import hci
    from bumble.core import BaseBumbleError

    with pytest.raises((BaseBumbleError, TimeoutError)):
        await asyncio.wait_for(
            central.device.connect(hci.Address(plug_address(5)), timeout=0.05), 2.0
        )
    assert all(c.pending_le_connection is None for c in link.controllers)
    await central.close()


def test_backend_spec_parsing() -> None:
    assert backend_from_spec(None) is None
    assert backend_from_spec("") is None
    assert backend_from_spec("platform") is None
    assert backend_from_spec("bleak") is None  # the gateway config's name for it
    cls = backend_from_spec("bumble:tcp-client:127.0.0.1:9001")
    assert cls is not None and cls.__name__ == "BumbleBleakClient"
    for bad in ("bumble", "bumble:", "bluez", "bumble:carrier-pigeon:1", "x:tcp-client:1:2"):
        with pytest.raises(BackendSpecError):
            backend_from_spec(bad)


async def test_backend_on_an_unreachable_hci_transport_raises_bleak_error() -> None:
    import socket

    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cls = backend_from_spec(f"bumble:tcp-client:127.0.0.1:{port}")
    with pytest.raises(BleakError):
        await BleakClient(plug_address(1), backend=cls, timeout=0.2).connect()


async def test_a_link_that_ends_before_connect_resumes_fails_fast_and_the_next_connect_works(
    world: World,
) -> None:
    """The peer drops a fresh link and the host handles that disconnection before the connecting
    task resumes (both events in one read from the HCI socket, under load): connect must fail at
    once, not wait out the 30 s ATT timeout on a link that is gone (the churn stall)."""
    plug = world.plugs[1]
    device = world.central.device
    real_connect = device.connect
    dropped_first = False

    async def connect_and_lose_the_link_before_returning(*args: object, **kwargs: object) -> object:
        nonlocal dropped_first
        connection = await real_connect(*args, **kwargs)  # type: ignore[arg-type]
        if not dropped_first:
            dropped_first = True
            await plug.drop_link()
            await eventually(lambda: not world.central.is_live(connection))
        return connection

    device.connect = connect_and_lose_the_link_before_returning  # type: ignore[method-assign]
    client = BleakClient(plug.address, backend=world.backend(), timeout=2)
    with pytest.raises(BleakError, match="link lost while connecting"):
        await asyncio.wait_for(client.connect(), 5)
    assert not client.is_connected and dropped_first
    async with BleakClient(plug.address, backend=world.backend(), timeout=2) as again:
        assert again.services.get_service(PROFILE.service_uuid) is not None
