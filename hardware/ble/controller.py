"""bumble's virtual BLE controller, with one fix, and helpers to put devices on a virtual link.

A ``LocalLink`` joins controllers in one process; each controller speaks real HCI to its host, so a
bumble ``Device`` on it runs the whole stack (HCI, L2CAP, ATT, GATT) with no radio. A controller can
also be served over an HCI transport (``tcp-server:127.0.0.1:<port>``) so that a host in another
process (the gateway) joins the link: see ``serve_controller``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bumble import hci
from bumble.controller import Controller
from bumble.core import InvalidPacketError
from bumble.device import Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink, PacketParser, Transport

log = logging.getLogger(__name__)

SUPERVISION_PERIOD_S = 0.25
SUPERVISION_MISSES = 2


class VirtualController(Controller):
    """bumble's ``Controller`` with a working LE Create Connection Cancel and Disconnect.

    The stock virtual controller answers the cancel command with success but neither drops the
    pending connection nor reports it ended, so a host that times out a connection to an absent
    peer waits forever and the next connect is refused. A real controller ends the attempt with an
    LE Connection Complete event carrying "Unknown Connection Identifier" (Core spec Vol 4, Part E,
    7.8.13); this subclass does exactly that.
    """

    def on_hci_le_create_connection_cancel_command(self, _command: Any) -> Any:
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        event = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address.address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # After the Command Complete that the caller is about to queue, as a controller would.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, event)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)

    def on_hci_disconnect_command(self, command: Any) -> None:
        """A Disconnect for a handle the controller no longer has (the peer dropped the link a
        moment earlier) is refused with "Unknown Connection Identifier" as the spec says (Vol 4,
        Part E, 7.1.6); the stock controller reports it pending and never completes it, which
        leaves the host waiting forever."""
        handle = command.connection_handle
        known = (
            self.find_le_connection_by_handle(handle)
            or self.find_classic_connection_by_handle(handle)
            or self.find_classic_sco_link_by_handle(handle)
        )
        if known is None:
            self._send_hci_command_status(
                hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, command.op_code
            )
            return
        super().on_hci_disconnect_command(command)

    # -- supervision timeout -----------------------------------------------------------------
    # The virtual link has no connection events, so a link that one side dropped while the other
    # was busy (both ends disconnecting at once, a connect indication racing the end of
    # advertising) can stay half-open forever: one host thinks it is connected, the peripheral
    # never advertises again. A real link ends by supervision timeout when the peer stops
    # answering (Core spec Vol 6, Part B, 4.5.2); this does the same: a connection whose peer
    # controller has no matching connection for SUPERVISION_MISSES checks is dropped with
    # "Connection Timeout", and the host sees an ordinary disconnection.
    _supervision: asyncio.TimerHandle | None = None
    _misses: dict[int, int]

    def create_le_connection(self, peer_address: hci.Address) -> None:
        super().create_le_connection(peer_address)
        self._supervise_soon()

    def on_le_connect_ind(self, packet: Any) -> None:
        super().on_le_connect_ind(packet)
        self._supervise_soon()

    def _supervise_soon(self) -> None:
        if self._supervision is None:
            loop = asyncio.get_running_loop()
            self._supervision = loop.call_later(SUPERVISION_PERIOD_S, self._supervise)

    def _supervise(self) -> None:
        self._supervision = None
        previous = getattr(self, "_misses", {})
        misses: dict[int, int] = {}
        for connection in list(self.le_connections.values()):
            peer = self.link.find_le_controller(connection.peer_address)
            alive = (
                peer is not None
                and peer is not self
                and any(
                    c.peer_address == connection.self_address for c in peer.le_connections.values()
                )
            )
            if alive:
                continue
            # keyed by the connection object: handles are reused by later connections
            missed = previous.get(id(connection), 0) + 1
            if missed >= SUPERVISION_MISSES:
                self.on_le_disconnected(connection, hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR)
            else:
                misses[id(connection)] = missed
        self._misses = misses
        if self.le_connections:
            self._supervise_soon()

    def detach(self, link: LocalLink) -> None:
        """Leave ``link`` as a controller whose host vanished: every LE link ends at its peer
        with "Connection Timeout" (what the peer's supervision timeout would report), nothing
        more is sent to the host, and no timer of this controller runs on."""
        self.host = None
        if self in link.controllers:
            link.remove_controller(self)
        if self._supervision is not None:
            self._supervision.cancel()
            self._supervision = None
        self.pending_le_connection = None
        connections = list(self.le_connections.values())
        self.le_connections.clear()
        for connection in connections:
            peer = link.find_le_controller(connection.peer_address)
            if peer is None:
                continue
            for theirs in list(peer.le_connections.values()):
                if theirs.peer_address == connection.self_address:
                    peer.on_le_disconnected(theirs, hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR)


def local_device(link: LocalLink, name: str, address: str) -> Device:
    """A bumble ``Device`` (host + virtual controller) on ``link`` with a random static address."""
    controller = VirtualController(name, link=link)
    return Device(
        name=name, address=hci.Address(address), host=Host(controller, AsyncPipeSink(controller))
    )


class _HostSink:
    """Controller -> host: HCI packets onto the TCP connection of the host being served."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def on_packet(self, packet: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(packet)


class HciServer:
    """A controller on ``link`` for one HCI host at a time, over TCP on loopback.

    Written here rather than taken from bumble's ``tcp-server`` transport, which shares one
    source and sink among all connections and never says that its client went away: a host
    process killed with SIGKILL then leaves its controller on the link with every connection
    still up, so the plugs never advertise again and no later host can reach them. Here each
    accepted host gets a fresh ``VirtualController``; when its TCP connection closes (the process
    died or closed it), that controller leaves the link and its peers see their links end with
    "Connection Timeout", as a radio's supervision timeout would end them, so the plugs advertise
    again for the next host. A new host while one is connected replaces it (a host that vanished
    without closing its socket must not lock out its successor). Bytes that are not HCI packets
    end that host's connection, never the server.
    """

    def __init__(self, link: LocalLink, name: str = "remote-host") -> None:
        self.link = link
        self.name = name
        self.server: asyncio.Server | None = None
        self.controller: VirtualController | None = None
        self.hosts_served = 0
        self._current: asyncio.Transport | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _HciHostProtocol(self), host, port)

    @property
    def port(self) -> int | None:
        if self.server is None or not self.server.sockets:
            return None
        return int(self.server.sockets[0].getsockname()[1])

    def _attach(self, transport: asyncio.Transport) -> VirtualController:
        if self._current is not None:
            log.info("HCI: a new host replaces the connected one")
            self._current.close()  # its connection_lost detaches its controller
        self._current = transport
        self.hosts_served += 1
        controller = VirtualController(self.name, link=self.link)
        controller.host = _HostSink(transport)
        self.controller = controller
        return controller

    def _detach(self, transport: asyncio.Transport, controller: VirtualController) -> None:
        if self._current is transport:
            self._current = None
        if self.controller is controller:
            self.controller = None
        controller.detach(self.link)

    async def close(self) -> None:
        if self._current is not None:
            self._current.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class _HciHostProtocol(asyncio.Protocol):
    def __init__(self, owner: HciServer) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.controller: VirtualController | None = None
        self.parser: PacketParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.controller = self.owner._attach(transport)
        self.parser = PacketParser(self.controller)

    def data_received(self, data: bytes) -> None:
        assert self.parser is not None and self.transport is not None
        try:
            self.parser.feed_data(data)
        except InvalidPacketError as exc:
            log.warning("HCI: closing a host that sent a bad packet: %s", exc)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and self.controller is not None:
            log.info("HCI: host gone (%s); its links end", exc or "closed")
            self.owner._detach(self.transport, self.controller)
            self.controller = None


async def serve_controller(
    link: LocalLink, spec: str, name: str = "remote-host"
) -> HciServer | Transport:
    """Attach one more controller to ``link`` whose HCI side is served on ``spec`` (for example
    ``tcp-server:127.0.0.1:9001``): a host in another process opens the matching client transport
    and becomes a device on this link. ``tcp-server`` gives an ``HciServer`` (a fresh controller
    per host, links torn down when the host goes); other bumble server transports are opened as
    they are, one controller for their lifetime. Close the returned object to detach it."""
    scheme, _, rest = spec.partition(":")
    if scheme == "tcp-server":
        host, _, port = rest.rpartition(":")
        server = HciServer(link, name)
        await server.start(host, int(port))
        return server
    transport = await open_transport(spec)
    VirtualController(name, host_source=transport.source, host_sink=transport.sink, link=link)
    return transport


def transport_port(transport: HciServer | Transport) -> int | None:
    """The TCP port a ``tcp-server`` transport listens on (useful with port 0), else None."""
    server = getattr(transport, "server", None)
    if server is None or not server.sockets:
        return None
    return int(server.sockets[0].getsockname()[1])
