# The node: meters, energy counters, relays and frames, driven by step(now) and command(frame).
#
# No loop, no sleep, no radio here: main.py calls step() with the HAL's clock and hands the frames
# to a link; tests and the host runner do the same with the emulated HAL and a driven clock.
import math

import config
import frame
import relay
import store

MJ_PER_MWH = 3600  # W x ms = mJ; 1 mWh = 3600 mJ
# A calibration may move a CT constant within these factors of the board's own: further off is a
# wrong clamp, burden or wiring, not calibration (and a bad command cannot zero a meter).
CAL_MIN = 0.5
CAL_MAX = 2.0


def make_meter(hal, m, board, mains_hz):
    t = m["type"]
    if t == "ct":
        import ct

        adc_v = hal.Adc(m["v_pin"]) if "v_pin" in m else None
        return ct.Clamp(hal, hal.Adc(m["adc_pin"]), adc_v, m["ical"], m.get("vcal", 0),
                        m.get("phase_deg", 0.0), board["sample_rate_hz"], mains_hz,
                        board["cycles"], m["start_a"])
    if t == "hlw8012":
        import hlw8012

        return hlw8012.Hlw8012(hal, m["cf_pin"], m["cf1_pin"], m["sel_pin"], m["w_per_hz"],
                               m["a_per_hz"], m["v_per_hz"], m.get("sel_current_high", True))
    if t == "cse7766":
        import cse7766

        return cse7766.Cse7766(hal, m["uart"], m["rx_pin"], m.get("v_scale", 1.0),
                               m.get("i_scale", 1.0), m.get("p_scale", 1.0))
    import pzem

    return pzem.Pzem(hal, m["uart"], m["tx_pin"], m["rx_pin"], m.get("addr", 0xF8))


class Channel:
    def __init__(self, index, number, meter, has_voltage, sign_unknown=False, board=None):
        self.board = board  # the board's CT constants (ical, vcal, phase_deg); None: not a CT
        self.index = index  # position in the counters
        self.number = number  # channel number on the wire
        self.meter = meter
        self.has_voltage = has_voltage
        self.sign_unknown = sign_unknown  # unsigned power (PZEM-004T): export counts as import
        self.v = self.i = self.p = self.s = self.pf = 0.0
        self.last_ms = None
        self.acc_imp = 0  # mJ not yet a whole mWh
        self.acc_exp = 0
        self.clipped = False  # a window since the last frame was clipped at the ADC
        self.behind = False  # a window since the last frame fell behind its sample period
        # sums over the CT windows since the last frame: the frame carries their means (a window
        # at 1 % of range has 0.8 % of random noise error; five of them, 0.36 %)
        self.nw = 0
        self.si2 = self.sv2 = self.sp = 0.0
        self.last = None  # (V, I, P, S, PF) of the last frame


