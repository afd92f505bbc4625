"""A bleak client backend built on bumble: the same ``BleakClient`` calls the gateway makes against
BlueZ on a Raspberry Pi run here against bumble's host stack on a virtual controller.

bleak lets a caller pass ``BleakClient(address, backend=SomeClass)`` where ``SomeClass`` implements
``BaseBleakClient``; bleak instantiates it per client, so the class itself must know which bumble
host (a "central") to use. ``bumble_backend(central)`` makes such a class for an in-process central
(tests); ``backend_from_spec("bumble:<transport spec>")`` makes one whose central is a bumble host
speaking HCI over a bumble transport (e.g. ``bumble:tcp-client:127.0.0.1:9001`` to a controller
served by ``wattmesh emulate plug --hci tcp-server:127.0.0.1:9001``), opened on first use.

Scope: connect/disconnect (with the disconnected callback), service discovery, notifications,
writes with and without response, reads, MTU, and pairing: ``pair()``, ``connect(pair=True)``,
``unpair()``. Pairing is LE Secure Connections Passkey Entry with bonding, this end "typing" the
node's passkey (``BleakClient(..., passkey=N)`` or ``pair(passkey=N)``; ``firmware.ble_guard``
derives it from the node key). The bonds go to the central's key store: a ``BondStore`` file
(owner-only) when the central has one, else memory. A connect to a bonded node encrypts the link
with the stored key before any GATT request, as BlueZ does; with ``pair=True`` a node that lost
our bond is paired again (Passkey Entry authenticates the node too, so this cannot bond an
impostor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_str
from bumble import core, hci
from bumble.att import ATT_Error
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import Characteristic
from bumble.gatt_client import CharacteristicProxy
from bumble.keys import PairingKeys
from bumble.link import LocalLink
from bumble.pairing import PairingConfig
from bumble.transport import open_transport
from bumble.transport.common import Transport

from hardware.ble.bonds import (
    BondStore,
    BondStoreError,
    passkey_pairing,
    read_bond_store,
    same_address,
)
from hardware.ble.controller import local_device
from hardware.ble.profile import GATEWAY_ADDRESS

log = logging.getLogger(__name__)

DISCONNECT_TIMEOUT_S = 2.0
CONNECT_AFTER_ADVERT_S = 2.0
ORPHAN_AFTER_S = 1.0
DEFAULT_MTU = 247  # what BlueZ asks for; the node profile needs at least min_mtu
_T = TypeVar("_T")

# bleak's property names, by bumble's characteristic property bits
_PROPERTY_NAMES: tuple[tuple[int, str], ...] = (
    (Characteristic.Properties.BROADCAST, "broadcast"),
    (Characteristic.Properties.READ, "read"),
    (Characteristic.Properties.WRITE_WITHOUT_RESPONSE, "write-without-response"),
    (Characteristic.Properties.WRITE, "write"),
    (Characteristic.Properties.NOTIFY, "notify"),
    (Characteristic.Properties.INDICATE, "indicate"),
    (Characteristic.Properties.AUTHENTICATED_SIGNED_WRITES, "authenticated-signed-writes"),
    (Characteristic.Properties.EXTENDED_PROPERTIES, "extended-properties"),
)


def _uuid(uuid: core.UUID) -> str:
    return normalize_uuid_str(uuid.to_hex_str("-"))


class BumbleCentral:
    """One bumble host acting as the gateway's BLE adapter: scans continuously (so a connect is
    only attempted once the peer is heard advertising, as BlueZ does) and serialises connection
    attempts (a controller initiates one LE connection at a time). ``bond_store``: the file its
    bonds are kept in (checked now: a bad store is an error here, not at the first pairing);
    None keeps them in memory."""

    def __init__(
        self, device: Device, transport: Transport | None = None, bond_store: Path | None = None
    ) -> None:
        self.device = device
        self._transport = transport
        self.bond_store = bond_store
        if bond_store is not None:
            read_bond_store(bond_store)
            device.keystore = BondStore(bond_store, namespace=str(device.random_address))
        self.passkeys: dict[str, int] = {}  # by peer address (no type): what pairing types
        device.pairing_config_factory = self._pairing_config
        self._started = False
        self._start_lock = asyncio.Lock()
        self.connect_lock = asyncio.Lock()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._claimed: set[Connection] = set()
        self._reapers: set[asyncio.Task[None]] = set()

    @classmethod
    def on_link(
        cls, link: LocalLink, address: str = GATEWAY_ADDRESS, bond_store: Path | None = None
    ) -> BumbleCentral:
        return cls(local_device(link, "wattmesh-gateway", address), bond_store=bond_store)

    @classmethod
    async def open(
        cls, transport_spec: str, address: str = GATEWAY_ADDRESS, bond_store: Path | None = None
    ) -> BumbleCentral:
        if bond_store is not None:
            read_bond_store(bond_store)  # before a transport is opened that would then leak
        transport = await open_transport(transport_spec)
        device = Device.with_hci(
            "wattmesh-gateway", hci.Address(address), transport.source, transport.sink
        )
        return cls(device, transport, bond_store)

    def _pairing_config(self, connection: Connection) -> PairingConfig:
        return passkey_pairing(self.passkeys.get(connection.peer_address.to_string(False)))

    async def bond(self, address: str) -> PairingKeys | None:
        """The stored bond with ``address``, if any (the central must have started)."""
        assert self.device.keystore is not None
        for name, keys in await self.device.keystore.get_all():
            if same_address(name, address):
                return keys
        return None

    async def forget(self, address: str) -> bool:
        """Delete the bond with ``address``; whether there was one."""
        assert self.device.keystore is not None
        names = [n for n, _ in await self.device.keystore.get_all() if same_address(n, address)]
        for name in names:
            await self.device.keystore.delete(name)
        return bool(names)

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            self.device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
            self.device.on(Device.EVENT_CONNECTION, self._on_connection)
            await self.device.power_on()
            await self.device.start_scanning(active=False, filter_duplicates=False)
            self._started = True

    def is_live(self, connection: Connection) -> bool:
        """Whether the host still has this very connection (not one that reuses its handle)."""
        return self.device.connections.get(connection.handle) is connection

    def claim(self, connection: Connection) -> None:
        """A client owns this connection (see ``_reap``)."""
        if not self.is_live(connection):
            return  # already gone: its disconnection event will never come to discard it
        self._claimed.add(connection)
        connection.on(
            Connection.EVENT_DISCONNECTION, lambda _reason: self._claimed.discard(connection)
        )

    def _on_connection(self, connection: Connection) -> None:
        asyncio.get_running_loop().call_later(ORPHAN_AFTER_S, self._reap, connection)

    def _reap(self, connection: Connection) -> None:
        """A connection that completed after its connect call had already given up (the
        controller connected just as the host cancelled) belongs to nobody; left open, the
        peripheral would never advertise again. BlueZ drops such links; so does this."""
        # identity, not the handle: a later connection may already reuse this one's handle
        if connection in self._claimed or not self.is_live(connection):
            return
        log.info("dropping an unclaimed connection to %s", connection.peer_address)
        task = asyncio.get_running_loop().create_task(self._drop(connection))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    @staticmethod
    async def _drop(connection: Connection) -> None:
        with contextlib.suppress(core.BaseBumbleError, TimeoutError):
            await asyncio.wait_for(connection.disconnect(), DISCONNECT_TIMEOUT_S)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        key = advertisement.address.to_string(False)
        for fut in self._waiters.pop(key, []):
            if not fut.done():
                fut.set_result(None)

    async def wait_advertising(self, address: str, timeout: float) -> bool:
        """True once ``address`` is heard advertising (connectable), False after ``timeout``."""
        key = hci.Address(address).to_string(False)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(key)
            if waiters and fut in waiters:
                waiters.remove(fut)

    async def close(self) -> None:
        if self._started:
            with contextlib.suppress(Exception):
                await self.device.power_off()
        if self._transport is not None:
            await self._transport.close()


CentralGetter = Callable[[], Awaitable[BumbleCentral]]


class BumbleBleakClient(BaseBleakClient):
    """``BaseBleakClient`` on a bumble host. Use ``bumble_backend`` / ``backend_from_spec`` to get
    a class bound to a central; this base class is not usable on its own."""

    get_central: ClassVar[CentralGetter]

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        passkey: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self._passkey = passkey
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._proxies: dict[int, CharacteristicProxy[bytes]] = {}
        self._subscriptions: dict[int, Callable[[bytes], None]] = {}
        self._disconnecting = False
        self._lost: asyncio.Future[None] | None = None

    # -- connection ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        return int(self._connection.att_mtu) if self._connection is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if self._connection is not None:
            return
        central = await type(self).get_central()
        await central.start()
        timeout = float(kwargs.get("timeout", self._timeout))
        if not await central.wait_advertising(self.address, timeout):
            raise BleakDeviceNotFoundError(
                self.address, f"device {self.address} not heard advertising in {timeout} s"
            )
        async with central.connect_lock:
            try:
                # The peer was just heard advertising, so the controller connects at its next
                # advertisement; allow a little more than a short caller timeout.
                connection = await central.device.connect(
                    hci.Address(self.address), timeout=max(timeout, CONNECT_AFTER_ADVERT_S)
                )
            except (core.BaseBumbleError, hci.HCI_Error) as exc:
                raise BleakError(f"connecting to {self.address} failed: {exc}") from exc
            central.claim(connection)
        self._connection = connection
        self._lost = asyncio.get_running_loop().create_future()
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)
        if not central.is_live(connection):
            # The link ended before this task resumed (the connection's "complete" and its
            # "disconnection complete" were handled in one go, as happens when a peer drops a
            # fresh link under load): its disconnection event has already gone out to nobody,
            # and a GATT request on it would wait for the 30 s ATT timeout.
            self._lost.set_result(None)
            self._connection = None
            raise BleakError(f"{self.address}: link lost while connecting")
        try:
            self._peer = Peer(connection)
            await self._guard(self._secure(central, connection, pair))
            await self._guard(self._peer.request_mtu(DEFAULT_MTU))
            await self._guard(self._discover())
        except BaseException:
            await self.disconnect()
            raise

    def _on_disconnection(self, _reason: int) -> None:
        unsolicited = not self._disconnecting
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._connection = None
        self._peer = None
        self._subscriptions.clear()
        if unsolicited and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._disconnecting = True
        try:
            # Bounded: a link that vanished under us must not hold the caller.
            with contextlib.suppress(core.BaseBumbleError, hci.HCI_Error, TimeoutError):
                await asyncio.wait_for(connection.disconnect(), DISCONNECT_TIMEOUT_S)
        finally:
            self._disconnecting = False
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(None)
            self._connection = None
            self._peer = None

    # -- security --------------------------------------------------------------------------
    async def _secure(self, central: BumbleCentral, connection: Connection, pair: bool) -> None:
        """Encrypt with the stored bond; without one (or when the node lost it) pair if asked."""
        if await central.bond(self.address) is not None:
            try:
                await connection.encrypt()
                return
            except (core.BaseBumbleError, hci.HCI_Error) as exc:
                if not pair or not central.is_live(connection):
                    raise BleakError(
                        f"{self.address}: encrypting with our bond failed: {exc}"
                    ) from exc
                log.warning("%s refused our bond (%s): pairing again", self.address, exc)
                await central.forget(self.address)
        if pair:
            await self._pair(central, connection, self._passkey)

    async def _pair(
        self, central: BumbleCentral, connection: Connection, passkey: int | None
    ) -> None:
        if passkey is None:
            raise BleakError(f"pairing with {self.address} needs its passkey (passkey=...)")
        central.passkeys[hci.Address(self.address).to_string(False)] = passkey
        try:
            await connection.pair()
        except (core.BaseBumbleError, hci.HCI_Error) as exc:
            raise BleakError(f"pairing with {self.address} failed: {exc}") from exc
        keys = await central.bond(self.address)
        if keys is None or keys.ltk is None or not keys.ltk.authenticated or not connection.sc:
            await central.forget(self.address)
            raise BleakError(f"pairing with {self.address} left no authenticated LE Secure "
                             "Connections bond in the store (Just Works, legacy, or the store "
                             "could not be written): bond dropped")

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Pair with the connected node (Passkey Entry with ``passkey=`` or the client's), and
        bond; nothing to do if the link is already encrypted under a bond."""
        central = await type(self).get_central()
        connection = self._connection
        if connection is None:
            raise BleakError(f"not connected to {self.address}")
        if connection.encryption and await central.bond(self.address) is not None:
            return
        passkey = kwargs.get("passkey", self._passkey)
        await self._guard(self._pair(central, connection, passkey))

    async def unpair(self) -> None:
        """Forget the bond with this node and disconnect (as BlueZ's RemoveDevice does)."""
        central = await type(self).get_central()
        await central.start()
        await central.forget(self.address)
        await self.disconnect()

    # -- discovery -------------------------------------------------------------------------
    async def _discover(self) -> None:
        peer = self._require_peer()
        await peer.discover_all()  # type: ignore[no-untyped-call]
        services = BleakGATTServiceCollection()
        self._proxies.clear()
        for service_proxy in peer.services:
            service = BleakGATTService(
                service_proxy, service_proxy.handle, _uuid(service_proxy.uuid)
            )
            services.add_service(service)
            for char_proxy in service_proxy.characteristics:
                props = int(char_proxy.properties)
                names: list[Any] = [name for bit, name in _PROPERTY_NAMES if props & bit]
                char = BleakGATTCharacteristic(
                    char_proxy,
                    char_proxy.handle,
                    _uuid(char_proxy.uuid),
                    names,
                    lambda: self.mtu_size - 3,
                    service,
                )
                services.add_characteristic(char)
                self._proxies[char_proxy.handle] = char_proxy
                for desc_proxy in char_proxy.descriptors:
                    descriptor = BleakGATTDescriptor(
                        desc_proxy, desc_proxy.handle, _uuid(desc_proxy.type), char
                    )
                    services.add_descriptor(descriptor)
        self.services = services

    # -- I/O -------------------------------------------------------------------------------
    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError(f"not connected to {self.address}")
        return self._peer

    def _proxy(self, characteristic: BleakGATTCharacteristic) -> CharacteristicProxy[bytes]:
        self._require_peer()
        proxy = self._proxies.get(characteristic.handle)
        if proxy is None:
            raise BleakError(f"characteristic {characteristic.uuid} not discovered")
        return proxy

    async def _guard(self, call: Coroutine[Any, Any, _T]) -> _T:
        """Run one GATT operation until it completes or the link drops, turning bumble's errors
        into bleak's. A request sent just after the link dropped would otherwise wait for the
        30 s ATT timeout, and bumble cancels a request pending at a drop, which must surface as a
        BleakError rather than as a cancellation of the caller's task."""
        lost = self._lost
        if lost is None or lost.done():
            call.close()
            raise BleakError(f"not connected to {self.address}")
        op: asyncio.Task[_T] = asyncio.ensure_future(call)
        try:
            either: list[asyncio.Future[Any]] = [op, lost]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            op.cancel()
            raise
        if not op.done():
            op.cancel()
            await asyncio.gather(op, return_exceptions=True)
            raise BleakError(f"{self.address}: link lost during a GATT operation")
        if op.cancelled():
            raise BleakError(f"{self.address}: link lost during a GATT operation")
        exc = op.exception()
        if isinstance(exc, ATT_Error):
            raise BleakGATTProtocolError(exc.error_code) from exc
        if isinstance(exc, core.BaseBumbleError):
            raise BleakError(f"{self.address}: {exc}") from exc
        return op.result()

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        proxy = self._proxy(characteristic)
        return bytearray(await self._guard(self._require_peer().read_value(proxy)))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        peer = self._require_peer()
        return bytearray(await self._guard(peer.read_value(descriptor.handle)))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        proxy = self._proxy(characteristic)
        payload = bytes(data)
        await self._guard(self._require_peer().write_value(proxy, payload, with_response=response))

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        peer = self._require_peer()
        payload = bytes(data)
        await self._guard(peer.write_value(descriptor.handle, payload, with_response=True))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        proxy = self._proxy(characteristic)

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        self._subscriptions[characteristic.handle] = deliver
        await self._guard(self._require_peer().subscribe(proxy, deliver, prefer_notify=True))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        proxy = self._proxy(characteristic)
        deliver = self._subscriptions.pop(characteristic.handle, None)
        await self._guard(self._require_peer().unsubscribe(proxy, deliver))


