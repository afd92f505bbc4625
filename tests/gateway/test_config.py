"""The TOML config: the shipped example, errors that name the key, hostile documents."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfigError, load_keystore
from gateway.config_parse import load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "gateway.example.toml"
MINIMAL = """
[gateway]
id = "home-1"
keystore = "nodes.json"
[mqtt]
port = 1883
[[mqtt.nodes]]
node_id = 7
[[modbus.buses]]
name = "b"
tcp = "127.0.0.1:5020"
[[modbus.buses.meters]]
meter_id = "main"
model = "sdm630"
unit = 1
"""


def test_the_shipped_example_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.gateway_id == "home-1" and cfg.interval_ms == 15 * 60_000
    assert {n.transport for n in cfg.nodes} == {"ble", "mqtt"}
    assert [m.model for b in cfg.buses for m in b.meters] == ["sdm630", "sdm120", "pzem004t"]
    (cal,) = cfg.calibrations
    assert (cal.node_id, cal.channel, cal.reference, cal.voltage, cal.apply) == (
        12, 0, "pv", "voltage", True)


def with_ble(line: str) -> str:
    return MINIMAL.replace("[[mqtt.nodes]]", f"[ble]\n{line}\n[[mqtt.nodes]]", 1)


def test_ble_silence_timeout_is_off_unless_set(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(MINIMAL)
    assert load_config(p).ble_silence_timeout_s is None
    p.write_text(with_ble("silence_timeout_s = 90"))
    assert load_config(p).ble_silence_timeout_s == 90.0
    p.write_text(with_ble("silence_timeout_s = 0.5"))
    assert load_config(p).ble_silence_timeout_s == 0.5


def test_the_ble_bond_store_lives_in_data_dir_unless_named(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(MINIMAL)
    cfg = load_config(p)
    assert cfg.ble_bond_store == cfg.data_dir / "ble-bonds.json"
    p.write_text(with_ble('bond_store = "keys/bonds.json"'))
    assert load_config(p).ble_bond_store == cfg.data_dir / "keys" / "bonds.json"
    p.write_text(with_ble('bond_store = "/etc/wattmesh/bonds.json"'))
    assert load_config(p).ble_bond_store == Path("/etc/wattmesh/bonds.json")


@pytest.mark.parametrize("value", ['""', "' '", "3", "true", "[]", '"a\\u0000b"'])
def test_a_bad_ble_bond_store_is_named(tmp_path: Path, value: str) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(with_ble(f"bond_store = {value}"))
    with pytest.raises(GatewayConfigError, match=r"^ble\.bond_store: "):
        load_config(p)


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "-inf", "1e9", "'30'", "true", "[]"])
def test_a_bad_ble_silence_timeout_is_named(tmp_path: Path, value: str) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(with_ble(f"silence_timeout_s = {value}"))
    with pytest.raises(GatewayConfigError, match=r"^ble\.silence_timeout_s: "):
        load_config(p)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(MINIMAL)
    cfg = load_config(p)
    assert cfg.keystore == tmp_path / "nodes.json"
    assert cfg.nodes[0].meter_id == "node7" and cfg.nodes[0].topic == "wattmesh_7"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('id = "home-1"', 'idd = "home-1"', "gateway.id: missing"),
        ('id = "home-1"', 'id = "home-1"\ncolour = 3', "gateway.colour: unknown key"),
        ('id = "home-1"', 'id = "home 1!"', "gateway.id: 'home 1!' is not a valid name"),
        ("port = 1883", "port = 70000", r"mqtt.port: 70000 is outside"),
        ("port = 1883", 'port = "1883"', "mqtt.port: expected int, got str"),
        ("node_id = 7", "node_id = true", "mqtt.nodes\\[0\\].node_id: expected int, got bool"),
        ("unit = 1", "unit = 300", r"modbus.buses\[0\].meters\[0\].unit: 300 is outside"),
        ('model = "sdm630"', 'model = "sdm999"', r"meters\[0\].model: 'sdm999' is not one of"),
        ('tcp = "127.0.0.1:5020"', 'tcp = "localhost"', r"buses\[0\].tcp: expected host:port"),
        ('tcp = "127.0.0.1:5020"', 'serial = "/dev/x"\ntcp = "h:1"', "exactly one of tcp"),
        ('tcp = "127.0.0.1:5020"', 'serial = "/dev/x"\nbaudrate = 115200',
         r"buses\[0\].baudrate: 115200 is not a speed the sdm630 of meter 'main'"),
        ('keystore = "nodes.json"', "", "gateway.keystore: required"),
        ('meter_id = "main"', 'meter_id = "node7"', "meter_id 'node7' is used twice"),
        ("[[mqtt.nodes]]", "[ble]\nbackend = 'usb'\n[[mqtt.nodes]]", "ble.backend"),
        ("[mqtt]", "interval_minutes = 7\n[mqtt]", "gateway.interval_minutes: must be 15"),
        ("[mqtt]", "interval_minutes = 5\n[mqtt]", "gateway.interval_minutes: must be 15"),
        ("[mqtt]", "interval_minutes = 60\n[mqtt]", "gateway.interval_minutes: must be 15"),
        ("[mqtt]", "grace_s = nan\n[mqtt]", "gateway.grace_s: nan is not a finite number"),
        ("[mqtt]", "command_timeout_s = inf\n[mqtt]", "command_timeout_s: inf is not a finite"),
        ('tcp = "127.0.0.1:5020"', 'tcp = "h:1"\npoll_s = nan', r"buses\[0\].poll_s: nan is not"),
        ('tcp = "127.0.0.1:5020"', 'tcp = "h:1"\ntimeout_s = -inf', r"buses\[0\].timeout_s: -inf"),
        ('tcp = "127.0.0.1:5020"', 'tcp = "h:\uff15\uff10\uff12\uff10"', "expected host:port"),
        ('tcp = "127.0.0.1:5020"', 'tcp = "h:\u00b2"', "expected host:port"),
    ],
)
def test_wrong_keys_and_values_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    p = tmp_path / "gw.toml"
    assert old in MINIMAL
    p.write_text(MINIMAL.replace(old, new, 1))
    with pytest.raises(GatewayConfigError, match=message):
        load_config(p)


def test_unreadable_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    p = tmp_path / "gw.toml"
    p.write_text(MINIMAL[: MINIMAL.index("tcp =") + 8])  # cut inside a string
    with pytest.raises(GatewayConfigError, match="not valid TOML"):
        load_config(p)
    p.write_bytes(b"\xff\xfe[gateway]")
    with pytest.raises(GatewayConfigError, match="cannot read"):
        load_config(p)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, len(MINIMAL)))
def test_every_truncation_is_a_config_error_or_valid(cut: int) -> None:
    try:
        doc = tomllib.loads(MINIMAL[:cut])
    except tomllib.TOMLDecodeError:
        return
    try:
        parse_config(doc, Path("."))
    except GatewayConfigError:
        pass


toml_values = st.recursive(
    st.none().filter(lambda _: False)
    | st.booleans()
    | st.integers(-5, 70000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "gateway",
                    "id",
                    "mqtt",
                    "nodes",
                    "node_id",
                    "modbus",
                    "buses",
                    "meters",
                    "unit",
                    "tcp",
                    "ble",
                    "address",
                    "ledger",
                    "cluster",
                    "keystore",
                    "name",
                    "model",
                    "grace_s",
                    "interval_minutes",
                    "command_timeout_s",
                    "poll_s",
                    "timeout_s",
                    "backoff_max_s",
                    "silence_timeout_s",
                    "calibration",
                    "reference",
                    "channel",
                    "ical",
                    "x",
                ]
            ),
            c,
            max_size=4,
        )
    ),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["gateway", "mqtt", "ble", "modbus", "ledger", "calibration", "x"]),
        toml_values,
    )
)
def test_hostile_documents_only_raise_config_error(doc: dict[str, object]) -> None:
    try:
        parse_config(doc, Path("."))
    except GatewayConfigError:
        pass


def test_keystore(tmp_path: Path) -> None:
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(MINIMAL)
    cfg = load_config(cfg_path)
    ks = tmp_path / "nodes.json"
    ks.write_text(json.dumps({"nodes": {"7": {"key": "ab" * 32, "transport": "mqtt"}}}))
    assert load_keystore(ks, cfg.nodes) == {7: bytes([0xAB]) * 32}
    for bad, message in [
        ({"nodes": {"7": {"key": "AB" * 32}}}, "64 lowercase hex"),
        ({"nodes": {"x": {"key": "ab" * 32}}}, "node ids are integers"),
        ({"nodes": {"\u00b2": {"key": "ab" * 32}}}, "node ids are integers"),  # superscript 2
        ({"nodes": {"\u0667": {"key": "ab" * 32}}}, "node ids are integers"),  # Arabic-Indic 7
        ({"nodes": {"8": {"key": "ab" * 32}}}, "no key for node 7"),
        ({"nodes": []}, "expected"),
        ([], "expected"),
    ]:
        ks.write_text(json.dumps(bad))
        with pytest.raises(GatewayConfigError, match=message):
            load_keystore(ks, cfg.nodes)
    ks.write_text('{"nodes": {"7": ')
    with pytest.raises(GatewayConfigError, match="cannot read"):
        load_keystore(ks, cfg.nodes)


def test_only_billing_meters_are_reported_by_default(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(with_ble("[[ble.nodes]]\nnode_id = 3\naddress = 'AA:BB:CC:DD:EE:03'"))
    cfg = load_config(p)
    # Modbus meters are billing meters, BLE plugs and MQTT nodes (and their channels) sub-meters
    assert cfg.reports("main")
    assert not cfg.reports("node7") and not cfg.reports("node7.2") and not cfg.reports("node3")
    assert cfg.reports("unknown")  # a meter the config does not name is not filtered


def test_report_can_be_set_on_every_kind_of_meter(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    doc = with_ble("[[ble.nodes]]\nnode_id = 3\naddress = 'AA:BB:CC:DD:EE:03'\nreport = true")
    doc = doc.replace("node_id = 7", "node_id = 7\nreport = true").replace(
        "unit = 1", "unit = 1\nreport = false")
    p.write_text(doc)
    cfg = load_config(p)
    assert cfg.reports("node7") and cfg.reports("node7.1") and cfg.reports("node3")
    assert not cfg.reports("main")
    assert cfg.unreported == frozenset({"main"})


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("node_id = 7", "node_id = 7\nreport = 1", r"^mqtt\.nodes\[0\]\.report: expected bool"),
        ("unit = 1", "unit = 1\nreport = 'yes'",
         r"^modbus\.buses\[0\]\.meters\[0\]\.report: expected bool, got str"),
        ("[[mqtt.nodes]]",
         "[ble]\n[[ble.nodes]]\nnode_id = 3\naddress = '24:0A:C4:00:00:03'\nreport = []\n"
         "[[mqtt.nodes]]", r"^ble\.nodes\[0\]\.report: expected bool, got list"),
    ],
)
def test_a_bad_report_key_is_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(MINIMAL.replace(old, new, 1))
    with pytest.raises(GatewayConfigError, match=message):
        load_config(p)


CALIBRATION = """
[[calibration]]
node_id = 7
reference = "main"
ical = 51.282
vcal = 575.0
phase_deg = 0.0
"""
CAL_KEYS = ("node_id", "channel", "reference", "ical", "vcal", "phase_deg", "points",
            "interval_s", "apply", "round", "max_gain_change", "max_phase_deg")


def test_calibration_defaults_and_reference_voltage(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(MINIMAL)
    assert load_config(p).calibrations == ()
    p.write_text(MINIMAL + CALIBRATION)
    (c,) = load_config(p).calibrations
    assert (c.node_id, c.channel, c.reference, c.voltage) == (7, 0, "main", "voltage_l1")
    assert (c.ical, c.vcal, c.phase_deg) == (51.282, 575.0, 0.0)
    assert (c.points, c.interval_s, c.apply, c.round) == (4, 60, False, 1)  # apply: opt in
    p.write_text(MINIMAL + CALIBRATION + "channel = 1\napply = true\nround = 3\npoints = 6\n")
    (c,) = load_config(p).calibrations
    assert (c.channel, c.apply, c.round, c.points) == (1, True, 3, 6)


def test_a_channel_is_calibrated_once(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(MINIMAL + CALIBRATION + CALIBRATION)
    with pytest.raises(GatewayConfigError, match=r"^calibration\[1\]\.channel: node 7 channel 0"):
        load_config(p)
    p.write_text(MINIMAL + CALIBRATION + CALIBRATION + "channel = 1\n")
    assert [c.channel for c in load_config(p).calibrations] == [0, 1]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("node_id = 7", "node_id = 9", r"^calibration\[0\]\.node_id: node 9 is not configured"),
        ("node_id = 7", "node_id = -1", r"^calibration\[0\]\.node_id: -1 is outside"),
        ('reference = "main"', 'reference = "node7"',
         r"^calibration\[0\]\.reference: 'node7' is not a configured Modbus meter"),
        ('reference = "main"', 'reference = "nope"', r"^calibration\[0\]\.reference: 'nope'"),
        ('reference = "main"', "", r"^calibration\[0\]\.reference: missing"),
        ("ical = 51.282", "", r"^calibration\[0\]\.ical: missing"),
        ("ical = 51.282", "ical = 0", r"^calibration\[0\]\.ical: 0 is outside"),
        ("ical = 51.282", "ical = nan", r"^calibration\[0\]\.ical: nan is not a finite"),
        ("ical = 51.282", "ical = '51'", r"^calibration\[0\]\.ical: expected int/float, got str"),
        ("vcal = 575.0", "vcal = -inf", r"^calibration\[0\]\.vcal: -inf is not a finite"),
        ("vcal = 575.0", "vcal = 1e9", r"^calibration\[0\]\.vcal: 1000000000.0 is outside"),
        ("vcal = 575.0", "vcal = 0", r"^calibration\[0\]\.vcal: 0 is outside"),
        ("vcal = 575.0", "", r"^calibration\[0\]\.vcal: missing"),
        ("phase_deg = 0.0", "phase_deg = 45", r"^calibration\[0\]\.phase_deg: 45 is outside"),
        ("phase_deg = 0.0", "channel = 256", r"^calibration\[0\]\.channel: 256 is outside"),
        ("phase_deg = 0.0", "points = 2", r"^calibration\[0\]\.points: 2 is outside"),
        ("phase_deg = 0.0", "interval_s = 1", r"^calibration\[0\]\.interval_s: 1 is outside"),
        ("phase_deg = 0.0", "interval_s = 60.5", r"^calibration\[0\]\.interval_s: expected int"),
        ("phase_deg = 0.0", "apply = 'yes'", r"^calibration\[0\]\.apply: expected bool, got str"),
        ("phase_deg = 0.0", "apply = 1", r"^calibration\[0\]\.apply: expected bool, got int"),
        ("phase_deg = 0.0", "round = 0", r"^calibration\[0\]\.round: 0 is outside"),
        ("phase_deg = 0.0", "max_gain_change = 0.9", r"^calibration\[0\]\.max_gain_change: 0.9"),
        ("phase_deg = 0.0", "max_phase_deg = 0", r"^calibration\[0\]\.max_phase_deg: 0 is outside"),
        ("phase_deg = 0.0", "boards = 'x'", r"^calibration\[0\]\.boards: unknown key"),
    ],
)
def test_a_bad_calibration_key_is_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    p = tmp_path / "gw.toml"
    assert old in CALIBRATION
    p.write_text(MINIMAL + CALIBRATION.replace(old, new, 1))
    with pytest.raises(GatewayConfigError, match=message):
        load_config(p)


def test_calibration_must_be_an_array_of_tables(tmp_path: Path) -> None:
    p = tmp_path / "gw.toml"
    p.write_text(MINIMAL.replace("[gateway]", "calibration = 3\n[gateway]", 1))
    with pytest.raises(GatewayConfigError, match=r"^calibration: must be an array of tables"):
        load_config(p)
    p.write_text(MINIMAL.replace("[gateway]", "calibration = [1]\n[gateway]", 1))
    with pytest.raises(GatewayConfigError, match=r"^calibration\[0\]: must be a table"):
        load_config(p)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*CAL_KEYS, "x"]), toml_values, max_size=6))
def test_hostile_calibration_values_only_raise_config_error(entry: dict[str, object]) -> None:
    doc = tomllib.loads(MINIMAL)
    base = {"node_id": 7, "reference": "main", "ical": 51.282, "vcal": 575.0}
    doc["calibration"] = [{**base, **entry}]
    try:
        cfg = parse_config(doc, Path("."))
    except GatewayConfigError as exc:
        assert str(exc).startswith(("calibration[0].", "calibration[0]:")), exc
        return
    (c,) = cfg.calibrations
    assert c.node_id == 7 and 0 <= c.channel <= 255 and c.points >= 3 and c.interval_s >= 10
