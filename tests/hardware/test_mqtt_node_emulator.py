"""The MQTT node emulator against a real mosquitto: it takes commands as the firmware does (issue
19, finding 4: a replayed command is neither executed nor answered nor counted as taken), and it
reaches the broker as a provisioned node does (finding 2): TLS against the CA that
``wattmesh provision node`` copied beside its config, with its own account, under its ACL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from firmware import frame
from hardware.emulators.mqtt_node import MqttNodeEmulator, node_account
from tests.gateway.conftest import Broker, SecureBroker, broker_tls, provision_node, until
from tools.mqtt_auth import make_tls, provision_gateway

KEY = bytes(range(32))


def _command(seq: int, relay: int, action: int) -> bytes:
    return frame.encode(KEY, frame.T_COMMAND, 7, seq, frame.pack_command(relay, action))


async def _acks(client: aiomqtt.Client, into: list[tuple[int, tuple[int, ...]]]) -> None:
    async for m in client.messages:
        assert isinstance(m.payload, bytes)
        _t, _n, seq, payload = frame.decode(KEY, m.payload, frame.UP)
        into.append((seq, frame.unpack_ack(payload)))


async def test_a_replayed_command_gets_no_ack_and_changes_nothing(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    node = MqttNodeEmulator(7, KEY, port=broker.port, seq=50)
    task = asyncio.create_task(node.run(publish=False))
    acks: list[tuple[int, tuple[int, ...]]] = []
    try:
        await until(node.ready.is_set, what="the node's session")
        async with aiomqtt.Client("127.0.0.1", broker.port) as gw:
            await gw.subscribe("stat/wattmesh_7/ACK", qos=1)
            collect = asyncio.create_task(_acks(gw, acks))
            on = _command(5, 0, frame.A_ON)  # captured on the broker by an attacker
            await gw.publish("cmnd/wattmesh_7/FRAME", on, qos=1)
            await gw.publish("cmnd/wattmesh_7/FRAME", _command(6, 0, frame.A_OFF), qos=1)
            await until(lambda: len(acks) == 2, what="two ACKs")
            await gw.publish("cmnd/wattmesh_7/FRAME", on, qos=1)  # the replay
            # a later genuine command to relay 1: its ACK is the next frame on the topic (one
            # publisher, one subscriber, in order), so a replay's ACK would come before it
            await gw.publish("cmnd/wattmesh_7/FRAME", _command(7, 1, frame.A_ON), qos=1)
            await until(lambda: len(acks) >= 3, what="the third ACK")
            collect.cancel()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        broker.stop()
    assert acks == [(50, (5, 0, frame.S_OK, 1)), (51, (6, 0, frame.S_OK, 0)),
                    (52, (7, 1, frame.S_OK, 1))]  # no sequence number burnt  # fmt: skip
    assert node.relay_state == 0b10  # relay 0 stayed off: the replayed ON did nothing
    assert node.seq == 53 and node.last_cmd_seq == 7 and node.commands == 3
    assert node.dropped == {"replay": 1}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """Nodes 7 and 12 provisioned with the broker's CA, a gateway account, the broker running."""
    monkeypatch.setenv("WATTMESH_WIFI_PASSWORD", "wifi")
    tls = broker_tls(tmp_path / "broker")
    nodes = {nid: provision_node(tmp_path, nid, tls.ca_cert) for nid in (7, 12)}
    gw = provision_gateway("home-1", tmp_path / "gw")
    broker = SecureBroker(tmp_path / "broker", {}, tls=tls,
                          lines=(nodes[7], nodes[12], tmp_path / "gw"))
    keys = json.loads((tmp_path / "nodes.json").read_text())["nodes"]
    try:
        yield Home(broker, nodes, {int(k): bytes.fromhex(v["key"]) for k, v in keys.items()},
                   Path(gw["password_file"]).read_text().strip(), tmp_path)
    finally:
        broker.stop()


@dataclasses.dataclass
class Home:
    broker: SecureBroker
    nodes: dict[int, Path]  # node id -> its provisioned folder
    keys: dict[int, bytes]
    gw_password: str
    tmp: Path

    def node(self, nid: int, config: Path | None = None, **kw: Any) -> MqttNodeEmulator:
        """Node ``nid`` reaching the broker as its config.json (``config``: another one) says,
        on the broker's real port."""
        acc = node_account(config or self.nodes[nid] / "config.json")
        acc = dataclasses.replace(acc, port=self.broker.port)
        return MqttNodeEmulator.with_account(nid, self.keys[nid], acc, **kw)


