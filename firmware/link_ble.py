# BLE link: a GATT peripheral with aioble. Thin on purpose: it moves frames, nothing else.
#
# UUIDs come from hardware/node_profile.json (the gateway and the emulators read the same file);
# they are copied here because the node has no copy of that file, and tests/firmware check that
# both agree. One READING frame per notification on `readings`, one COMMAND frame per write on
# `command`, one ACK frame per notification on `ack`.
import asyncio

import aioble
import bluetooth

SERVICE_UUID = "5a1d0001-8f3c-4b6e-9d2a-77a77e5d0000"
READINGS_UUID = "5a1d0002-8f3c-4b6e-9d2a-77a77e5d0000"
COMMAND_UUID = "5a1d0003-8f3c-4b6e-9d2a-77a77e5d0000"
ACK_UUID = "5a1d0004-8f3c-4b6e-9d2a-77a77e5d0000"
NAME_PREFIX = "wattmesh-"
MTU = 128  # a READING frame is 65 bytes: more than the default ATT MTU of 23 allows
ADV_INTERVAL_US = 250000


class Link:
    def __init__(self, cfg):
        aioble.config(mtu=MTU)
        svc = aioble.Service(bluetooth.UUID(SERVICE_UUID))
        self.readings = aioble.Characteristic(svc, bluetooth.UUID(READINGS_UUID), read=True,
                                              notify=True)
        self.command = aioble.Characteristic(svc, bluetooth.UUID(COMMAND_UUID), write=True,
                                             capture=True)
        self.ack = aioble.Characteristic(svc, bluetooth.UUID(ACK_UUID), read=True, notify=True)
        aioble.register_services(svc)
        self.name = NAME_PREFIX + str(cfg["node_id"])
        self.inbox = []

    async def _advertise(self):
        while True:
            conn = await aioble.advertise(ADV_INTERVAL_US, name=self.name,
                                          services=[bluetooth.UUID(SERVICE_UUID)])
            await conn.disconnected(timeout_ms=None)

    async def _commands(self):
        while True:
            _conn, data = await self.command.written()
            if len(self.inbox) < 8:
                self.inbox.append(bytes(data))

    def start(self):
        asyncio.create_task(self._advertise())
        asyncio.create_task(self._commands())

    def send(self, frame_bytes):
        self.readings.write(frame_bytes, send_update=True)

    def send_ack(self, frame_bytes):
        self.ack.write(frame_bytes, send_update=True)

    def sensor(self, _payload):
        pass  # BLE carries frames only

    def received(self):
        out, self.inbox = self.inbox, []
        return out
