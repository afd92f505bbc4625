"""Modbus meters (RTU over RS-485 with pyserial, or TCP) polled with pymodbus.

One ``ModbusBus`` per bus, each on its own schedule. Meters on a bus are polled one after the
other (an RS-485 line carries one conversation at a time), each with the fewest block reads its
register map allows (``RegisterMap.plan``). A failed read is retried ``retries`` times at once;
a meter that still fails is backed off exponentially (skipped until its next attempt), so a dead
meter costs at most one short timeout per backoff period and never stalls the others. Failures
are counted by kind: ``timeout``, ``crc`` (a frame arrived but its CRC was wrong), ``exception``
(the meter answered with a Modbus exception), ``bad_value`` (NaN or a wrong-sized answer) and
``connect``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer.rtu import FramerRTU

from gateway.clock import Clock
from gateway.config import BusConfig, MeterConfig
from hardware.meters import MapError, RegisterBlock, RegisterMap, energy_mwh, load_map

log = logging.getLogger(__name__)
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # failures are counted here instead


@dataclass(frozen=True, slots=True)
class MeterReading:
    meter_id: str
    t_ms: int
    power_dw: int
    import_mwh: int
    export_mwh: int
    values: dict[str, float]
    # the meter reports unsigned power (its map's power_signed is false): export reads as import
    sign_unknown: bool = False


@dataclass
class _MeterState:
    cfg: MeterConfig
    map: RegisterMap
    blocks: list[RegisterBlock]
    failures: int = 0
    next_ms: int = 0
    counts: Counter[str] = field(default_factory=Counter)


class ReadFailed(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind, detail)
        self.kind = kind


def reading_from_values(
    rmap: RegisterMap, meter_id: str, t_ms: int, values: dict[str, float]
) -> MeterReading:
    """Convert decoded quantities to a reading in the gateway's integer units."""
    power = rmap.by_role("power_w")
    imp = rmap.by_role("import_energy")
    exp = rmap.by_role("export_energy")
    return MeterReading(
        meter_id=meter_id,
        t_ms=t_ms,
        power_dw=round(values[power.name] * 10) if power else 0,
        import_mwh=energy_mwh(imp, values[imp.name]) if imp else 0,
        export_mwh=energy_mwh(exp, values[exp.name]) if exp else 0,
        values=values,
        sign_unknown=not rmap.power_signed,
    )


