# What a node keeps across reboots and power cuts: energy counters, the frame sequence high-water
# mark, the last accepted command's sequence number, the relays locked out by an over-current
# trip (so that a watchdog or power reset does not switch a relay back into the fault) and the
# CT channels' calibration (ical, vcal, phase_deg; zeros: the board's own).
#
# Two slots (files A and B) hold a record each: magic, generation, the values, CRC32. A save writes
# the slot that does NOT hold the newest record, so a write torn by a power cut can only spoil the
# older record; at boot the valid record with the highest generation wins. Saves are few (see
# node.py: energy moved by >= N Wh, T minutes passed, a sequence block reserved, a command taken).
#
# Frame sequence numbers are reserved in blocks: the record holds a high-water mark, and after a
# reboot numbering resumes at that mark, past every number the node may have used before.
import struct
from binascii import crc32

MAGIC = b"WMS3"  # WMS2 and a calibration triple per channel after the counters
HEAD_FMT = ">4sIIIBB"  # magic, generation, seq high-water mark, command seq, channels, trips
HEAD_LEN = 18
MAGIC_V2 = b"WMS2"  # records before calibration: read, with no calibration
CAL_FMT = ">fff"  # per channel: ical, vcal, phase_deg (0, 0, 0: none)
CAL_LEN = 12
# Records written before the lockout was kept (no trips byte) are still read, as "no trips".
MAGIC_V1 = b"WMS1"
HEAD_FMT_V1 = ">4sIIIB"
HEAD_LEN_V1 = 17
PAIR_FMT = ">QQ"  # per channel: imported mWh, exported mWh
PAIR_LEN = 16
MAX_CHANNELS = 8
SLOTS = ("state_a.bin", "state_b.bin")


def read_slot(path):
    """A slot file's bytes, None when there is none. Reads are the same open() on the device and
    the host; writes go through the HAL (the host's can tear on an emulated power cut)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def rec_len(channels, head=HEAD_LEN, cal=True):
    return head + (PAIR_LEN + (CAL_LEN if cal else 0)) * channels + 4


def pack(gen, seq_hw, cmd_seq, imp, exp, trips=0, cal=None):
    """trips: bit k set = relay k locked out by an over-current trip; cal: per channel None or
    (ical, vcal, phase_deg)."""
    body = struct.pack(HEAD_FMT, MAGIC, gen, seq_hw, cmd_seq, len(imp), trips)
    for i in range(len(imp)):
        body += struct.pack(PAIR_FMT, imp[i], exp[i])
    for i in range(len(imp)):
        c = cal[i] if cal is not None and i < len(cal) and cal[i] is not None else (0, 0, 0)
        body += struct.pack(CAL_FMT, c[0], c[1], c[2])
    return body + struct.pack(">I", crc32(body) & 0xFFFFFFFF)


def unpack(data):
    """(gen, seq_hw, cmd_seq, imports, exports, trips, cal) of a valid record, or None."""
    if data is None or len(data) < rec_len(0, HEAD_LEN_V1):
        return None
    body = data[:-4]
    if struct.unpack(">I", data[-4:])[0] != crc32(body) & 0xFFFFFFFF:
        return None
    has_cal = body[:4] == MAGIC
    if body[:4] == MAGIC_V1:
        head = HEAD_LEN_V1
        magic, gen, seq_hw, cmd_seq, n = struct.unpack(HEAD_FMT_V1, body[:head])
        trips = 0
    elif body[:4] in (MAGIC, MAGIC_V2) and len(body) >= HEAD_LEN:
        head = HEAD_LEN
        magic, gen, seq_hw, cmd_seq, n, trips = struct.unpack(HEAD_FMT, body[:head])
    else:
        return None
    if n > MAX_CHANNELS or len(data) != rec_len(n, head, has_cal):
        return None
    imp = []
    exp = []
    for i in range(n):
        at = head + PAIR_LEN * i
        a, b = struct.unpack(PAIR_FMT, body[at : at + PAIR_LEN])
        imp.append(a)
        exp.append(b)
    cal = [None] * n  # type: list
    if has_cal:
        for i in range(n):
            at = head + PAIR_LEN * n + CAL_LEN * i
            c = struct.unpack(CAL_FMT, body[at : at + CAL_LEN])
            if c[0] > 0:  # a stored calibration (ical > 0); zeros are "the board's own"
                cal[i] = c
    return gen, seq_hw, cmd_seq, imp, exp, trips, cal


class State:
    def __init__(self, hal, root, channels=1, seq_block=256):
        self.hal = hal
        self.paths = (root + "/" + SLOTS[0], root + "/" + SLOTS[1])
        self.seq_block = seq_block
        self.gen = 0
        self.slot = 1  # slot of the newest record; the first save goes to slot 0
        self.imp = [0] * channels  # imported mWh per channel
        self.exp = [0] * channels  # exported mWh per channel
        self.seq_hw = 0
        self.seq = 1
        self.cmd_seq = 0
        self.trips = 0  # relays locked out by an over-current trip, one bit each
        self.cal = [None] * channels  # type: list  # per channel: None (the board's) or a triple
        self.restored = False
        self.writes = 0

    def load(self):
        best = None
        for i in (0, 1):
            rec = unpack(read_slot(self.paths[i]))
            if rec is not None and (best is None or rec[0] > best[1][0]):
                best = (i, rec)
        if best is None:
            return False
        self.slot = best[0]
        self.gen, self.seq_hw, self.cmd_seq, imp, exp, self.trips, cal = best[1]
        # A channel added to the board since the record was written starts from zero.
        for i in range(min(len(imp), len(self.imp))):
            self.imp[i] = imp[i]
            self.exp[i] = exp[i]
            self.cal[i] = cal[i]
        self.seq = self.seq_hw if self.seq_hw > 0 else 1
        self.restored = True
        return True

    def save(self):
        slot = 1 - self.slot
        gen = self.gen + 1
        rec = pack(gen, self.seq_hw, self.cmd_seq, self.imp, self.exp, self.trips, self.cal)
        self.hal.write_file(self.paths[slot], rec)
        self.slot = slot
        self.gen = gen
        self.writes += 1

    def next_seq(self):
        """A frame sequence number never used before, across reboots (saves when a block ends)."""
        if self.seq >= self.seq_hw:
            self.seq_hw = self.seq + self.seq_block
            self.save()
        s = self.seq
        self.seq += 1
        return s

    def accept_command(self, seq):
        """Record a command's seq before acting on it; False if it is not newer than the last."""
        if seq <= self.cmd_seq:
            return False
        self.cmd_seq = seq
        self.save()
        return True
