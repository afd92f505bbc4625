"""The configured calibrations' state machine (``gateway/calibrator.py``), sans-IO: when a fit is
sent, what is kept, what a restart skips, the bounds, retries, and the memory a session holds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from firmware import frame
from gateway.calibration import Session
from gateway.calibrator import (
    APPLIED,
    COLLECTING,
    FITTED,
    REFUSED,
    SENDING,
    Calibrator,
    Save,
    SendCalibration,
    store_key,
)
from gateway.config import CalibrationConfig
from gateway.store import Store
from tests.gateway.conftest import free_port, write_gateway_config, write_keystore
from tools.cli import main

T0 = 1_800_000_000_000 - 1_800_000_000_000 % 60_000
CFG = CalibrationConfig(node_id=7, channel=0, reference="home", voltage="voltage", ical=50.0,
                        vcal=500.0, phase_deg=0.0, points=4, interval_s=60, apply=True)
LOADS = [1000.0, 2500.0, 4000.0, 1800.0, 3200.0]


def feed(session: Session, minute: int, ref_w: float, gain: float = 0.95) -> None:
    """One minute of a resistive load: the node reads ``gain`` of the reference's voltage and of
    its current (twelve readings of each side)."""
    for k in range(12):
        t = T0 + minute * 60_000 + k * 5_000
        session.meter_reading("home", t, {"voltage": 230.0}, ref_w)
        session.node_frame(t, {"channel": 0, "flags": 0, "voltage_dv": round(2300 * gain),
                               "power_dw": round(ref_w * 10 * gain * gain),
                               "apparent_dva": round(ref_w * 10 * gain * gain)})


def collect(cal: Calibrator, minutes: int, gain: float = 0.95) -> int:
    (session,) = cal.feed
    for m in range(minutes):
        feed(session, m, LOADS[m % len(LOADS)], gain)
    return T0 + minutes * 60_000


def test_a_fit_within_bounds_is_sent_and_the_ack_kept() -> None:
    feed_list: list[Session] = []
    cal = Calibrator((CFG,), {}, feed_list)
    assert len(feed_list) == 1 and cal.status()["7.0"]["state"] == COLLECTING
    now = collect(cal, 3)
    assert cal.due(now) == []  # 3 intervals of 4
    now = collect(cal, 4)
    (send,) = cal.due(now)
    assert isinstance(send, SendCalibration) and send.node_id == 7 and send.key == store_key(7, 0)
    assert frame.unpack_calibrate(send.payload)[:2] == (0, frame.M_CONSTANTS)
    assert cal.status()["7.0"]["state"] == SENDING and cal.due(now + 1) == []
    save = cal.sent(send.key, frame.S_OK, now + 2)
    assert save.record["state"] == APPLIED and save.record["round"] == 1
    assert save.record["ical"] == pytest.approx(50.0 / 0.95, rel=1e-3)
    assert save.record["vcal"] == pytest.approx(500.0 / 0.95, rel=1e-3)
    assert feed_list == []  # no longer fed
    assert cal.status()["7.0"]["record"]["status"] == frame.S_OK


def test_a_kept_record_is_not_calibrated_again_unless_the_round_is_raised() -> None:
    record: dict[str, Any] = {"round": 1, "state": APPLIED, "ical": 52.0, "vcal": 520.0,
                              "phase_deg": 1.0}
    feed_list: list[Session] = []
    cal = Calibrator((CFG,), {store_key(7, 0): record}, feed_list)
    assert feed_list == [] and cal.status()["7.0"]["state"] == APPLIED
    assert cal.due(T0 + 10**9) == []
    cal = Calibrator((replace(CFG, round=2),), {store_key(7, 0): record}, feed_list)
    (session,) = feed_list
    assert (session.constants.ical, session.constants.vcal) == (52.0, 520.0)  # what it reads with
    # a refusal is kept as well; a fit only shown (apply = false) is redone once apply is set
    refused = {**record, "state": REFUSED}
    assert Calibrator((CFG,), {store_key(7, 0): refused}, []).status()["7.0"]["state"] == REFUSED
    fitted = {**record, "state": FITTED}
    shown: list[Session] = []
    Calibrator((replace(CFG, apply=False),), {store_key(7, 0): fitted}, shown)
    assert shown == []
    Calibrator((CFG,), {store_key(7, 0): fitted}, shown)
    assert len(shown) == 1


def test_without_apply_the_fit_is_kept_not_sent() -> None:
    feed_list: list[Session] = []
    cal = Calibrator((replace(CFG, apply=False),), {}, feed_list)
    now = collect(cal, 5)
    (save,) = cal.due(now)
    assert isinstance(save, Save) and save.record["state"] == FITTED and feed_list == []


def test_a_fit_out_of_bounds_is_not_sent() -> None:
    cal = Calibrator((replace(CFG, max_gain_change=0.02),), {}, [])
    now = collect(cal, 5, gain=0.9)
    assert cal.due(now) == []
    assert "max_gain_change" in cal.status()["7.0"]["error"]
    assert cal.status()["7.0"]["state"] == COLLECTING


def test_a_refusal_is_kept_and_a_lost_command_sent_again() -> None:
    cal = Calibrator((CFG,), {}, [])
    now = collect(cal, 5)
    (send,) = cal.due(now)
    assert isinstance(send, SendCalibration)
    cal.send_failed(send.key, "no ack")
    assert cal.due(now + 59_000) == []
    (again,) = cal.due(now + 60_000)
    # the constants are absolute: sending them twice is harmless
    assert isinstance(again, SendCalibration) and again.payload == send.payload
    assert cal.sent(send.key, frame.S_BAD_CALIBRATION, now + 61_000).record["state"] == REFUSED
    assert cal.due(now + 10**8) == []


def test_a_session_whose_loads_never_vary_holds_bounded_memory() -> None:
    cal = Calibrator((CFG,), {}, [])
    (session,) = cal.feed
    for m in range(500):
        feed(session, m, 2000.0)
        cal.due(T0 + (m + 1) * 60_000)
    assert len(session.collector.pairs()) <= 8 * CFG.points
    assert "do not differ" in cal.status()["7.0"]["error"]


@pytest.mark.parametrize("record", [
    None, 3, [], {}, {"state": "applied"}, {"round": 1, "state": "done", "ical": 1.0,
                                            "vcal": 1.0, "phase_deg": 0.0},
    {"round": "1", "state": APPLIED, "ical": 1.0, "vcal": 1.0, "phase_deg": 0.0},
    {"round": 1, "state": APPLIED, "ical": "x", "vcal": 1.0, "phase_deg": 0.0},
    {"round": 1, "state": APPLIED, "ical": float("nan"), "vcal": 1.0, "phase_deg": 0.0},
    {"round": 1, "state": APPLIED, "ical": 10**400, "vcal": 1.0, "phase_deg": 0.0},
    {"round": True, "state": APPLIED, "ical": 1.0, "vcal": 1.0, "phase_deg": 0.0},
])  # fmt: skip
def test_a_mangled_record_is_left_aside(record: Any) -> None:
    feed_list: list[Session] = []
    cal = Calibrator((CFG,), {store_key(7, 0): record} if record is not None else {}, feed_list)
    assert len(feed_list) == 1 and cal.status()["7.0"]["state"] == COLLECTING
    assert feed_list[0].constants.ical == CFG.ical


def test_check_shows_what_the_store_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_keystore(tmp_path, {"7": {"key": "ab" * 32, "transport": "mqtt"}})
    cfg = write_gateway_config(
        tmp_path,
        f"""[mqtt]
