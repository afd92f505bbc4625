"""An emulated wattmesh plug (or single-channel node) on bumble's virtual BLE controller.

``PlugCore`` is the sans-IO node: given the time it produces READING frames (power from a load
profile, energy counters integrating it exactly in integer units) and given a COMMAND frame it
switches its relay and returns an ACK frame. It speaks ``firmware.frame``, the one definition of
the wire format. Its relay behaves as the plug boards' (``hardware/boards/plug_*.json``) under
the firmware (``firmware/relay.py``): off at boot, and a switch inside the minimum on/off time
(boot counts as a switch) is answered ``S_MIN_TIME`` and carried out when that time is up.
``PlugEmulator`` puts it on a bumble ``Device`` serving the node's GATT profile
(``hardware/node_profile.json``) and adds fault injection: drop the link, go dead (stop
advertising), go silent, corrupt, truncate or replay frames.

Link security is the firmware's (``firmware/ble_guard.py``, the one definition of the policy):
LE Secure Connections Passkey Entry with bonding, the passkey derived from the node key; the
command characteristic needs an encrypted, authenticated link and is refused ("insufficient
authorization") to anyone but the bonded gateway; readings and acks go to the gateway's link only
(reads need the same); two connection slots, one kept for the gateway once bonded, and a link
that is not the gateway's secure link within ``UNAUTH_TIMEOUT_MS`` of the injected clock is
dropped. The emulator keeps its bond in memory: a restarted emulator is a node reset.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from bumble.att import ATT_Error, ErrorCode
from bumble.core import AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.keys import PairingKeys
from bumble.link import LocalLink
from bumble.pairing import PairingConfig
from bumble.smp import ErrorCode as SmpErrorCode

from firmware import ble_guard, frame
from hardware.ble.bonds import passkey_pairing
from hardware.ble.controller import local_device
from hardware.ble.profile import PROFILE, plug_address, plug_name

log = logging.getLogger(__name__)

KEY_LEN = 32
NOMINAL_VOLTAGE_DV = 2300
# 1 mWh = 3.6 W*s = 36 dW*s = 36_000 dW*ms: energy is integrated in dW*ms, exactly.
DW_MS_PER_MWH = 36_000
ADVERTISING_INTERVAL_MS = 50  # short, so a virtual reconnect takes milliseconds

DEFAULT_BOARD = "plug_hlw8012"

# pairing failures that can tell an attacker something about the passkey (ble_guard counts them)
PASSKEY_FAILURES = frozenset({
    SmpErrorCode.CONFIRM_VALUE_FAILED, SmpErrorCode.PASSKEY_ENTRY_FAILED,
    SmpErrorCode.DHKEY_CHECK_FAILED, SmpErrorCode.NUMERIC_COMPARISON_FAILED,
})

LoadProfile = Callable[[int], int]
"""Real power in deciwatts at a time in ms (negative: export, e.g. a PV inverter)."""


def constant_load(power_w: float) -> LoadProfile:
    dw = round(power_w * 10)
    return lambda _ms: dw


def board_relay(board: str = DEFAULT_BOARD) -> tuple[bool, int, int]:
    """Boot state, minimum on and minimum off time (ms) of a plug board's relay, from its data
    file: the emulator and the firmware build read the same numbers."""
    data = json.loads(resources.files("hardware").joinpath("boards", f"{board}.json").read_text())
    (relay,) = data["relays"]  # a plug has one relay, on its one metering channel
    return (bool(relay.get("boot_on", False)), round(relay.get("min_on_s", 0) * 1000),
            round(relay.get("min_off_s", 0) * 1000))


@dataclass
class PlugCore:
    """The node's behaviour, without IO: time in, frames out. ``start_ms`` is when the plug was
    powered up (its boot: uptime and the relay's first minimum off time count from it)."""

    node_id: int
    key: bytes
    load: LoadProfile
    start_ms: int = 0
    seq: int = 1  # next sequence number for a frame this node sends
    board: str = DEFAULT_BOARD
    relay_on: bool = field(init=False)
    min_on_ms: int = field(init=False)
    min_off_ms: int = field(init=False)
    changed_ms: int = field(init=False)  # when the relay last switched; boot counts as one
    pending: bool | None = field(init=False, default=None)  # a switch deferred by the min time
    relay_log: list[tuple[int, bool]] = field(init=False)  # (ms, state) from boot on
    import_mwh: int = 0
    export_mwh: int = 0
    last_command_seq: int = 0
    commands_rejected: int = 0  # command frames dropped unanswered, for any reason
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    _last_ms: int | None = None
    _import_rem: int = 0  # dW*ms not yet a whole mWh
    _export_rem: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.node_id <= 0xFFFF:
            raise ValueError(f"node id {self.node_id} out of range 0..65535")
        if len(self.key) != KEY_LEN:
            raise ValueError(f"node key must be {KEY_LEN} bytes, got {len(self.key)}")
        self.relay_on, self.min_on_ms, self.min_off_ms = board_relay(self.board)
        self.changed_ms = self.start_ms
        self.relay_log = [(self.start_ms, self.relay_on)]

    def power_dw(self, now_ms: int) -> int:
        return int(self.load(now_ms)) if self.relay_on else 0

    def relay_at(self, t_ms: int) -> bool:
        """The relay's state at ``t_ms`` (from its switching log)."""
        k = bisect.bisect_right(self.relay_log, t_ms, key=lambda e: e[0])
        return self.relay_log[max(0, k - 1)][1]

    def power_at(self, t_ms: int) -> int:
        """What the appliance behind the plug drew at ``t_ms`` (dW), as its relay then let it:
        the same current passes the plug's chip and the home's billing meter."""
        return int(self.load(t_ms)) if self.relay_at(t_ms) else 0

    def _hold_until(self) -> int:
        """When the relay's minimum time since its last switch is over."""
        return self.changed_ms + (self.min_on_ms if self.relay_on else self.min_off_ms)

    def _switch(self, on: bool, at_ms: int) -> None:
        self.relay_on = on
        self.changed_ms = at_ms
        self.relay_log.append((at_ms, on))

    def advance(self, now_ms: int) -> None:
        """Integrate the energy counters up to ``now_ms`` (left Riemann sum over the calls),
        carrying out a deferred switch at the moment its minimum time ran out."""
        due = self._hold_until()
        if self.pending is not None and due <= now_ms:
            self._integrate(due)
            want, self.pending = self.pending, None
            if want != self.relay_on:
                self._switch(want, due)
        self._integrate(now_ms)

    def _integrate(self, now_ms: int) -> None:
        if self._last_ms is None:
            self._last_ms = now_ms
            return
        dt = now_ms - self._last_ms
        if dt <= 0:
            return
        p = self.power_dw(self._last_ms)
        if p >= 0:
            self._import_rem += p * dt
            whole, self._import_rem = divmod(self._import_rem, DW_MS_PER_MWH)
            self.import_mwh += whole
        else:
            self._export_rem += -p * dt
            whole, self._export_rem = divmod(self._export_rem, DW_MS_PER_MWH)
            self.export_mwh += whole
        self._last_ms = now_ms

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def reading(self, now_ms: int) -> bytes:
        """A READING frame for ``now_ms``."""
        self.advance(now_ms)
        p = self.power_dw(now_ms)
        volts_dv = NOMINAL_VOLTAGE_DV
        current_ma = abs(p) * 1000 // volts_dv  # I = P / V: dW / dV = A, x1000 for mA
        payload = frame.pack_reading(
            {
                "channel": 0,
                "uptime_s": max(0, (now_ms - self.start_ms) // 1000) & 0xFFFFFFFF,
                "voltage_dv": volts_dv,
                "current_ma": min(current_ma, 0xFFFFFFFF),
                "power_dw": max(-(2**31), min(p, 2**31 - 1)),
                "apparent_dva": min(abs(p), 0xFFFFFFFF),
                "pf_milli": (1000 if p >= 0 else -1000) if p else 0,
                "relays": 1 if self.relay_on else 0,
                "flags": 0,
                "import_mwh": self.import_mwh,
                "export_mwh": self.export_mwh,
            }
        )
        raw: bytes = frame.encode(
            self.key, frame.T_READING, self.node_id, self._next_seq(), payload
        )
        return raw

    def command(self, raw: bytes, now_ms: int) -> bytes | None:
        """Handle a written COMMAND frame; the ACK frame to notify, or None when the frame is not
        a genuine new command for this node (dropped unanswered and counted by reason in
        ``dropped``, as the firmware does: a replay too, which an ACK would burn a sequence
        number for)."""
        try:
            seq, relay, action = frame.open_relay_command(self.key, self.node_id, raw,
                                                          self.last_command_seq)
        except frame.FrameError as exc:
            self.commands_rejected += 1
            self.dropped[exc.args[0]] = self.dropped.get(exc.args[0], 0) + 1
            log.warning("plug %d: command dropped (%s)", self.node_id, exc.args[0])
            return None
        self.advance(now_ms)
        self.last_command_seq = seq
        status = frame.S_BAD_RELAY if relay != 0 else self._relay_command(action, now_ms)
        # as the firmware: the addressed relay's state after the command, 0 for no such relay
        ack = frame.pack_ack(seq, relay, status, 1 if relay == 0 and self.relay_on else 0)
        out: bytes = frame.encode(self.key, frame.T_ACK, self.node_id, self._next_seq(), ack)
        return out

    def _relay_command(self, action: int, now_ms: int) -> int:
        """``firmware/relay.py``'s rules: a toggle toggles the target, a switch inside the
        minimum time is refused with S_MIN_TIME and done when the time is up."""
        if action == frame.A_TOGGLE:
            want = not (self.relay_on if self.pending is None else self.pending)
        else:
            want = action == frame.A_ON
        if want == self.relay_on:
            self.pending = None
            return int(frame.S_OK)
        if now_ms < self._hold_until():
            self.pending = want
            return int(frame.S_MIN_TIME)
        self.pending = None
        self._switch(want, now_ms)
        return int(frame.S_OK)


@dataclass
class PlugFaults:
    """Faults to inject; counters decrement as frames go out."""

    silent: bool = False  # connected, but no readings are notified
    corrupt_next: int = 0  # flip a bit in the tag of the next n readings
    truncate_next: int = 0  # cut the next n readings short
    replay_next: int = 0  # send an old frame again instead of the next n readings
    injected: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        self.injected[name] = self.injected.get(name, 0) + 1


class PlugEmulator:
    """A ``PlugCore`` served over BLE by a bumble ``Device``."""

    def __init__(
        self,
        device: Device,
        core: PlugCore,
        *,
        now_ms: Callable[[], int],
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.device = device
        self.core = core
        self.faults = PlugFaults()
        self._now_ms = now_ms
        self._sleep = sleep
        self._sent: list[bytes] = []
        self.notified = 0
        self._advertising = False  # wanted: advertise while a slot is free
        self._tasks: set[asyncio.Task[None]] = set()
        self.guard = ble_guard.Guard()
        self.passkey = ble_guard.passkey(core.key)
        self.refused_writes = 0
        self._last: dict[str, bytes] = {PROFILE.readings_uuid: b"", PROFILE.ack_uuid: b""}
        secure_read = (
            Characteristic.READABLE
            | Characteristic.READ_REQUIRES_ENCRYPTION
            | Characteristic.READ_REQUIRES_AUTHENTICATION
        )
        self.readings_char: Characteristic[bytes] = Characteristic(
            PROFILE.readings_uuid,
            Characteristic.Properties.READ | Characteristic.Properties.NOTIFY,
            secure_read,
            CharacteristicValue(read=lambda c: self._read(c, PROFILE.readings_uuid)),
        )
        self.ack_char: Characteristic[bytes] = Characteristic(
            PROFILE.ack_uuid,
            Characteristic.Properties.READ | Characteristic.Properties.NOTIFY,
            secure_read,
            CharacteristicValue(read=lambda c: self._read(c, PROFILE.ack_uuid)),
        )
        self.command_char: Characteristic[bytes] = Characteristic(
            PROFILE.command_uuid,
            Characteristic.Properties.WRITE | Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            Characteristic.WRITEABLE
            | Characteristic.WRITE_REQUIRES_ENCRYPTION
            | Characteristic.WRITE_REQUIRES_AUTHENTICATION,
            CharacteristicValue(write=self._on_command),
        )
        device.pairing_config_factory = self._pairing_config
        device.on(Device.EVENT_CONNECTION, self._on_connection)
        device.add_service(
            Service(PROFILE.service_uuid, [self.readings_char, self.command_char, self.ack_char])
        )
        device.advertising_data = bytes(
            AdvertisingData(
                [
                    (AdvertisingData.FLAGS, bytes([0x06])),
                    (AdvertisingData.COMPLETE_LOCAL_NAME, plug_name(core.node_id).encode()),
                ]
            )
        )

    @classmethod
    def on_link(
        cls,
        link: LocalLink,
        node_id: int,
        key: bytes,
        *,
        load: LoadProfile,
        now_ms: Callable[[], int],
        boot_ms: int | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> PlugEmulator:
        """``boot_ms``: when the plug was plugged in, if before now (a plug that has been in
        its socket for a while is past its boot-time minimum off time). ``sleep``: the clock
        the unauthenticated-link timeout runs on (inject the test's clock)."""
        start = now_ms() if boot_ms is None else boot_ms
        core = PlugCore(node_id, key, load, start_ms=start)
        device = local_device(link, plug_name(node_id), plug_address(node_id))
        return cls(device, core, now_ms=now_ms, sleep=sleep)

    @property
    def address(self) -> str:
        return plug_address(self.core.node_id)

    @property
    def connected(self) -> bool:
        return bool(self.device.connections)

    async def start(self) -> None:
        await self.device.power_on()
        await self.advertise()

    async def advertise(self) -> None:
        self._advertising = True
        await self._readvertise()

    async def _readvertise(self) -> None:
        """Advertise while wanted and a connection slot is free (the controller stops
        advertising at each connection; the node starts again for the next central)."""
        if (
            not self._advertising
            or self.device.is_advertising
            or not self.guard.advertise(len(self.device.connections))
        ):
            return
        with contextlib.suppress(Exception):  # a connection racing the start: next event retries
            await self.device.start_advertising(
                auto_restart=False,
                advertising_interval_min=ADVERTISING_INTERVAL_MS,
                advertising_interval_max=ADVERTISING_INTERVAL_MS,
            )

    # -- link security (firmware/ble_guard.py) -------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _peer(connection: Connection) -> str:
        return str(connection.peer_address.to_string(False))

    def trusted(self, connection: Connection) -> bool:
        """Whether ``connection`` is the bonded gateway's encrypted, authenticated link."""
        return bool(self.guard.trusted(
            self._peer(connection), connection.encryption, connection.authenticated
        ))

    def _pairing_config(self, connection: Connection) -> PairingConfig:
        return passkey_pairing(
            self.passkey, accept=lambda: bool(self.guard.may_pair(self._peer(connection)))
        )

    def _on_connection(self, connection: Connection) -> None:
        peer = self._peer(connection)
        others = [self._peer(c) for c in self.device.connections.values() if c is not connection]
        connection.on(Connection.EVENT_DISCONNECTION, lambda _r: self._spawn(self._readvertise()))
        if not self.guard.admit(peer, others):
            log.info("plug %d: no slot for %s", self.core.node_id, peer)
            self._spawn(self._drop(connection))
            return
        connection.on(Connection.EVENT_PAIRING, lambda keys: self._on_paired(connection, keys))
        connection.on(Connection.EVENT_PAIRING_FAILURE, self._on_pairing_failure)
        self._spawn(self._watch(connection, self._now_ms()))
        self._spawn(self._readvertise())

    def _on_paired(self, connection: Connection, keys: PairingKeys) -> None:
        authenticated = keys.ltk is not None and keys.ltk.authenticated
        if not self.guard.paired(self._peer(connection), authenticated, connection.sc):
            log.info("plug %d: refused the bond of %s", self.core.node_id, connection.peer_address)
            self._spawn(self._forget_and_drop(connection))

    def _on_pairing_failure(self, reason: int) -> None:
        if reason in PASSKEY_FAILURES:
            self.guard.pair_failed()

    async def _forget_and_drop(self, connection: Connection) -> None:
        if self.device.keystore is not None:
            with contextlib.suppress(Exception):
                await self.device.keystore.delete(str(connection.peer_address))
        await self._drop(connection)

    async def _watch(self, connection: Connection, since_ms: int) -> None:
        """Drop a link that is not the gateway's secure link UNAUTH_TIMEOUT_MS after it came up
        (on the injected clock)."""
        await self._sleep(ble_guard.UNAUTH_TIMEOUT_MS / 1000)
        if self.device.connections.get(connection.handle) is not connection:
            return
        age = self._now_ms() - since_ms
        if self.guard.overdue(self._peer(connection), connection.encryption,
                              connection.authenticated, age):
            log.info("plug %d: dropping %s, not the gateway's secure link after %d ms",
                     self.core.node_id, connection.peer_address, age)
            await self._drop(connection)

    @staticmethod
    async def _drop(connection: Connection) -> None:
        with contextlib.suppress(Exception):
            await connection.disconnect()

    def _read(self, connection: Connection, uuid: str) -> bytes:
        if not self.trusted(connection):
            raise ATT_Error(ErrorCode.INSUFFICIENT_AUTHORIZATION)
        return self._last[uuid]

    async def _notify_gateway(self, char: Characteristic[bytes], raw: bytes) -> bool:
        sent = False
        for connection in list(self.device.connections.values()):
            if self.trusted(connection):
                with contextlib.suppress(Exception):
                    await self.device.notify_subscriber(connection, char, raw)
                    sent = True
        return sent

    # -- the node's work ---------------------------------------------------------------
    async def tick(self) -> bytes | None:
        """Take a reading now and notify it (subject to the injected faults); returns what was
        notified, or None when nothing was sent."""
        raw = self.core.reading(self._now_ms())
        out: bytes | None = raw
        f = self.faults
        if f.silent:
            f.count("silent")
            out = None
        elif f.replay_next > 0 and self._sent:
            f.replay_next -= 1
            f.count("replay")
            out = self._sent[0]
        elif f.corrupt_next > 0:
            f.corrupt_next -= 1
            f.count("corrupt")
            out = raw[:-1] + bytes([raw[-1] ^ 0x01])
        elif f.truncate_next > 0:
            f.truncate_next -= 1
            f.count("truncate")
            out = raw[: len(raw) // 2]
        if len(self._sent) < 8:
            self._sent.append(raw)
        if out is None or not self.connected:
            return None
        await self.notify(out)
        return out

    async def notify(self, raw: bytes) -> None:
        """Notify raw bytes on the readings characteristic (a hostile node may send anything),
        to the bonded gateway's link only."""
        self._last[PROFILE.readings_uuid] = raw
        if await self._notify_gateway(self.readings_char, raw):
            self.notified += 1

    async def run(self, interval_s: float, sleep: Callable[[float], Awaitable[Any]]) -> None:
        """Send a reading every ``interval_s`` (of the injected sleep's time) until cancelled."""
        while True:
            await sleep(interval_s)
            await self.tick()

    def _on_command(self, connection: Connection, value: bytes) -> None:
        if not self.trusted(connection):  # the allow-list: the bonded gateway only
            self.refused_writes += 1
            raise ATT_Error(ErrorCode.INSUFFICIENT_AUTHORIZATION)
        ack = self.core.command(bytes(value), self._now_ms())
        if ack is None:
            return
        self._last[PROFILE.ack_uuid] = ack
        self._spawn(self._notify_ack(ack))

    async def _notify_ack(self, ack: bytes) -> None:
        await self._notify_gateway(self.ack_char, ack)

    # -- link faults -------------------------------------------------------------------
    async def drop_link(self) -> None:
        """Disconnect every central (as a brown-out or interference would); the plug advertises
        again right away."""
        self.faults.count("drop")
        for connection in list(self.device.connections.values()):
            with contextlib.suppress(Exception):
                await connection.disconnect()

    async def go_dead(self) -> None:
        """Stop advertising and drop the link: to the gateway the plug has vanished."""
        self.faults.count("dead")
        self._advertising = False
        if self.device.is_advertising:
            with contextlib.suppress(Exception):
                await self.device.stop_advertising()
        for connection in list(self.device.connections.values()):
            with contextlib.suppress(Exception):
                await connection.disconnect()

    async def revive(self) -> None:
        await self.advertise()
