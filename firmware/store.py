# What a node keeps across reboots and power cuts: energy counters, the frame sequence high-water
# mark and the last accepted command's sequence number.
#
# Two slots (files A and B) hold a record each: magic, generation, the values, CRC32. A save writes
# the slot that does NOT hold the newest record, so a write torn by a power cut can only spoil the
# older record; at boot the valid record with the highest generation wins. Saves are few (see
# node.py: energy moved by >= N Wh, T minutes passed, a sequence block reserved, a command taken).
#
# Frame sequence numbers are reserved in blocks: the record holds a high-water mark, and after a
# reboot numbering resumes at that mark, past every number the node may have used before.
import struct

try:
    from binascii import crc32
except ImportError:  # a port built without binascii.crc32
    from zlib import crc32

MAGIC = b"WMS1"
FMT = ">4sIQQII"  # magic, generation, import mWh, export mWh, seq high-water mark, command seq
BODY_LEN = 32
REC_LEN = 36  # body + CRC32
SLOTS = ("state_a.bin", "state_b.bin")


def pack(gen, import_mwh, export_mwh, seq_hw, cmd_seq):
    body = struct.pack(FMT, MAGIC, gen, import_mwh, export_mwh, seq_hw, cmd_seq)
    return body + struct.pack(">I", crc32(body) & 0xFFFFFFFF)


def unpack(data):
    """(gen, import, export, seq_hw, cmd_seq) of a valid record, or None."""
    if data is None or len(data) != REC_LEN:
        return None
    body = data[:BODY_LEN]
    if struct.unpack(">I", data[BODY_LEN:])[0] != crc32(body) & 0xFFFFFFFF:
        return None
    rec = struct.unpack(FMT, body)
    if rec[0] != MAGIC:
        return None
    return rec[1:]


class State:
    def __init__(self, hal, root, seq_block=256):
        self.hal = hal
        self.paths = (root + "/" + SLOTS[0], root + "/" + SLOTS[1])
        self.seq_block = seq_block
        self.gen = 0
        self.slot = 1  # slot of the newest record; the first save goes to slot 0
        self.import_mwh = 0
        self.export_mwh = 0
        self.seq_hw = 0
        self.seq = 1
        self.cmd_seq = 0
        self.restored = False
        self.writes = 0

    def load(self):
        best = None
        for i in (0, 1):
            rec = unpack(self.hal.read_file(self.paths[i]))
            if rec is not None and (best is None or rec[0] > best[1][0]):
                best = (i, rec)
        if best is None:
            return False
        self.slot = best[0]
        self.gen, self.import_mwh, self.export_mwh, self.seq_hw, self.cmd_seq = best[1]
        self.seq = self.seq_hw if self.seq_hw > 0 else 1
        self.restored = True
        return True

    def save(self):
        slot = 1 - self.slot
        gen = self.gen + 1
        rec = pack(gen, self.import_mwh, self.export_mwh, self.seq_hw, self.cmd_seq)
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
