"""Home Assistant publishing: discovery payloads and the per-meter rate limit, on a real broker."""

from __future__ import annotations

import asyncio
import re

import aiomqtt

from gateway.clock import ManualClock
from gateway.config import MqttConfig
from gateway.ingest import MeterInfo
from gateway.publish import HaPublisher, discovery_messages
from gateway.store import Reading
from tests.gateway.conftest import Broker, collect_json, until

T0 = 1_795_000_000_000


# Home Assistant's MQTT sensor discovery, as its documentation states it (MQTT Sensor, sensor
# device classes and state classes, the energy dashboard) and as HA 2025.10 changed it:
SENSOR_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "default_entity_id", "device", "device_class", "enabled_by_default", "encoding",
    "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "last_reset_value_template", "name",
    "options", "payload_available", "payload_not_available", "platform", "qos",
    "state_class", "state_topic", "suggested_display_precision", "unique_id",
    "unit_of_measurement", "value_template",
}  # fmt: skip
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer",
               "model", "model_id", "name", "serial_number", "suggested_area", "sw_version",
               "via_device"}  # fmt: skip
UNITS = {"power": {"W", "kW"}, "energy": {"Wh", "kWh", "MWh"}}
STATE_CLASSES = {"power": {"measurement"}, "energy": {"total", "total_increasing"}}


def check_ha_sensor_discovery(msgs: list[tuple[str, dict[str, object]]]) -> None:
    """The rules of HA's sensor discovery schema the gateway's messages must meet."""
    announced = {i for _, p in msgs for i in p["device"]["identifiers"]}  # type: ignore[index]
    unique: set[object] = set()
    for topic, p in msgs:
        assert topic.endswith("/config") and topic.split("/")[1] == "sensor", topic
        assert set(p) <= SENSOR_KEYS, set(p) - SENSOR_KEYS  # no object_id: deprecated
        assert p["unique_id"] not in unique
        unique.add(p["unique_id"])
        eid = p["default_entity_id"]
        assert isinstance(eid, str) and re.fullmatch(r"sensor\.[a-z0-9_]+", eid), eid
        assert "availability_topic" not in p or "availability" not in p  # one or the other
        avail = p["availability"]
        assert isinstance(avail, list) and avail and all(set(a) <= {
            "topic", "payload_available", "payload_not_available", "value_template"
        } and "topic" in a for a in avail)  # fmt: skip
        assert p["availability_mode"] in {"all", "any", "latest"}
        assert isinstance(p["expire_after"], int) and p["expire_after"] > 0
        dev = p["device"]
        assert isinstance(dev, dict) and set(dev) <= DEVICE_KEYS and dev["identifiers"]
        if "via_device" in dev:  # must name a device that is announced
            assert dev["via_device"] in announced, dev["via_device"]
        dclass = p["device_class"]
        assert p["unit_of_measurement"] in UNITS[dclass]  # type: ignore[index]
        assert p["state_class"] in STATE_CLASSES[dclass]  # type: ignore[index]


def test_discovery_meets_home_assistants_sensor_schema() -> None:
    cfg = MqttConfig()
    msgs = [m for meter in (MeterInfo("grid", "sdm630"), MeterInfo("heat-pump", "node-mqtt"),
                            MeterInfo("heat-pump.1", "node-mqtt"))
            for m in discovery_messages(cfg, "home-1", meter)]  # fmt: skip
    check_ha_sensor_discovery(msgs)
    by_topic = dict(msgs)
    grid = by_topic["homeassistant/sensor/home-1_grid/energy_import/config"]
    assert grid["state_class"] == "total_increasing"  # a Modbus register only grows
    assert grid["default_entity_id"] == "sensor.home_1_grid_energy_import"
    for obj in ("energy_import", "energy_export"):  # a node's counters can step back
        assert by_topic[f"homeassistant/sensor/home-1_heat-pump/{obj}/config"][
            "state_class"] == "total"  # fmt: skip
    assert grid["availability"] == [
        {"topic": "wattmesh/home-1/status"}, {"topic": "wattmesh/home-1/grid/availability"}
    ]


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
