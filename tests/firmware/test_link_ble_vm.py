"""The BLE link (link_ble.py) and its policy (ble_guard.py) under real MicroPython.

The WebAssembly VM has no BLE stack and aioble is installed on the device by `wattmesh firmware
flash`, so a stand-in with aioble's API (read from micropython-lib's aioble: ``config``,
``Service``/``Characteristic`` with their ``flags``, ``register_services``, ``advertise``,
``DeviceConnection`` with ``encrypted``/``authenticated``/``bonded``, ``disconnected(timeout_ms)``
raising ``asyncio.TimeoutError``, ``core.ble`` and ``core.ble_irq``) plays the stack: the test
decides who connects, what the stack reports (passkey requests, encryption updates) and when the
link's timeout runs out. What is checked is the firmware's own behaviour: how it configures the
stack, which passkey it gives to whom, whose writes reach the node, who is notified, who keeps a
slot, and that the gateway's address survives a reboot. ``ble_guard`` itself also runs here and in
CPython on the same cases, and must agree.
"""

from __future__ import annotations

from typing import Any

import pytest

from firmware import ble_guard
from tools import mpvm

KEY = bytes(range(32))

# The VM's own asyncio runs its tasks on the JavaScript event loop, after a script returns; this
# stand-in runs them round-robin inside the script (an awaitable that yields once is a step).
ASYNCIO = """
class TimeoutError(Exception):
    pass
class _Yield:
    def __iter__(self):
        yield None
    __await__ = __iter__
_tasks = []
def create_task(coro):
    _tasks.append(coro)
    return coro
async def sleep_ms(ms):
    await _Yield()
class Event:
    def __init__(self):
        self._set = False
    def set(self):
        self._set = True
    def clear(self):
        self._set = False
    def is_set(self):
        return self._set
    async def wait(self):
        while not self._set:
            await _Yield()
def run(main):
    _tasks.insert(0, main)
    while main in _tasks:
        for t in list(_tasks):
            try:
                t.send(None)
            except StopIteration:
                _tasks.remove(t)
    _tasks.clear()
"""

BLUETOOTH = """
class UUID:
    def __init__(self, s):
        self.s = s
"""

AIOBLE_CORE = """
import asyncio
log = []
class BLE:
    def __init__(self):
        self.handler = None
    def irq(self, h):
        self.handler = h
    def gap_passkey(self, handle, action, passkey):
        log.append(('passkey', handle, action, passkey))
    def gap_disconnect(self, handle):
        log.append(('disconnect', handle))
        import aioble
        c = aioble.device.DeviceConnection._connected.get(handle)
        if c is not None:
            c.drop()
ble = BLE()
def ble_irq(event, data):
    # aioble's security handler: the connection's flags from an encryption update
    import aioble
    if event == 28:
        handle, enc, auth, bonded, size = data
        c = aioble.device.DeviceConnection._connected.get(handle)
        if c is not None:
            c.encrypted, c.authenticated, c.bonded = enc, auth, bonded
    return None
"""

AIOBLE_DEVICE = """
import asyncio
class Device:
    def __init__(self, addr):
        self.addr = addr
class DeviceConnection:
    _connected = {}
    def __init__(self, handle, addr):
        self._conn_handle = handle
        self.device = Device(addr)
        self.encrypted = False
        self.authenticated = False
        self.bonded = False
        self._ev = asyncio.Event()
        self._expired = False
        self.gone = False
        DeviceConnection._connected[handle] = self
    def drop(self):
        self.gone = True
        DeviceConnection._connected.pop(self._conn_handle, None)
        self._ev.set()
    def expire(self):
        self._expired = True
        self._ev.set()
    async def disconnect(self):
        self.drop()
    async def disconnected(self, timeout_ms=60000):
        while True:
            await self._ev.wait()
            self._ev.clear()
            if self.gone:
                return
            if self._expired and timeout_ms is not None:
                self._expired = False
                raise asyncio.TimeoutError
"""

AIOBLE = """
import asyncio
from . import core, device
from .device import DeviceConnection
config_calls = []
registered = []
notified = []
incoming = []           # connections the next advertise() returns
_arrived = asyncio.Event()
adverts = [0]
def config(**kw):
    config_calls.append(kw)
class Service:
    def __init__(self, uuid):
        self.uuid = uuid
        self.characteristics = []
class Characteristic:
    def __init__(self, service, uuid, read=False, write=False, notify=False, capture=False):
        service.characteristics.append(self)
        self.uuid = uuid
        self.flags = (0x02 if read else 0) | (0x08 if write else 0) | (0x10 if notify else 0)
        self.value = b''
        self._writes = []
        self._ev = asyncio.Event()
    def write(self, data, send_update=False):
        assert not send_update, 'notify each link explicitly'
        self.value = data
    def notify(self, conn, data=None):
        notified.append((self.uuid.s, conn._conn_handle, bytes(data)))
    def remote_write(self, conn, data):
        self._writes.append((conn, data))
        self._ev.set()
    async def written(self, timeout_ms=None):
        while not self._writes:
            self._ev.clear()
            await self._ev.wait()
        return self._writes.pop(0)
def register_services(*services):
    for s in services:
        for c in s.characteristics:
            registered.append((c.uuid.s, c.flags))
def arrive(conn):
    incoming.append(conn)
    _arrived.set()
async def advertise(interval_us, name=None, services=None):
    adverts[0] += 1
    while not incoming:
        _arrived.clear()
        await _arrived.wait()
    return incoming.pop(0)
"""

