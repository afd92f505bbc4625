"""Home Assistant publishing: discovery payloads and the per-meter rate limit, on a real broker."""

from __future__ import annotations

import asyncio

import aiomqtt

from gateway.clock import ManualClock
from gateway.config import MqttConfig
from gateway.ingest import MeterInfo
from gateway.publish import HaPublisher, discovery_messages
from gateway.store import Reading
from tests.gateway.conftest import Broker, collect_json, until

T0 = 1_795_000_000_000


def test_discovery_payloads_follow_the_convention() -> None:
    msgs = dict(discovery_messages(MqttConfig(), "gw 1", MeterInfo("pv/roof", "sdm120")))
    assert set(msgs) == {
        f"homeassistant/sensor/gw_1_pv_roof/{o}/config"
        for o in ("power", "energy_import", "energy_export")
    }
    power = msgs["homeassistant/sensor/gw_1_pv_roof/power/config"]
    assert power["unique_id"] == "gw_1_pv_roof_power"
    assert power["value_template"] == "{{ value_json.power_w }}"
    assert power["device"]["model"] == "sdm120"  # type: ignore[index]


async def test_rate_limited_state_is_published_when_its_time_comes(broker: Broker) -> None:
    clock = ManualClock(T0)
    cfg = MqttConfig(port=broker.port, publish_min_s=10, discovery=False)
    pub = HaPublisher(cfg, "gw", [MeterInfo("m", "sdm120")], clock)
    states: list[dict[str, object]] = []
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("wattmesh/gw/m/state")

        collector = collect_json(client, states)
        task = asyncio.create_task(pub.run())
        try:
            await until(pub.connected.is_set)
            pub.offer(Reading("m", T0, 1_000, 5_000_000, 0, "modbus"))
            await until(lambda: len(states) == 1, what="first state")
            pub.offer(Reading("m", T0 + 1, 2_000, 5_000_001, 0, "modbus"))
            pub.offer(Reading("m", T0 + 2, 3_000, 5_000_002, 0, "modbus"))
            for _ in range(50):  # let the publisher react to both offers
                await asyncio.sleep(0)
            assert pub.published == 1  # held back: 10 s have not passed on the gateway's clock
            await clock.advance(10_000)
            await until(lambda: len(states) == 2, what="the held-back state")
            assert states[1]["power_w"] == 300.0 and states[1]["import_kwh"] == 5.000002
            assert pub.published == 2
        finally:
            task.cancel()
            collector.cancel()
            await asyncio.gather(task, collector, return_exceptions=True)


async def test_a_meter_added_while_connected_is_announced_before_its_state(
    broker: Broker,
) -> None:
    """A node's second clamp appears with its first frame, after the publisher connected: Home
    Assistant gets its discovery configs, then its state."""
    clock = ManualClock(T0)
    cfg = MqttConfig(port=broker.port, publish_min_s=0)
    pub = HaPublisher(cfg, "gw", [MeterInfo("n5", "node-mqtt")], clock)
    seen: list[str] = []
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("homeassistant/sensor/+/+/config")
        await client.subscribe("wattmesh/gw/+/state")

        async def collect() -> None:
            async for m in client.messages:
                seen.append(str(m.topic))

        collector = asyncio.create_task(collect())
        task = asyncio.create_task(pub.run())
        try:
            await until(pub.connected.is_set)
            await until(lambda: len(seen) == 3, what="the first meter's discovery")
            pub.add_meter(MeterInfo("n5.1", "node-mqtt"))
            pub.add_meter(MeterInfo("n5.1", "node-mqtt"))  # once is enough
            pub.offer(Reading("n5.1", T0, 1_000, 5_000_000, 0, "mqtt"))
            await until(lambda: "wattmesh/gw/n5.1/state" in seen, what="the new meter's state")
            new = [t for t in seen if "gw_n5_1" in t]
            assert len(new) == 3 and seen.index(new[-1]) < seen.index("wattmesh/gw/n5.1/state")
            assert [m.meter_id for m in pub.meters] == ["n5", "n5.1"]
        finally:
            task.cancel()
            collector.cancel()
            await asyncio.gather(task, collector, return_exceptions=True)
