"""``wattmesh node calibrate``: calibrate a node's CT channel with a known resistive load.

As Tasmota's VoltageSet, CurrentSet and PowerSet: put a load whose voltage, current or power is
known (a kettle or heater measured with a certified meter) on the channel, wait one frame
(``publish_s``, 5 s), then give what it draws. The command goes to the node as an authenticated
``T_CALIBRATE`` frame (the node's HMAC key from the gateway's keystore, a sequence number newer than
any command before); the node scales its constants so that its last frame's reading becomes the
truth, checks them against its board's (within x0.5..x2), keeps them in flash across reboots and
power cuts, and answers with an ACK. Over MQTT the command is published on
``cmnd/<topic>/FRAME`` and the ACK awaited on ``stat/<topic>/ACK``, as the gateway
(``--gateway-config``: its broker, TLS and account, the one allowed to command nodes) or to a
plain broker (``--mqtt``); ``--print-frame`` prints the frame in hex for any other way to the
node (BLE, a serial console, the host VM's stdin).

A resistive load calibrates the gains; the phase needs a reactive load (give its voltage, current
and power: the angle comes from them) or the gateway's multi-point calibration against the
home's Modbus meter (``gateway/calibration.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware import frame
from gateway.calibration import CalibrationError, reference_payload
from ledger.argtypes import float_in, int_in
from tools.cli_error import CliError, reporting
from tools.firmware_cli import load_keystore

if TYPE_CHECKING:
    import aiomqtt

PROFILE = json.loads((Path(__file__).resolve().parent.parent / "hardware" / "node_profile.json")
                     .read_text())["mqtt"]
STATUS = {frame.S_OK: "ok", frame.S_REPLAY: "replay", frame.S_BAD_CALIBRATION: "refused"}


def _power(text: str) -> float:
    value = float_in(-1_000_000, 1_000_000, "--power")(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"--power {text!r}: must not be 0")
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "1883")
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mqtt: {port!r} is not a port") from None
    if not host or not 0 < p < 65536:
        raise argparse.ArgumentTypeError("--mqtt: HOST[:PORT], port 1..65535")
    return host, p


def calibration_frame(args: argparse.Namespace) -> tuple[bytes, int, str, bytes]:
    """(frame, seq, MQTT topic, key) of the command the arguments ask for."""
    store = load_keystore(Path(args.keystore))
    entry = store["nodes"].get(str(args.id))
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise CliError(f"--id: node {args.id} has no key in {args.keystore}")
    try:
        key = bytes.fromhex(entry["key"])
    except ValueError:
        raise CliError(f"{args.keystore}: node {args.id}: the key is not hex") from None
    if len(key) != 32:
        raise CliError(f"{args.keystore}: node {args.id}: the key is not 32 bytes")
    try:
        payload = reference_payload(args.channel, args.voltage or 0.0, args.current or 0.0,
                                    args.power or 0.0)
    except CalibrationError as exc:
        raise CliError(f"--voltage/--current/--power: {exc}") from None
    seq = args.seq if args.seq is not None else int(time.time())
    raw = frame.encode(key, frame.T_CALIBRATE, args.id, seq, payload)
    topic = args.topic or str(entry.get("name") or f"wattmesh_{args.id}")
    return raw, seq, topic, key


async def send_over_mqtt(connect: Callable[[], aiomqtt.Client], topic: str, raw: bytes,
                         key: bytes, node_id: int, seq: int, timeout_s: float) -> int:
    """Publish the command on the connection ``connect()`` makes, return the node's ack status;
    TimeoutError without one."""
    async with connect() as client:
        await client.subscribe(PROFILE["ack_frame"].format(topic=topic), qos=1)
        await client.publish(PROFILE["command_frame"].format(topic=topic), raw, qos=1)
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    continue
                try:
                    ftype, nid, _s, body = frame.decode(key, bytes(payload))
                    if ftype != frame.T_ACK or nid != node_id:
                        continue
                    cmd_seq, _channel, status, _state = frame.unpack_ack(body)
                except frame.FrameError:
                    continue  # not the node's, or not an ack: wait on
                if cmd_seq == seq:
                    return int(status)
    raise TimeoutError


def _cmd_calibrate(args: argparse.Namespace) -> int:
    if not (args.voltage or args.current or args.power):
        raise CliError("give the known load: --voltage, --current and/or --power")
    if args.mqtt is None and args.gateway_config is None and not args.print_frame:
        raise CliError("--gateway-config FILE (the gateway's broker, TLS and account) or "
                       "--mqtt HOST[:PORT] to send the command, or --print-frame")
    raw, seq, topic, key = calibration_frame(args)
    if args.print_frame:
        print(json.dumps({"frame": raw.hex(), "seq": seq, "node_id": args.id}))
        return 0
    import aiomqtt

    from gateway.broker import explain

    flag, connect = _connection(args)
    try:
        status = asyncio.run(send_over_mqtt(connect, topic, raw, key, args.id, seq,
                                            args.timeout))
    except TimeoutError:
        raise CliError(f"node {args.id}: no ack on {topic} within {args.timeout} s") from None
    except aiomqtt.MqttError as exc:
        raise CliError(f"{flag}: {explain(exc)}") from None
    except OSError as exc:
        raise CliError(f"{flag}: {exc}") from None
    print(json.dumps({"node_id": args.id, "channel": args.channel, "seq": seq,
                      "status": STATUS.get(status, str(status))}))
    return 0 if status == frame.S_OK else 1


def _connection(args: argparse.Namespace) -> tuple[str, Callable[[], aiomqtt.Client]]:
    """(the flag that named the broker, a maker of the connection): the gateway's own broker
    session (TLS with its CA and host name checked, its account, whose ACL may command nodes),
    or a plain one to ``--mqtt``."""
    import aiomqtt

    if args.gateway_config is not None:
        from gateway.broker import broker_client
        from gateway.config import GatewayConfigError
        from gateway.config_parse import load_config
        from gateway.credentials import mqtt_password, tls_context

        try:
            mqtt = load_config(args.gateway_config).mqtt
            if mqtt is None:
                raise GatewayConfigError("no [mqtt] section: the gateway has no broker")
            mqtt_password(mqtt)  # read now: a missing or open password file is a clear error
            tls_context(mqtt)
        except GatewayConfigError as exc:
            raise CliError(f"--gateway-config: {exc}") from None
        return (f"--gateway-config: broker {mqtt.host}:{mqtt.port}",
                lambda: broker_client(mqtt, "calibrate"))
    host, port = args.mqtt
    return f"--mqtt: {host}:{port}", lambda: aiomqtt.Client(host, port)


def register(subparsers: Any) -> None:
    node = subparsers.add_parser("node", help="talk to a provisioned node")
    sub = node.add_subparsers(dest="node_command", metavar="WHAT", required=True)
    c = sub.add_parser("calibrate", help="calibrate a CT channel with a known load (Tasmota's "
                                         "VoltageSet/CurrentSet/PowerSet)")
    c.add_argument("--keystore", required=True, help="the gateway's keystore (JSON)")
    c.add_argument("--id", type=int_in(0, 0xFFFF, "--id"), required=True, help="node id")
    c.add_argument("--channel", type=int_in(0, 255, "--channel"), default=0)
    c.add_argument("--voltage", type=float_in(0, 1000, "--voltage", above_lo=True),
                   help="V of the load")
    c.add_argument("--current", type=float_in(0, 1000, "--current", above_lo=True),
                   help="A of the load")
    c.add_argument("--power", type=_power, help="W of the load (negative: export)")
    c.add_argument("--gateway-config", metavar="TOML",
                   help="the gateway's config: its broker, TLS and account send the command")
    c.add_argument("--mqtt", type=_host_port,
                   help="the node's broker, HOST[:PORT], plain and anonymous (tests, demos)")
    c.add_argument("--topic", help="the node's MQTT topic (default: its keystore name)")
    c.add_argument("--timeout", type=float_in(0, 600, "--timeout", above_lo=True), default=10.0)
    c.add_argument("--seq", type=int_in(1, 0xFFFFFFFF, "--seq"),
                   help="command sequence number (default: the time in s, newer than any before)")
    c.add_argument("--print-frame", action="store_true", help="print the frame, send nothing")
    c.set_defaults(func=reporting(_cmd_calibrate))
