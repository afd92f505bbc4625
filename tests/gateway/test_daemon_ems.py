"""The daemon runs the home energy management system from its config: the plan switches a
node's relay through the real broker at slot edges, and a bad ``[ems]`` section is named."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.clock import ManualClock
from gateway.config import GatewayConfigError
from gateway.config_parse import load_config
from gateway.daemon import Gateway
from gateway.dr_inbox import sign_request
from gateway.ems.timegrid import SLOT_MS
from hardware.emulators.mqtt_node import MqttNodeEmulator
from hardware.emulators.profiles import constant
from tests.gateway.conftest import Broker, collect_json, until
from tests.gateway.fakes import MemoryLedger
from tests.gateway.test_daemon_hil import KEY7, T0, write_config

RELAY = 1  # the boiler hangs on the node's second relay
MIN = 60_000


def _hhmm(ms: int) -> str:
    return time.strftime("%H:%M", time.gmtime(ms // 1000))


def ems_config(tmp: Path, mqtt_port: int, extra: str = "", **boiler: object) -> Path:
    """The HIL home's config plus an ``[ems]`` section with one flexible appliance: a boiler
    that must run 30 minutes within the hour starting at the slot T0 falls in."""
    cfg = write_config(tmp, mqtt_port, 1)
    start = T0 - T0 % SLOT_MS
    row = {
        "name": "boiler", "flexible": True, "start": _hhmm(start),
        "end": _hhmm(start + 4 * SLOT_MS), "working_min": 30, "power_w": 2000,
        "node": 7, "relay": RELAY,
    } | boiler  # fmt: skip
    (tmp / "appliances.json").write_text(json.dumps({"appliances": [row]}))
    text = cfg.read_text().replace("flush_ms = 1000", "flush_ms = 60000")
    cfg.write_text(text + f'\n[ems]\nappliances = "appliances.json"\nsite_meter = "main"\n{extra}')
    return cfg


async def _walk_slots(gw: Gateway, clock: ManualClock, node: MqttNodeEmulator) -> list[bool]:
    """The boiler relay's state in each of six slots (the window's four and two after it), as
    the node has it at the end of the slot."""
    ems = gw.ems
    assert ems is not None

    async def minute() -> None:
        """A minute of gateway time; then let a relay command reach the node and its ack come
        back over the broker (real IO) before the clock moves on and times the ack out."""
        await clock.advance(MIN)
        await until(lambda: not any(r.in_flight for r in ems.relays.relays.values()))

    on_in_slot: list[bool] = []
    for _ in range(6):
        while clock.now_ms() % SLOT_MS < SLOT_MS - MIN:
            await minute()
        want = ems.relays.state("boiler")
        assert want is not None, "the relay's state is still unknown"
        await until(lambda w=want: bool(node.relay_state >> RELAY & 1) == w, what="relay")
        on_in_slot.append(want)
        await minute()  # the next slot edge: the EMS steps
    return on_in_slot


@pytest.fixture
async def nodes() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Node emulator tasks, cancelled after the test."""
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


DSO = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
DSO_SIGNER = f'[ems.dr_signers]\ndso = ["{DSO.public_key().public_bytes_raw().hex()}"]\n'


async def _home(
    tmp_path: Path, broker: Broker, nodes: list[asyncio.Task[None]]
) -> tuple[ManualClock, MqttNodeEmulator, Gateway]:
    clock = ManualClock(T0)
    node = MqttNodeEmulator(
        7, KEY7, "127.0.0.1", broker.port, profile=constant(600.0), clock=clock.now_ms, relays=2
    )
    nodes.append(asyncio.create_task(node.run(publish=False)))
    await until(node.ready.is_set, what="node connected")
    cfg = load_config(ems_config(tmp_path, broker.port, DSO_SIGNER))
    assert cfg.ems is not None and [a.name for a in cfg.ems.appliances] == ["boiler"]
    return clock, node, Gateway(cfg, clock=clock, deliverer=MemoryLedger())