class Node:
    def __init__(self, hal, cfg, key, root):
        self.hal = hal
        self.cfg = cfg
        self.key = key
        self.node_id = cfg["node_id"]
        board = cfg["board"]
        now = hal.ticks_ms()
        # ticks_ms wraps (2**30 ms on the ESP32, about 12.4 days): every tick value here is only
        # compared through ticks_diff and moved through ticks_add. Uptime for the frames is kept
        # apart, in whole seconds plus a ms remainder, so it keeps counting across the wrap.
        self.up_s = now // 1000
        self.up_ms = now % 1000
        self.up_tick = now
        self.sample_ms = int(cfg["sample_s"] * 1000)
        self.publish_ms = int(cfg["publish_s"] * 1000)
        self.wdt = hal.Wdt(cfg["wdt_ms"])
        self.channels = []
        for i, m in enumerate(board["meters"]):
            meter = make_meter(hal, m, board, cfg["mains_hz"])
            has_v = m["type"] != "ct" or "v_pin" in m
            consts = None
            if m["type"] == "ct":
                consts = (m["ical"], m.get("vcal", 0), m.get("phase_deg", 0.0))
            self.channels.append(Channel(i, m["channel"], meter, has_v, m["type"] == "pzem",
                                         consts))
        self.state = store.State(hal, root, len(self.channels), cfg["seq_block"])
        self.state.load()
        for ch in self.channels:  # a calibration kept in flash overrides the board's constants
            c = self.state.cal[ch.index]
            if c is not None and ch.board is not None:
                ch.meter.calibrate(c[0], c[1] if ch.has_voltage else None, c[2])
        self.relays = []
        for k, r in enumerate(board["relays"]):
            self.relays.append(relay.Relay(
                hal, r["pin"], r.get("active_high", True), r.get("boot_on", False),
                int(r.get("min_on_s", 0) * 1000), int(r.get("min_off_s", 0) * 1000),
                int(r.get("trip_a", 0) * 1000), r.get("channel", 0), now,
                bool(self.state.trips >> k & 1)))
        self.restored_flag = self.state.restored
        self.next_sample = now
        self.next_publish = hal.ticks_add(now, self.publish_ms)
        self.saved_at = now
        self.saved_total = self._total()
        self.dropped = {}  # reason -> count of command frames dropped unanswered

    def _total(self):
        return sum(self.state.imp) + sum(self.state.exp)

    # ---- metering and counters ---------------------------------------------------------------

    def _account(self, ch, now):
        if ch.last_ms is not None:
            e = int(ch.p * self.hal.ticks_diff(now, ch.last_ms))  # mJ since the last window
            if e >= 0:
                ch.acc_imp += e
                whole = ch.acc_imp // MJ_PER_MWH
                self.state.imp[ch.index] += whole
                ch.acc_imp -= whole * MJ_PER_MWH
            else:
                ch.acc_exp -= e
                whole = ch.acc_exp // MJ_PER_MWH
                self.state.exp[ch.index] += whole
                ch.acc_exp -= whole * MJ_PER_MWH
        ch.last_ms = now

    def _clock(self):
        """ticks_ms now, and the uptime brought up to date (called at least every few seconds,
        far below the half tick period that ticks_diff can span)."""
        now = self.hal.ticks_ms()
        self.up_ms += self.hal.ticks_diff(now, self.up_tick)
        self.up_tick = now
        if self.up_ms >= 1000:
            self.up_s += self.up_ms // 1000
            self.up_ms %= 1000
        return now

    def sample(self):
        for ch in self.channels:
            r = ch.meter.measure()
            now = self._clock()
            if hasattr(r, "irms"):
                ch.i = r.irms
                if r.clipped:
                    ch.clipped = True
                if r.behind:
                    ch.behind = True
                if ch.has_voltage:
                    ch.v, ch.p, ch.s, ch.pf = r.vrms, r.power, r.apparent, r.pf
                else:
                    # no voltage channel: nominal voltage, unit power factor (emonLib calcIrms)
                    ch.v = self.cfg["nominal_v"]
                    ch.p = ch.s = ch.v * ch.i
                    ch.pf = 1.0
                ch.nw += 1
                ch.si2 += ch.i * ch.i
                ch.sv2 += ch.v * ch.v
                ch.sp += ch.p
            else:
                ch.v, ch.i, ch.p, ch.s, ch.pf = r
            self._account(ch, now)
            for rl in self.relays:
                if rl.channel == ch.number and rl.check_current(int(ch.i * 1000), now):
                    self._save_trips(now)

    def _trips(self):
        bits = 0
        for k in range(len(self.relays)):
            if self.relays[k].tripped:
                bits |= 1 << k
        return bits

    def _save_trips(self, now):
        """Keep the lockouts in flash at once: a trip or its acknowledgement is rare, and a reset
        must not switch a relay back into the fault."""
        trips = self._trips()
        if trips != self.state.trips:
            self.state.trips = trips
            self.save(now)

    def _maybe_save(self, now):
        moved = self._total() - self.saved_total
        if moved == 0:
            # Nothing to lose yet: the time limit counts from the first unsaved energy, and the
            # reference stays recent, inside the half tick period ticks_diff can measure.
            self.saved_at = now
        elif moved >= self.cfg["save_wh"] * 1000 or (
            self.hal.ticks_diff(now, self.saved_at) >= self.cfg["save_min"] * 60000
        ):
            self.save(now)

    def save(self, now):
        self.state.save()
        self.saved_at = now
        self.saved_total = self._total()

    # ---- frames --------------------------------------------------------------------------------

    def _means(self, ch):
        """(V, I, P, S, PF) for the frame: CT channels the means over the windows since the last
        frame (rms of V and I, mean P), other meters their last reading."""
        if not ch.nw:
            return ch.v, ch.i, ch.p, ch.s, ch.pf
        v = (ch.sv2 / ch.nw) ** 0.5
        i = (ch.si2 / ch.nw) ** 0.5
        p = ch.sp / ch.nw
        s = v * i
        pf = p / s if s > 0 else 0.0
        return v, i, p, s, (1.0 if pf > 1 else (-1.0 if pf < -1 else pf))

    def reading(self, ch, now):
        flags = 0
        if self.restored_flag:
            flags |= frame.F_COUNTERS_RESTORED
        if not ch.has_voltage:
            flags |= frame.F_NO_VOLTAGE
        if ch.clipped:
            flags |= frame.F_ADC_CLIPPED
        if ch.behind:
            flags |= frame.F_SAMPLING_BEHIND
        if ch.sign_unknown:
            flags |= frame.F_SIGN_UNKNOWN
        v, i, pw, s, pf = self._means(ch)
        bits = 0
        for k in range(len(self.relays)):
            rl = self.relays[k]
            if rl.on:
                bits |= 1 << k
            if rl.trip_seen and rl.channel == ch.number:
                flags |= frame.F_OVERCURRENT_TRIP
        p = {
            "channel": ch.number,
            "uptime_s": self.up_s & 0xFFFFFFFF,
            "voltage_dv": _clamp(int(v * 10 + 0.5), 0, 0xFFFF),
            "current_ma": _clamp(int(i * 1000 + 0.5), 0, 0xFFFFFFFF),
            "power_dw": _clamp(_round(pw * 10), -0x80000000, 0x7FFFFFFF),
            "apparent_dva": _clamp(int(s * 10 + 0.5), 0, 0xFFFFFFFF),
            "pf_milli": _clamp(_round(pf * 1000), -1000, 1000),
            "relays": bits & 0xFF,
            "flags": flags,
            "import_mwh": self.state.imp[ch.index],
            "export_mwh": self.state.exp[ch.index],
        }
        return frame.encode(self.key, frame.T_READING, self.node_id, self.state.next_seq(),
                            frame.pack_reading(p))

    def publish(self, now):
        for ch in self.channels:
            if ch.nw:
                ch.last = self._means(ch)
        out = [self.reading(ch, now) for ch in self.channels]
        self.restored_flag = False
        for ch in self.channels:
            ch.clipped = ch.behind = False
            ch.nw = 0
            ch.si2 = ch.sv2 = ch.sp = 0.0
        for rl in self.relays:
            rl.trip_seen = False
        return out

    # ---- the loop body and commands -----------------------------------------------------------

    def step(self):
        """One pass of the main loop; returns the frames to send now."""
        self.wdt.feed()
        hal = self.hal
        now = self._clock()
        out = []
        if hal.ticks_diff(now, self.next_sample) >= 0:
            self.sample()
            now = self._clock()
            self.next_sample = hal.ticks_add(self.next_sample, self.sample_ms)
            if hal.ticks_diff(self.next_sample, now) <= 0:  # fell behind: no burst to catch up
                self.next_sample = hal.ticks_add(now, self.sample_ms)
        for rl in self.relays:
            rl.tick(now)
        self._maybe_save(now)
        if hal.ticks_diff(now, self.next_publish) >= 0:
            out = self.publish(now)
            self.next_publish = hal.ticks_add(self.next_publish, self.publish_ms)
            if hal.ticks_diff(self.next_publish, now) <= 0:
                self.next_publish = hal.ticks_add(now, self.publish_ms)
        self.wdt.feed()
        return out

    def _drop(self, reason):
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return None

    def command(self, raw):
        """An ACK frame for an authenticated COMMAND addressed to this node; None if dropped.

        Frames that fail the tag, name another node or travel the other way (a READING or ACK
        reflected back) are dropped without an answer (an attacker learns nothing). An authentic
        command whose seq is not newer than the last accepted one (a replay) is dropped too,
        counted as "replay": not executed, not answered (an ACK would burn a sequence number
        and, at a block's end, a flash write), nothing saved.
        """
        try:
            ftype, seq, payload = frame.open_command(self.key, self.node_id, raw,
                                                     self.state.cmd_seq)
            if ftype == frame.T_CALIBRATE:
                cal = frame.unpack_calibrate(payload)
            else:
                index, action = frame.unpack_command(payload)
        except frame.FrameError as e:
            return self._drop(e.args[0])
        if not self.state.accept_command(seq):  # (saved to flash only when accepted)
            return self._drop("replay")
        if ftype == frame.T_CALIBRATE:
            return self._calibrate(seq, cal)
        now = self._clock()
        state = 0
        if index >= len(self.relays):
            status = frame.S_BAD_RELAY
        else:
            rl = self.relays[index]
            status = rl.command(action, now)
            self._save_trips(now)  # an OFF acknowledges a trip
        if index < len(self.relays):
            state = 1 if self.relays[index].on else 0
        ack = frame.pack_ack(seq, index, status, state)
        return frame.encode(self.key, frame.T_ACK, self.node_id, self.state.next_seq(), ack)

    # ---- calibration ---------------------------------------------------------------------------

    def _calibrate(self, seq, cal):
        """Answer an authentic CALIBRATE: new constants for a CT channel, kept in flash."""
        number, mode, a, b, c = cal
        status = self._apply_calibration(number, mode, a, b, c)  # seq accepted by command()
        ack = frame.pack_ack(seq, number, status, 0)
        return frame.encode(self.key, frame.T_ACK, self.node_id, self.state.next_seq(), ack)

    def _apply_calibration(self, number, mode, a, b, c):
        ch = None
        for x in self.channels:
            if x.number == number and x.board is not None:
                ch = x
        if ch is None:
            return frame.S_BAD_CALIBRATION
        if mode == frame.M_CONSTANTS:
            new = (a / 1000000, b / 1000000, c / 1000000)
        else:
            new = self._from_reference(ch, a / 1000, b / 1000, c / 10)
        if new is None or not self._plausible(ch, new):
            return frame.S_BAD_CALIBRATION
        vcal = new[1] if ch.has_voltage else None
        ch.meter.calibrate(new[0], vcal, new[2])
        self.state.cal[ch.index] = (new[0], vcal or 0.0, new[2])
        ch.nw = 0  # the windows since the last frame were read with the old constants
        ch.si2 = ch.sv2 = ch.sp = 0.0
        ch.last = None
        self.save(self._clock())
        return frame.S_OK

    def _constants(self, ch):
        c = self.state.cal[ch.index]
        if c is None:
            return ch.board
        return (c[0], c[1] if ch.has_voltage else ch.board[1], c[2])

    def _from_reference(self, ch, v_true, i_true, p_true):
        """Constants that make the last frame's reading of the known load on ch read v_true V,
        i_true A, p_true W (Tasmota's VoltageSet, CurrentSet, PowerSet; 0: not given)."""
        got = ch.last if ch.nw == 0 else self._means(ch)
        if got is None:
            return None
        v, i, p, s, _pf = got
        ical, vcal, phase = self._constants(ch)
        gv = 1.0
        if v_true and ch.has_voltage:
            if v <= 0:
                return None
            gv = v_true / v
            vcal *= gv
        if i_true:
            if i <= 0:
                return None
            ical *= i_true / i
        elif p_true:
            # the power alone scales the current's constant (the voltage's, if given, first)
            if p * gv == 0 or (p_true > 0) != (p > 0):
                return None
            ical *= p_true / (p * gv)
        if p_true and i_true and v_true and ch.has_voltage and s > 0:
            # a reactive (inductive) known load: the angle the node saw against the true one
            pf_true = p_true / (v_true * i_true)
            if -0.9 < pf_true < 0.9:
                pf = p / s
                pf = 1.0 if pf > 1 else (-1.0 if pf < -1 else pf)
                phase += (math.acos(pf) - math.acos(pf_true)) * 180 / math.pi
        return ical, vcal, phase

    def _plausible(self, ch, new):
        ical, vcal, phase = ch.board
        if not CAL_MIN * ical <= new[0] <= CAL_MAX * ical:
            return False
        if ch.has_voltage and not CAL_MIN * vcal <= new[1] <= CAL_MAX * vcal:
            return False
        return -config.MAX_PHASE_DEG <= new[2] <= config.MAX_PHASE_DEG

    def sensor(self):
        """Tasmota-style SENSOR payload of the first channel (unauthenticated, for people)."""
        ch = self.channels[0]
        return {
            "ENERGY": {
                "Total": self.state.imp[ch.index] / 1000000,
                "Export": self.state.exp[ch.index] / 1000000,
                "Power": round(ch.p),
                "ApparentPower": round(ch.s),
                "Factor": round(ch.pf, 2),
                "Voltage": round(ch.v),
                "Current": round(ch.i, 3),
            }
        }


def _round(x):
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


def _clamp(x, lo, hi):
    return lo if x < lo else (hi if x > hi else x)
