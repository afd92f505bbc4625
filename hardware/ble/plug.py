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
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from bumble.core import AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.link import LocalLink

from firmware import frame
from hardware.ble.controller import local_device
from hardware.ble.profile import PROFILE, plug_address, plug_name

log = logging.getLogger(__name__)

KEY_LEN = 32
NOMINAL_VOLTAGE_DV = 2300
# 1 mWh = 3.6 W*s = 36 dW*s = 36_000 dW*ms: energy is integrated in dW*ms, exactly.
DW_MS_PER_MWH = 36_000
ADVERTISING_INTERVAL_MS = 50  # short, so a virtual reconnect takes milliseconds

DEFAULT_BOARD = "plug_hlw8012"

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
            ftype, seq, payload = frame.open_command(self.key, self.node_id, raw,
                                                     self.last_command_seq)
            if ftype != frame.T_COMMAND:
                raise frame.FrameError("type")  # no CT channel here to calibrate
            relay, action = frame.unpack_command(payload)
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
    ) -> None:
        self.device = device
        self.core = core
        self.faults = PlugFaults()
        self._now_ms = now_ms
        self._sent: list[bytes] = []
        self.notified = 0
        self._advertising = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.readings_char: Characteristic[bytes] = Characteristic(
            PROFILE.readings_uuid,
            Characteristic.Properties.READ | Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            b"",
        )
        self.ack_char: Characteristic[bytes] = Characteristic(
            PROFILE.ack_uuid,
            Characteristic.Properties.READ | Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            b"",
        )
        self.command_char: Characteristic[bytes] = Characteristic(
            PROFILE.command_uuid,
            Characteristic.Properties.WRITE | Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_command),
        )
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
    ) -> PlugEmulator:
        """``boot_ms``: when the plug was plugged in, if before now (a plug that has been in
        its socket for a while is past its boot-time minimum off time)."""
        start = now_ms() if boot_ms is None else boot_ms
        core = PlugCore(node_id, key, load, start_ms=start)
        device = local_device(link, plug_name(node_id), plug_address(node_id))
        return cls(device, core, now_ms=now_ms)

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
        if not self._advertising:
            await self.device.start_advertising(
                auto_restart=True,
                advertising_interval_min=ADVERTISING_INTERVAL_MS,
                advertising_interval_max=ADVERTISING_INTERVAL_MS,
            )
            self._advertising = True

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
        """Notify raw bytes on the readings characteristic (a hostile node may send anything)."""
        self.readings_char.value = raw
        with contextlib.suppress(Exception):
            await self.device.notify_subscribers(self.readings_char, raw)
            self.notified += 1

    async def run(self, interval_s: float, sleep: Callable[[float], Awaitable[Any]]) -> None:
        """Send a reading every ``interval_s`` (of the injected sleep's time) until cancelled."""
        while True:
            await sleep(interval_s)
            await self.tick()

    def _on_command(self, _connection: Connection, value: bytes) -> None:
        ack = self.core.command(bytes(value), self._now_ms())
        if ack is None:
            return
        self.ack_char.value = ack
        task = asyncio.get_running_loop().create_task(self._notify_ack(ack))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify_ack(self, ack: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.device.notify_subscribers(self.ack_char, ack)

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
        if self._advertising:
            self._advertising = False
            await self.device.stop_advertising()
        for connection in list(self.device.connections.values()):
            with contextlib.suppress(Exception):
                await connection.disconnect()

    async def revive(self) -> None:
        await self.advertise()