def bumble_backend(central: BumbleCentral) -> type[BaseBleakClient]:
    """A bleak backend class bound to an in-process bumble central."""

    async def get_central() -> BumbleCentral:
        return central

    return type(
        "BumbleBleakClient", (BumbleBleakClient,), {"get_central": staticmethod(get_central)}
    )


class BackendSpecError(ValueError):
    """A backend string that does not name a usable backend."""


# Hosts opened by backend_from_spec, per event loop (weakly: a finished loop takes its hosts
# with it) and transport spec, with the lock that serialises opening them.
_REMOTE: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[asyncio.Lock, dict[str, BumbleCentral]]
] = weakref.WeakKeyDictionary()


def backend_from_spec(
    spec: str | None, bond_store: Path | None = None
) -> type[BaseBleakClient] | None:
    """Parse a backend setting: ``None``/``""``/``"bleak"``/``"platform"`` -> None (bleak's
    platform backend, BlueZ on a Pi, which keeps its bonds itself); ``"bumble:<transport spec>"``
    -> a bumble backend on that HCI transport, one host per event loop and spec, opened on first
    connect, its bonds in ``bond_store`` (memory if None)."""
    if spec is None or spec in ("", "platform", "bleak"):
        return None
    scheme, _, transport_spec = spec.partition(":")
    if scheme != "bumble" or not transport_spec:
        raise BackendSpecError(
            f"BLE backend {spec!r}: expected 'bleak' or 'bumble:<transport>'"
            " such as 'bumble:tcp-client:127.0.0.1:9001'"
        )
    kind = transport_spec.partition(":")[0]
    if kind not in (
        "tcp-client",
        "tcp-server",
        "udp",
        "serial",
        "unix",
        "usb",
        "hci-socket",
        "vhci",
    ):
        raise BackendSpecError(f"BLE backend {spec!r}: unknown bumble transport {kind!r}")

    async def get_central() -> BumbleCentral:
        loop = asyncio.get_running_loop()
        if loop not in _REMOTE:
            _REMOTE[loop] = (asyncio.Lock(), {})
        lock, centrals = _REMOTE[loop]
        async with lock:
            key = f"{transport_spec}|{bond_store}"
            central = centrals.get(key)
            if central is None:
                try:
                    central = await BumbleCentral.open(transport_spec, bond_store=bond_store)
                except BondStoreError:
                    raise
                except (OSError, ValueError, core.BaseBumbleError) as exc:
                    raise BleakError(f"BLE backend {spec!r}: {exc}") from exc
                centrals[key] = central
            return central

    return type(
        "BumbleBleakClient", (BumbleBleakClient,), {"get_central": staticmethod(get_central)}
    )


async def close_remote_centrals() -> None:
    """Close the hosts ``backend_from_spec`` opened on the running loop (end of a daemon/test)."""
    entry = _REMOTE.pop(asyncio.get_running_loop(), None)
    if entry is not None:
        for central in entry[1].values():
            await central.close()
