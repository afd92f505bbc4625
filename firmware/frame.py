# The node frame: readings and relay commands between an ESP32 node and the gateway.
#
# This is the one definition of the wire format. It is written in the common subset of
# MicroPython and CPython: the firmware runs it on the ESP32 and the gateway imports it as
# ``firmware.frame``. Test vectors in ``frame_vectors.json`` must pass byte for byte in both.
#
# Frame = header | payload | tag
#   header  ">BBHIH"  version (=1), type, node id, sequence number, payload length   (10 bytes)
#   tag     first 16 bytes of HMAC-SHA256(node key, header | payload)
# Each frame type travels one way (DIRECTION); receivers refuse the other direction.
# The tag is truncated to 128 bits as RFC 4868 does for HMAC-SHA256-128, so that a reading fits
# one BLE notification at a modest MTU. Sequence numbers never repeat for a node across reboots
# (the firmware reserves them in blocks on flash); the gateway accepts them forward only.
#
# HMAC is written out here because MicroPython's ports ship hashlib but not hmac; it is the
# RFC 2104 construction and the vectors check it against CPython's hmac module.
import hashlib
import struct

VERSION = 1
T_READING = 1  # node -> gateway: one measurement and the energy counters
T_COMMAND = 2  # gateway -> node: switch a relay
T_ACK = 3  # node -> gateway: outcome of a command
T_CALIBRATE = 4  # gateway -> node: calibrate a CT channel (answered by an ACK)

HEADER_FMT = ">BBHIH"
HEADER_LEN = 10
TAG_LEN = 16
MAX_PAYLOAD = 200

# READING: channel, uptime s, voltage dV, current mA, real power dW (signed, export < 0),
# apparent power dVA, power factor x1000 (signed), relay bitmask, flags, imported mWh, exported mWh
READING_FMT = ">BIHIiIhBBQQ"
READING_LEN = 39
READING_FIELDS = (
    "channel",
    "uptime_s",
    "voltage_dv",
    "current_ma",
    "power_dw",
    "apparent_dva",
    "pf_milli",
    "relays",
    "flags",
    "import_mwh",
    "export_mwh",
)
F_COUNTERS_RESTORED = 1  # counters were restored from flash since the last frame
F_OVERCURRENT_TRIP = 2  # a relay was tripped by the over-current guard
F_NO_VOLTAGE = 4  # no voltage channel: voltage is the configured nominal value
F_ADC_CLIPPED = 8  # a CT window since the last frame ran past the ADC's usable range: reads low
F_SAMPLING_BEHIND = 16  # a CT window since the last frame fell behind its sample period
F_SIGN_UNKNOWN = 32  # the meter cannot tell import from export (PZEM-004T): all counted as import

# COMMAND: relay index, action, reserved (0)
COMMAND_FMT = ">BBH"
COMMAND_LEN = 4
A_OFF = 0
A_ON = 1
A_TOGGLE = 2

# ACK: sequence number of the command, relay index, status, relay state after the command
ACK_FMT = ">IBBB"
ACK_LEN = 7
S_OK = 0
S_MIN_TIME = 1  # refused: minimum on/off time not yet elapsed (the node retries at expiry)
S_TRIPPED = 2  # refused: the relay is locked out by the over-current trip
S_BAD_RELAY = 3  # refused: no such relay
S_REPLAY = 4  # retired: no node answers a replayed command (open_command); kept so that an
#               old node's ACK still decodes, and a gateway treats the status as not done
S_BAD_CALIBRATION = 5  # refused: no such CT channel, no reading yet, or constants out of bounds

# CALIBRATE: channel, mode, reserved (0), then three values by mode:
#   M_REFERENCE (Tasmota's VoltageSet/CurrentSet/PowerSet): a known load is on the channel now;
#     voltage mV, current mA, power dW (signed) of it, 0 where not given; the node scales its
#     constants by truth / its own reading of the last frame's windows.
#   M_CONSTANTS: ical and vcal in millionths, phase_deg in millionths of a degree (signed).
CALIBRATE_FMT = ">BBHIIi"
CALIBRATE_LEN = 16
M_REFERENCE = 1
M_CONSTANTS = 2

_PAYLOAD_LEN = {T_READING: READING_LEN, T_COMMAND: COMMAND_LEN, T_ACK: ACK_LEN,
                T_CALIBRATE: CALIBRATE_LEN}

# Direction: each type travels one way, and the header's node id is the sender of an UP frame and
# the target of a DOWN one. A receiver names the direction it listens to, so an authentic frame
# of the other direction (a COMMAND captured on the broker and replayed as telemetry, a node's
# ACK reflected back to it) is refused as "direction" before it can touch a sequence window.
# Sequence numbers are counted per direction (the node's counter for READING and ACK, the
# gateway's per node for COMMAND and CALIBRATE) and kept per frame type by the receiver.
UP = 1  # node -> gateway
DOWN = 2  # gateway -> node
DIRECTION = {T_READING: UP, T_ACK: UP, T_COMMAND: DOWN, T_CALIBRATE: DOWN}


class FrameError(ValueError):
    """A frame that must be dropped; ``args[0]`` is a stable reason code."""


def _hmac_sha256(key, msg):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes([b ^ 0x36 for b in key]))
    inner.update(msg)
    outer = hashlib.sha256(bytes([b ^ 0x5C for b in key]))
    outer.update(inner.digest())
    return outer.digest()


def tag(key, data):
    return _hmac_sha256(key, data)[:TAG_LEN]


