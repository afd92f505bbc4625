"""Config and key files on the MicroPython VM: bad files get an error that names the key."""

from __future__ import annotations

import json

from tests.firmware import nodeutil
from tools import mpvm


def _cfg(**over: object) -> dict:
    cfg: dict = {"node_id": 7, "link": "ble", "board": nodeutil.board("esp32_devkitc_ct")}
    cfg.update(over)
    return cfg


def _board(**over: object) -> dict:
    b = nodeutil.board("esp32_devkitc_ct")
    b.update(over)
    return b


BAD = {
    "not_json": ("{node_id: 7", "not valid JSON"),
    "list": ("[1, 2]", "config: expected an object"),
    "no_id": (json.dumps({"board": {}}), "node_id: missing"),
    "id_range": (json.dumps(_cfg(node_id=70000)), "node_id: 0..65535"),
    "id_bool": (json.dumps(_cfg(node_id=True)), "node_id: expected an integer"),
    "link": (json.dumps(_cfg(link="lora")), "link: one of"),
    "mqtt_missing": (json.dumps(_cfg(link="mqtt")), "mqtt: missing"),
    "mqtt_port": (
        json.dumps(_cfg(link="mqtt", mqtt={"host": "h", "port": 0}, wifi={"ssid": "s"})),
        "mqtt.port: 1..65535",
    ),
    "publish": (json.dumps(_cfg(publish_s=-5)), "publish_s: 1..3600"),
    "mains_tiny": (json.dumps(_cfg(mains_hz=1e-300)), "mains_hz: 45..65"),
    "mains_low": (json.dumps(_cfg(mains_hz=0.001)), "mains_hz: 45..65"),
    "mains_inf": ('{"node_id": 7, "mains_hz": 1e400}', "mains_hz: expected a finite number"),
    "rate_tiny": (json.dumps(_cfg(board=_board(sample_rate_hz=1e-300))),
                  "board.sample_rate_hz: 1000..4000"),
    # issue 20: rates the board's ADC loop cannot reach, windows too short to be accurate, and
    # the assumed read lag's PHASECAL are refused, each naming its key
    "rate_unreachable": (json.dumps(_cfg(board=_board(sample_rate_hz=20000))),
                         "board.sample_rate_hz: 1000..4000 (the rate this board's ADC loop"),
    "rate_board_max": (json.dumps(_cfg(board=_board(max_sample_rate_hz=50000))),
                       "board.max_sample_rate_hz: 1000..20000"),
    "one_cycle": (json.dumps(_cfg(board=_board(cycles=1))), "board.cycles: 5..100"),
    "short_window": (json.dumps(_cfg(board=_board(sample_rate_hz=1000, cycles=5))),
                     "board.cycles: a window of 100 samples, at least 200"),
    "phasecal": (
        json.dumps(_cfg(board=_board(meters=[{"channel": 0, "type": "ct", "adc_pin": 36,
                                              "ical": 30, "v_pin": 39, "vcal": 500,
                                              "phasecal": 1.08}], relays=[]))),
        "board.meters[0].phasecal: replaced by phase_deg",
    ),
    "phase_deg": (
        json.dumps(_cfg(board=_board(meters=[{"channel": 0, "type": "ct", "adc_pin": 36,
                                              "ical": 30, "v_pin": 39, "vcal": 500,
                                              "phase_deg": 45}], relays=[]))),
        "board.meters[0].phase_deg: -20..20",
    ),
    "start_a": (
        json.dumps(_cfg(board=_board(meters=[{"channel": 0, "type": "ct", "adc_pin": 36,
                                              "ical": 30, "range_a": 30, "start_a": 31}],
                                     relays=[]))),
        "board.meters[0].start_a: 0..30",
    ),
    "window": (json.dumps(_cfg(board=_board(max_sample_rate_hz=20000, sample_rate_hz=20000,
                                            cycles=50))),
               "board.cycles: a window of"),
    "relay_min": (json.dumps(_cfg(board=_board(relays=[{"pin": 4, "min_off_s": 1e9}]))),
                  "board.relays[0].min_off_s: at most 86400"),
    "relays_many": (json.dumps(_cfg(board=_board(relays=[{"pin": 4}] * 9))),
                    "board.relays: at most 8"),
    "wifi_pw": (json.dumps(_cfg(link="mqtt", mqtt={"host": "h"},
                                wifi={"ssid": "s", "password": 5})),
                "wifi.password: expected a string"),
    "keepalive": (json.dumps(_cfg(link="mqtt", mqtt={"host": "h", "keepalive": 70000},
                                  wifi={"ssid": "s"})), "mqtt.keepalive: 1..65535"),
    # issue 19: TLS is on unless switched off; its CA file is named, not empty
    "tls_kind": (json.dumps(_cfg(link="mqtt", mqtt={"host": "h", "tls": "yes"},
                                 wifi={"ssid": "s"})), "mqtt.tls: expected true or false"),
    "ca_empty": (json.dumps(_cfg(link="mqtt", mqtt={"host": "h", "ca": ""},
                                 wifi={"ssid": "s"})), "mqtt.ca: the broker's CA certificate"),
    "ca_kind": (json.dumps(_cfg(link="mqtt", mqtt={"host": "h", "ca": 5},
                                wifi={"ssid": "s"})), "mqtt.ca: expected a string"),
    "ca_no_tls": (json.dumps(_cfg(link="mqtt", mqtt={"host": "h", "tls": False, "ca": "c"},
                                  wifi={"ssid": "s"})), "mqtt.ca: needs tls true"),
    "ntp_empty": (json.dumps(_cfg(link="mqtt", mqtt={"host": "h"}, wifi={"ssid": "s"}, ntp="")),
                  "ntp: an NTP server's name"),
    "no_meters": (json.dumps(_cfg(board=_board(meters=[]))), "board.meters: 1 to 8"),
    "meter_type": (
        json.dumps(_cfg(board=_board(meters=[{"channel": 0, "type": "x"}]))),
        "board.meters[0].type: one of",
    ),
    "ical": (
        json.dumps(_cfg(board=_board(meters=[{"channel": 0, "type": "ct", "adc_pin": 36,
                                              "ical": "30"}]))),
        "board.meters[0].ical: expected a number",
    ),
    "dup_channel": (
        json.dumps(_cfg(board=_board(meters=[{"channel": 0, "type": "ct", "adc_pin": 36,
                                              "ical": 30}] * 2, relays=[]))),
        "board.meters[1].channel: used twice",
    ),
    "relay_channel": (
        json.dumps(_cfg(board=_board(relays=[{"pin": 4, "channel": 5}]))),
        "board.relays[0].channel: no meter",
    ),
    "relay_trip": (
        json.dumps(_cfg(board=_board(relays=[{"pin": 4, "trip_a": -1}]))),
        "board.relays[0].trip_a: must be >= 0",
    ),
}
KEYS = {"short": ("00" * 16, "expected 32 bytes"), "not_hex": ("zz" * 32, "not hex"),
        "good": ("ab" * 32, None)}

