# PZEM-004T v3 metering module: Modbus RTU over a 9600-baud UART.
#
# The node reads the ten input registers (function 0x04 from 0x0000): voltage 0.1 V, current
# 0.001 A (32 bits, low word first), power 0.1 W (32 bits), energy 1 Wh (32 bits), frequency
# 0.1 Hz, power factor 0.01, alarm. CRC16/MODBUS is written out here because MicroPython has no
# Modbus library small enough for the node; tests check it against pymodbus.
import struct

FUNC = 0x04
REGS = 10
RESP_LEN = 5 + 2 * REGS
STALE_MS = 3000


class PzemError(ValueError):
    pass


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def request(addr):
    pdu = struct.pack(">BBHH", addr, FUNC, 0, REGS)
    return pdu + struct.pack("<H", crc16(pdu))


def parse(addr, data):
    """dict of the readings from one response frame; raises PzemError(reason)."""
    if len(data) < 5:
        raise PzemError("short")
    if struct.unpack("<H", data[-2:])[0] != crc16(data[:-2]):
        raise PzemError("crc")
    if data[0] != addr:
        raise PzemError("address")
    if data[1] == FUNC | 0x80:
        raise PzemError("exception_%d" % data[2])
    if data[1] != FUNC or data[2] != 2 * REGS or len(data) != RESP_LEN:
        raise PzemError("length")
    r = struct.unpack(">10H", data[3 : 3 + 2 * REGS])
    return {
        "voltage": r[0] / 10,
        "current": (r[1] | (r[2] << 16)) / 1000,
        "power": (r[3] | (r[4] << 16)) / 10,
        "energy_wh": r[5] | (r[6] << 16),
        "frequency": r[7] / 10,
        "pf": r[8] / 100,
        "alarm": r[9],
    }


class Pzem:
    """Polls the module once per measure(): parses the last answer, then asks again."""

    def __init__(self, hal, uart_id, tx_pin, rx_pin, addr=0xF8):
        self.hal = hal
        self.uart = hal.Uart(uart_id, 9600, tx_pin, rx_pin, None)
        self.addr = addr
        self.req = request(addr)
        self.last = (0.0, 0.0, 0.0, 0.0, 0.0)
        self.seen = hal.ticks_ms()
        self.errors = 0

    def measure(self):
        data = self.uart.read()
        if data:
            try:
                r = parse(self.addr, data)
                v, i, p = r["voltage"], r["current"], r["power"]
                self.last = (v, i, p, v * i, r["pf"])
                self.seen = self.hal.ticks_ms()
            except PzemError:
                self.errors += 1
        if self.hal.ticks_ms() - self.seen > STALE_MS:
            self.last = (0.0, 0.0, 0.0, 0.0, 0.0)
        self.uart.write(self.req)
        return self.last
