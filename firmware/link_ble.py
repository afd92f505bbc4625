# BLE link: a GATT peripheral with aioble. Thin on purpose: it moves frames and enforces the link
# policy of ble_guard.py (the same module the plug emulator runs).
#
# UUIDs come from hardware/node_profile.json (the gateway and the emulators read the same file);
# they are copied here because the node has no copy of that file, and tests/firmware check that
# both agree. One READING frame per notification on `readings`, one COMMAND frame per write on
# `command`, one ACK frame per notification on `ack`.
#
# Security (see ble_guard.py and firmware/README.md): LE Secure Connections, Passkey Entry, bonding
# (aioble keeps the bonds in ble_secrets.json); this node "types" ble_guard.passkey(node key) when
# the stack asks. The command characteristic needs an encrypted, authenticated link (the stack
# refuses other writes with an ATT error), and a write from any link but the bonded gateway's is
# dropped; readings and acks are notified to the gateway's link only, and reading them needs an
# encrypted, authenticated link. The gateway's address is kept in GATEWAY_FILE. Two connection
# slots, advertising while one is free; a stranger gets at most one, for at most
# ble_guard.UNAUTH_TIMEOUT_MS.
import asyncio

import aioble
import ble_guard
import bluetooth
from micropython import const

SERVICE_UUID = "5a1d0001-8f3c-4b6e-9d2a-77a77e5d0000"
READINGS_UUID = "5a1d0002-8f3c-4b6e-9d2a-77a77e5d0000"
COMMAND_UUID = "5a1d0003-8f3c-4b6e-9d2a-77a77e5d0000"
ACK_UUID = "5a1d0004-8f3c-4b6e-9d2a-77a77e5d0000"
NAME_PREFIX = "wattmesh-"
MTU = 128  # a READING frame is 65 bytes: more than the default ATT MTU of 23 allows
ADV_INTERVAL_US = 250000
GATEWAY_FILE = "ble_gateway"  # the bonded gateway's address, hex; absent before the first bond

# MicroPython's bluetooth constants (not exported by the module; aioble uses the same numbers)
_IRQ_ENCRYPTION_UPDATE = const(28)
_IRQ_PASSKEY_ACTION = const(31)
_PASSKEY_ACTION_INPUT = const(2)
IO_KEYBOARD_ONLY = const(2)
FLAG_READ_ENCRYPTED = const(0x0200)
FLAG_READ_AUTHENTICATED = const(0x0400)
FLAG_WRITE_ENCRYPTED = const(0x1000)
FLAG_WRITE_AUTHENTICATED = const(0x2000)
SECURE_READ = FLAG_READ_ENCRYPTED | FLAG_READ_AUTHENTICATED
SECURE_WRITE = FLAG_WRITE_ENCRYPTED | FLAG_WRITE_AUTHENTICATED


def _load_gateway():
    try:
        with open(GATEWAY_FILE) as f:
            text = f.read().strip()
        return bytes.fromhex(text) if len(text) == 12 else None
    except (OSError, ValueError):
        return None


