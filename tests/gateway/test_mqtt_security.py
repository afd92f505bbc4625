"""MQTT as a home should run it (issue 19, finding 2): TLS with the broker's certificate
checked, an account per node and per gateway made by ``wattmesh provision``, an ACL that lets a
node publish only its own topics, and clear errors for a wrong password or an untrusted
certificate. Everything against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import aiomqtt
import pytest

from gateway.config import GatewayConfigError
from gateway.config_parse import load_config
from tests.gateway.conftest import SecureBroker, broker_tls, provision_node
from tools.cli import main
from tools.mqtt_auth import TlsFiles, make_tls


def _provision(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, TlsFiles]:
    """Node 7 and gateway home-1, and the broker's certificates (in ``tmp``/broker/tls) whose
    CA the node was provisioned with."""
    monkeypatch.setenv("WATTMESH_WIFI_PASSWORD", "hunter2-wifi")
    tls = broker_tls(tmp / "broker")
    node, gw = provision_node(tmp, 7, tls.ca_cert), tmp / "gw"
    assert main(["provision", "gateway", "--gateway-id", "home-1", "--out", str(gw)]) == 0
    return node, gw, tls


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


async def _collect(client: aiomqtt.Client, got: list[tuple[str, bytes]], until: bytes) -> None:
    """Append each (topic, payload) ``client`` receives to ``got``, up to the payload ``until``
    (5 s at most)."""
    async with asyncio.timeout(5):
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            got.append((str(m.topic), m.payload))
            if m.payload == until:
                break


def test_provision_keeps_secrets_off_the_command_line_and_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node, gw, tls = _provision(tmp_path, monkeypatch)
    cfg = json.loads((node / "config.json").read_text())
    assert cfg["wifi"]["password"] == "hunter2-wifi"  # from the environment
    assert cfg["mqtt"]["user"] == "wattmesh_7" and len(cfg["mqtt"]["password"]) >= 24
    for p in (node / "config.json", node / "node.key", node / "mosquitto.passwd",
              node / "ca.crt", gw / "mqtt.password", tmp_path / "nodes.json"):  # fmt: skip
        assert _mode(p) == 0o600, p
    # TLS against the broker's CA, which provision copied beside the config
    assert (cfg["mqtt"]["tls"], cfg["mqtt"]["ca"], cfg["mqtt"]["port"]) == (True, "ca.crt", 8883)
    assert (node / "ca.crt").read_bytes() == tls.ca_cert.read_bytes()
    # the flag that put the password on the command line is gone
    with pytest.raises(SystemExit):
        main(["provision", "node", "--id", "8", "--keystore", str(tmp_path / "k.json"),
              "--out", str(tmp_path / "n8"), "--link", "mqtt", "--mqtt-host", "h",
              "--wifi-ssid", "home", "--wifi-password", "secret"])  # fmt: skip
    monkeypatch.delenv("WATTMESH_WIFI_PASSWORD")
    assert main(["provision", "node", "--id", "9", "--keystore", str(tmp_path / "k.json"),
                 "--out", str(tmp_path / "n9"), "--link", "mqtt", "--mqtt-host", "h",
                 "--mqtt-ca", str(tls.ca_cert), "--wifi-ssid", "home"]) == 2  # fmt: skip
    assert "never goes on the command line" in capsys.readouterr().err
    (tmp_path / "wifi.txt").write_text("from-a-file\n")
    assert main(["provision", "node", "--id", "9", "--keystore", str(tmp_path / "k.json"),
                 "--out", str(tmp_path / "n9"), "--link", "mqtt", "--mqtt-host", "h",
                 "--mqtt-ca", str(tls.ca_cert), "--wifi-ssid", "home",
                 "--wifi-password-file", str(tmp_path / "wifi.txt")]) == 0
    assert json.loads((tmp_path / "n9" / "config.json").read_text())["wifi"]["password"] == (
        "from-a-file"
    )


async def test_a_node_publishes_only_its_own_topics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, gw, tls = _provision(tmp_path, monkeypatch)
    other = provision_node(tmp_path, 12, tls.ca_cert)
    broker = SecureBroker(tmp_path / "broker", {}, lines=(node, other, gw), tls=tls)
    node_pw = json.loads((node / "config.json").read_text())["mqtt"]["password"]
    gw_pw = (gw / "mqtt.password").read_text().strip()
    got: list[tuple[str, bytes]] = []
    try:
        async with broker.client("gateway-home-1", gw_pw) as g:
            await g.subscribe("tele/#")
            await g.subscribe("stat/#")
            async with broker.client("wattmesh_7", node_pw) as n:
                # a forged frame for another node, then the node's own frame
                await n.publish("tele/wattmesh_12/FRAME", b"forged", qos=1)
                await n.publish("stat/wattmesh_12/ACK", b"forged", qos=1)
                await n.publish("tele/wattmesh_7/FRAME", b"own", qos=1)
            await _collect(g, got, until=b"own")
            # the node's account cannot command other nodes either
            other_pw = json.loads((other / "config.json").read_text())["mqtt"]["password"]
            async with broker.client("wattmesh_12", other_pw) as n12, \
                    broker.client("wattmesh_7", node_pw) as n:
                await n12.subscribe("cmnd/wattmesh_12/FRAME")
                await n.publish("cmnd/wattmesh_12/FRAME", b"forged", qos=1)
                await g.publish("cmnd/wattmesh_12/FRAME", b"gw", qos=1)
                await _collect(n12, got, until=b"gw")
    finally:
        broker.stop()
    assert got == [("tele/wattmesh_7/FRAME", b"own"), ("cmnd/wattmesh_12/FRAME", b"gw")], got


def _gateway_config(tmp: Path, port: int, ca: Path, pw_file: Path, user: str) -> Path:
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'[gateway]\nid = "home-1"\ndata_dir = "{tmp / "data"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ntls = true\nca_file = "{ca}"\n'
        f'username = "{user}"\npassword_file = "{pw_file}"\n'
    )
    return cfg


def _check(cfg: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code = main(["gateway", "check", "--config", str(cfg), "--json", "--timeout", "5"])
    out = json.loads(capsys.readouterr().out)
    broker = out["devices"][0]
    assert (code == 0) == broker["ok"]
    return dict(broker)


def test_gateway_check_names_wrong_credentials_and_untrusted_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, gw, _tls = _provision(tmp_path, monkeypatch)
    capsys.readouterr()
    broker = SecureBroker(tmp_path / "broker", {}, lines=(gw,))
    try:
        pw = gw / "mqtt.password"
        cfg = _gateway_config(tmp_path, broker.port, broker.tls.ca_cert, pw, "gateway-home-1")
        assert _check(cfg, capsys)["ok"] is True
        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        cfg = _gateway_config(tmp_path, broker.port, broker.tls.ca_cert, wrong, "gateway-home-1")
        bad = _check(cfg, capsys)
        assert bad["ok"] is False and "refused the login" in str(bad["detail"]), bad
        stranger = make_tls(tmp_path / "stranger")  # a CA that did not sign the broker's cert
        cfg = _gateway_config(tmp_path, broker.port, stranger.ca_cert, pw, "gateway-home-1")
        bad = _check(cfg, capsys)
        assert bad["ok"] is False and "certificate" in str(bad["detail"]), bad
        # plain MQTT to a TLS listener never gets in
        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(_plain(broker.port))
    finally:
        broker.stop()
    os.chmod(pw, 0o644)
    cfg = _gateway_config(tmp_path, broker.port, broker.tls.ca_cert, pw, "gateway-home-1")
    assert main(["gateway", "check", "--config", str(cfg)]) == 2
    assert "readable by its owner only" in capsys.readouterr().err


async def _plain(port: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, timeout=3):
        pass


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ('password = "secret"', "mqtt.password: a secret does not go into the config"),
        ('ca_file = "ca.crt"', "mqtt.ca_file: needs tls = true"),
        ('username = "a b"', "mqtt.username"),
    ],
)
def test_mqtt_config_refuses_secrets_and_bad_tls_keys(
    tmp_path: Path, mqtt: str, message: str
) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gateway]\nid = "g"\ndata_dir = "d"\n[mqtt]\n{mqtt}\n')
    with pytest.raises(GatewayConfigError, match=message):
        load_config(cfg)
