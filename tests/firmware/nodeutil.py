"""Helpers for firmware tests: a provisioned node's files, decoded frames, VM scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from firmware import frame

BOARDS = Path(__file__).resolve().parents[2] / "hardware" / "boards"
KEY = bytes(range(32))


def board(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BOARDS / f"{name}.json").read_text())
    return data


def node_files(board_name: str, root: str = "/flash", **over: Any) -> dict[str, str]:
    cfg: dict[str, Any] = {"node_id": 7, "link": "none", "board": board(board_name)}
    cfg.update(over)
    return {f"{root}/config.json": json.dumps(cfg), f"{root}/node.key": KEY.hex()}


def command(seq: int, relay: int, action: int, key: bytes = KEY, node_id: int = 7) -> str:
    return frame.encode(key, frame.T_COMMAND, node_id, seq, frame.pack_command(relay, action)).hex()


def decode_all(lines: list[str], key: bytes = KEY) -> list[tuple[int, int, int, Any]]:
    """(type, node, seq, fields) of every 'F <hex>' line; raises if any frame fails its tag."""
    out = []
    for line in lines:
        if not line.startswith("F "):
            continue
        t, n, s, payload = frame.decode(key, bytes.fromhex(line[2:]))
        fields: Any
        if t == frame.T_READING:
            fields = frame.unpack_reading(payload)
        else:
            fields = frame.unpack_ack(payload)
        out.append((t, n, s, fields))
    return out