SCRIPT = """
import asyncio, aioble, ble_guard, link_ble, os
from aioble.device import DeviceConnection
KEY = bytes(range(32))
GW = b'\\xb8\\x27\\xeb\\x01\\x02\\x03'
PHONE = b'\\x66\\x66\\x66\\x66\\x66\\x66'
THIEF = b'\\x77\\x77\\x77\\x77\\x77\\x77'
ble = aioble.core.ble
def irq(event, data):
    return ble.handler(event, data)
async def settle():
    for _ in range(20):
        await asyncio.sleep_ms(0)
async def arrive(handle, addr):   # a central connects (handle, address); the link settles
    c = DeviceConnection(handle, addr)
    aioble.arrive(c)
    await settle()
    return c
def state(tag, L, **kw):
    d = {'tag': tag, 'links': sorted(L.links), 'gateway': L.guard.gateway.hex() if L.guard.gateway
         else None, 'dropped': L.guard.dropped, 'log': [list(x) for x in aioble.core.log],
         'adverts': aioble.adverts[0], 'failures': L.guard.failures}
    d.update(kw)
    emit(d)
    aioble.core.log.clear()
"""

FIRST_BOOT = """
try:
    os.remove('ble_gateway')
except OSError:
    pass
async def main():
    L = link_ble.Link({'node_id': 7}, KEY)
    emit({'tag': 'config', 'calls': aioble.config_calls, 'registered': aioble.registered,
          'passkey': L.passkey})
    L.start()
    await settle()
    # a phone connects first and never pairs; the gateway connects to the second slot
    phone = await arrive(1, PHONE)
    gw = await arrive(2, GW)
    state('two links', L)
    # the stack asks for the passkey: the gateway gets it; a write before pairing is dropped
    L.command.remote_write(gw, b'early')
    await settle()
    irq(31, (2, 2, 0))
    irq(28, (2, True, True, True, 16))
    await settle()
    L.command.remote_write(gw, b'cmd1')
    L.command.remote_write(phone, b'phone-cmd')
    await settle()
    L.send(b'reading')
    state('bonded', L, inbox=[x.decode() for x in L.received()], notified=aioble.notified,
          saved=open('ble_gateway').read())
    # the phone's link runs out of time: dropped; a Just Works bond from it would not count
    phone.expire()
    await settle()
    state('phone timed out', L, phone_gone=phone.gone)
    # a thief (knows the passkey) connects while the gateway is up: its pairing is refused
    # before the passkey is given, and its writes never reach the node
    thief = await arrive(3, THIEF)
    irq(31, (3, 2, 0))
    await settle()
    L.command.remote_write(thief, b'thief-cmd')
    await settle()
    state('thief', L, thief_gone=thief.gone, inbox=L.received())
    # the gateway goes; a stranger gets a slot but not the one kept for the gateway
    gw.drop()
    await settle()
    s1 = await arrive(4, PHONE)
    s2 = await arrive(5, THIEF)
    state('reserved', L, s1_gone=s1.gone, s2_gone=s2.gone)
    # a Just Works pairing (unauthenticated) from the stranger: refused and dropped
    irq(28, (4, True, False, True, 16))
    await settle()
    state('just works', L, s1_gone=s1.gone)
asyncio.run(main())
"""

REBOOT = """
async def main():
    L = link_ble.Link({'node_id': 7}, KEY)   # the gateway's address read back from flash
    L.start()
    await settle()
    gw = await arrive(8, GW)
    irq(28, (8, True, True, True, 16))       # re-encrypted under the stored bond
    L.command.remote_write(gw, b'cmd2')
    await settle()
    state('rebooted', L, inbox=[x.decode() for x in L.received()])
    # three wrong passkeys (failed encryption updates) from the gateway's address: locked
    for h in (9, 10, 11):
        gw.drop()
        c = await arrive(h, GW)
        irq(31, (h, 2, 0))
        irq(28, (h, False, False, False, 0))
        await settle()
    c = await arrive(12, GW)
    irq(31, (12, 2, 0))
    state('locked', L)
asyncio.run(main())
"""


def _files() -> dict[str, str]:
    return {
        "/asyncio.py": ASYNCIO,  # found before the frozen asyncio ('' is first on sys.path)
        "/lib/bluetooth.py": BLUETOOTH,
        "/lib/aioble/__init__.py": AIOBLE,
        "/lib/aioble/core.py": AIOBLE_CORE,
        "/lib/aioble/device.py": AIOBLE_DEVICE,
    }


@pytest.fixture(scope="module")
def run() -> dict[str, dict[str, Any]]:
    res = mpvm.run_job([SCRIPT + FIRST_BOOT, SCRIPT + REBOOT], files=_files())
    return {r["tag"]: r for r in res.results}


