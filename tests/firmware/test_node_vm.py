"""The node's loop body on the real MicroPython VM, driven by the emulated HAL's clock."""

from __future__ import annotations

import itertools
import json

from firmware import frame
from tests.firmware import nodeutil
from tools import mpvm

SETUP = """
import json, hal_host as hal, host_node
PROFILE = json.loads(PROFILE_JSON)
hal.reset(START_MS)
h = host_node.Host('/flash', PROFILE)
"""
# Run until t_s in ticks of 1 s, then hand over the commands. One VM call per 10 s of simulated
# time: this VM frees garbage only between calls.
ADVANCE = """
end = min(T_S * 1000, hal.elapsed_ms() + 10000)
while hal.elapsed_ms() < end:
    h.tick(1000)
    if hal.wdt_expired():
        emit({'wdt_expired': hal.elapsed_ms()})
"""
REPORT = """
h.tick(0, CMDS)
emit({'t': hal.elapsed_ms(), 'ticks': hal.ticks_ms(),
      'pins': {str(k): v for k, v in hal.pins.items()},
      'writes': h.node.state.writes, 'dropped': h.node.dropped})
"""
REBOOT = """
hal.reset()
h = host_node.Host('/flash', PROFILE)
h.tick(6000)
emit({'restored': h.node.state.restored})
"""


def _run(board: str, profile: dict, script: list, reboot_after: bool = False, start_ms: int = 0,
         **cfg: object):
    """Frames and reports of a node run; start_ms is what ticks_ms shows at boot."""
    files = nodeutil.node_files(board, **cfg)
    calls = [f"PROFILE_JSON = {json.dumps(json.dumps(profile))}\nSTART_MS = {start_ms}\n" + SETUP]
    t = 0
    for t_s, cmds in script:
        while t < t_s:
            calls.append(f"T_S = {t_s}\n" + ADVANCE)
            t = min(t_s, t + 10)
        calls.append(f"CMDS = {cmds!r}\n" + REPORT)
    if reboot_after:
        calls.append(REBOOT)
    res = mpvm.run_job(calls, files=files)
    return nodeutil.decode_all(res.output), res.results


