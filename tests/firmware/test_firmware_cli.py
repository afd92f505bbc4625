"""`wattmesh firmware build|flash` and `wattmesh provision node`, through the real command."""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import shlex
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import config as fwconfig
from firmware import ct, hal_host
from tools import firmware_cli, mpvm, mqtt_auth
from tools.cli import main
from tools.mqtt_auth import make_tls

_TMP = tempfile.TemporaryDirectory()  # for the hypothesis cases' files (one per run)
_PEM = make_tls(Path(_TMP.name) / "tls").ca_cert.read_bytes()
PROFILE = json.loads(
    (Path(firmware_cli.BOARDS_DIR).parent / "node_profile.json").read_text()
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    assert main(["firmware", "build", "--out", str(out)]) == 0
    return out


def _provision(tmp: Path, *extra: str, node_id: int = 7) -> int:
    return main(["provision", "node", "--id", str(node_id), "--keystore", str(tmp / "keys.json"),
                 "--out", str(tmp / f"n{node_id}"), *extra])


def test_build_compiles_every_device_module_for_xtensawin(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = [f["name"] for f in manifest["files"]]
    assert names == [f"{m}.mpy" for m in firmware_cli.DEVICE_MODULES] + ["main.py"]
    assert "hal_host.mpy" not in names and "host_node.mpy" not in names
    for f in manifest["files"]:
        data = (bundle / f["name"]).read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]
        if f["name"].endswith(".mpy"):
            # .mpy header: 'M', version 6, then arch|sub-version (no native code: arch-free
            # bytecode, sub-version only) and the target's small-int bits (31 on xtensawin)
            assert data[0:2] == b"M\x06" and data[2] >> 2 == 0 and data[3] == 31, f["name"]
    assert manifest["total_bytes"] == sum(f["size"] for f in manifest["files"])
    assert manifest["arch"] == "xtensawin"


def test_the_compiled_bundle_runs_on_micropython(bundle: Path) -> None:
    # The bundle is bytecode, so the host VM loads the very .mpy files the ESP32 gets and runs
    # the frame vectors and a node through them (hal_host stays source: it is host-only).
    vectors = (Path(firmware_cli.FIRMWARE_DIR) / "frame_vectors.json").read_text()
    binfiles = {f"/bundle/{p.name}": p.read_bytes() for p in bundle.glob("*.mpy")}
    script = """
import sys, json
sys.path.insert(0, '/bundle')
import frame, node, ct, store, config
V = json.load(open('/v.json'))
ok = 0
for vec in V['valid']:
    t, n, s, payload = frame.decode(bytes.fromhex(vec['key']), bytes.fromhex(vec['frame']))
    ok += frame.encode(bytes.fromhex(vec['key']), t, n, s, payload).hex() == vec['frame']
emit({'files': [m.__file__ for m in (frame, node, ct, store, config)], 'ok': ok})
"""
    out = mpvm.run_job(script, files={"/v.json": vectors}, binfiles=binfiles).results[0]
    assert out["files"] == [f"/bundle/{m}.mpy" for m in ("frame", "node", "ct", "store", "config")]
    assert out["ok"] == len(json.loads(vectors)["valid"])


def test_provision_writes_config_key_and_keystore(tmp_path: Path) -> None:
    assert _provision(tmp_path, "--board", "plug_hlw8012") == 0
    node = tmp_path / "n7"
    cfg = fwconfig.load(str(node / "config.json"))  # the firmware's own check accepts it
    key = fwconfig.load_key(str(node / "node.key"))
    assert cfg["node_id"] == 7 and cfg["board"]["name"] == "plug-hlw8012"
    store = json.loads((tmp_path / "keys.json").read_text())
    assert store == {"nodes": {"7": {"key": key.hex(), "name": "wattmesh_7", "transport": "ble"}}}
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((node / "node.key").stat().st_mode) == 0o600
    # a second node joins the same keystore with its own key
    assert _provision(tmp_path, node_id=8) == 0
    store = json.loads((tmp_path / "keys.json").read_text())
    assert set(store["nodes"]) == {"7", "8"} and store["nodes"]["8"]["key"] != key.hex()


def test_provision_refuses_to_overwrite_a_key_unless_forced(tmp_path: Path) -> None:
    assert _provision(tmp_path) == 0
    before = (tmp_path / "keys.json").read_bytes()
    key_before = (tmp_path / "n7" / "node.key").read_bytes()
    assert _provision(tmp_path) == 2
    assert (tmp_path / "keys.json").read_bytes() == before
    assert (tmp_path / "n7" / "node.key").read_bytes() == key_before
    assert _provision(tmp_path, "--force") == 0
    assert (tmp_path / "n7" / "node.key").read_bytes() != key_before


def test_provision_mqtt_node_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _provision(tmp_path, "--link", "mqtt") == 2  # no broker given
    assert "--mqtt-host, --mqtt-ca" in capsys.readouterr().err
    monkeypatch.setenv("WATTMESH_WIFI_PASSWORD", "")  # an open network
    mqtt = ["--link", "mqtt", "--mqtt-host", "127.0.0.1", "--wifi-ssid", "x", "--mqtt-ca"]
    # the broker's CA: readable, PEM certificates, not expired; else nothing is written
    (tmp_path / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    expired = make_tls(tmp_path / "old").ca_cert
    for ca, why in ((tmp_path / "none.pem", "cannot read it"),
                    (tmp_path / "garbage.pem", "not a PEM certificate")):
        assert _provision(tmp_path, *mqtt, str(ca)) == 2
        err = capsys.readouterr().err
        assert "--mqtt-ca:" in err and why in err, err
        assert not (tmp_path / "n7").exists()
    with pytest.raises(mqtt_auth.MqttAuthError, match="expired on"):
        mqtt_auth.read_ca(expired, now=datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC))
    ca = make_tls(tmp_path / "tls").ca_cert
    assert _provision(tmp_path, *mqtt, str(ca)) == 0
    cfg = json.loads((tmp_path / "n7" / "config.json").read_text())
    assert cfg["mqtt"]["topic"] == "wattmesh_7"
    assert (cfg["mqtt"]["tls"], cfg["mqtt"]["ca"], cfg["mqtt"]["port"]) == (True, "ca.crt", 8883)
    assert (tmp_path / "n7" / "ca.crt").read_bytes() == ca.read_bytes()
    assert cfg["ntp"] == "pool.ntp.org"  # the clock TLS checks the certificate's dates against
    assert _provision(tmp_path, *mqtt, str(ca), "--ntp-host", "pi.home", node_id=8) == 0
    assert json.loads((tmp_path / "n8" / "config.json").read_text())["ntp"] == "pi.home"
    assert _provision(tmp_path, "--board", "nope", node_id=9) == 2
    assert "unknown board" in capsys.readouterr().err
    (tmp_path / "keys.json").write_text("{not json")
    assert _provision(tmp_path, node_id=10) == 2
    assert (tmp_path / "keys.json").read_text() == "{not json"  # untouched
    for bad in ("-1", "65536", "x"):
        with pytest.raises(SystemExit):
            main(["provision", "node", "--id", bad, "--keystore", "k", "--out", "o"])


def test_flash_dry_run_prints_every_step(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _provision(tmp_path) == 0
    image = tmp_path / "ESP32_GENERIC-v1.27.0.bin"
    image.write_bytes(b"\xe9" + bytes(100))
    capsys.readouterr()
    rc = main(["firmware", "flash", "--port", "/dev/ttyUSB0", "--bundle", str(bundle), "--node",
               str(tmp_path / "n7"), "--micropython", str(image), "--dry-run"])
    assert rc == 0
    steps = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [s[s.index("--port") + 2] if "--port" in s else s[3] for s in steps[:2]] == [
        "erase_flash", "--baud"]
    assert steps[1][-3:] == ["-z", "0x1000", str(image)]
    assert steps[2][-3:] == ["mip", "install", "aioble"]
    cp = steps[3]
    copied = {Path(p).name for p in cp[cp.index("cp") + 1 : -1]}
    assert copied == {f"{m}.mpy" for m in firmware_cli.DEVICE_MODULES} | {
        "main.py", "config.json", "node.key"}
    assert cp[-1] == ":" and steps[-1][-1] == "reset"


def test_flash_copies_the_broker_ca_of_an_mqtt_node(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATTMESH_WIFI_PASSWORD", "w")
    ca = make_tls(tmp_path / "tls").ca_cert
    assert _provision(tmp_path, "--link", "mqtt", "--mqtt-host", "pi.home", "--mqtt-ca",
                      str(ca), "--wifi-ssid", "x") == 0
    base = ["firmware", "flash", "--port", "p", "--bundle", str(bundle), "--node",
            str(tmp_path / "n7"), "--dry-run"]
    capsys.readouterr()
    assert main(base) == 0
    steps = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    cp = next(s for s in steps if "cp" in s)
    assert {"config.json", "node.key", "ca.crt"} <= {Path(p).name for p in cp}
    (tmp_path / "n7" / "ca.crt").unlink()
    assert main(base) == 2
    assert "ca.crt: missing (mqtt.ca)" in capsys.readouterr().err


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.binary(max_size=600),
    st.integers(0, len(_PEM)).map(lambda n: _PEM[:n]),  # truncated anywhere
    st.tuples(st.integers(0, len(_PEM) - 1), st.integers(1, 255)).map(  # one byte changed
        lambda t: _PEM[:t[0]] + bytes([_PEM[t[0]] ^ t[1]]) + _PEM[t[0] + 1:]),
))
def test_a_hostile_ca_file_is_refused_in_words(data: bytes) -> None:
    path = Path(_TMP.name) / "ca.pem"
    path.write_bytes(data)
    try:
        pem = mqtt_auth.read_ca(path)
    except mqtt_auth.MqttAuthError as exc:
        assert "\n" not in str(exc)
    else:  # what passed is certificates, written out again as PEM
        assert pem.startswith(b"-----BEGIN CERTIFICATE-----")


def test_flash_validates_its_inputs(tmp_path: Path, bundle: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    assert _provision(tmp_path) == 0
    node = str(tmp_path / "n7")
    base = ["firmware", "flash", "--port", "p", "--dry-run"]
    assert main([*base, "--bundle", str(tmp_path), "--node", node]) == 2  # not a bundle
    tampered = tmp_path / "b2"
    tampered.mkdir()
    for f in bundle.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    (tampered / "node.mpy").write_bytes(b"M\x06evil")
    assert main([*base, "--bundle", str(tampered), "--node", node]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main([*base, "--bundle", str(bundle), "--node", str(tmp_path / "none")]) == 2
    (tmp_path / "n7" / "node.key").write_text("abc\n")
    assert main([*base, "--bundle", str(bundle), "--node", node]) == 2
    assert "node.key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["firmware", "flash", "--bundle", str(bundle), "--node", node])  # no --port


def test_ble_uuids_in_the_firmware_match_the_node_profile() -> None:
    text = (Path(firmware_cli.FIRMWARE_DIR) / "link_ble.py").read_text()
    for name in ("service_uuid", "readings_uuid", "command_uuid", "ack_uuid"):
        const = name.upper()
        assert f'{const} = "{PROFILE["ble"][name]}"' in text
    assert f'NAME_PREFIX = "{PROFILE["ble"]["advertised_name_prefix"]}"' in text
    mqtt = (Path(firmware_cli.FIRMWARE_DIR) / "link_mqtt.py").read_text()
    for key in ("telemetry_frame", "telemetry_sensor", "lwt", "command_frame", "ack_frame"):
        assert PROFILE["mqtt"][key].replace("{topic}", "%s") in mqtt, key


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["node_id", "link", "board", "publish_s", "mqtt", "name"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5), st.booleans(),
                                 st.lists(st.integers(), max_size=2),
                                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
       )
def test_config_check_names_the_key_on_any_malformed_config(cfg: dict) -> None:
    # The firmware's config module runs under CPython too: hostile configs get a ConfigError.
    try:
        fwconfig.check(cfg)
    except fwconfig.ConfigError as exc:
        assert ":" in str(exc)


_BOARD = json.loads((Path(__file__).resolve().parents[2] / "hardware" / "boards"
                     / "esp32_devkitc_ct.json").read_text())
_ANY_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(fwconfig.BOUNDS)), _ANY_NUMBER)
def test_config_bounds_are_physical(key: str, value: float) -> None:
    # Every top-level number is accepted exactly inside its bounds; outside, the error names it.
    lo, hi, kind = fwconfig.BOUNDS[key]
    cfg = {"node_id": 7, "link": "none", "board": copy.deepcopy(_BOARD), key: value}
    inside = value == value and lo <= value <= hi and (kind is not int or isinstance(value, int))
    try:
        fwconfig.check(cfg)
    except fwconfig.ConfigError as exc:
        assert str(exc).startswith(key + ": "), exc
        # the window bound may also refuse a low mains_hz that is otherwise in range
        assert not inside or "board.cycles" in str(exc)
    else:
        assert inside, (key, value)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers()),
       st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers()),
       st.integers(min_value=-5, max_value=10**6))
