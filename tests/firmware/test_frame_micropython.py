"""The node frame under real MicroPython: the same vectors as the CPython half, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from firmware import frame
from tools import mpvm

VECTORS = (Path(frame.__file__).parent / "frame_vectors.json").read_text()

SCRIPT = """
import json, frame
V = json.load(open('/vectors.json'))
for vec in V['valid']:
    key = bytes.fromhex(vec['key'])
    raw = bytes.fromhex(vec['frame'])
    t, nid, seq, payload = frame.decode(key, raw)
    f = vec['fields']
    if t == frame.T_READING:
        fields = frame.unpack_reading(payload)
        built = frame.pack_reading(f)
    elif t == frame.T_COMMAND:
        r, a = frame.unpack_command(payload)
        fields = {'relay': r, 'action': a}
        built = frame.pack_command(f['relay'], f['action'])
    elif t == frame.T_CALIBRATE:
        ch, m, a, b, c = frame.unpack_calibrate(payload)
        fields = {'channel': ch, 'mode': m, 'a': a, 'b': b, 'c': c}
        built = frame.pack_calibrate(f['channel'], f['mode'], f['a'], f['b'], f['c'])
    else:
        c, r, s, st = frame.unpack_ack(payload)
        fields = {'cmd_seq': c, 'relay': r, 'status': s, 'state': st}
        built = frame.pack_ack(f['cmd_seq'], f['relay'], f['status'], f['state'])
    enc = frame.encode(key, t, nid, seq, built)
    emit({'name': vec['name'], 'hdr': [t, nid, seq], 'fields': fields, 'frame': enc.hex()})
for vec in V['invalid']:
    try:
        frame.decode(bytes.fromhex(vec['key']), bytes.fromhex(vec['frame']), vec.get('direction'))
        emit({'name': vec['name'], 'error': None})
    except frame.FrameError as e:
        emit({'name': vec['name'], 'error': e.args[0]})
for vec in V['commands']:
    try:
        t, s, p = frame.open_command(bytes.fromhex(vec['key']), vec['node_id'],
                                     bytes.fromhex(vec['frame']), vec['last_seq'])
        emit({'command': vec['name'], 'got': [t, s, p.hex()]})
    except frame.FrameError as e:
        emit({'command': vec['name'], 'got': e.args[0]})
# Tags over lengths that cross the 64-byte HMAC block and the long-key branch.
for n in (0, 1, 55, 56, 63, 64, 65, 127, 128, 200):
    emit({'tag': n, 'hex': frame.tag(bytes(range(n % 97)) * 2, bytes(n)).hex()})
"""


def test_micropython_passes_the_vectors_byte_for_byte() -> None:
    vectors = json.loads(VECTORS)
    out = mpvm.run_job(SCRIPT, files={"/vectors.json": VECTORS}).results
    commands = [r for r in out if "command" in r]
    out = [r for r in out if "command" not in r]
    assert [c["command"] for c in commands] == [v["name"] for v in vectors["commands"]]
    for got, vec in zip(commands, vectors["commands"], strict=True):
        want = vec.get("error") or [vec["type"], vec["seq"], vec["payload"]]
        assert got["got"] == want, vec["name"]
    valid = [r for r in out if "frame" in r]
    invalid = [r for r in out if "error" in r]
    tags = [r for r in out if "tag" in r]
    assert [r["name"] for r in valid] == [v["name"] for v in vectors["valid"]]
    for got, vec in zip(valid, vectors["valid"], strict=True):
        assert got["hdr"] == [vec["type"], vec["node_id"], vec["seq"]]
        assert got["fields"] == vec["fields"]
        assert got["frame"] == vec["frame"]
    assert len(invalid) == len(vectors["invalid"])
    for got, vec in zip(invalid, vectors["invalid"], strict=True):
        assert got["error"] == vec["error"], vec["name"]
    assert len(tags) == 10
    for t in tags:
        n = t["tag"]
        assert t["hex"] == frame.tag(bytes(range(n % 97)) * 2, bytes(n)).hex()