class ModbusBus:
    """Polls the meters of one bus forever; ``on_reading`` gets every good reading."""

    def __init__(
        self,
        cfg: BusConfig,
        on_reading: Callable[[MeterReading], None],
        clock: Clock,
    ) -> None:
        if (cfg.tcp is None) == (cfg.serial is None):
            raise ValueError(f"bus {cfg.name}: give exactly one of tcp or serial")
        self.cfg = cfg
        self.on_reading = on_reading
        self.clock = clock
        self.meters = [_MeterState(m, rmap := load_map(m.model), rmap.plan()) for m in cfg.meters]
        self.counts: Counter[str] = Counter()
        self._rx = b""
        self._client: Any = None
        self._unreachable = False  # the bus could not be opened: logged once per outage

    def _where(self) -> str:
        c = self.cfg
        return f"{c.tcp[0]}:{c.tcp[1]}" if c.tcp is not None else str(c.serial)

    # -- stats ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        out = dict(self.counts)
        for m in self.meters:
            for k, v in m.counts.items():
                out[f"{m.cfg.meter_id}.{k}"] = v
        return out

    def min_requests_per_cycle(self) -> int:
        return sum(len(m.blocks) for m in self.meters)

    # -- IO ------------------------------------------------------------------------------------
    def _trace(self, sending: bool, data: bytes) -> bytes:
        # Keep what the meter sent since our last request, to tell a CRC error from silence.
        if sending:
            self._rx = b""
        else:
            self._rx += data
        return data

    def _make_client(self) -> Any:
        c = self.cfg
        if c.tcp is not None:
            return AsyncModbusTcpClient(
                c.tcp[0], port=c.tcp[1], timeout=c.timeout_s, retries=0, trace_packet=self._trace
            )
        assert c.serial is not None
        return AsyncModbusSerialClient(
            c.serial,
            framer=FramerType.RTU,
            baudrate=c.baudrate,
            parity=c.parity,
            stopbits=c.stopbits,
            bytesize=c.bytesize,
            timeout=c.timeout_s,
            retries=0,
            trace_packet=self._trace,
        )

    async def _read(self, m: _MeterState, block: RegisterBlock) -> list[int]:
        read = (
            self._client.read_input_registers
            if m.map.function == "input"
            else self._client.read_holding_registers
        )
        self.counts["requests"] += 1
        try:
            rr = await read(block.address, count=block.count, device_id=m.cfg.unit)
        except (TimeoutError, ModbusException, OSError) as exc:
            rx = self._rx
            if (
                self.cfg.serial is not None
                and len(rx) >= 5
                and not FramerRTU.check_CRC(rx[:-2], int.from_bytes(rx[-2:], "big"))
            ):
                raise ReadFailed("crc", repr(exc)) from exc
            raise ReadFailed("timeout", repr(exc)) from exc
        if rr.isError():
            raise ReadFailed("exception", f"code {getattr(rr, 'exception_code', '?')}")
        regs = list(rr.registers)
        if len(regs) != block.count:
            raise ReadFailed("bad_value", f"{len(regs)} registers for {block.count}")
        return regs

    async def poll_meter(self, m: _MeterState) -> MeterReading:
        got: list[list[int]] = []
        for block in m.blocks:
            for attempt in range(self.cfg.retries + 1):
                try:
                    got.append(await self._read(m, block))
                    break
                except ReadFailed as exc:
                    m.counts[exc.kind] += 1
                    self.counts[exc.kind] += 1
                    if attempt == self.cfg.retries:
                        raise
        try:
            values = m.map.values(m.blocks, got)
        except MapError as exc:
            m.counts["bad_value"] += 1
            self.counts["bad_value"] += 1
            raise ReadFailed("bad_value", str(exc)) from exc
        return reading_from_values(m.map, m.cfg.meter_id, self.clock.now_ms(), values)

    async def poll_cycle(self) -> int:
        """Poll every meter that is not backing off; returns the number of good readings."""
        if self._client is None:
            self._client = self._make_client()
        if not self._client.connected and not await self._client.connect():
            self.counts["connect"] += 1
            if not self._unreachable:  # said once per outage; counted every time
                self._unreachable = True
                log.warning("bus %s: cannot connect to %s (meters %s get no readings); "
                            "retrying every %.1f s", self.cfg.name, self._where(),
                            ", ".join(m.cfg.meter_id for m in self.meters), self.cfg.poll_s)
            return 0
        if self._unreachable:
            self._unreachable = False
            log.warning("bus %s: connected to %s again", self.cfg.name, self._where())
        good = 0
        for m in self.meters:
            now = self.clock.now_ms()
            if now < m.next_ms:
                continue
            try:
                reading = await self.poll_meter(m)
            except ReadFailed as exc:
                m.failures += 1
                delay_ms = self.cfg.backoff.delay_ms(m.failures)
                m.next_ms = now + delay_ms
                (log.warning if m.failures == 1 else log.debug)(  # once per outage
                    "meter %s on bus %s: %s (no answer: gone or off?), next try in %.0f s",
                    m.cfg.meter_id, self.cfg.name, exc.kind, delay_ms / 1000,
                )  # fmt: skip
                continue
            if m.failures:
                log.warning("meter %s on bus %s answers again after %d failed polls",
                            m.cfg.meter_id, self.cfg.name, m.failures)
            m.failures = 0
            m.next_ms = 0
            m.counts["ok"] += 1
            good += 1
            try:
                self.on_reading(reading)
            except Exception:  # a consumer bug must not stop the bus
                log.exception("reading handler failed for %s", m.cfg.meter_id)
        self.counts["cycles"] += 1
        return good

    async def run(self) -> None:
        period = int(self.cfg.poll_s * 1000)
        next_ms = self.clock.now_ms()
        try:
            while True:
                try:
                    await self.poll_cycle()
                except Exception:  # never let one bus die: count, log, carry on
                    self.counts["errors"] += 1
                    log.exception("bus %s: poll cycle failed", self.cfg.name)
                next_ms += period
                now = self.clock.now_ms()
                if next_ms < now:  # fell behind (slow bus): skip missed cycles, keep the phase
                    next_ms += (now - next_ms) // period * period + period
                await self.clock.sleep_until(next_ms)
        finally:
            self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def plan_summary(models: Sequence[str]) -> dict[str, dict[str, int]]:
    """Requests per poll for each model: planned blocks vs one request per quantity."""
    out = {}
    for model in models:
        rmap = load_map(model)
        out[model] = {"planned": len(rmap.plan()), "per_quantity": len(rmap.quantities)}
    return out
