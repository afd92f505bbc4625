"""The gateway's configuration types, every one of them: what ``gateway.config_parse`` reads from
the TOML file (and checks once, at start) and what the parts of the gateway run with; the node
keystore's reader.

See ``deploy/gateway.example.toml`` for a commented example.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.ems.appliances import Appliance
from gateway.ems.tariff import Tariff
from gateway.intervals import INTERVAL_MS

if TYPE_CHECKING:  # the runner (numpy, the planner) only where [ems] is set
    from gateway.ems.runner import RunnerConfig

INTERVAL_MIN = INTERVAL_MS // 60_000

ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TOPIC_RE = re.compile(r"^[^#+/\s]{1,64}$")
MEMBER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")  # an id_grid: no ":", the scope separator
PUBKEY_RE = re.compile(r"^[0-9a-fA-F]{64}$")  # an Ed25519 public key in hex
DR_ROLES = ("operator", "dso")  # who may sign a demand-response request
BLE_ADDRESS_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")  # AA:BB:CC:DD:EE:FF
MAX_SILENCE_S = 86_400  # a day: a longer silence watchdog is a typo, not a setting
BLE_BOND_STORE = "ble-bonds.json"  # in data_dir unless ble.bond_store names a file

class GatewayConfigError(ValueError):
    """A config file that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    transport: str  # "ble" | "mqtt"
    meter_id: str
    address: str = ""  # BLE address
    topic: str = ""  # MQTT topic (Tasmota style)

    def channel_meter(self, channel: int) -> str:
        return self.meter_id if channel == 0 else f"{self.meter_id}.{channel}"


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait after ``attempts`` failed tries before the next: ``initial_ms``, doubled
    at each failure, never above ``max_ms`` (the ledger's retries ``[ledger] retry_*_s``, a
    silent meter's polls ``[[modbus.buses]] backoff_*_s``)."""

    initial_ms: int = 1_000
    max_ms: int = 300_000

    def delay_ms(self, attempts: int) -> int:
        return int(min(self.max_ms, self.initial_ms * (2 ** min(max(attempts - 1, 0), 30))))


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    cluster: Path
    timeout_s: float = 10.0
    retry: Backoff = Backoff()


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The home's broker. ``tls``: verify the broker's certificate against ``ca_file`` (the
    system's CAs without one) and its host name; the password is read from ``password_file``
    (owner-only) or the environment variable ``WATTMESH_MQTT_PASSWORD`` when connecting
    (``gateway.credentials``), never kept in the config file."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    base_topic: str = "wattmesh"
    publish_min_s: float = 10.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """One Modbus meter on a bus (``[[modbus.buses.meters]]``)."""

    meter_id: str
    model: str
    unit: int


@dataclass(frozen=True, slots=True)
class BusConfig:
    """One Modbus bus (``[[modbus.buses]]``): RS-485 line or TCP gateway, and its meters."""

    name: str
    meters: tuple[MeterConfig, ...]
    tcp: tuple[str, int] | None = None
    serial: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    poll_s: float = 10.0
    timeout_s: float = 1.0
    retries: int = 1
    backoff: Backoff = Backoff(5_000, 300_000)


@dataclass(frozen=True, slots=True)
class EmsConfig:
    """The home energy management system the daemon runs (``[ems]``): which appliances it
    switches (the spec file ``wattmesh ems plan`` reads, already loaded and checked), which
    meters it forecasts from and how (``runner``: the runner's own config, whose relay timeout
    the daemon sets from ``command_timeout_s``), the tariff it plans with, and, with
    ``id_grid``, the member it trades for (its orders go through the outbox to the ledger)."""

    appliances: tuple[Appliance, ...]
    runner: RunnerConfig
    tariff: Tariff = field(default_factory=Tariff)
    id_grid: str | None = None
    res_id: str | None = None
    res_rated_w: int = 0
    sealed_orders: bool = True  # the community's params.sealed_bids: commit, then reveal
    commit_deposit: int = 100_000  # its params.commit_deposit (micro-tokens)
    notes: tuple[str, ...] = ()  # what the repair policy changed in the spec
    dr_signers: tuple[tuple[str, str], ...] = ()  # (role, Ed25519 public key hex) of DR signers


@dataclass(frozen=True, slots=True)
class CalibrationConfig:
    """Automatic calibration of one node CT channel against a Modbus meter on the same circuit
    (``[[calibration]]``; ``gateway/calibration.py`` fits, ``gateway/calibrator.py`` runs it)."""

    node_id: int
    channel: int
    reference: str  # a configured Modbus meter
    voltage: str  # the reference map's voltage quantity
    ical: float  # the constants the node reads with now (its board's, or its config.json's)
    vcal: float
    phase_deg: float
    points: int = 4  # paired intervals (at loads differing by 20 % or more) before a fit
    interval_s: int = 60  # one paired interval
    apply: bool = False  # send the constants (False: fit, log and show only)
    round: int = 1  # raise it to calibrate again a channel the store says is done
    max_gain_change: float = 0.2  # a fit changing ical or vcal by more is refused
    max_phase_deg: float = 10.0  # ... or moving the phase by more


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    gateway_id: str
    data_dir: Path
    key_file: Path
    keystore: Path | None
    interval_ms: int = 15 * 60 * 1000
    grace_ms: int = 30_000
    replay_window: int = 64
    flush_ms: int = 1_000
    retention_days: int = 7
    command_timeout_s: float = 5.0
    ledger: LedgerConfig | None = None
    mqtt: MqttConfig | None = None
    ble_backend: str = "bleak"
    ble_silence_timeout_s: float | None = None  # None: no silence watchdog
    # the bumble backend's bonds with the nodes (owner-only; BlueZ keeps its own bonds);
    # None: <data_dir>/ble-bonds.json
    ble_bond_store_file: Path | None = None
    nodes: tuple[NodeConfig, ...] = ()
    buses: tuple[BusConfig, ...] = ()
    # Meters (and a node's channels, ``<meter_id>.<n>``) whose intervals are kept in the gateway
    # but not reported to the ledger: sub-meters, which the contract would count twice on top of
    # the member's billing meter. Empty (every meter reported) unless a config file says so.
    unreported: frozenset[str] = frozenset()
    ems: EmsConfig | None = None
    # the member (id_grid) this home belongs to: its meters are "<member>:<meter_id>" on the
    # ledger, so every home may call its meter "grid" (gateway.report.ledger_meter_id)
    member: str | None = None
    # the order key the member delegated to this gateway for its offers and bids
    # (gateway.signers); key_file is the meter-reporting key
    order_key_file: Path | None = None
    calibrations: tuple[CalibrationConfig, ...] = ()
    source: Path | None = field(default=None, compare=False)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.db"

    @property
    def ble_bond_store(self) -> Path:
        """Where the bumble BLE backend keeps its bonds (long-term keys: a secret)."""
        if self.ble_bond_store_file is not None:
            return self.ble_bond_store_file
        return self.data_dir / BLE_BOND_STORE

    def reports(self, meter_id: str) -> bool:
        """Whether a signed report of this meter's intervals goes to the ledger."""
        if meter_id in self.unreported:
            return False
        base, _, channel = meter_id.rpartition(".")  # channel n > 0 (NodeConfig.channel_meter)
        return not (is_decimal(channel) and base in self.unreported
                    and any(n.meter_id == base for n in self.nodes))


def is_decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes "²" (which ``int`` refuses) and other
    scripts' digits (which ``int`` reads, so one id could be spelled two ways)."""
    return text.isascii() and text.isdigit()


def load_keystore(path: Path, nodes: tuple[NodeConfig, ...]) -> dict[int, bytes]:
    """Node keys from the keystore JSON written by ``wattmesh provision node``:
    ``{"nodes": {"<id>": {"key": "<64 hex>", "name": ..., "transport": ...}}}``. Every configured
    node must have a key."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise GatewayConfigError(f"gateway.keystore: cannot read {path.name}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict):
        raise GatewayConfigError('gateway.keystore: expected {"nodes": {"<id>": {"key": ...}}}')
    keys: dict[int, bytes] = {}
    for sid, entry in doc["nodes"].items():
        where = f"gateway.keystore: node {sid!r}"
        if not (isinstance(sid, str) and is_decimal(sid) and int(sid) <= 0xFFFF):
            raise GatewayConfigError(f"{where}: node ids are integers in [0, 65535]")
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not re.fullmatch(r"[0-9a-f]{64}", key):
            raise GatewayConfigError(f"{where}: key must be 64 lowercase hex characters")
        keys[int(sid)] = bytes.fromhex(key)
    for n in nodes:
        if n.node_id not in keys:
            raise GatewayConfigError(
                f"gateway.keystore: no key for node {n.node_id} ({n.transport})"
            )
    return keys