def _same(a, b):
    # Constant-time comparison: the time taken does not depend on where the bytes differ.
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def encode(key, ftype, node_id, seq, payload):
    if ftype not in _PAYLOAD_LEN or len(payload) != _PAYLOAD_LEN[ftype]:
        raise FrameError("bad_payload")
    if not 0 <= node_id <= 0xFFFF or not 0 <= seq <= 0xFFFFFFFF:
        raise FrameError("bad_header")
    body = struct.pack(HEADER_FMT, VERSION, ftype, node_id, seq, len(payload)) + payload
    return body + tag(key, body)


def peek(frame, direction=None):
    """(type, node id, seq) from the header, unauthenticated: only to find the node's key.
    ``direction`` (UP or DOWN): a frame of the other direction is refused ("direction")."""
    if len(frame) < HEADER_LEN + TAG_LEN:
        raise FrameError("short")
    version, ftype, node_id, seq, plen = struct.unpack(HEADER_FMT, bytes(frame[:HEADER_LEN]))
    if version != VERSION:
        raise FrameError("version")
    if ftype not in _PAYLOAD_LEN:
        raise FrameError("type")
    if plen != _PAYLOAD_LEN[ftype] or len(frame) != HEADER_LEN + plen + TAG_LEN:
        raise FrameError("length")
    if direction is not None and DIRECTION[ftype] != direction:
        raise FrameError("direction")
    return ftype, node_id, seq


def decode(key, frame, direction=None):
    """Check a frame's header (and ``direction``, see ``peek``) and tag; return (type, node id,
    seq, payload bytes)."""
    ftype, node_id, seq = peek(frame, direction)
    body = bytes(frame[:-TAG_LEN])
    if not _same(tag(key, body), bytes(frame[-TAG_LEN:])):
        raise FrameError("tag")
    return ftype, node_id, seq, body[HEADER_LEN:]


def open_command(key, node_id, frame, last_seq):
    """A node's first look at a frame it received: (type, seq, payload) of an authentic DOWN
    frame (COMMAND or CALIBRATE) for ``node_id`` whose seq is newer than ``last_seq``, the last
    command the node accepted. Anything else raises FrameError with the reason to drop it
    unanswered: "direction" (an UP frame, e.g. the node's own ACK reflected back), "node"
    (another node's), "tag", "replay" (seq not newer: not executed, not ACKed, nothing saved: an
    answer would burn a sequence number and, at a block's end, a flash write), or a header fault.
    The caller records seq as its last command before acting on it. The firmware (node.py) and
    the emulators (hardware/) all take commands through here."""
    ftype, nid, seq = peek(frame, DOWN)
    if nid != node_id:
        raise FrameError("node")
    payload = decode(key, frame, DOWN)[3]
    if seq <= last_seq:
        raise FrameError("replay")
    return ftype, seq, payload


def pack_reading(r):
    """Payload of a READING from a dict with the keys of READING_FIELDS."""
    return struct.pack(
        READING_FMT,
        r["channel"],
        r["uptime_s"],
        r["voltage_dv"],
        r["current_ma"],
        r["power_dw"],
        r["apparent_dva"],
        r["pf_milli"],
        r["relays"],
        r["flags"],
        r["import_mwh"],
        r["export_mwh"],
    )


def unpack_reading(payload):
    if len(payload) != READING_LEN:
        raise FrameError("length")
    values = struct.unpack(READING_FMT, bytes(payload))
    r = {}
    for i in range(len(READING_FIELDS)):
        r[READING_FIELDS[i]] = values[i]
    return r


def pack_command(relay, action):
    if action not in (A_OFF, A_ON, A_TOGGLE):
        raise FrameError("bad_action")
    return struct.pack(COMMAND_FMT, relay, action, 0)


def unpack_command(payload):
    if len(payload) != COMMAND_LEN:
        raise FrameError("length")
    relay, action, _reserved = struct.unpack(COMMAND_FMT, bytes(payload))
    if action not in (A_OFF, A_ON, A_TOGGLE):
        raise FrameError("bad_action")
    return relay, action


def open_relay_command(key, node_id, frame, last_seq):
    """``open_command`` for a node with relays and no CT channel to calibrate (the emulated
    plug and MQTT node): (seq, relay, action) of an authentic new COMMAND; a CALIBRATE raises
    FrameError("type")."""
    ftype, seq, payload = open_command(key, node_id, frame, last_seq)
    if ftype != T_COMMAND:
        raise FrameError("type")
    relay, action = unpack_command(payload)
    return seq, relay, action


def pack_calibrate(channel, mode, a, b, c):
    if mode not in (M_REFERENCE, M_CONSTANTS):
        raise FrameError("bad_mode")
    return struct.pack(CALIBRATE_FMT, channel, mode, 0, a, b, c)


def unpack_calibrate(payload):
    """(channel, mode, a, b, c) of a CALIBRATE payload."""
    if len(payload) != CALIBRATE_LEN:
        raise FrameError("length")
    channel, mode, _reserved, a, b, c = struct.unpack(CALIBRATE_FMT, bytes(payload))
    if mode not in (M_REFERENCE, M_CONSTANTS):
        raise FrameError("bad_mode")
    return channel, mode, a, b, c


def pack_ack(cmd_seq, relay, status, state):
    return struct.pack(ACK_FMT, cmd_seq, relay, status, state)


def unpack_ack(payload):
    if len(payload) != ACK_LEN:
        raise FrameError("length")
    return struct.unpack(ACK_FMT, bytes(payload))
