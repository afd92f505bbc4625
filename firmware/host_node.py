# The node on the host: the firmware's Node with the emulated HAL and a load profile.
#
# Used by firmware/host/run_vm.mjs in stream mode (the community demo's node) and by tests. The
# profile drives what the emulated meters see:
#   {"vrms": 230, "mains_hz": 50,
#    "load": [[t_s, irms_a, pf], ...],            piecewise constant from t_s on; pf < 0 = export
#    "channels": {"1": [[t_s, irms_a, pf], ...]},  optional per-channel override
#    "true": {"0": {"ical_x": 1.04, "vcal_x": 0.97, "phase_deg": 2.0}}}  optional: a CT channel's
#        parts as they really are against its board's constants (ical, vcal off by these factors,
#        the current's signal delayed this much more), for calibration tests
# Every frame the node sends is printed as a line "F <hex>"; tick() takes received command frames.
import json
import math
import struct

import config
import hal_host as hal
import node


def _at(curve, t_s):
    cur = (0, 0.0, 1.0)
    for seg in curve:
        if seg[0] <= t_s:
            cur = seg
    return cur[1], cur[2]


def cse_frame(v, i, p):
    """A CSE7766 frame reading v V, i A, p W with parameters chosen so that param/cycle = value."""
    vp, ip, pp = 190000, 16000, 5300000
    vc = int(vp / v) if v > 0 else 0
    ic = int(ip / i) if i > 0 else 0
    pc = int(pp / p) if p > 0 else 0
    adj = (0x40 if vc else 0) | (0x20 if ic else 0) | (0x10 if pc else 0)
    body = bytearray(22)
    body[0] = 0x5A
    for k, x in ((1, vp), (4, vc), (7, ip), (10, ic), (13, pp), (16, pc)):
        body[k : k + 3] = struct.pack(">I", x)[1:]
    body[19] = adj
    return bytes([0x55]) + bytes(body) + bytes([sum(body[1:]) & 0xFF])


def pzem_response(addr, v, i, p, pf, hz):
    import pzem

    ma = int(i * 1000)
    dw = int(p * 10)
    regs = (int(v * 10), ma & 0xFFFF, ma >> 16, dw & 0xFFFF, dw >> 16, 0, 0, int(hz * 10),
            int(pf * 100), 0)
    pdu = bytes([addr, pzem.FUNC, 20]) + struct.pack(">10H", *regs)
    return pdu + struct.pack("<H", pzem.crc16(pdu))


class Scene:
    """Sets the emulated HAL's signals from a profile at simulated time t."""

    def __init__(self, cfg, profile):
        self.board = cfg["board"]
        self.vrms = profile.get("vrms", 230.0)
        self.hz = profile.get("mains_hz", cfg["mains_hz"])
        self.load = profile.get("load", [[0, 0.0, 1.0]])
        self.per = profile.get("channels", {})
        self.true = profile.get("true", {})
        self.now = {}  # channel -> (irms, pf)

    def apply(self, t_s):
        for m in self.board["meters"]:
            irms, pf = _at(self.per.get(str(m["channel"]), self.load), t_s)
            if self.now.get(m["channel"]) == (irms, pf):
                continue
            self.now[m["channel"]] = (irms, pf)
            self._set(m, irms, pf)
        for m in self.board["meters"]:
            if m["type"] == "cse7766":
                irms, pf = self.now[m["channel"]]
                p = self.vrms * irms * abs(pf)
                hal.uart_rx.setdefault(m["uart"], bytearray()).extend(
                    cse_frame(self.vrms, irms, p))

    def _set(self, m, irms, pf):
        v = self.vrms
        p = v * irms * abs(pf)
        t = m["type"]
        if t == "ct":
            tru = self.true.get(str(m["channel"]), {})
            phi = math.acos(min(1.0, abs(pf))) + (math.pi if pf < 0 else 0.0)
            phi += tru.get("phase_deg", 0.0) * math.pi / 180
            amp = irms / (m["ical"] * tru.get("ical_x", 1.0)) * 1000 * math.sqrt(2)
            # at the board's bias, or mid-window for a board that does not say: a current beyond
            # the board's range clips at the ADC as it would on the device
            mid = (hal.ADC_MIN_MV + hal.ADC_MAX_MV) // 2
            hal.signals[m["adc_pin"]] = hal.Signal(m.get("bias_mv", mid), self.hz,
                                                   [(amp, 1, -phi)], 2, 3)
            if "v_pin" in m:
                vamp = v / (m["vcal"] * tru.get("vcal_x", 1.0)) * 1000 * math.sqrt(2)
                hal.signals[m["v_pin"]] = hal.Signal(m.get("v_bias_mv", mid), self.hz,
                                                     [(vamp, 1, 0.0)], 2, 5)
        elif t == "hlw8012":
            hal.pulse_freq[m["cf_pin"]] = p / m["w_per_hz"]
            high = m.get("sel_current_high", True)
            fi = irms / m["a_per_hz"]
            fv = v / m["v_per_hz"]
            sel = m["sel_pin"]
            hal.pulse_freq[m["cf1_pin"]] = lambda: fi if hal.pins.get(sel) == high else fv
        elif t == "pzem":
            addr = m.get("addr", 0xF8)
            hz = self.hz
            hal.uart_peer[m["uart"]] = lambda req: pzem_response(addr, v, irms, p, abs(pf), hz)


class Host:
    def __init__(self, root, profile=None):
        self.root = root
        self.cfg = config.load(root + "/config.json")
        self.key = config.load_key(root + "/node.key")
        if profile is None:
            with open(root + "/profile.json") as f:
                profile = json.loads(f.read())
        self.scene = Scene(self.cfg, profile)
        self.scene.apply(0)
        self.node = node.Node(hal, self.cfg, self.key, root)
        self.sent = 0

    def _out(self, frames):
        for f in frames:
            print("F " + f.hex())
            self.sent += 1

    def tick(self, step_ms, commands=()):
        """Hand over received command frames (hex), then run the loop for step_ms of time."""
        for c in commands:
            try:
                raw = bytes.fromhex(c)
            except ValueError:
                continue
            ack = self.node.command(raw)
            if ack:
                self._out([ack])
        # Ticks wrap like the ESP32's: deadlines are compared through ticks_diff only. The load
        # profile's time axis is the time since boot.
        end = hal.ticks_add(hal.ticks_ms(), step_ms)
        node = self.node
        while True:
            self.scene.apply(hal.elapsed_ms() // 1000)
            self._out(node.step())
            now = hal.ticks_ms()
            due = min(hal.ticks_diff(node.next_sample, now), hal.ticks_diff(node.next_publish, now))
            if due <= 0:
                # step() always moves its deadlines past now; one left behind would spin this loop
                raise RuntimeError("node left a deadline %d ms in the past" % -due)
            wait = min(due, hal.ticks_diff(end, now))
            if wait > 0:
                hal.advance_ms(wait)
            if hal.ticks_diff(hal.ticks_ms(), end) >= 0:
                break
