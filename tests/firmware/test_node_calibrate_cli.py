"""`wattmesh node calibrate` (issue 20): a known resistive load, as Tasmota's VoltageSet,
CurrentSet and PowerSet, sent to the real firmware on the VM, over a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from pathlib import Path

import aiomqtt
import pytest

from firmware import frame
from tests.firmware import nodeutil
from tests.gateway.conftest import Broker, SecureBroker
from tools import mpvm
from tools.cli import main
from tools.mqtt_auth import gateway_acl, make_tls, node_acl

TRUE = {"0": {"ical_x": 1.05, "vcal_x": 0.98}}
PROFILE = {"vrms": 230, "load": [[0, 10.0, 1.0]], "channels": {"1": [[0, 0.0, 1.0]]},
           "true": TRUE}


def _provision(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A node's files and the gateway's keystore, holding the test key."""
    for path, text in nodeutil.node_files("esp32_devkitc_ct", root=str(tmp_path)).items():
        Path(path).write_text(text)
    keystore = tmp_path / "keys.json"
    keystore.write_text(json.dumps({"nodes": {"7": {"key": nodeutil.KEY.hex(), "name": "n7",
                                                    "transport": "mqtt"}}}))
    return tmp_path / "config.json", tmp_path / "node.key", keystore


def test_print_frame_then_the_node_reads_the_known_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _config, _key, keystore = _provision(tmp_path)
    args = ["node", "calibrate", "--keystore", str(keystore), "--id", "7", "--voltage", "230",
            "--current", "10", "--power", "2300", "--seq", "77", "--print-frame"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    raw = bytes.fromhex(out["frame"])
    ftype, nid, seq, body = frame.decode(nodeutil.KEY, raw)
    assert (ftype, nid, seq) == (frame.T_CALIBRATE, 7, 77)
    assert frame.unpack_calibrate(body) == (0, frame.M_REFERENCE, 230_000, 10_000, 23_000)
    script = f"""
import hal_host as hal, host_node, json, frame
h = host_node.Host('/flash', json.loads({json.dumps(json.dumps(PROFILE))}))
h.tick(12000)
before = h.node.channels[0].i
raw = h.node.command(bytes.fromhex({out['frame']!r}))
ack = frame.unpack_ack(frame.decode({nodeutil.KEY!r}, raw)[3])
h.tick(12000)
ch = h.node.channels[0]
emit({{'before': before, 'status': ack[2], 'after': ch.i, 'v': ch.v}})
"""
    r = mpvm.run_job(script, files=nodeutil.node_files("esp32_devkitc_ct")).results[0]
    assert abs(r["before"] - 10 / 1.05) < 0.1
    assert r["status"] == frame.S_OK
    assert abs(r["after"] - 10.0) <= 0.05 and abs(r["v"] - 230.0) <= 1.0


@pytest.mark.parametrize(("extra", "what"), [
    ([], "give the known load"),
    (["--current", "10"], "--mqtt HOST[:PORT]"),
    (["--current", "10", "--id", "8", "--print-frame"], "node 8 has no key"),
    (["--current", "nan", "--print-frame"], "--current"),
    (["--current", "-3", "--print-frame"], "--current"),
    (["--power", "0", "--print-frame"], "--power"),
    (["--current", "10", "--mqtt", "host:99999"], "--mqtt"),
    (["--current", "10", "--channel", "300", "--print-frame"], "--channel"),
])  # fmt: skip
def test_bad_arguments_name_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], what: str
) -> None:
    _config, _key, keystore = _provision(tmp_path)
    args = ["node", "calibrate", "--keystore", str(keystore)]
    if "--id" not in extra:
        args += ["--id", "7"]
    try:
        code = main(args + extra)
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    assert code == 2 and what in captured.out + captured.err
    assert "Traceback" not in captured.err


def _gateway_config(tmp: Path, broker: SecureBroker, password: str, ca: Path) -> Path:
    """The gateway's config naming its broker: TLS against ``ca``, its account."""
    pw = tmp / "gw.password"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    cfg = tmp / "gateway.toml"
    cfg.write_text(f'[gateway]\nid = "home-1"\ndata_dir = "{tmp / "data"}"\n'
                   f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntls = true\n'
                   f'ca_file = "{ca}"\nusername = "gw"\npassword_file = "{pw}"\n')
    return cfg