async def test_the_daemon_switches_the_planned_relay_at_slot_edges(
    tmp_path: Path, broker: Broker, nodes: list[asyncio.Task[None]]
) -> None:
    clock, node, gw = await _home(tmp_path, broker, nodes)
    run = asyncio.create_task(gw.run())
    try:
        await until(lambda: gw.sources[0].stats().get("connects", 0) > 0, what="gateway up")
        # the broker link comes up after the EMS's first step: the first command fails and
        # goes again within a minute, not a slot later
        on_in_slot = await _walk_slots(gw, clock, node)
    finally:
        gw.stop()
        await run
    assert gw.ems is not None
    assert all(not r.errors for r in gw.ems.reports), [r.errors for r in gw.ems.reports]
    # 30 minutes = two slots inside the window, contiguous, and off after it
    assert sum(on_in_slot[:4]) == 2 and on_in_slot[4:] == [False, False], on_in_slot
    first = on_in_slot.index(True)
    assert on_in_slot[first : first + 2] == [True, True]


async def test_a_demand_response_request_over_mqtt_sheds_the_boiler(
    tmp_path: Path, broker: Broker, nodes: list[asyncio.Task[None]]
) -> None:
    """The grid operator asks for no import during the boiler's whole window: the home answers
    on the result topic and the boiler stays off (it is shed, and the plan says so)."""
    clock, node, gw = await _home(tmp_path, broker, nodes)
    start = T0 - T0 % SLOT_MS
    request = {"id": "dso-1", "to": "home-1", "role": "dso", "start": _iso(start),
               "end": _iso(start + 4 * SLOT_MS), "max_w": 0}
    answers: list[dict[str, object]] = []
    run = asyncio.create_task(gw.run())
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("wattmesh/home-1/ems/dr/result")

            collector = collect_json(client, answers)
            assert gw.dr_inbox is not None
            await until(gw.dr_inbox.subscribed.is_set, what="inbox subscribed")
            await client.publish("wattmesh/home-1/ems/dr", b'{"start": "soon"}')
            await client.publish("wattmesh/home-1/ems/dr", sign_request(DSO, request))
            await until(lambda: len(answers) == 2, what="two answers")
            collector.cancel()
        assert answers[0]["ok"] is False and "unsigned" in str(answers[0]["error"])
        assert answers[1]["ok"] is True and answers[1]["max_w"] == 0
        on_in_slot = await _walk_slots(gw, clock, node)
    finally:
        gw.stop()
        await run
    assert on_in_slot == [False] * 6, on_in_slot
    assert gw.ems is not None and any(
        "boiler" in note and "shed" in note for r in gw.ems.reports for note in r.notes
    ), [r.notes for r in gw.ems.reports]


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('pv_meter = "roof"', "ems.pv_meter: 'roof' is not a configured meter"),
        ("limit_w = 0", r"ems.limit_w: 0 is outside"),
        ("horizon_slots = 500", r"ems.horizon_slots: 500 is outside"),
        ('model = "crystal_ball"', "ems.model: 'crystal_ball' is not one of"),
        ('id_grid = "PT0001"', r"ems.id_grid: trading needs a \[ledger\]"),
        ("retail_peak = 10\nfeed_in = 20", "ems: feed-in 20 exceeds a retail price"),
        ("peak_hours = [13, 25]", r"ems.peak_hours: expected \[start, end\]"),
        ("colour = 1", "ems.colour: unknown key"),
        ('[ems.dr_signers]\ndso = ["ab"]', r"ems.dr_signers.dso\[0\]: expected an Ed25519"),
        ('[ems.dr_signers]\nking = []', "ems.dr_signers.king: unknown key"),
        ('sealed_orders = "yes"', "ems.sealed_orders: expected bool, got str"),
        ("commit_deposit = -1", r"ems.commit_deposit: -1 is outside"),
        ("commit_deposit = true", "ems.commit_deposit: expected int, got bool"),
    ],
)
def test_a_bad_ems_section_is_named(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(GatewayConfigError, match=message):
        load_config(ems_config(tmp_path, 1883, extra))


def test_a_bad_appliance_spec_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        GatewayConfigError, match=r"ems.appliances: .*boiler: node 9 is not configured"
    ):
        load_config(ems_config(tmp_path, 1883, node=9))
    with pytest.raises(GatewayConfigError, match=r"ems.appliances: .*power_w"):
        load_config(ems_config(tmp_path, 1883, power_w=-5))
    path = ems_config(tmp_path, 1883)
    (tmp_path / "appliances.json").write_text('{"appliances": [')
    with pytest.raises(GatewayConfigError, match=r"ems.appliances: .*not JSON"):
        load_config(path)
