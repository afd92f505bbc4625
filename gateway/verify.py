"""Node frame verification: the one place where the gateway decides whether a frame is genuine.

Sans-IO: bytes in, a ``Verified`` frame or ``None`` out, with every drop counted by reason. The
header layout, tag length and payload codecs come from ``firmware.frame`` (the one definition of
the wire format). The tag itself is computed with the stdlib ``hmac`` on a per-node precomputed
HMAC state instead of ``frame.tag``: it is the same RFC 2104 construction (tests check the two
agree on random frames), but reusing the keyed inner/outer hash states makes verification several
times faster, which the gateway needs to handle a thousand nodes on a Raspberry Pi.

Direction: only node-to-gateway frames (``frame.UP``) are taken. Sequence numbers: a node's
sequence numbers only move forward, counted here per node and frame type. To tolerate a little
reordering between transports (a BLE notification and an MQTT message in flight at once), a
sliding replay window as in IPsec (RFC 4303 section 3.4.3) accepts a sequence number below the
highest seen if it is inside the window and has not been seen; anything else is a replay and is
dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from firmware import frame

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 64
UP_TYPES = tuple(t for t, way in frame.DIRECTION.items() if way == frame.UP)

# Stable drop reasons, as counted in ``FrameVerifier.dropped``.
DROP_REASONS = ("short", "version", "type", "length", "direction", "unknown_node", "tag",
                "replay", "payload")


@dataclass(frozen=True, slots=True)
class Verified:
    ftype: int
    node_id: int
    seq: int
    payload: bytes


@dataclass(slots=True)
class _Window:
    highest: int
    seen: int  # bit i set: sequence number highest - i has been accepted


class FrameVerifier:
    def __init__(self, keys: Mapping[int, bytes], *, window: int = DEFAULT_WINDOW) -> None:
        if not 1 <= window <= 1024:
            raise ValueError("replay window must be in [1, 1024]")
        self.window = window
        self._mac: dict[int, Any] = {}
        for node_id, key in keys.items():
            self.set_key(node_id, key)
        self._seq: dict[tuple[int, int], _Window] = {}  # (node, frame type) -> window
        self.accepted = 0
        self.dropped: Counter[str] = Counter()
        self.dropped_by_node: Counter[int] = Counter()
        self._logged: set[tuple[int | None, str]] = set()  # (node, reason) logged once

    def set_key(self, node_id: int, key: bytes) -> None:
        if not 0 <= node_id <= 0xFFFF or len(key) < 16:
            raise ValueError(f"node {node_id}: key must be at least 16 bytes")
        self._mac[node_id] = hmac.new(key, digestmod=hashlib.sha256)

    def known(self, node_id: int) -> bool:
        return node_id in self._mac

    def _drop(
        self, reason: str, node_id: int | None = None, detail: str = "", kind: str = ""
    ) -> None:
        """Count a dropped frame; the first drop of each reason (per node) is logged, so a
        flood of forgeries costs one line, and a fault is never silent."""
        self.dropped[reason] += 1
        if node_id is not None:
            self.dropped_by_node[node_id] += 1
        if (node_id, reason + kind) not in self._logged:  # kind: a cause worth its own line
            self._logged.add((node_id, reason + kind))
            who = "a frame" if node_id is None else f"node {node_id}'s frame"
            log.warning("dropped %s: %s%s (further drops for this reason are only counted)",
                        who, reason, f"; {detail}" if detail else "")

    def verify(self, raw: bytes) -> Verified | None:
        """The frame if it is authentic and fresh, else ``None`` (the reason is counted)."""
        try:
            # only what nodes send (READING, ACK): a COMMAND of the gateway's own, captured
            # and replayed as telemetry, is refused here and never moves a window
            ftype, node_id, seq = frame.peek(raw, frame.UP)
        except (frame.FrameError, TypeError) as exc:
            self._drop(
                str(exc.args[0]) if exc.args and isinstance(exc, frame.FrameError) else "short"
            )
            return None
        mac = self._mac.get(node_id)
        if mac is None:
            self._drop("unknown_node", node_id)
            return None
        body = bytes(raw[: -frame.TAG_LEN])
        h = mac.copy()
        h.update(body)
        if not hmac.compare_digest(h.digest()[: frame.TAG_LEN], bytes(raw[-frame.TAG_LEN :])):
            self._drop("tag", node_id)
            return None
        if not self._fresh((node_id, ftype), seq):
            w = self._seq[(node_id, ftype)]
            if w.highest - seq >= self.window:
                # far behind: an old capture replayed, or a node whose flash was wiped and
                # counts again from 1; either way it is refused, and said once in the log
                self._drop("replay", node_id, f"sequence {seq} is far behind the last accepted "
                           f"{w.highest}: a replayed capture, or the node restarted its "
                           "sequence (flash erased or re-flashed: provision it with a new key)",
                           kind="far")
            else:
                self._drop("replay", node_id, f"sequence {seq} was already seen")
            return None
        self.accepted += 1
        return Verified(ftype, node_id, seq, body[frame.HEADER_LEN :])

    def _fresh(self, stream: tuple[int, int], seq: int) -> bool:
        """Forward-only with a replay window, per (node, frame type)."""
        w = self._seq.get(stream)
        if w is None:
            self._seq[stream] = _Window(seq, 1)
            return True
        if seq > w.highest:
            shift = seq - w.highest
            w.seen = (
                ((w.seen << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            )
            w.highest = seq
            return True
        back = w.highest - seq
        if back >= self.window or (w.seen >> back) & 1:
            return False
        w.seen |= 1 << back
        return True

    def counts(self) -> dict[str, int]:
        out = {"accepted": self.accepted}
        for reason in DROP_REASONS:
            out[f"dropped_{reason}"] = self.dropped.get(reason, 0)
        return out

    def snapshot(self) -> dict[str, list[int]]:
        """Sequence state per node and frame type ("<node>/<type>"), to persist so a restart
        cannot reopen the replay window."""
        return {f"{n}/{t}": [w.highest, w.seen] for (n, t), w in self._seq.items()}

    def restore(self, state: Mapping[str, Any]) -> None:
        for stream, (highest, seen) in state.items():
            node, _, ftype = str(stream).partition("/")
            # a state saved before windows were per type ("<node>") holds for both node types
            for t in (int(ftype),) if ftype else UP_TYPES:
                self._seq[(int(node), t)] = _Window(int(highest), int(seen))