port = {free_port()}
[[mqtt.nodes]]
node_id = 7
[[modbus.buses]]
name = "b"
tcp = "127.0.0.1:{free_port()}"
meters = [{{meter_id = "home", model = "sdm120", unit = 1}}]
[[calibration]]
node_id = 7
reference = "home"
ical = 50.0
vcal = 500.0
apply = true
""")  # fmt: skip
    check = ["gateway", "check", "--config", str(cfg), "--timeout", "0.3"]
    assert main(check) == 1  # nothing answers: only what it says of the calibration matters
    assert ("calibration: node 7 channel 0 against home: will calibrate and apply, round 1"
            in capsys.readouterr().out)
    (tmp_path / "data").mkdir()
    store = Store(tmp_path / "data" / "gateway.db")
    store.put_state(store_key(7, 0), {"round": 1, "state": APPLIED, "ical": 48.5, "vcal": 510.0,
                                      "phase_deg": -1.5, "status": 0})
    store.close()
    main(check)
    out = capsys.readouterr().out
    assert "against home: applied in round 1: ical 48.5000, vcal 510.000, phase -1.50" in out
    main([*check, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["calibration"]["7.0"]["state"] == APPLIED
    assert doc["calibration"]["7.0"]["record"]["ical"] == 48.5


def test_a_channel_without_voltage_says_why_it_never_fits() -> None:
    cal = Calibrator((CFG,), {}, [])
    (session,) = cal.feed
    for k in range(60):
        session.node_frame(T0 + k * 5_000, {"channel": 0, "flags": frame.F_NO_VOLTAGE,
                                            "voltage_dv": 2300, "power_dw": 1000,
                                            "apparent_dva": 1000})
    assert cal.due(T0 + 300_000) == []
    assert "no voltage" in cal.status()["7.0"]["error"]


def test_a_command_out_for_long_holds_bounded_memory() -> None:
    cal = Calibrator((CFG,), {}, [])
    now = collect(cal, 5)
    (send,) = cal.due(now)
    cal.send_failed(send.key, "no source reaches it")
    (session,) = cal.feed
    for m in range(5, 400):  # the node is away; the reference keeps being read
        for k in range(12):
            session.meter_reading("home", T0 + m * 60_000 + k * 5_000, {"voltage": 230.0}, 900.0)
        cal.due(T0 + (m + 1) * 60_000)
    assert len(session.collector._bins) <= 8 * CFG.points + 1
