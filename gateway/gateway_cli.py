"""``wattmesh gateway run|check``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sqlite3
import sys
from typing import Any

from gateway.config import GatewayConfig, GatewayConfigError, load_keystore
from gateway.config_parse import load_config


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("gateway", help="the home gateway daemon")
    sub = p.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run the daemon (SIGTERM flushes and stops cleanly)")
    run.add_argument("--config", required=True, help="gateway TOML config")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate the config and probe each device")
    check.add_argument("--config", required=True, help="gateway TOML config")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds per probe")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(func=cmd_check)
    status = sub.add_parser("status", help="what the daemon last saved, outbox, DR, ledger")
    status.add_argument("--config", required=True, help="gateway TOML config")
    status.add_argument("--timeout", type=float, default=3.0, help="seconds for the ledger")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)
    pub = sub.add_parser("pubkey", help="the gateway's public key (the key is made if missing)")
    pub.add_argument("--config", required=True, help="gateway TOML config")
    pub.set_defaults(func=cmd_pubkey)
    pk = sub.add_parser(
        "ble-passkey",
        help="a BLE node's pairing passkey, for BlueZ's agent (bluetoothctl) when pairing once",
    )
    pk.add_argument("--config", required=True, help="gateway TOML config")
    pk.add_argument("--node", required=True, type=int, help="the BLE node's id")
    pk.set_defaults(func=cmd_ble_passkey)


def _load(path: str) -> GatewayConfig | None:
    """The config, checked for everything ``run`` relies on (``gateway.preflight``)."""
    from gateway.preflight import preflight

    try:
        cfg = load_config(path)
        preflight(cfg)
        if cfg.keystore is not None:
            load_keystore(cfg.keystore, cfg.nodes)
    except GatewayConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = _load(args.config)
    if cfg is None:
        return 2
    from gateway.daemon import Gateway

    async def main() -> int:
        try:
            gw = Gateway(cfg)
        except GatewayConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, gw.stop)
        logging.getLogger("gateway").info(
            "gateway %s running: %d nodes, %d buses", cfg.gateway_id, len(cfg.nodes), len(cfg.buses)
        )
        await gw.run()
        logging.getLogger("gateway").info("stopped cleanly: %s", json.dumps(gw.stats()))
        return 0

    return asyncio.run(main())


async def probe_all(cfg: GatewayConfig, timeout_s: float) -> list[dict[str, Any]]:
    """One entry per device: {"device", "ok", "detail"}."""
    from gateway.clock import SystemClock
    from gateway.sources.modbus import ModbusBus, ReadFailed

    results: list[dict[str, Any]] = []
    clock = SystemClock()
    for bus_cfg in cfg.buses:
        bus = ModbusBus(bus_cfg, lambda r: None, clock)
        try:
            if not await asyncio.wait_for(_connect(bus), timeout_s):
                for m in bus.meters:
                    results.append(
                        {
                            "device": f"modbus {bus_cfg.name}/{m.cfg.meter_id}",
                            "ok": False,
                            "detail": "cannot open the bus",
                        }
                    )
                continue
            for m in bus.meters:
                name = f"modbus {bus_cfg.name}/{m.cfg.meter_id}"
                try:
                    r = await bus.poll_meter(m)
                    results.append(
                        {
                            "device": name,
                            "ok": True,
                            "detail": f"{m.cfg.model} unit {m.cfg.unit}: {r.power_dw / 10:.1f} W, "
                            f"{r.import_mwh / 1e6:.3f} kWh imported",
                        }
                    )
                except ReadFailed as exc:
                    results.append({"device": name, "ok": False, "detail": exc.kind})
        except (TimeoutError, OSError) as exc:
            results.append({"device": f"modbus {bus_cfg.name}", "ok": False, "detail": repr(exc)})
        finally:
            bus.close()
    if cfg.mqtt is not None:
        results += await _probe_mqtt(cfg, timeout_s)
    for n in cfg.nodes:
        if n.transport == "ble":
            results.append(await _probe_ble(cfg, n.node_id, n.address, timeout_s))
    if cfg.ledger is not None:
        results.append(await _probe_ledger(cfg, timeout_s))
    return results


async def _probe_ble(
    cfg: GatewayConfig, node_id: int, address: str, timeout_s: float
) -> dict[str, Any]:
    """Connect with the real bleak API (through the configured backend, with the daemon's bonds:
    a bonded node's link is encrypted, as the daemon's would be) and look for the node's GATT
    service. No pairing: that is the daemon's first connect."""
    name = f"ble node {node_id} ({address})"
    try:
        from bleak import BleakClient

        from hardware.ble.profile import PROFILE

        backend = None
        if cfg.ble_backend.startswith("bumble:"):
            from hardware.ble.bleak_bumble import backend_from_spec

            backend = backend_from_spec(cfg.ble_backend, cfg.ble_bond_store)
        async with asyncio.timeout(timeout_s + 1):
            async with BleakClient(address, timeout=timeout_s, backend=backend) as client:
                uuids = {str(s.uuid).lower() for s in client.services}
        if PROFILE.service_uuid.lower() not in uuids:
            return {"device": name, "ok": False, "detail": "no wattmesh GATT service"}
    except Exception as exc:  # any failure to reach the node is the probe's answer
        return {"device": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    return {"device": name, "ok": True, "detail": "connected, wattmesh service found"}


async def _connect(bus: Any) -> bool:
    if bus._client is None:
        bus._client = bus._make_client()
    return bool(await bus._client.connect())


async def _probe_mqtt(cfg: GatewayConfig, timeout_s: float) -> list[dict[str, Any]]:
    import aiomqtt

    from gateway.broker import broker_client, explain
    from gateway.sources.mqtt import topic_for

    assert cfg.mqtt is not None
    out: list[dict[str, Any]] = []
    nodes = [n for n in cfg.nodes if n.transport == "mqtt"]
    status: dict[str, str] = {}
    try:
        async with broker_client(cfg.mqtt, "check", timeout_s=timeout_s) as client:
            out.append(
                {
                    "device": f"mqtt broker {cfg.mqtt.host}:{cfg.mqtt.port}",
                    "ok": True,
                    "detail": "connected",
                }
            )
            for n in nodes:
                await client.subscribe(topic_for("lwt", n.topic))
            try:
                async with asyncio.timeout(timeout_s if nodes else 0):
                    async for msg in client.messages:
                        status[str(msg.topic)] = (
                            msg.payload.decode(errors="replace")
                            if isinstance(msg.payload, bytes)
                            else str(msg.payload)
                        )
                        if len(status) == len(nodes):
                            break
            except TimeoutError:
                pass
    except aiomqtt.MqttError as exc:
        out.append(
            {
                "device": f"mqtt broker {cfg.mqtt.host}:{cfg.mqtt.port}",
                "ok": False,
                "detail": explain(exc),
            }
        )
        return out
    for n in nodes:
        s = status.get(topic_for("lwt", n.topic))
        out.append(
            {
                "device": f"mqtt node {n.node_id} ({n.topic})",
                "ok": s == "Online",
                "detail": f"last will: {s}" if s else "never seen on the broker",
            }
        )
    return out


async def _probe_ledger(cfg: GatewayConfig, timeout_s: float) -> dict[str, Any]:
    assert cfg.ledger is not None
    name = f"ledger cluster {cfg.ledger.cluster.name}"
    try:
        from ledger_client.client import LedgerClient

        client = LedgerClient.from_cluster_file(cfg.ledger.cluster, timeout_s=timeout_s)
        try:
            await client.start()
            height = await client.height()
        finally:
            await client.close()
    except Exception as exc:
        return {"device": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    return {"device": name, "ok": True, "detail": f"reachable, height {height}"}


def calibration_status(cfg: GatewayConfig) -> dict[str, Any]:
    """Each ``[[calibration]]`` channel (``"<node>.<channel>"``) as the daemon would start it:
    its state from the store's record (``applied``, ``refused``, ``fitted``: done, not sent
    again) or ``collecting`` (it will calibrate), with the record's constants."""
    from gateway.calibrator import KEY_PREFIX, Calibrator
    from gateway.store import read_states

    if not cfg.calibrations:
        return {}
    records = read_states(cfg.db_path, KEY_PREFIX)
    return Calibrator(cfg.calibrations, records, []).status()


def _describe(key: str, c: dict[str, Any]) -> str:
    node, _, channel = key.partition(".")
    head = f"calibration: node {node} channel {channel} against {c['reference']}: "
    rec = c.get("record")
    if c["state"] == "collecting":
        done = f" (last: {rec['state']} in round {rec['round']})" if rec else ""
        verb = "will calibrate and apply" if c["apply"] else "will fit (apply = false: not sent)"
        return head + f"{verb}, round {c['round']}{done}"
    assert rec is not None
    return head + (f"{rec['state']} in round {rec['round']}: ical {rec['ical']:.4f}, "
                   f"vcal {rec['vcal']:.3f}, phase {rec['phase_deg']:+.2f} deg "
                   f"(raise round to calibrate again)")


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    try:
        calibration = calibration_status(cfg)
    except sqlite3.Error as exc:
        print(f"cannot read the store {cfg.db_path}: {exc}", file=sys.stderr)
        return 2
    results = asyncio.run(probe_all(cfg, args.timeout))
    ems: dict[str, Any] | None = None
    if cfg.ems is not None:
        ems = {
            "appliances": [a.name for a in cfg.ems.appliances],
            "switched": [a.name for a in cfg.ems.appliances if a.relay is not None],
            "site_meter": cfg.ems.runner.site_meter,
            "trading_as": cfg.ems.id_grid,
            "notes": list(cfg.ems.notes),
        }
    if args.json:
        print(json.dumps({"config": "ok", "devices": results, "ems": ems,
                          "calibration": calibration}, indent=1))
    else:
        print(
            f"config ok: gateway {cfg.gateway_id}, {len(cfg.nodes)} nodes, {len(cfg.buses)} buses"
        )
        if ems is not None:
            print(
                f"ems: {len(ems['appliances'])} appliances, {len(ems['switched'])} switched by "
                f"relays, site meter {ems['site_meter']}"
                + (f", trading as {ems['trading_as']}" if ems["trading_as"] else "")
            )
            for note in ems["notes"]:
                print(f"ems: {note}")
        for key, c in calibration.items():
            print(_describe(key, c))
        for r in results:
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['device']}: {r['detail']}")
    return 0 if all(r["ok"] for r in results) else 1


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from gateway.status import StatusError, read_status, render

    try:
        cfg = load_config(args.config)
    except GatewayConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    now = int(time.time() * 1000)
    try:
        status = read_status(cfg.db_path, now)
    except StatusError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 1
    if cfg.ledger is not None:
        status["ledger"] = asyncio.run(_probe_ledger(cfg, args.timeout))
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print("\n".join(render(status, now)))
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    """What the operator registers the home's meters with (``wattmesh operator meter add
    --gateway-key``). The key is made (mode 0600) if the daemon has not made it yet."""
    from gateway.build import load_or_create_key
    from ledger.keys import KeyFileError, public_hex

    cfg = _load(args.config)
    if cfg is None:
        return 2
    try:
        key = load_or_create_key(cfg.key_file)
    except (KeyFileError, OSError) as exc:
        print(f"gateway.key_file: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"gateway_id": cfg.gateway_id, "member": cfg.member,
                      "public_key": public_hex(key)}))
    return 0


def cmd_ble_passkey(args: argparse.Namespace) -> int:
    """The six digits a BLE node pairs with (``firmware.ble_guard.passkey`` of its key). The
    bumble backend types them itself; on BlueZ the installer pairs each node once with
    ``bluetoothctl`` (``agent KeyboardOnly``, ``pair <address>``) and types them, after which
    BlueZ keeps the bond. Printed, never passed on a command line; treat it as a secret."""
    from firmware import ble_guard

    cfg = _load(args.config)
    if cfg is None:
        return 2
    node = next((n for n in cfg.nodes if n.node_id == args.node and n.transport == "ble"), None)
    if node is None or cfg.keystore is None:
        print(f"ble.nodes: no BLE node {args.node} in {args.config}", file=sys.stderr)
        return 2
    key = load_keystore(cfg.keystore, cfg.nodes)[node.node_id]
    print(json.dumps({"node_id": node.node_id, "address": node.address,
                      "passkey": f"{ble_guard.passkey(key):06d}"}))
    return 0
