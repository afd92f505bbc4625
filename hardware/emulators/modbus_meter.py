"""Emulated Modbus meters on real pymodbus servers (TCP, or RTU over a serial port or a
pseudo-terminal pair), serving the models' register maps from a load profile, with injectable
faults: ``silence`` (no answer), ``crc`` (the response's CRC is corrupted on the wire),
``wrong`` (implausible values: NaN and wild energy counters) and ``exception`` (a Modbus
exception response, code 4: server device failure).

One server can host several meters (unit ids) on one bus, as an RS-485 line does.
"""

from __future__ import annotations

import asyncio
import os
import random
import termios
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from hardware.emulators.profiles import EnergyCounters, Profile, constant, wall_ms
from hardware.meters import RegisterMap, load_map

FAULTS = ("silence", "crc", "wrong", "exception")
NOMINAL_V = 230.0
NOMINAL_HZ = 50.0


@dataclass
class Faults:
    """Which fault to inject and how often (``rate`` in [0, 1], seeded so tests repeat)."""

    mode: str | None = None
    rate: float = 1.0
    seed: int = 0
    injected: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in FAULTS:
            raise ValueError(f"unknown fault {self.mode!r}: expected one of {', '.join(FAULTS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("fault rate must be in [0, 1]")
        self._rng.seed(self.seed)

    def fire(self, mode: str) -> bool:
        if self.mode != mode or self._rng.random() >= self.rate:
            return False
        self.injected += 1
        return True


class EmulatedMeter:
    """One meter: its register map, its counters and its faults."""

    def __init__(
        self,
        model: str | RegisterMap,
        profile: Profile | None = None,
        *,
        clock: Callable[[], int] = wall_ms,
        faults: Faults | None = None,
        import_mwh: int = 0,
        export_mwh: int = 0,
    ) -> None:
        self.map = load_map(model) if isinstance(model, str) else model
        self.counters = EnergyCounters(profile or constant(1_000.0), import_mwh, export_mwh)
        self.clock = clock
        self.faults = faults or Faults()
        self.requests = 0

    def quantities_now(self) -> dict[str, float]:
        t = self.clock()
        imp, exp = self.counters.at(t)
        p = self.counters.profile(t)
        wrong = self.faults.fire("wrong")
        out: dict[str, float] = {}
        for q in self.map.quantities.values():
            if q.role == "power_w" or q.name.startswith("power_l"):
                v = p if q.role == "power_w" else p / 3
            elif q.name.startswith("voltage"):
                v = NOMINAL_V
            elif q.name.startswith("current"):
                v = abs(p) / NOMINAL_V / (1 if q.role else 3)
            elif q.role == "import_energy" or q.name == "total_energy":
                wh_total = imp if q.role == "import_energy" else imp + exp
                v = wh_total / (1_000_000 if q.unit == "kWh" else 1_000)
                if q.unit == "Wh" and self.map.energy_modulus_wh:
                    v = (wh_total // 1_000) % self.map.energy_modulus_wh
            elif q.role == "export_energy":
                v = exp / (1_000_000 if q.unit == "kWh" else 1_000)
            elif q.name == "frequency":
                v = NOMINAL_HZ
            elif q.name == "power_factor":
                v = 0.98
            elif q.name == "apparent_power":
                v = abs(p) / 0.98
            else:
                v = 0.0
            if wrong and q.role in ("import_energy", "export_energy", "power_w"):
                v = float("nan") if q.type == "float32" and q.role == "power_w" else v * 1000 + 1e6
            out[q.name] = v
        return out

    def registers(self, address: int, count: int) -> list[int] | ExcCodes:
        self.requests += 1
        if not self.map.is_readable(address, count):
            return ExcCodes.ILLEGAL_ADDRESS
        if self.faults.fire("exception"):
            return ExcCodes.DEVICE_FAILURE
        regs = [0] * count
        values = self.quantities_now()
        for q in self.map.quantities.values():
            off = q.address - address
            if off >= 0 and off + q.count <= count:
                regs[off : off + q.count] = self.map.encode(q, values[q.name])
        return regs


class MeterBus(ModbusServerContext):
    """The pymodbus datastore seam, answering from emulated meters by unit id. An unknown unit
    (or a silenced meter) raises ``NoSuchIdException``, which the server (created with
    ``ignore_missing_devices``) answers with silence, as a dead RS-485 meter does."""

    def __init__(self, meters: dict[int, EmulatedMeter]) -> None:  # no super(): no datablocks
        self.meters = meters
        self.old_simulator = True
        self.simdevices = []
        self._devices = {}

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        meter = self.meters.get(device_id)
        if meter is None or meter.faults.fire("silence"):
            raise NoSuchIdException(f"no answer from unit {device_id}")
        expected = 4 if meter.map.function == "input" else 3
        if func_code != expected:
            return ExcCodes.ILLEGAL_FUNCTION
        return meter.registers(address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_FUNCTION

    def device_ids(self) -> list[int]:
        return list(self.meters)


def _corrupter(meters: dict[int, EmulatedMeter], rtu: bool) -> Callable[[bool, bytes], bytes]:
    """pymodbus' packet trace hook: corrupts an outgoing frame on the wire when the addressed
    meter has the ``crc`` fault armed and it fires. On RTU a bit of the CRC is flipped, so the
    frame fails its CRC check; Modbus TCP has no CRC, so there the function code is mangled and
    the answer is unusable rather than silently wrong."""

    def trace(sending: bool, data: bytes) -> bytes:
        at = 0 if rtu else 6  # unit id: first byte of an RTU frame, after the MBAP header on TCP
        if not sending or len(data) <= at + 1:
            return data
        meter = meters.get(data[at])
        if meter is None or not meter.faults.fire("crc"):
            return data
        if rtu:
            return data[:-1] + bytes([data[-1] ^ 0x5A])
        return data[: at + 1] + bytes([data[at + 1] ^ 0x5A]) + data[at + 2 :]

    return trace


async def serve_tcp(meters: dict[int, EmulatedMeter], host: str, port: int) -> ModbusTcpServer:
    server = ModbusTcpServer(
        MeterBus(meters),
        address=(host, port),
        ignore_missing_devices=True,
        trace_packet=_corrupter(meters, rtu=False),
    )
    await server.serve_forever(background=True)
    return server


async def serve_serial(
    meters: dict[int, EmulatedMeter], port: str, baudrate: int = 9600
) -> ModbusSerialServer:
    """The meters on one RS-485 line at ``baudrate``. A meter whose datasheet does not list
    that speed is on the line but set to another one: it hears garbage and never answers, as a
    real meter would (a gateway configured for the wrong speed times out)."""
    speaking = {
        u: m for u, m in meters.items() if not m.map.baudrates or baudrate in m.map.baudrates
    }
    server = ModbusSerialServer(
        MeterBus(speaking),
        framer=FramerType.RTU,
        port=port,
        baudrate=baudrate,
        ignore_missing_devices=True,
        trace_packet=_corrupter(meters, rtu=True),
    )
    await server.serve_forever(background=True)
    return server


# termios speed constants -> bits per second (the speeds a serial port is set to)
_SPEEDS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
    if hasattr(termios, f"B{rate}")
}
BITS_PER_BYTE = 10  # 8N1: start, 8 data, stop


class PtyPair:
    """Two pseudo-terminals joined like a null-modem cable: what one side's slave writes, the
    other side's slave reads. ``device_path`` is for the emulated meter, ``host_path`` for the
    gateway (opened with pyserial as any RS-485 adapter would be).

    Like a line, it carries bytes at the speed the two ends are set to (each byte takes
    ``BITS_PER_BYTE`` bit times, so a gateway's timeout meets the time a real reply takes), and
    ends set to different speeds garble each other's bytes, as real UARTs do."""

    def __init__(self) -> None:
        self._a_master, a_slave = os.openpty()
        self._b_master, b_slave = os.openpty()
        for fd in (self._a_master, self._b_master, a_slave, b_slave):
            tty.setraw(fd)
        self.device_path = os.ttyname(a_slave)
        self.host_path = os.ttyname(b_slave)
        # Keep the slaves open so the pair survives a side closing and reopening its port.
        self._slaves = (a_slave, b_slave)
        self._slave_of = {self._a_master: a_slave, self._b_master: b_slave}
        self._busy_until = {self._a_master: 0.0, self._b_master: 0.0}  # per sending side
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> PtyPair:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._a_master, self._copy, self._a_master, self._b_master)
        self._loop.add_reader(self._b_master, self._copy, self._b_master, self._a_master)
        return self

    def _speed(self, master: int) -> int | None:
        """The speed the port on ``master``'s slave side is set to (None: not a known one)."""
        try:
            return _SPEEDS.get(termios.tcgetattr(self._slave_of[master])[5])
        except (termios.error, OSError):
            return None

    def _copy(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:
            return
        if not data or self._loop is None:
            return
        sending, receiving = self._speed(src), self._speed(dst)
        if sending != receiving:
            data = bytes(b ^ 0x5A for b in data)  # framing errors: what arrives is not what left
        delay = len(data) * BITS_PER_BYTE / sending if sending else 0.0
        now = self._loop.time()
        done = max(now, self._busy_until[src]) + delay
        self._busy_until[src] = done
        self._loop.call_at(done, self._deliver, dst, data)

    @staticmethod
    def _deliver(dst: int, data: bytes) -> None:
        try:
            os.write(dst, data)
        except OSError:  # the pair was closed meanwhile
            pass

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._a_master)
            self._loop.remove_reader(self._b_master)
        for fd in (self._a_master, self._b_master, *self._slaves):
            try:
                os.close(fd)
            except OSError:
                pass


def stats(meters: dict[int, EmulatedMeter]) -> dict[str, Any]:
    return {
        str(u): {"requests": m.requests, "faults": m.faults.injected} for u, m in meters.items()
    }
