"""The gateway's ingest path, sans-IO: node frames and meter readings in, readings folded into
15-minute intervals out.

``Ingest.frame`` verifies one raw node frame (``FrameVerifier``), decodes a READING into the
aggregator of its node's channel meter, and hands an ACK back to the caller (the relay
commander waits for it). ``Ingest.sample`` folds a Modbus meter's reading the same way. Accepted
readings are kept for the store (``take_pending``) and as each meter's latest; meters that appear
with their first frame (a node's second clamp) are listed in ``new_meters`` for the publisher.
No clock, no socket, no await: time is the receipt time the caller passes in.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from firmware import frame
from gateway.config import NodeConfig
from gateway.intervals import (
    BEHIND,
    CLIPPED,
    RESTORED,
    SIGN_UNKNOWN,
    IntervalAggregator,
    MeterSpec,
)
from gateway.store import Reading
from gateway.verify import FrameVerifier

if TYPE_CHECKING:
    from gateway.calibration import Session

# Field positions in a READING payload, from the firmware's one definition of it; the hot path
# unpacks with struct directly instead of building frame.unpack_reading's dict per frame.
_READING = struct.Struct(frame.READING_FMT)
_CHANNEL, _POWER, _FLAGS, _IMPORT, _EXPORT = (
    frame.READING_FIELDS.index(f)
    for f in ("channel", "power_dw", "flags", "import_mwh", "export_mwh")
)
# a frame's flag -> the interval flag its reading brings (intervals.SAMPLE_FLAGS)
_SAMPLE_FLAGS = (
    (frame.F_COUNTERS_RESTORED, RESTORED),
    (frame.F_ADC_CLIPPED, CLIPPED),
    (frame.F_SAMPLING_BEHIND, BEHIND),
    (frame.F_SIGN_UNKNOWN, SIGN_UNKNOWN),
)
NODE_MAX_POWER_W = 50_000  # a node's CT clamp tops out near 100 A at 230 V
NODE_COUNTER_MODULUS_MWH = 2**64  # node counters are u64 mWh in the frame


@dataclass(frozen=True, slots=True)
class MeterInfo:
    meter_id: str
    model: str  # "sdm630", "node-mqtt", ...


class Ack(NamedTuple):
    """A node's answer to a relay command (``firmware.frame.S_*`` status)."""

    node_id: int
    cmd_seq: int
    status: int


class FrameResult(NamedTuple):
    """What one authentic frame brought: from which node, and either an accepted reading, an
    ack, or neither (a reading the aggregator refused, a node that is keyed but not configured,
    a COMMAND from a node)."""

    node_id: int
    reading: Reading | None = None
    ack: Ack | None = None


class Ingest:
    def __init__(
        self,
        verifier: FrameVerifier,
        aggregator: IntervalAggregator,
        nodes: Iterable[NodeConfig],
    ) -> None:
        self.verifier = verifier
        self.aggregator = aggregator
        self.nodes = {n.node_id: n for n in nodes}
        self.meter_info: dict[str, MeterInfo] = {}
        self.new_meters: list[MeterInfo] = []  # appeared since the last take_new_meters()
        self.pending: list[Reading] = []  # accepted, not yet stored
        self.latest: dict[str, Reading] = {}
        self.ignored_frames = 0
        self.last_frame: dict[int, tuple[int, str]] = {}  # node id -> (received ms, transport)
        self.calibrations: list[Session] = []  # gateway.calibration: fed frames and readings
        for n in self.nodes.values():
            self.add_node_meter(n, 0)

    # -- meters -----------------------------------------------------------------------------------
    def add_meter(self, meter_id: str, spec: MeterSpec, model: str) -> None:
        self.aggregator.add_meter(meter_id, spec)
        info = MeterInfo(meter_id, model)
        self.meter_info[meter_id] = info
        self.new_meters.append(info)

    def add_node_meter(self, node: NodeConfig, channel: int) -> str:
        meter_id = node.channel_meter(channel)
        if meter_id not in self.meter_info:
            self.add_meter(
                meter_id,
                MeterSpec(NODE_COUNTER_MODULUS_MWH, NODE_MAX_POWER_W),
                f"node-{node.transport}",
            )
        return meter_id

    def take_new_meters(self) -> list[MeterInfo]:
        new, self.new_meters = self.new_meters, []
        return new

    # -- frames and readings ------------------------------------------------------------------
    def frame(self, raw: bytes, transport: str, received_ms: int) -> FrameResult | None:
        """One raw node frame; ``None`` if it is not authentic or not fresh (counted by the
        verifier)."""
        v = self.verifier.verify(raw)
        if v is None:
            return None
        self.last_frame[v.node_id] = (received_ms, transport)
        if v.ftype == frame.T_READING:
            node = self.nodes.get(v.node_id)
            if node is None:  # keyed but not configured: verified, counted, not metered
                self.ignored_frames += 1
                return FrameResult(v.node_id)
            r = _READING.unpack(v.payload)
            if self.calibrations:
                fields = dict(zip(frame.READING_FIELDS, r, strict=True))
                for session in self.calibrations:
                    if session.node_id == v.node_id:
                        session.node_frame(received_ms, fields)
            reading = self.sample(
                self.add_node_meter(node, r[_CHANNEL]),
                received_ms,
                r[_POWER],
                r[_IMPORT],
                r[_EXPORT],
                transport,
                sum(flag for bit, flag in _SAMPLE_FLAGS if r[_FLAGS] & bit),
            )
            return FrameResult(v.node_id, reading)
        if v.ftype == frame.T_ACK:
            cmd_seq, _relay, status, _state = frame.unpack_ack(v.payload)
            return FrameResult(v.node_id, ack=Ack(v.node_id, cmd_seq, status))
        self.ignored_frames += 1  # a COMMAND from a node is nonsense: authentic, ignored
        return FrameResult(v.node_id)

    def sample(
        self,
        meter_id: str,
        t_ms: int,
        power_dw: int,
        import_mwh: int,
        export_mwh: int,
        source: str,
        flags: int = 0,
    ) -> Reading | None:
        """Fold one reading into its meter's interval (``flags``: the interval flags it brings,
        ``intervals.SAMPLE_FLAGS``); the reading if the aggregator took it."""
        if not self.aggregator.sample(meter_id, t_ms, import_mwh, export_mwh, flags):
            return None
        reading = Reading(meter_id, t_ms, power_dw, import_mwh, export_mwh, source)
        self.pending.append(reading)
        self.latest[meter_id] = reading
        return reading

    # -- for the store ----------------------------------------------------------------------------
    def take_pending(self) -> list[Reading]:
        batch, self.pending = self.pending, []
        return batch

    def put_back(self, batch: list[Reading]) -> None:
        """Readings a failed write could not store: first in line for the next flush."""
        self.pending = batch + self.pending

    def snapshot(self) -> dict[str, Any]:
        return {"aggregator": self.aggregator.snapshot(), "verifier": self.verifier.snapshot()}

    def restore(self, state: Mapping[str, Any]) -> None:
        """What ``snapshot`` saved (either part may be missing: a first start)."""
        if state.get("aggregator"):
            self.aggregator.restore(state["aggregator"])
        if state.get("verifier"):
            self.verifier.restore(state["verifier"])