def test_readings_counters_and_sequence() -> None:
    # 10 A at PF 0.8 import on channel 0 (2300 V*A, 1840 W) and 4 A on the current-only channel
    profile = {"vrms": 230, "load": [[0, 10.0, 0.8]], "channels": {"1": [[0, 4.0, 1.0]]}}
    frames, results = _run("esp32_devkitc_ct", profile, [(300, [])], reboot_after=True)
    assert not any("wdt_expired" in r for r in results)
    readings = [f for f in frames if f[0] == frame.T_READING]
    seqs = [f[2] for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # across the reboot too
    assert all(f[1] == 7 for f in frames)
    ch0 = [f[3] for f in readings if f[3]["channel"] == 0]
    ch1 = [f[3] for f in readings if f[3]["channel"] == 1]
    assert len(ch0) >= 60  # every 5 s for 300 s, and once after the reboot
    r = ch0[-2]  # last before the reboot
    assert abs(r["current_ma"] - 10000) <= 100
    assert abs(r["voltage_dv"] - 2300) <= 23
    assert abs(r["power_dw"] - 18400) <= 0.01 * 23000
    assert abs(r["pf_milli"] - 800) <= 10
    assert r["flags"] & frame.F_NO_VOLTAGE == 0
    # energy: 1840 W over the uptime of the last frame
    want = 1840 * r["uptime_s"] / 3.6
    assert abs(r["import_mwh"] - want) <= 0.015 * want + 1840 / 3.6, (r["import_mwh"], want)
    assert r["export_mwh"] == 0
    c1 = ch1[-2]
    assert c1["flags"] & frame.F_NO_VOLTAGE
    assert abs(c1["current_ma"] - 4000) <= 40
    assert c1["voltage_dv"] == 2300  # nominal
    # after the reboot: counters restored from flash (at most save_wh = 50 Wh lost), flag set
    after = ch0[-1]
    assert after["flags"] & frame.F_COUNTERS_RESTORED
    assert r["import_mwh"] - 50_000 <= after["import_mwh"] <= r["import_mwh"]
    assert results[-1] == {"restored": True}
    # flash spared: 1840 W for 300 s = 153 Wh -> about 3 counter saves, + sequence blocks
    writes = results[-2]["writes"]
    assert 1 <= writes <= 3 + 2 + len(frames) // 256 + 1


def test_export_is_counted_separately() -> None:
    profile = {"vrms": 230, "load": [[0, 8.0, -1.0]], "channels": {"1": [[0, 0.0, 1.0]]}}
    frames, _ = _run("esp32_devkitc_ct", profile, [(60, [])])
    r = [f[3] for f in frames if f[0] == frame.T_READING and f[3]["channel"] == 0][-1]
    assert r["power_dw"] < -18000
    assert r["import_mwh"] == 0
    want = 1840 * r["uptime_s"] / 3.6
    assert abs(r["export_mwh"] - want) <= 0.015 * want + 1840 / 3.6


def test_current_beyond_the_range_is_flagged_clipped() -> None:
    # The board's clamps are rated 30 A, with headroom for peaky currents up to about 40 A of a
    # sine: 50 A cuts the peaks off at the ADC, so the reading is low and its frames say so; back
    # at 10 A the next frame is clean again.
    profile = {"vrms": 230, "load": [[0, 10.0, 1.0], [20, 50.0, 1.0], [40, 10.0, 1.0]],
               "channels": {"1": [[0, 29.0, 1.0]]}}
    frames, _ = _run("esp32_devkitc_ct", profile, [(60, [])])
    readings = [(f[3]["uptime_s"], f[3]) for f in frames if f[0] == frame.T_READING]
    ch0 = [(t, r) for t, r in readings if r["channel"] == 0]
    clipped = [t for t, r in ch0 if r["flags"] & frame.F_ADC_CLIPPED]
    assert clipped and min(clipped) >= 20 and max(clipped) <= 45, clipped
    over = [r for t, r in ch0 if 25 <= t < 40]
    assert over and all(r["flags"] & frame.F_ADC_CLIPPED for r in over)
    assert all(r["current_ma"] < 49000 for r in over)  # low, as the ADC saw it
    assert not any(r["flags"] & frame.F_ADC_CLIPPED for t, r in ch0 if t < 20 or t >= 50)
    # 29 A on the other clamp is inside its range: never flagged, read to 1 %
    ch1 = [r for t, r in readings if r["channel"] == 1 and t >= 5]
    assert not any(r["flags"] & frame.F_ADC_CLIPPED for r in ch1)
    assert abs(ch1[-1]["current_ma"] - 29000) <= 290


def test_relay_commands_authenticated_with_min_times_and_replay() -> None:
    cmd = nodeutil.command
    on0 = cmd(1, 0, frame.A_ON)
    wrong_key = cmd(2, 0, frame.A_ON, key=b"x" * 32)
    other_node = cmd(3, 0, frame.A_ON, node_id=8)
    script = [
        (5, [on0]),  # boot counts as a switch: min off 60 s -> refused, done at expiry
        (61, []),
        (70, [on0, wrong_key, other_node]),  # replay and forgeries: dropped, unanswered
        (80, [cmd(4, 0, frame.A_OFF)]),  # min on 60 s not elapsed since t=60
        (125, [cmd(5, 1, frame.A_TOGGLE), cmd(6, 9, frame.A_ON)]),
        (126, ["00ff", "zz"]),
    ]
    frames, results = _run("esp32_devkitc_ct", {"load": [[0, 1.0, 1.0]]}, script)
    acks = [f[3] for f in frames if f[0] == frame.T_ACK]
    assert acks == [
        (1, 0, frame.S_MIN_TIME, 0),
        (4, 0, frame.S_MIN_TIME, 1),
        (5, 1, frame.S_OK, 1),
        (6, 9, frame.S_BAD_RELAY, 0),
    ]
    pins = [r["pins"] for r in results if "pins" in r]
    # relay board is active low: pin 1 = off
    assert pins[0]["26"] == 1 and pins[0]["27"] == 1  # safe state at boot
    assert pins[1]["26"] == 0  # switched on at the end of the minimum off time
    assert pins[4]["26"] == 1  # the deferred OFF happened at t = 120 s
    assert pins[4]["27"] == 0
    assert results[-1]["dropped"] == {"replay": 1, "tag": 1, "node": 1, "short": 1}


def test_over_current_trip_locks_out_until_acknowledged() -> None:
    cmd = nodeutil.command
    # channel 0 draws 5 A, then 20 A from t = 100 s (relay 0 trips at 16 A)
    profile = {"load": [[0, 5.0, 1.0], [100, 20.0, 1.0]], "channels": {"1": [[0, 0.0, 1.0]]}}
    script = [
        (61, [cmd(1, 0, frame.A_ON)]),
        (110, [cmd(2, 0, frame.A_ON)]),  # locked out
        (111, [cmd(3, 0, frame.A_OFF)]),  # acknowledges the trip
        (180, [cmd(4, 0, frame.A_ON)]),  # min off elapsed since the trip: on again, trips again
        (190, []),
    ]
    frames, results = _run("esp32_devkitc_ct", profile, script)
    acks = [f[3] for f in frames if f[0] == frame.T_ACK]
    assert [a[2] for a in acks] == [frame.S_OK, frame.S_TRIPPED, frame.S_OK, frame.S_OK]
    tripped = [f[3] for f in frames if f[0] == frame.T_READING and f[3]["flags"] & 2]
    assert tripped and all(t["channel"] == 0 for t in tripped)
    assert 100 <= tripped[0]["uptime_s"] <= 106
    assert results[-1]["pins"]["26"] == 1


def test_plug_boards_meter_through_their_chips() -> None:
    for board in ("plug_hlw8012", "plug_cse7766", "esp32_pzem004t"):
        frames, _ = _run(board, {"vrms": 230, "load": [[0, 4.0, 0.9]]}, [(30, [])])
        r = [f[3] for f in frames if f[0] == frame.T_READING][-1]
        assert abs(r["power_dw"] - 8280) <= 0.02 * 8280, (board, r)
        assert abs(r["voltage_dv"] - 2300) <= 0.02 * 2300, (board, r)
        assert abs(r["current_ma"] - 4000) <= 0.02 * 4000, (board, r)
        want = 828 * r["uptime_s"] / 3.6
        assert abs(r["import_mwh"] - want) <= 0.03 * want + 828 / 3.6 * 2, (board, r)
        # the PZEM-004T reports unsigned power: its frames say the sign is unknown
        assert bool(r["flags"] & frame.F_SIGN_UNKNOWN) == (board == "esp32_pzem004t"), board


def test_power_cut_while_running_loses_at_most_save_wh_and_never_reuses_a_seq() -> None:
    # The node runs at 2.3 kW; the power fails inside its k-th flash write; it reboots.
    files = nodeutil.node_files("plug_hlw8012", save_wh=5, seq_block=8, publish_s=1)
    results = []
    for cut in (3, 40, 77, 150, 221, 300):
        calls = [
            "import os, hal_host as hal, host_node\n"
            f"hal.power_cut_after[0] = {cut}\n"
            "h = host_node.Host('/flash', {'vrms': 230, 'load': [[0, 10.0, 1.0]]})\n"
            "cut = False\n",
            "for k in range(40):\n"
            "    try:\n"
            "        h.tick(1000)\n"
            "    except hal.PowerCut:\n"
            "        cut = True\n"
            "        break\n",
            "hal.power_cut_after[0] = None\nhal.reset()\n"
            "h = host_node.Host('/flash', {'vrms': 230, 'load': [[0, 10.0, 1.0]]})\n"
            "print('REBOOT')\nh.tick(2000)\nemit({'cut': cut})\n",
        ]
        res = mpvm.run_job(calls, files=files)
        before = res.output[: res.output.index("REBOOT")]
        after = res.output[res.output.index("REBOOT") + 1 :]
        results.append((nodeutil.decode_all(before), nodeutil.decode_all(after), res.results))
    for before, after, rep in results:
        assert rep == [{"cut": True}]
        assert after
        if not before:  # the power failed in the very first write, before any frame went out
            continue
        assert after[0][2] > max(f[2] for f in before)  # no sequence number reused
        last = before[-1][3]["import_mwh"]
        first = after[0][3]
        assert first["flags"] & frame.F_COUNTERS_RESTORED or last < 5000
        assert last - 5000 - 2300 / 3.6 <= first["import_mwh"] <= last + 2300 / 3.6 * 2


TICKS_PERIOD = 1 << 30  # ticks_ms wraps here on the ESP32 (about 12.4 days)


def test_metering_publishing_and_deferred_switching_continue_across_the_ticks_wrap() -> None:
    # The node boots 30 s before ticks_ms wraps, as after 12.4 days of uptime. Relay 0 has a
    # minimum off time of 60 s from boot, so an ON at 5 s is deferred across the wrap (to 60 s),
    # and the OFF at 100 s waits for the minimum on time, entirely after the wrap (to 120 s).
    cmd = nodeutil.command
    profile = {"vrms": 230, "load": [[0, 10.0, 0.8]], "channels": {"1": [[0, 4.0, 1.0]]}}
    start = TICKS_PERIOD - 30_000
    script = [
        (5, [cmd(1, 0, frame.A_ON)]),
        (59, []),
        (62, []),
        (100, [cmd(2, 0, frame.A_OFF)]),
        (119, []),
        (122, []),
        (600, []),
    ]
    frames, results = _run("esp32_devkitc_ct", profile, script, start_ms=start)
    assert not any("wdt_expired" in r for r in results)
    reports = [r for r in results if "pins" in r]
    assert [r["ticks"] < start for r in reports] == [False] + [True] * 6  # wrapped at 30 s
    acks = [f[3] for f in frames if f[0] == frame.T_ACK]
    assert acks == [(1, 0, frame.S_MIN_TIME, 0), (2, 0, frame.S_MIN_TIME, 1)]
    # relay board is active low: 0 = on
    assert [r["pins"]["26"] for r in reports] == [1, 1, 0, 0, 0, 1, 1]
    ch0 = [f[3] for f in frames if f[0] == frame.T_READING and f[3]["channel"] == 0]
    # a frame every 5 s all along, with an uptime that keeps counting past the wrap
    ups = [r["uptime_s"] for r in ch0]
    assert len(ch0) == 120, ups
    assert all(b - a == 5 for a, b in itertools.pairwise(ups)), ups
    assert start // 1000 + 5 <= ups[0] <= start // 1000 + 6  # + the first sampling window
    # still sampling after the wrap: current follows the load, energy grows at 1840 W
    last = ch0[-1]
    assert abs(last["current_ma"] - 10000) <= 100
    assert abs(last["power_dw"] - 18400) <= 0.01 * 23000
    want = 1840 * 600 / 3.6
    assert abs(last["import_mwh"] - want) <= 0.015 * want + 1840 / 3.6, (last, want)
    mid = ch0[59]  # about 300 s after boot, 270 s after the wrap
    want_mid = 1840 * (mid["uptime_s"] - start / 1000) / 3.6
    assert abs(mid["import_mwh"] - want_mid) <= 0.015 * want_mid + 1840 / 3.6
    # counters were saved after the wrap as well (50 Wh steps: 306 Wh -> at least 6 saves)
    assert reports[-1]["writes"] >= 6


def test_plug_reads_and_counts_a_standby_load() -> None:
    # 10 W on the HLW8012 plug is 0.8 CF edges a second: most 1-s windows hold one edge or none
    frames, _ = _run("plug_hlw8012", {"vrms": 230, "load": [[0, 10.0 / 230, 1.0]]}, [(120, [])])
    readings = [f[3] for f in frames if f[0] == frame.T_READING]
    r = readings[-1]
    assert abs(r["power_dw"] - 100) <= 2, r
    assert all(abs(x["power_dw"] - 100) <= 2 for x in readings[2:]), readings
    want = 10 * r["uptime_s"] / 3.6
    assert abs(r["import_mwh"] - want) <= 0.03 * want + 10 / 3.6 * 3, (r, want)


LOCKOUT = """
import hal_host as hal, host_node, json
PROFILE = {'load': [[0, 5.0, 1.0], [20, 20.0, 1.0]], 'channels': {'1': [[0, 0.0, 1.0]]}}
def pins(tag):
    emit({'tag': tag, 'relay0': hal.pins[26], 'relay1': hal.pins[27]})
hal.reset()
h = host_node.Host('/flash', PROFILE)
pins('boot')
for k in range(30):
    h.tick(1000)
pins('tripped')
# a watchdog or power reset; the faulty load has been unplugged meanwhile, but nobody has
# acknowledged the trip yet
FIXED = {'load': [[0, 5.0, 1.0]], 'channels': {'1': [[0, 0.0, 1.0]]}}
hal.reset()
h = host_node.Host('/flash', FIXED)
pins('reboot')
h.tick(1000, [CMD_ON_2])
pins('on_refused')
h.tick(1000, [CMD_OFF_3])
for k in range(61):
    h.tick(1000)
h.tick(1000, [CMD_ON_4])
pins('on_after_ack')
hal.reset()
h = host_node.Host('/flash', FIXED)
pins('reboot_after_ack')
"""


def test_over_current_lockout_survives_a_reset() -> None:
    # relay 0 switches on at boot (boot_on) and trips when channel 0 draws 20 A from t = 20 s
    b = nodeutil.board("esp32_devkitc_ct")
    b["relays"][0]["boot_on"] = True
    files = nodeutil.node_files("esp32_devkitc_ct", board=b)
    cmds = {"CMD_ON_2": nodeutil.command(2, 0, frame.A_ON),
            "CMD_OFF_3": nodeutil.command(3, 0, frame.A_OFF),
            "CMD_ON_4": nodeutil.command(4, 0, frame.A_ON)}
    head = "".join(f"{k} = {v!r}\n" for k, v in cmds.items())
    res = mpvm.run_job(head + LOCKOUT, files=files)
    pins = {r["tag"]: r["relay0"] for r in res.results}
    # active low: 0 = on
    assert pins == {"boot": 0, "tripped": 1, "reboot": 1, "on_refused": 1, "on_after_ack": 0,
                    "reboot_after_ack": 0}
    acks = [f[3] for f in nodeutil.decode_all(res.output) if f[0] == frame.T_ACK]
    assert acks == [(2, 0, frame.S_TRIPPED, 0), (3, 0, frame.S_OK, 0), (4, 0, frame.S_OK, 1)]


IDLE_HOUR = """
import hal_host as hal, host_node
hal.reset()
h = host_node.Host('/flash', {'vrms': 230, 'load': [[0, 0.0, 1.0]]})
"""
IDLE_STEP = """
for k in range(600):
    h.tick(1000)
"""
IDLE_REPORT = """
st = h.node.state
emit({'imp': list(st.imp), 'exp': list(st.exp), 't': hal.elapsed_ms()})
"""


def test_an_idle_node_books_nothing() -> None:
    """No load on either clamp for 20 minutes (noise and quantisation on the ADC, as on a board): no
    energy at all. Before the starting current, the current-only channel booked 10-19 W of noise
    (240-460 Wh a day: the demo's water heater read 4.80 kWh against 4.50 kWh switched)."""
    files = nodeutil.node_files("esp32_devkitc_ct")
    res = mpvm.run_job([IDLE_HOUR] + [IDLE_STEP] * 2 + [IDLE_REPORT], files=files).results[-1]
    assert res["t"] >= 1200_000
    assert res["imp"] == [0, 0] and res["exp"] == [0, 0], res


BEHIND = """
import hal_host as hal, host_node
hal.reset()
h = host_node.Host('/flash', {'vrms': 230, 'load': [[0, 5.0, 1.0]]})
h.tick(12000)
hal.adc_read_us[0] = SLOW_READ_US  # from now on a pass of the loop outlasts the period
h.tick(12000)
hal.adc_read_us[0] = 40
h.tick(12000)
"""


def test_a_window_whose_loop_fell_behind_is_flagged_in_the_frame() -> None:
    files = nodeutil.node_files("esp32_devkitc_ct")
    res = mpvm.run_job("SLOW_READ_US = 300\n" + BEHIND, files=files)
    readings = [f[3] for f in nodeutil.decode_all(res.output) if f[0] == frame.T_READING]
    flagged = [r["uptime_s"] for r in readings if r["flags"] & frame.F_SAMPLING_BEHIND]
    assert flagged and min(flagged) > 12 and max(flagged) <= 30, flagged
    # the channel without voltage reads one ADC per sample: it keeps up even at 300 us a read
    assert all(r["channel"] == 0 for r in readings if r["flags"] & frame.F_SAMPLING_BEHIND)
    assert not any(r["flags"] & frame.F_SAMPLING_BEHIND for r in readings
                   if r["uptime_s"] <= 10 or r["uptime_s"] > 30)


REPLAY = """
import json, hal_host as hal, host_node
writes = [0]
_write = hal.write_file
def counting(path, data):
    writes[0] += 1
    _write(path, data)
hal.write_file = counting
hal.reset()
h = host_node.Host('/flash', {"load": [[0, 1.0, 1.0]]})
h.tick(5000)
first = h.node.command(bytes.fromhex(CMD))
w0, seq0 = writes[0], h.node.state.seq
again = [h.node.command(bytes.fromhex(CMD)) for k in range(300)]
reflected = h.node.command(first)  # the node's own ACK sent back to it
emit({'first': first is not None, 'again': [a is None for a in again], 'writes': writes[0] - w0,
      'seq': h.node.state.seq - seq0, 'dropped': h.node.dropped,
      'reflected': reflected is None})
"""


def test_a_replayed_command_is_not_executed_answered_or_written_to_flash() -> None:
    """Issue 19, finding 4, on the MicroPython VM: a replayed command used to be ACKed
    (S_REPLAY), burning a sequence number each time and, at each block's end, a flash write.
    Now it is dropped and counted; so is the node's own ACK reflected back at it."""
    cmd = nodeutil.command(5, 0, frame.A_ON)
    out = mpvm.run_job([f"CMD = {cmd!r}\n" + REPLAY],
                       files=nodeutil.node_files("esp32_devkitc_ct", seq_block=16)).results[0]
    assert out["first"] is True  # the command itself: answered
    assert all(out["again"]) and out["reflected"] is True
    assert out["writes"] == 0 and out["seq"] == 0  # no flash write, no sequence number burnt
    assert out["dropped"] == {"replay": 300, "direction": 1}