class Link:
    def __init__(self, cfg, key):
        aioble.config(mtu=MTU, bond=True, le_secure=True, mitm=True, io=IO_KEYBOARD_ONLY)
        self.passkey = ble_guard.passkey(key)
        self.guard = ble_guard.Guard(_load_gateway())
        self._saved = self.guard.gateway
        svc = aioble.Service(bluetooth.UUID(SERVICE_UUID))
        self.readings = aioble.Characteristic(svc, bluetooth.UUID(READINGS_UUID), read=True,
                                              notify=True)
        self.command = aioble.Characteristic(svc, bluetooth.UUID(COMMAND_UUID), write=True,
                                             capture=True)
        self.ack = aioble.Characteristic(svc, bluetooth.UUID(ACK_UUID), read=True, notify=True)
        # aioble has no arguments for these: the flags go to gatts_register_services as set here
        self.readings.flags |= SECURE_READ
        self.ack.flags |= SECURE_READ
        self.command.flags |= SECURE_WRITE
        aioble.register_services(svc)
        # security events reach this link first, then aioble (which keeps each connection's
        # encrypted/authenticated/bonded flags and the bond store)
        aioble.core.ble.irq(self._irq)
        self.name = NAME_PREFIX + str(cfg["node_id"])
        self.inbox = []
        self.links = {}  # conn handle -> aioble DeviceConnection
        self._freed = asyncio.Event()

    @staticmethod
    def _peer(conn):
        return bytes(conn.device.addr)

    def _conn(self, handle):
        # ours once _advertise has taken it; aioble's table covers the moment before that
        return self.links.get(handle) or aioble.device.DeviceConnection._connected.get(handle)

    def _irq(self, event, data):
        if event == _IRQ_PASSKEY_ACTION:
            handle, action, _shown = data
            conn = self._conn(handle)
            if (action == _PASSKEY_ACTION_INPUT and conn is not None
                    and self.guard.may_pair(self._peer(conn))):
                aioble.core.ble.gap_passkey(handle, action, self.passkey)
            else:  # refused before the passkey is used: nothing of it leaks
                aioble.core.ble.gap_disconnect(handle)
            return None
        result = aioble.core.ble_irq(event, data)
        if event == _IRQ_ENCRYPTION_UPDATE:
            self._encryption(data)
        return result

    def _encryption(self, data):
        handle, encrypted, authenticated, bonded, _key_size = data
        conn = self._conn(handle)
        if conn is None:
            return
        peer = self._peer(conn)
        if not encrypted:  # a failed pairing or encryption
            self.guard.pair_failed()
            aioble.core.ble.gap_disconnect(handle)
        elif self.guard.trusted(peer, encrypted, authenticated):
            pass  # the gateway, encrypted under its bond
        elif not self.guard.paired(peer, authenticated, bonded):
            # Just Works, or not the gateway: no commands, no readings, no slot
            aioble.core.ble.gap_disconnect(handle)

    def _trusted(self, conn):
        return self.guard.trusted(self._peer(conn), conn.encrypted, conn.authenticated)

    async def _advertise(self):
        while True:
            if not self.guard.advertise(len(self.links)):
                self._freed.clear()
                await self._freed.wait()
                continue
            conn = await aioble.advertise(ADV_INTERVAL_US, name=self.name,
                                          services=[bluetooth.UUID(SERVICE_UUID)])
            others = [self._peer(c) for c in self.links.values()]
            if not self.guard.admit(self._peer(conn), others):
                await conn.disconnect()
                continue
            self.links[conn._conn_handle] = conn
            asyncio.create_task(self._watch(conn))

    async def _watch(self, conn):
        try:
            await conn.disconnected(timeout_ms=ble_guard.UNAUTH_TIMEOUT_MS)
        except asyncio.TimeoutError:  # up for UNAUTH_TIMEOUT_MS: the gateway's secure link yet?
            age = ble_guard.UNAUTH_TIMEOUT_MS
            if self.guard.overdue(self._peer(conn), conn.encrypted, conn.authenticated, age):
                await conn.disconnect()
            else:
                await conn.disconnected(timeout_ms=None)
        self.links.pop(conn._conn_handle, None)
        self._freed.set()

    async def _commands(self):
        while True:
            conn, data = await self.command.written()
            if conn is None or not self._trusted(conn):
                self.guard.dropped["command"] = self.guard.dropped.get("command", 0) + 1
                continue
            if len(self.inbox) < 8:
                self.inbox.append(bytes(data))

    def start(self):
        asyncio.create_task(self._advertise())
        asyncio.create_task(self._commands())

    def _notify(self, char, frame_bytes):
        char.write(frame_bytes)  # the value a (trusted) read returns
        for conn in list(self.links.values()):
            if self._trusted(conn):
                try:
                    char.notify(conn, frame_bytes)
                except (OSError, ValueError):
                    pass  # the link went down in between: the next frame goes to the next link

    def send(self, frame_bytes):
        self._notify(self.readings, frame_bytes)

    def send_ack(self, frame_bytes):
        self._notify(self.ack, frame_bytes)

    def sensor(self, _payload):
        pass  # BLE carries frames only

    def received(self):
        if self.guard.gateway != self._saved:  # a new bond: keep its address across reboots
            try:
                with open(GATEWAY_FILE, "w") as f:
                    f.write(self.guard.gateway.hex())
                self._saved = self.guard.gateway
            except OSError:
                pass  # tried again at the next call
        out, self.inbox = self.inbox, []
        return out
