"""The TOML config: the shipped example, errors that name the key, hostile documents."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import GatewayConfigError, load_config, load_keystore, parse_config

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
        st.sampled_from(["gateway", "mqtt", "ble", "modbus", "ledger", "x"]), toml_values
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