def test_an_accepted_config_builds_its_ct_window(mains_hz: float, rate: float, cycles: int) -> None:
    # Whatever passes the check must not crash or exhaust the node when the clamp is built.
    board = copy.deepcopy(_BOARD)
    board["sample_rate_hz"] = rate
    board["cycles"] = cycles
    cfg = {"node_id": 7, "link": "none", "board": board, "mains_hz": mains_hz}
    try:
        fwconfig.check(cfg)
    except fwconfig.ConfigError as exc:
        assert ":" in str(exc)
        return
    clamp = ct.Clamp(hal_host, hal_host.Adc(36), None, 30.0, 0, 1.0, board["sample_rate_hz"],
                     cfg["mains_hz"], board["cycles"])
    assert 0 < clamp.n <= fwconfig.MAX_WINDOW_SAMPLES


# ---- malformed arguments and files: one clear line, exit code 2, nothing written -------------


def _clear(err: str, *words: str) -> None:
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    for word in words:
        assert word in last, (word, last)


def test_a_file_where_a_directory_is_expected_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("a file\n")
    keys = tmp_path / "keys.json"
    prov = ["provision", "node", "--id", "7"]
    assert main([*prov, "--keystore", str(keys), "--out", str(plain)]) == 2
    _clear(capsys.readouterr().err, "--out", "not a directory")
    assert main([*prov, "--keystore", str(keys), "--out", str(plain / "sub")]) == 2
    _clear(capsys.readouterr().err, "--out", "not a directory")
    assert main([*prov, "--keystore", str(plain / "keys.json"), "--out", str(tmp_path / "n")]) == 2
    _clear(capsys.readouterr().err, "--keystore", "not a directory")
    assert main([*prov, "--keystore", str(tmp_path), "--out", str(tmp_path / "n")]) == 2
    _clear(capsys.readouterr().err, "--keystore", "directory")
    assert main([*prov, "--keystore", str(keys), "--out", ""]) == 2  # not the current directory
    _clear(capsys.readouterr().err, "--out")
    assert not keys.exists() and not (tmp_path / "n").exists()  # nothing written, no half node
    assert plain.read_text() == "a file\n"
    for out in (plain, plain / "bundle"):
        assert main(["firmware", "build", "--out", str(out)]) == 2
        _clear(capsys.readouterr().err, "--out", "not a directory")
    assert main(["firmware", "build", "--out", ""]) == 2
    _clear(capsys.readouterr().err, "--out")


