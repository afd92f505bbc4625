"""The MQTT node emulator against a real mosquitto, taking commands as the firmware does
(issue 19, finding 4): a replayed command is neither executed nor answered nor counted as taken.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt

from firmware import frame
from hardware.emulators.mqtt_node import MqttNodeEmulator
from tests.gateway.conftest import Broker, until

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
