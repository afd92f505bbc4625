"""Reports delivered to a real ledger cluster (four replica processes on loopback): the ledger is
stopped while intervals close and brought back; every report arrives exactly once, and a
re-submission after a lost acknowledgement is still applied only once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from firmware import frame
from gateway.clock import ManualClock
from gateway.config import Backoff, GatewayConfig, LedgerConfig, NodeConfig
from gateway.daemon import Gateway
from gateway.intervals import INTERVAL_MS, interval_name
from gateway.outbox import DELIVERED
from ledger.keys import load_key, new_key, public_hex, write_key
from ledger_client.client import LedgerClient
from tests.gateway.conftest import Replicas, until

# The gateway's clock starts two hours ago: the replicas stamp blocks with the real time, and the
# contract takes reports of intervals that have ended, within its report window (7 days).
_NOW = time.time_ns() // 1_000_000
T0 = _NOW - _NOW % INTERVAL_MS - 8 * INTERVAL_MS + 30_000
KEY7 = bytes(range(32))


def reading(seq: int, import_mwh: int, flags: int = 0) -> bytes:
    fields = dict.fromkeys(frame.READING_FIELDS, 0)
    fields.update(voltage_dv=2300, power_dw=6000, import_mwh=import_mwh, flags=flags)
    return frame.encode(KEY7, frame.T_READING, 7, seq, frame.pack_reading(fields))


async def test_ledger_stopped_and_brought_back(tmp_path: Path, replicas: Replicas) -> None:
    cluster = replicas.dir / "cluster.json"
    data = tmp_path / "gw"
    data.mkdir()
    write_key(data / "gateway.key", new_key())
    gw_pub = public_hex(load_key(data / "gateway.key"))
    replicas.start()
    operator = load_key(replicas.dir / "operator.key")
    async with LedgerClient.from_cluster_file(cluster, operator, timeout_s=30) as op:
        member = new_key()
        r = await op.submit_new(
            "registry.admit",
            {"id_grid": "PT0001", "commitment": "ab" * 32,
             "public_key": public_hex(member), "role": "consumer"},
        )  # fmt: skip
        assert r.ok, r
        r = await op.submit_new(
            "registry.add_meter",
            {"meter_id": "plug7", "owner": "PT0001", "gateway_key": gw_pub,
             "import_limit_w": 6_900, "export_limit_w": 0},
        )  # fmt: skip
        assert r.ok, r
    async with LedgerClient.from_cluster_file(cluster, member, timeout_s=30) as owner:
        r = await owner.submit_new("meter.confirm", {"meter_id": "plug7"})  # the owner consents
        assert r.ok, r
    replicas.stop()  # the ledger goes away before any interval closes

    cfg = GatewayConfig(
        gateway_id="home-1",
        data_dir=data,
        key_file=data / "gateway.key",
        keystore=None,
        nodes=(NodeConfig(7, "mqtt", "plug7", topic="wattmesh_7"),),
        ledger=LedgerConfig(cluster, timeout_s=1.0, retry=Backoff(1_000, 4_000)),
    )
    clock = ManualClock(T0)
    gw = Gateway(cfg, clock=clock, node_keys={7: KEY7}, node_sources=[])
    task = asyncio.create_task(gw.run())
    await until(gw._started.is_set)
    for minute in range(32):  # 600 W for 32 minutes: two intervals close
        # the node's ADC clipped once in the first interval: its report says so, signed
        clipped = frame.F_ADC_CLIPPED if minute == 5 else 0
        gw.on_frame(reading(minute + 1, minute * 10_000, clipped), "mqtt", clock.now_ms())
        await clock.advance(60_000)
    assert gw.store is not None
    rows = gw.store.outbox_all()
    assert len(rows) == 2 and all(r.state == "pending" for r in rows)
    store = gw.store
    await until(lambda: store.outbox_all()[0].attempts >= 1, what="a failed delivery")

    replicas.start()  # the ledger comes back

    async def delivered() -> None:
        while not all(r.state == DELIVERED for r in store.outbox_all()):
            await clock.advance(1_000)  # let the outbox's backoff expire
            await asyncio.sleep(0.05)

    await asyncio.wait_for(delivered(), 60)
    rows = store.outbox_all()
    assert [r.code for r in rows] == ["OK", "OK"]

    # The acknowledgement of the first report "was lost": the gateway sends it again.
    gw.store.db.execute(
        "UPDATE outbox SET state = 'pending', next_ms = 0 WHERE id = ?", (rows[0].id,)
    )
    # Any new entry wakes the delivery loop (this one is refused: the gateway is no member).
    gw.enqueue_tx("token.transfer", {"to": "PT0001", "amount": 1})
    await until(
        lambda: (again := store.outbox_get(rows[0].id)) is not None and again.state == DELIVERED,
        30,
        "resubmission",
    )
    gw.stop()
    await task

    async with LedgerClient.from_cluster_file(cluster, operator, timeout_s=30) as op:
        reports = await op.query("reports", meter_id="plug7")
    first = T0 - 30_000
    assert [(x["interval"], x["import_wh"]) for x in reports] == [
        (interval_name(first), 140),  # minutes 0..14 at 600 W, seen from 30 s in
        (interval_name(first + INTERVAL_MS), 150),
    ]
    # each report's quality flags reached the ledger as the gateway signed them (the clipped
    # reading in the first interval only)
    assert [x["flags"] for x in reports] == [list(r.body.get("flags", [])) for r in rows[:2]]
    assert "clipped" in reports[0]["flags"] and "clipped" not in reports[1]["flags"]


async def test_the_ems_reads_a_listing_clearing_from_the_ledger(
    tmp_path: Path, replicas: Replicas
) -> None:
    """What the daemon's EMS calls at each slot edge: nothing while the listing takes orders,
    then the listing with its trades, which the trading agent turns into its commitment."""
    from gateway.ems.agent import TradingAgent
    from gateway.ems.tariff import Tariff
    from gateway.ledger_link import LedgerDeliverer

    cluster = replicas.dir / "cluster.json"
    replicas.start()
    hour = "2026-11-24T13"
    seller, buyer = new_key(), new_key()
    operator = load_key(replicas.dir / "operator.key")
    async with LedgerClient.from_cluster_file(cluster, operator, timeout_s=30) as op:
        for who, key, role in (("PT0001", seller, "producer"), ("PT0002", buyer, "consumer")):
            body = {"id_grid": who, "commitment": "ab" * 32,
                    "public_key": public_hex(key), "role": role}  # fmt: skip
            assert (await op.submit_new("registry.admit", body)).ok
        res = {"res_id": "PV1", "owner": "PT0001", "kind": "PV", "rated_power_w": 3000}
        assert (await op.submit_new("registry.add_res", res)).ok
        assert (await op.submit_new("token.transfer", {"to": "PT0002", "amount": 10**9})).ok
        assert (await op.submit_new("auction.open", {"listing_id": hour})).ok
        ledger = LedgerDeliverer(cluster, buyer, 30.0)
        try:
            # a new community takes sealed orders: commitments now, reveals after the close
            assert await ledger.clearing(hour) is None  # still taking orders
            tariff = Tariff()
            sell = TradingAgent("PT0001", tariff, res_id="PV1", res_rated_w=3000, sealed=True)
            buy = TradingAgent("PT0002", tariff, sealed=True)
            buy.expected[13] = sell.expected[13] = 70_000
            offer, bid = sell.decide(hour, -1200), buy.decide(hour, 700)
            assert offer is not None and bid is not None and offer.kind == "auction.commit"
            async with LedgerClient.from_cluster_file(cluster, seller, timeout_s=30) as s, \
                    LedgerClient.from_cluster_file(cluster, buyer, timeout_s=30) as b:
                assert (await op.submit_new("token.transfer", {"to": "PT0001", "amount": 10**6})).ok
                assert (await s.submit_new(offer.kind, offer.body)).ok
                assert (await b.submit_new(bid.kind, bid.body)).ok
                assert (await op.submit_new("auction.close", {"listing_id": hour})).ok
                closed = await ledger.clearing(hour)
                assert closed is not None and closed["state"] == "REVEAL"
                for agent, client in ((sell, s), (buy, b)):
                    reveal = agent.reveal(hour)
                    assert reveal is not None
                    assert (await client.submit_new(reveal.kind, reveal.body)).ok
            assert (await op.submit_new("auction.clear", {"listing_id": hour})).ok
            result = await ledger.clearing(hour)
            assert result is not None and result["state"] == "BIDS_CLOSED"
            got = buy.read_clearing(result)
            assert (got.bought_wh, got.sold_wh) == (int(700 * 0.9), 0) and got.mcp == result["mcp"]
        finally:
            await ledger.close()