def _secure_broker(tmp: Path) -> SecureBroker:
    """TLS, the gateway's account ``gw`` and node n7's, with their ACLs."""
    return SecureBroker(tmp / "broker", {"gw": ("gw-pw", gateway_acl("gw", "home-1")),
                                         "n7": ("n7-pw", node_acl("n7", "n7"))})


@pytest.mark.parametrize("how", ["gateway", "plain"])
def test_over_mqtt_to_the_firmware_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """The command crosses a real mosquitto to the node's topic; a bridge plays the node's MQTT
    link (what link_mqtt does on the device) in front of the firmware on the VM; the ACK comes back
    on stat/n7/ACK and the CLI reports it. ``gateway``: as the README says, with the gateway's
    config (TLS, its account: the one the ACL lets command nodes), the bridge as node n7 over
    TLS; ``plain``: an anonymous broker (``--mqtt``)."""
    config, key, keystore = _provision(tmp_path)
    if how == "gateway":
        broker: Broker = (secure := _secure_broker(tmp_path))
        ctx = ssl.create_default_context(cafile=str(secure.tls.ca_cert))
        connect = lambda: aiomqtt.Client("127.0.0.1", secure.port, username="n7",  # noqa: E731
                                         password="n7-pw", tls_context=ctx)
        where = ["--gateway-config", str(_gateway_config(tmp_path, secure, "gw-pw",
                                                          secure.tls.ca_cert))]
    else:
        broker = Broker(tmp_path)
        connect = lambda: aiomqtt.Client("127.0.0.1", broker.port)  # noqa: E731
        where = ["--mqtt", f"127.0.0.1:{broker.port}"]
    node = mpvm.HostNode(config, key, PROFILE, step_ms=1000, speed=5.0)
    acks: list[bytes] = []
    reader = threading.Thread(target=lambda: acks.extend(
        f for f in node.frames() if frame.peek(f)[0] == frame.T_ACK), daemon=True)
    reader.start()
    stop = threading.Event()

    async def bridge() -> None:
        async with connect() as client:
            await client.subscribe("cmnd/n7/FRAME", qos=1)
            ready.set()
            sent = 0

            async def relay_acks() -> None:
                nonlocal sent
                while not stop.is_set():
                    while sent < len(acks):
                        await client.publish("stat/n7/ACK", acks[sent], qos=1)
                        sent += 1
                    await asyncio.sleep(0.02)
            task = asyncio.create_task(relay_acks())
            try:
                async for m in client.messages:
                    assert isinstance(m.payload, bytes)
                    node.send(m.payload)
            finally:
                task.cancel()

    ready = threading.Event()
    loop = asyncio.new_event_loop()
    tasks: list[asyncio.Task[None]] = []

    async def run_bridge() -> None:
        tasks.append(asyncio.create_task(bridge()))
        try:
            await tasks[0]
        except asyncio.CancelledError:
            pass

    runner = threading.Thread(target=lambda: loop.run_until_complete(run_bridge()), daemon=True)
    runner.start()
    try:
        assert ready.wait(10)
        args = ["node", "calibrate", "--keystore", str(keystore), "--id", "7", "--current", "10",
                "--voltage", "230", *where, "--timeout", "30"]
        assert main(args) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["status"] == "ok" and out["node_id"] == 7
    finally:
        stop.set()
        if tasks:
            loop.call_soon_threadsafe(tasks[0].cancel)
        runner.join(10)
        node.close_input()
        node.kill()
        broker.stop()


def test_a_wrong_password_or_an_untrusted_broker_is_said_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _config, _key, keystore = _provision(tmp_path)
    broker = _secure_broker(tmp_path)
    args = ["node", "calibrate", "--keystore", str(keystore), "--id", "7", "--current", "10",
            "--timeout", "5", "--gateway-config"]
    try:
        cfg = _gateway_config(tmp_path, broker, "not-the-password", broker.tls.ca_cert)
        assert main([*args, str(cfg)]) == 2
        assert "the broker refused the login" in capsys.readouterr().err
        stranger = make_tls(tmp_path / "stranger").ca_cert
        cfg = _gateway_config(tmp_path, broker, "gw-pw", stranger)
        assert main([*args, str(cfg)]) == 2
        assert "TLS failed: the broker's certificate is not trusted" in capsys.readouterr().err
        (tmp_path / "gw.password").chmod(0o644)
        assert main([*args, str(cfg)]) == 2
        assert "--gateway-config: " in capsys.readouterr().err
    finally:
        broker.stop()
