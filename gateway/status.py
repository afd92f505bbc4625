"""``wattmesh gateway status``: what the daemon last saved (read-only from its SQLite store,
so it works while the daemon runs and after it died): each source and bus with its counters,
the last frame of each node, the frame drops by reason, the outbox depth by state, and the
demand-response requests still in force. The ledger's reachability is probed by the command.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.store import DrRow


class StatusError(Exception):
    """No store to read (the daemon never ran with this config) or not a gateway store."""


def read_status(db_path: Path, now_ms: int | None = None) -> dict[str, Any]:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if not db_path.exists():
        raise StatusError(f"{db_path}: no store yet (has `wattmesh gateway run` started?)")
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT value FROM kv WHERE key = 'status'").fetchone()
            outbox = dict(db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"))
            dr = [
                DrRow(*r)
                for r in db.execute(
                    "SELECT id, role, signer, start_ms, end_ms, max_w, received_ms "
                    "FROM dr_requests WHERE end_ms > ? ORDER BY start_ms, id",
                    (now,),
                )
            ]
    except sqlite3.Error as exc:
        raise StatusError(f"{db_path}: cannot read the store ({exc})") from None
    saved = json.loads(row[0]) if row is not None else {}
    return {
        "saved": saved,
        "outbox": {"pending": outbox.get("pending", 0), "delivered": outbox.get("delivered", 0),
                   "rejected": outbox.get("rejected", 0)},
        "demand_response": [
            {"id": r.id, "role": r.role, "signer": r.signer, "max_w": r.max_w,
             "start": _iso(r.start_ms), "end": _iso(r.end_ms)}
            for r in dr
        ],
    }


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def render(status: dict[str, Any], now_ms: int) -> list[str]:
    """The status as lines for a person."""
    saved = status["saved"]
    lines = []
    if saved:
        age = (now_ms - int(saved.get("t_ms", now_ms))) / 1000
        lines.append(f"gateway {saved.get('gateway_id')}: state saved {age:.0f} s ago")
        for name, st in sorted(saved.get("sources", {}).items()):
            lines.append(f"source {name}: {json.dumps(st, sort_keys=True)}")
        for name, st in sorted(saved.get("buses", {}).items()):
            lines.append(f"modbus bus {name}: {json.dumps(st, sort_keys=True)}")
        for node, n in saved.get("nodes", {}).items():
            ago = (now_ms - int(n["last_frame_ms"])) / 1000
            lines.append(f"node {node}: last frame {ago:.0f} s ago over {n['transport']}")
        lines.append(f"frames: {json.dumps(saved.get('frames', {}), sort_keys=True)}")
    else:
        lines.append("no state saved by the daemon yet")
    ob = status["outbox"]
    lines.append(f"outbox: {ob['pending']} pending, {ob['delivered']} delivered, "
                 f"{ob['rejected']} rejected")
    if not status["demand_response"]:
        lines.append("demand response: none in force")
    for d in status["demand_response"]:
        lines.append(f"demand response {d['id']} ({d['role']}): at most {d['max_w']} W from "
                     f"{d['start']} to {d['end']}")
    if "ledger" in status:
        lg = status["ledger"]
        lines.append(f"{'ok  ' if lg['ok'] else 'FAIL'} {lg['device']}: {lg['detail']}")
    return lines