def test_link_ble_configures_aioble_for_bonded_le_secure_connections_with_mitm(
    run: dict[str, dict[str, Any]],
) -> None:
    cfg = run["config"]
    (call,) = cfg["calls"]
    assert call == {"mtu": 128, "bond": True, "le_secure": True, "mitm": True, "io": 2}
    flags = {uuid[4:8]: f for uuid, f in cfg["registered"]}
    # readings 0002, command 0003, ack 0004: encrypted + authenticated reads / writes
    assert flags["0003"] & 0x3000 == 0x3000 and flags["0003"] & 0x08
    assert flags["0002"] & 0x0600 == 0x0600 and flags["0004"] & 0x0600 == 0x0600
    assert cfg["passkey"] == ble_guard.passkey(KEY)  # the same six digits as CPython's


def test_only_the_bonded_gateway_commands_and_hears_the_readings(
    run: dict[str, dict[str, Any]],
) -> None:
    two = run["two links"]
    assert two["links"] == [1, 2] and two["dropped"] == {}
    bonded = run["bonded"]
    assert ["passkey", 2, 2, ble_guard.passkey(KEY)] in bonded["log"]
    assert bonded["gateway"] == "b827eb010203" and bonded["saved"] == "b827eb010203"
    assert bonded["inbox"] == ["cmd1"]  # 'early' (before pairing) and the phone's dropped
    assert bonded["dropped"]["command"] == 2
    (notified,) = bonded["notified"]  # the gateway's link only, not the phone's
    assert notified[0] == "5a1d0002-8f3c-4b6e-9d2a-77a77e5d0000" and notified[1] == 2


def test_strangers_time_out_never_pair_and_never_take_the_gateways_slot(
    run: dict[str, dict[str, Any]],
) -> None:
    timed_out = run["phone timed out"]
    assert timed_out["phone_gone"] and timed_out["dropped"]["timeout"] == 1
    thief = run["thief"]
    assert thief["thief_gone"] and ["disconnect", 3] in thief["log"]
    assert not any(x[0] == "passkey" for x in thief["log"])  # refused before the passkey
    assert thief["inbox"] == [] and thief["dropped"]["pair_not_gateway"] == 1
    reserved = run["reserved"]
    assert not reserved["s1_gone"] and reserved["s2_gone"]
    assert reserved["dropped"]["stranger_slot"] == 1
    assert run["just works"]["s1_gone"] and run["just works"]["dropped"]["pair_unauthenticated"]


def test_the_gateway_survives_a_reboot_and_pairing_locks_after_three_failures(
    run: dict[str, dict[str, Any]],
) -> None:
    rebooted = run["rebooted"]
    assert rebooted["gateway"] == "b827eb010203" and rebooted["inbox"] == ["cmd2"]
    locked = run["locked"]
    assert locked["failures"] == ble_guard.MAX_PAIR_FAILURES
    assert ["passkey", 11, 2, ble_guard.passkey(KEY)] in locked["log"]  # the third attempt
    assert not any(x[0] == "passkey" and x[1] == 12 for x in locked["log"])
    assert ["disconnect", 12] in locked["log"] and locked["dropped"]["pair_locked"] >= 1


GUARD_CASES = """
import ble_guard
G = ble_guard.Guard
out = []
g = G()
out.append(g.admit('a', []))
out.append(g.admit('b', ['a']))
out.append(g.admit('c', ['a', 'b']))
out.append(g.may_pair('a'))
out.append(g.paired('a', False, True))
out.append(g.paired('a', True, False))
out.append(g.paired('a', True, True))
out.append(g.gateway)
out.append(g.may_pair('b'))
out.append(g.paired('b', True, True))
out.append(g.admit('b', []))
out.append(g.admit('c', ['b']))
out.append(g.admit('gw', ['b']))
out.append(g.admit('a', ['b']))
out.append(g.trusted('a', True, True))
out.append(g.trusted('a', True, False))
out.append(g.trusted('b', True, True))
out.append(g.overdue('b', False, False, 19999))
out.append(g.overdue('b', False, False, 20000))
out.append(g.overdue('a', True, True, 10**9))
g.pair_failed(); g.pair_failed(); g.pair_failed()
out.append(g.may_pair('a'))
out.append(g.advertise(1))
out.append(g.advertise(2))
out.append(sorted(g.dropped.items()))
out.append([ble_guard.passkey(bytes([i]) * 32) for i in range(5)])
emit(out)
"""


def test_ble_guard_is_the_same_in_micropython_and_cpython() -> None:
    (vm,) = mpvm.run_job(GUARD_CASES).results
    here: list[Any] = []
    env = {"ble_guard": ble_guard, "emit": here.append}
    exec(GUARD_CASES.replace("import ble_guard\n", ""), env)
    assert vm == _jsonable(here[0])  # JSON from the VM: tuples come back as lists
    assert vm[:3] == [True, True, False]  # two slots
    assert vm[4:8] == [False, False, True, "a"]  # only an authenticated LE SC bond counts


def _jsonable(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