SCRIPT = """
import config
for name, text in CASES.items():
    with open('/c.json', 'w') as f:
        f.write(text)
    try:
        config.load('/c.json')
        emit([name, None])
    except config.ConfigError as e:
        emit([name, str(e)])
for name, text in KEYS.items():
    with open('/k', 'w') as f:
        f.write(text)
    try:
        emit(['key_' + name, len(config.load_key('/k'))])
    except config.ConfigError as e:
        emit(['key_' + name, str(e)])
try:
    config.load('/nope.json')
except config.ConfigError as e:
    emit(['missing', str(e)])
with open('/c.json', 'w') as f:
    f.write(GOOD)
cfg = config.load('/c.json')
emit(['good', [cfg['publish_s'], cfg['board']['sample_rate_hz'], cfg['name']]])
for name, text in MQTT.items():
    with open('/c.json', 'w') as f:
        f.write(text)
    mq = config.load('/c.json')['mqtt']
    emit([name, [mq['tls'], mq.get('ca'), mq['port']]])
"""
MQTT = {  # the defaults: TLS on port 8883 with the CA file beside config.json; plain by hand only
    "mqtt_default": json.dumps(_cfg(link="mqtt", mqtt={"host": "h"}, wifi={"ssid": "s"})),
    "mqtt_plain": json.dumps(_cfg(link="mqtt", mqtt={"host": "h", "tls": False},
                                  wifi={"ssid": "s"})),
}


def test_bad_configs_and_keys_name_the_problem_on_the_vm() -> None:
    cases = {k: v[0] for k, v in BAD.items()}
    keys = {k: v[0] for k, v in KEYS.items()}
    head = (f"CASES = {cases!r}\nKEYS = {keys!r}\nGOOD = {json.dumps(_cfg())!r}\n"
            f"MQTT = {MQTT!r}\n")
    out = dict(mpvm.run_job(head + SCRIPT).results)
    for name, (_text, want) in BAD.items():
        assert out[name] is not None and want in out[name], (name, out[name])
    assert "expected 32 bytes" in out["key_short"]
    assert "not hex" in out["key_not_hex"]
    assert out["key_good"] == 32
    assert "cannot read" in out["missing"]
    assert out["good"] == [5, 2000, "wattmesh_7"]
    assert out["mqtt_default"] == [True, "ca.crt", 8883]
    assert out["mqtt_plain"] == [False, None, 1883]