async def _frames_until(client: aiomqtt.Client, into: list[bytes], node_id: int) -> None:
    """Append each frame ``client`` receives to ``into``, up to one from ``node_id`` (10 s)."""
    async with asyncio.timeout(10):
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            into.append(m.payload)
            if frame.peek(m.payload)[1] == node_id:
                return


async def _session(node: MqttNodeEmulator) -> BaseException | None:
    """Run the node until its session is up (None) or its connection fails (the error)."""
    task = asyncio.create_task(node.run(publish=False))
    ready = asyncio.create_task(node.ready.wait())
    await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if task.done():
        return task.exception()
    assert node.ready.is_set(), "neither up nor failed in 15 s"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def test_a_provisioned_node_reaches_the_gateway_over_tls(home: Home) -> None:
    node = home.node(7)
    assert node.tls is not None and node.username == "wattmesh_7"
    task = asyncio.create_task(node.run(publish=False))
    got: list[bytes] = []
    try:
        async with home.broker.client("gateway-home-1", home.gw_password) as gw:
            await gw.subscribe("tele/wattmesh_7/FRAME", qos=1)
            await until(node.ready.is_set, what="the node's TLS session")
            await node.publish_reading()
            await _frames_until(gw, got, 7)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert frame.decode(home.keys[7], got[0], frame.UP)[:2] == (frame.T_READING, 7)


async def test_a_broker_certificate_from_another_ca_is_refused(home: Home) -> None:
    # the node's CA file replaced by another CA's: the broker's certificate does not chain to it
    stranger = make_tls(home.tmp / "stranger")
    home.nodes[7].joinpath("ca.crt").write_bytes(stranger.ca_cert.read_bytes())
    err = await _session(home.node(7))
    assert isinstance(err, aiomqtt.MqttError) and "CERTIFICATE_VERIFY_FAILED" in str(err), err


async def test_a_broker_certificate_for_another_host_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the right CA, but the broker's certificate names another host than the node dials
    monkeypatch.setenv("WATTMESH_WIFI_PASSWORD", "wifi")
    tls = make_tls(tmp_path / "named", hosts=("broker.example",))
    node = provision_node(tmp_path, 7, tls.ca_cert)
    (tmp_path / "broker").mkdir()
    broker = SecureBroker(tmp_path / "broker", {}, lines=(node,), tls=tls)
    try:
        key = bytes.fromhex(json.loads((tmp_path / "nodes.json").read_text())["nodes"]["7"]["key"])
        acc = dataclasses.replace(node_account(node / "config.json"), port=broker.port)
        err = await _session(MqttNodeEmulator.with_account(7, key, acc))
    finally:
        broker.stop()
    assert isinstance(err, aiomqtt.MqttError) and "IP address mismatch" in str(err), err


async def test_a_wrong_password_is_refused(home: Home) -> None:
    cfg = home.nodes[7] / "config.json"
    doc = json.loads(cfg.read_text())
    doc["mqtt"]["password"] = "not-the-password"
    wrong = home.tmp / "wrong" / "config.json"
    wrong.parent.mkdir()
    wrong.write_text(json.dumps(doc))
    (wrong.parent / "ca.crt").write_bytes((home.nodes[7] / "ca.crt").read_bytes())
    err = await _session(home.node(7, wrong))
    assert isinstance(err, aiomqtt.MqttError) and "not authorized" in str(err).lower(), err


async def test_a_node_cannot_publish_on_another_nodes_topics(home: Home) -> None:
    """Node 7's account, set up (or tampered with) to speak as node 12: the broker's ACL drops
    what it publishes; node 12's own frame arrives."""
    posing = home.node(7, topic="wattmesh_12")
    own = home.node(12)
    tasks = [asyncio.create_task(n.run(publish=False)) for n in (posing, own)]
    got: list[bytes] = []
    try:
        async with home.broker.client("gateway-home-1", home.gw_password) as gw:
            await gw.subscribe("tele/wattmesh_12/FRAME", qos=1)
            await until(lambda: posing.ready.is_set() and own.ready.is_set(), what="sessions")
            for _ in range(3):
                await posing.publish_reading()  # QoS 1: the broker has it when this returns
            await own.publish_reading()
            await _frames_until(gw, got, 12)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert [frame.peek(g)[1] for g in got] == [12] and posing.sent == 3