def _copy_bundle(bundle: Path, to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    for f in bundle.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


_GOOD_SHA = "0" * 64


@pytest.mark.parametrize(
    ("files", "field"),
    [
        ([1], "files[0]"),
        (["main.py"], "files[0]"),
        ([{"name": "main.py", "size": 1}], "files[0].sha256"),
        ([{"size": 1, "sha256": _GOOD_SHA}], "files[0].name"),
        ([{"name": 5, "size": 1, "sha256": _GOOD_SHA}], "files[0].name"),
        ([{"name": "main.py", "size": "1", "sha256": _GOOD_SHA}], "files[0].size"),
        ([{"name": "main.py", "size": True, "sha256": _GOOD_SHA}], "files[0].size"),
        ([{"name": "main.py", "size": -1, "sha256": _GOOD_SHA}], "files[0].size"),
        ([{"name": "main.py", "size": 1, "sha256": None}], "files[0].sha256"),
        ([{"name": "main.py", "size": 1, "sha256": "xyz"}], "files[0].sha256"),
        ([{"name": "../config.json", "size": 1, "sha256": _GOOD_SHA}], "files[0].name"),
        ([{"name": "/boot.py", "size": 1, "sha256": _GOOD_SHA}], "files[0].name"),
        ([{"name": "..", "size": 1, "sha256": _GOOD_SHA}], "files[0].name"),
        ({"main.py": {}}, "files"),
        ([], "files"),
        (None, "files"),
    ],
)
def test_flash_refuses_a_malformed_manifest_field_by_field(
    tmp_path: Path, bundle: Path, files: object, field: str, capsys: pytest.CaptureFixture
) -> None:
    assert _provision(tmp_path) == 0
    b = _copy_bundle(bundle, tmp_path / "b")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"] = files
    (b / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    rc = main(["firmware", "flash", "--port", "p", "--dry-run", "--bundle", str(b),
               "--node", str(tmp_path / "n7")])
    assert rc == 2
    _clear(capsys.readouterr().err, "manifest.json", field)


def test_flash_refuses_a_manifest_that_is_not_an_object_and_a_config_not_utf8(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _provision(tmp_path) == 0
    node = tmp_path / "n7"
    base = ["firmware", "flash", "--port", "p", "--dry-run"]
    b = _copy_bundle(bundle, tmp_path / "b")
    (b / "manifest.json").write_text("[1, 2]")
    capsys.readouterr()
    assert main([*base, "--bundle", str(b), "--node", str(node)]) == 2
    _clear(capsys.readouterr().err, "manifest.json")
    (node / "config.json").write_bytes(b"\xff\xfe{}")
    assert main([*base, "--bundle", str(bundle), "--node", str(node)]) == 2
    _clear(capsys.readouterr().err, "--node")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**40) | st.text(max_size=8)
    | st.sampled_from(["main.py", "node.mpy", "../x", "", _GOOD_SHA]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["name", "size", "sha256", "x"]), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_any_manifest_is_accepted_or_refused_with_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, files: object
) -> None:
    b = tmp_path_factory.mktemp("hyp-bundle", numbered=True)
    (b / "main.py").write_text("print('x')\n")
    (b / "manifest.json").write_text(json.dumps({"files": files}))
    try:
        firmware_cli.check_bundle(b)
    except firmware_cli.CliError as exc:
        assert "\n" not in str(exc)
    else:  # accepted: every entry names a file of the bundle, with its size and digest
        assert isinstance(files, list) and files
        for entry in files:
            assert (b / entry["name"]).is_file()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["provision", "node", "--id", "7", "--keystore", "{tmp}/k", "--out", "{tmp}/o",
          "--link", "mqtt", "--mqtt-host", "h", "--wifi-ssid", "s", "--mqtt-ca", "c",
          "--mqtt-port", "99999"],
         "--mqtt-port"),
        (["firmware", "flash", "--port", "p", "--bundle", "{tmp}/b", "--node", "{tmp}/n",
          "--baud", "-3"], "--baud"),
        (["firmware", "build", "--out", "{tmp}/o", "--arch", "nope"], "--arch"),
    ],
)
def test_numbers_and_choices_are_usage_errors(
    tmp_path: Path, argv: list[str], flag: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2
    _clear(capsys.readouterr().err, flag)


def test_board_is_a_name_never_a_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # hardware/node_profile.json is a JSON file next to boards/: never to be read as a board
    assert _provision(tmp_path, "--board", "../node_profile") == 2
    _clear(capsys.readouterr().err, "--board", "unknown board")
    assert not (tmp_path / "keys.json").exists()
