"""hal_esp32 on the VM over a stand-in `machine` module (no ESP32 here: the one place a fake is
the only peer). Checks what the real HAL adds over machine: raw codes and read_uv()'s calibration
line, V-then-I order and pacing, active-low outputs, edge counting in the pin IRQ, the watchdog
and file helpers."""

from __future__ import annotations

from tools import mpvm

MACHINE = '''
log = []
class Pin:
    OUT = 1
    IN = 0
    IRQ_RISING = 1
    def __init__(self, n, mode=0, value=None):
        self.n = n
        self.v = value
        self.handler = None
    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        log.append(('pin', self.n, v))
    def irq(self, trigger=0, handler=None):
        self.handler = handler
class ADC:
    ATTN_11DB = 3
    WIDTH_12BIT = 12
    def __init__(self, pin, atten=0):
        self.pin = pin
        self.k = 0
        self.bits = 0
    def width(self, bits):
        self.bits = bits
    def read(self):
        # pin 39 sweeps 3 codes a read (a voltage), pin 36 sits at its bias (an idle clamp)
        self.k += 1
        log.append(('adc', self.pin.n))
        return 1000 + 3 * self.k if self.pin.n == 39 else 1600 + self.k % 3
    def read_uv(self):
        # read_uv's calibration: the line 0.8 mV a code + 20 mV, rounded to whole mV
        return int(self.read() * 0.8 + 20 + 0.5) * 1000
irq_state = [0]
def disable_irq():
    irq_state[0] += 1
    return 7
def enable_irq(s):
    irq_state[0] -= 1
class WDT:
    def __init__(self, timeout=0):
        log.append(('wdt', timeout))
    def feed(self):
        log.append(('feed',))
class UART:
    def __init__(self, uid, **kw):
        log.append(('uart', uid, sorted(kw.items())))
    def read(self):
        return b'x'
    def write(self, b):
        return len(b)
'''

SCRIPT = """
import time, machine, hal_esp32 as hal
from array import array
v = hal.Adc(39); i = hal.Adc(36)
emit({'line_v': list(v.line()), 'line_i': list(i.line()), 'bits': [v.adc.bits, i.adc.bits]})
machine.log.clear()
bv = array('H', bytes(20)); bi = array('H', bytes(20))
t0 = time.ticks_us()
lag, span, late = hal.sample(v, i, bv, bi, 10, 500)
took = time.ticks_diff(time.ticks_us(), t0)
order = [e[1] for e in machine.log if e[0] == 'adc']
emit({'bv': list(bv), 'bi': list(bi), 'order': order[:8], 'took_us': took, 'lag': lag,
      'span': span, 'late': late})
bv2 = array('H', bytes(20)); bi2 = array('H', bytes(20))
emit({'late_fast': hal.sample(v, i, bv2, bi2, 10, 1)[2]})
machine.log.clear()
o = hal.Output(26, False, False)
o.set(True)
o.set(False)
emit({'pins': machine.log[:]})
pc = hal.PulseCounter(5)
emit({'none': list(pc.snapshot())})
for k in range(5):
    pc.pin.handler(pc.pin)
    time.sleep_ms(2)
n, a, b = pc.snapshot()
span = time.ticks_diff(b, a)
emit({'n': n, 'span_ok': 7000 <= span <= 200000, 'irq_balanced': machine.irq_state[0],
      'after': list(pc.snapshot())})
machine.log.clear()
w = hal.Wdt(8000); w.feed()
u = hal.Uart(2, 9600, 17, 16, None)
emit({'log': [list(map(str, e)) for e in machine.log], 'read': u.read().decode()})
hal.write_file('/f.bin', b'abc')
emit({'file': open('/f.bin', 'rb').read().decode()})
"""


def test_real_hal_over_machine() -> None:
    out = mpvm.run_job(SCRIPT, files={"/lib/machine.py": MACHINE}).results
    lines = out.pop(0)
    # 12-bit codes; the calibration line read_uv() applies, found from read_uv() between raw
    # reads: both terms where the input moves, through 0 for an idle input (1601 codes, 1301 mV)
    assert lines["bits"] == [12, 12]
    g, b = lines["line_v"]
    assert abs(g - 0.8) < 1e-3 and abs(b - 20) < 1.0
    assert lines["line_i"][1] == 0.0 and abs(lines["line_i"][0] - 1301 / 1601) < 1e-3
    s = out[0]
    # the voltage read timed first (the lag of the current read after it), then raw codes,
    # voltage read before current in each pair
    assert s["order"] == [39] * 4 + [39, 36, 39, 36]
    k_v = 3 * 256 + 4 + 1  # pin 39's reads: 3 a fit step, 4 timing the lag, then the first pair
    assert s["bv"][0] == 1000 + 3 * k_v and s["bi"][0] == 1600 + (3 * 256 + 1) % 3
    assert s["took_us"] >= 4500  # 10 pairs paced 500 us apart
    # measured with ticks_us: the read lag and the 10 periods (this VM's clock is coarser and its
    # loop over a Python stand-in for machine slower than the chip's: it may run late at 500 us)
    assert s["lag"] >= 0 and s["span"] >= 4500 and 0 <= s["late"] <= 10
    # ...and every sample late when the period (1 us) is shorter than a pass of the loop
    assert out[1]["late_fast"] >= 9
    out.pop(1)
    assert out[1]["pins"] == [["pin", 26, 0], ["pin", 26, 1]]  # active low: on = 0, off = 1
    assert out[2]["none"] == [0, 0, 0]
    # edge times are ticks_us, so that a driver can measure a period across snapshots
    assert out[3]["n"] == 5 and out[3]["span_ok"]
    assert out[3]["irq_balanced"] == 0 and out[3]["after"] == [0, 0, 0]
    log = out[4]["log"]
    assert log[0] == ["wdt", "8000"] and log[1] == ["feed"]
    assert log[2][0] == "uart" and "('baudrate', 9600)" in log[2][2]
    assert out[5] == {"file": "abc"}


def test_both_hals_share_the_adc_window() -> None:
    # ct.py flags clipping against the HAL's window: on the device it must be the window that the
    # host emulates (and the accuracy tests hold to)
    from firmware import hal_host

    script = "import hal_esp32 as hal\nemit([hal.ADC_MIN_MV, hal.ADC_MAX_MV])\n"
    out = mpvm.run_job(script, files={"/lib/machine.py": MACHINE}).results
    assert out == [[hal_host.ADC_MIN_MV, hal_host.ADC_MAX_MV]]
