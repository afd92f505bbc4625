"""Reading the gateway's TOML configuration into the types of ``gateway.config``, validated once
at start: the strict table reader and one parser per section. Every error names the key
(``modbus.buses[0].meters[1].unit: ...``). Relative paths are relative to the config file.

See ``deploy/gateway.example.toml`` for a commented example.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.calibration import MIN_PAIRS
from gateway.config import (
    BLE_ADDRESS_RE,
    DR_ROLES,
    ID_RE,
    INTERVAL_MIN,
    MAX_SILENCE_S,
    MEMBER_RE,
    PUBKEY_RE,
    TOPIC_RE,
    Backoff,
    BusConfig,
    CalibrationConfig,
    EmsConfig,
    GatewayConfig,
    GatewayConfigError,
    LedgerConfig,
    MeterConfig,
    MqttConfig,
    NodeConfig,
    is_decimal,
)
from gateway.ems.appliances import REPAIRS, load_appliances
from gateway.ems.forecast import MAX_HORIZON
from gateway.ems.forecast import MODELS as FORECAST_MODELS
from gateway.ems.tariff import (
    FEED_IN,
    PEAK_HOURS,
    RETAIL_OFFPEAK_DEFAULT,
    RETAIL_PEAK,
    Tariff,
    TariffError,
)
from gateway.ems.timegrid import SLOTS_PER_DAY, SLOTS_PER_HOUR
from hardware.meters import MODELS, load_map
from ledger.fields import Fields, read_document

_READ = Fields(GatewayConfigError)  # the project's strict field readers, raising our error


class _Table:
    """A TOML table being read: remembers which keys were used so unknown ones are errors."""

    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, dict):
            raise GatewayConfigError(f"{where or 'config'}: must be a table")
        self.doc, self.where, self.used = doc, where, set[str]()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., **rules: Any) -> Any:
        """The value of ``key`` (``default`` when absent; required without one), checked by
        ``ledger.fields``: of type ``kind``, within ``min``/``max``, among ``choices``,
        matching ``pattern``."""
        self.used.add(key)
        if key not in self.doc and default is not ...:
            return default
        return _READ.typed(
            self.doc,
            key,
            kind,
            lo=rules.get("min"),
            hi=rules.get("max"),
            choices=rules.get("choices"),
            pattern=rules.get("pattern"),
            name=self._name(key),
        )

    def table(self, key: str) -> _Table | None:
        self.used.add(key)
        if key not in self.doc:
            return None
        return _Table(self.doc[key], self._name(key))

    def tables(self, key: str) -> list[_Table]:
        self.used.add(key)
        value = self.doc.get(key, [])
        if not isinstance(value, list):
            raise GatewayConfigError(f"{self._name(key)}: must be an array of tables ([[{key}]])")
        return [_Table(v, f"{self._name(key)}[{i}]") for i, v in enumerate(value)]

    def done(self) -> None:
        extra = sorted(set(self.doc) - self.used)
        if extra:
            raise GatewayConfigError(f"{self._name(extra[0])}: unknown key")


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _host_port(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not is_decimal(port) or not 0 < int(port) < 65536:
        raise GatewayConfigError(f"{name}: expected host:port, got {value!r}")
    return host, int(port)


@dataclass(slots=True)
class _Meters:
    """The nodes and meters the sections declare, in order, and which of them only sub-meter."""

    nodes: list[NodeConfig] = field(default_factory=list)
    buses: list[BusConfig] = field(default_factory=list)
    unreported: set[str] = field(default_factory=set)


def parse_config(doc: Mapping[str, Any], base: Path) -> GatewayConfig:
    root = _Table(dict(doc), "")
    gw = root.table("gateway")
    if gw is None:
        raise GatewayConfigError("gateway: missing (required)")
    section = _gateway(gw, base)  # GatewayConfig's fields that [gateway] holds
    ledger = _ledger(lt, base) if (lt := root.table("ledger")) is not None else None
    found = _Meters()
    mqtt = _mqtt(mt, found, base) if (mt := root.table("mqtt")) is not None else None
    ble_backend, ble_silence_timeout_s, bond_store = "bleak", None, None
    if (bt := root.table("ble")) is not None:
        ble_backend, ble_silence_timeout_s, bond_store = _ble(bt, found)
    if (mb := root.table("modbus")) is not None:
        found.buses += [_bus(bus, base, found.unreported) for bus in mb.tables("buses")]
        mb.done()
    ems_table = root.table("ems")
    cal_tables = root.tables("calibration")
    root.done()
    meters = _unique_meters(found)
    calibrations = _calibrations(cal_tables, found)
    keystore = section.pop("keystore")
    if found.nodes and keystore is None:
        raise GatewayConfigError("gateway.keystore: required when nodes are configured")
    ems = None
    if ems_table is not None:
        ems = _ems(ems_table, base, found.nodes, meters, trading=ledger is not None)
    return GatewayConfig(
        **section,
        keystore=_path(base, keystore) if keystore else None,
        ledger=ledger,
        mqtt=mqtt,
        ble_backend=ble_backend,
        ble_silence_timeout_s=ble_silence_timeout_s,
        ble_bond_store_file=None if bond_store is None else _path(section["data_dir"], bond_store),
        nodes=tuple(found.nodes),
        buses=tuple(found.buses),
        unreported=frozenset(found.unreported),
        ems=ems,
        calibrations=calibrations,
    )


def _gateway(gw: _Table, base: Path) -> dict[str, Any]:
    gateway_id = gw.get("id", str, pattern=ID_RE)
    data_dir = _path(base, gw.get("data_dir", str, "."))
    key_file = _path(data_dir, gw.get("key_file", str, "gateway.key"))
    order_key = gw.get("order_key_file", str, None)
    keystore = gw.get("keystore", str, None)  # as written: parse_config resolves it
    interval_min = gw.get("interval_minutes", int, INTERVAL_MIN, min=1, max=60)
    if interval_min != INTERVAL_MIN:
        # The ledger names and bills meter reports by 15-minute interval: 5-minute reports are
        # refused, 30- or 60-minute ones would put a longer period's energy into one slot.
        raise GatewayConfigError(
            f"gateway.interval_minutes: must be {INTERVAL_MIN} (the ledger meters "
            f"{INTERVAL_MIN}-minute intervals), got {interval_min}"
        )
    section = dict(
        gateway_id=gateway_id,
        data_dir=data_dir,
        key_file=key_file,
        order_key_file=_path(data_dir, order_key) if order_key else None,
        keystore=keystore,
        interval_ms=interval_min * 60_000,
        grace_ms=int(gw.get("grace_s", (int, float), 30, min=0, max=600) * 1000),
        replay_window=gw.get("replay_window", int, 64, min=1, max=1024),
        flush_ms=gw.get("flush_ms", int, 1000, min=10, max=60_000),
        retention_days=gw.get("retention_days", int, 7, min=1, max=3650),
        command_timeout_s=float(gw.get("command_timeout_s", (int, float), 5.0, min=0.1, max=120)),
        member=gw.get("member", str, None, pattern=MEMBER_RE),
    )
    gw.done()
    return section


def _backoff(t: _Table, prefix: str, initial_s: float) -> Backoff:
    """``<prefix>_initial_s`` and ``<prefix>_max_s`` (seconds in the file, the longest 300 s
    unless set) as a ``Backoff``."""
    initial = float(t.get(f"{prefix}_initial_s", (int, float), initial_s, min=0.01, max=3600))
    longest = float(t.get(f"{prefix}_max_s", (int, float), 300.0, min=0.01, max=86400))
    return Backoff(round(initial * 1000), round(longest * 1000))


def _ledger(lt: _Table, base: Path) -> LedgerConfig:
    ledger = LedgerConfig(
        cluster=_path(base, lt.get("cluster", str)),
        timeout_s=float(lt.get("timeout_s", (int, float), 10.0, min=0.1, max=600)),
        retry=_backoff(lt, "retry", 1.0),
    )
    lt.done()
    return ledger


def _mqtt(mt: _Table, found: _Meters, base: Path) -> MqttConfig:
    disc = mt.table("discovery")
    if "password" in mt.doc:
        raise GatewayConfigError("mqtt.password: a secret does not go into the config; put it "
                                 "in a file of mode 0600 named by mqtt.password_file")
    tls = mt.get("tls", bool, False)
    pw_file, ca_file = mt.get("password_file", str, None), mt.get("ca_file", str, None)
    if ca_file is not None and not tls:
        raise GatewayConfigError("mqtt.ca_file: needs tls = true")
    mqtt = MqttConfig(
        host=mt.get("host", str, "127.0.0.1"),
        port=mt.get("port", int, 8883 if tls else 1883, min=1, max=65535),
        username=mt.get("username", str, None, pattern=ID_RE),
        password_file=None if pw_file is None else _path(base, pw_file),
        tls=tls,
        ca_file=None if ca_file is None else _path(base, ca_file),
        discovery=disc.get("enabled", bool, True) if disc else True,
        discovery_prefix=disc.get("prefix", str, "homeassistant", pattern=TOPIC_RE)
        if disc
        else "homeassistant",
        base_topic=mt.get("base_topic", str, "wattmesh", pattern=TOPIC_RE),
        publish_min_s=float(mt.get("publish_min_s", (int, float), 10.0, min=0, max=3600)),
    )
    if disc:
        disc.done()
    for t in mt.tables("nodes"):
        _node(t, "mqtt", found)
    mt.done()
    return mqtt


def _ble(bt: _Table, found: _Meters) -> tuple[str, float | None, str | None]:
    """``[ble]``: the backend, the silence watchdog (None: none), the bond store file (as
    written; relative to data_dir) and the BLE nodes."""
    backend = bt.get("backend", str, "bleak")
    if backend != "bleak" and not backend.startswith("bumble:"):
        raise GatewayConfigError("ble.backend: must be 'bleak' or 'bumble:<transport spec>'")
    bond_store = bt.get("bond_store", str, None)
    if bond_store is not None and (not bond_store.strip() or "\0" in bond_store):
        raise GatewayConfigError(f"ble.bond_store: {bond_store!r} is not a file name")
    silence = bt.get("silence_timeout_s", (int, float), None)
    if silence is not None and not 0 < silence <= MAX_SILENCE_S:  # also refuses nan and inf
        raise GatewayConfigError(
            f"ble.silence_timeout_s: {silence!r} must be seconds in (0, {MAX_SILENCE_S}]"
        )
    for t in bt.tables("nodes"):
        _node(t, "ble", found)
    bt.done()
    return backend, None if silence is None else float(silence), bond_store


def _node(t: _Table, transport: str, found: _Meters) -> None:
    """One ``[[mqtt.nodes]]`` (with its topic) or ``[[ble.nodes]]`` (with its address)."""
    nid = t.get("node_id", int, min=0, max=0xFFFF)
    meter_id = t.get("meter_id", str, f"node{nid}", pattern=ID_RE)
    if transport == "mqtt":
        node = NodeConfig(nid, transport, meter_id,
                          topic=t.get("topic", str, f"wattmesh_{nid}", pattern=TOPIC_RE))
    else:
        address = t.get("address", str)
        if not BLE_ADDRESS_RE.match(address):
            raise GatewayConfigError(f"{t.where}.address: {address!r} is not a BLE address "
                                     "(AA:BB:CC:DD:EE:FF)")
        node = NodeConfig(nid, transport, meter_id, address=address)
    found.nodes.append(node)
    if not t.get("report", bool, False):  # nodes and plugs are sub-meters unless marked billing
        found.unreported.add(node.meter_id)
    t.done()


def _unique_meters(found: _Meters) -> set[str]:
    """Every meter id the config declares; a node id or meter id given twice is an error."""
    seen: dict[str, str] = {}
    for n in found.nodes:
        where = f"{n.transport}.nodes (node {n.node_id})"
        if any(o.node_id == n.node_id for o in found.nodes if o is not n):
            raise GatewayConfigError(f"{where}: node_id {n.node_id} is configured twice")
        if n.meter_id in seen:
            raise GatewayConfigError(f"{where}: meter_id {n.meter_id!r} is used twice")
        seen[n.meter_id] = where
    for b in found.buses:
        for m in b.meters:
            if m.meter_id in seen:
                raise GatewayConfigError(
                    f"modbus bus {b.name}: meter_id {m.meter_id!r} is used twice"
                )
            seen[m.meter_id] = b.name
    return set(seen)


def _bus(t: _Table, base: Path, unreported: set[str]) -> BusConfig:
    name = t.get("name", str, pattern=ID_RE)
    tcp_s = t.get("tcp", str, None)
    serial = t.get("serial", str, None)
    if (tcp_s is None) == (serial is None):
        raise GatewayConfigError(
            f'{t.where}: give exactly one of tcp = "host:port" or serial = PATH'
        )
    meters = []
    units: set[int] = set()
    for mt in t.tables("meters"):
        m = MeterConfig(
            meter_id=mt.get("meter_id", str, pattern=ID_RE),
            model=mt.get("model", str, choices=MODELS),
            unit=mt.get("unit", int, min=1, max=247),
        )
        if m.unit in units:
            raise GatewayConfigError(f"{mt.where}.unit: unit {m.unit} is already used on this bus")
        units.add(m.unit)
        meters.append(m)
        if not mt.get("report", bool, True):  # a Modbus meter is a billing meter unless unset
            unreported.add(m.meter_id)
        mt.done()
    if not meters:
        raise GatewayConfigError(f"{t.where}.meters: a bus needs at least one [[...meters]] entry")
    cfg = BusConfig(
        name=name,
        meters=tuple(meters),
        tcp=_host_port(tcp_s, f"{t.where}.tcp") if tcp_s else None,
        serial=str(_path(base, serial))
        if serial and not serial.startswith(("/", "rfc2217:", "socket:"))
        else serial,
        baudrate=t.get(
            "baudrate", int, 9600, choices=(1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
        ),
        parity=t.get("parity", str, "N", choices=("N", "E", "O")),
        stopbits=t.get("stopbits", int, 1, choices=(1, 2)),
        bytesize=t.get("bytesize", int, 8, choices=(7, 8)),
        poll_s=float(t.get("poll_s", (int, float), 10.0, min=0.1, max=3600)),
        timeout_s=float(t.get("timeout_s", (int, float), 1.0, min=0.01, max=60)),
        retries=t.get("retries", int, 1, min=0, max=10),
        backoff=_backoff(t, "backoff", 5.0),
    )
    t.done()
    if cfg.serial is not None:
        # on one line every meter must be set to the line's speed; one whose datasheet lists no
        # such speed never answers (a TCP gateway in front of meters sets its own line speed)
        for m in cfg.meters:
            rates = load_map(m.model).baudrates
            if rates and cfg.baudrate not in rates:
                raise GatewayConfigError(
                    f"{t.where}.baudrate: {cfg.baudrate} is not a speed the {m.model} of meter "
                    f"{m.meter_id!r} can be set to ({', '.join(map(str, rates))})"
                )
    return cfg


def _ems(
    t: _Table, base: Path, nodes: list[NodeConfig], meters: set[str], *, trading: bool
) -> EmsConfig:
    # the planner (scipy) only when [ems] is set
    from gateway.ems.plan import DEFAULT_LIMIT_W
    from gateway.ems.runner import RunnerConfig

    def meter(key: str, default: Any = ...) -> str | None:
        value = t.get(key, str, default, pattern=ID_RE)
        if value is None:
            return None
        node_meter, _, channel = value.rpartition(".")  # a node's other clamp: "<meter>.<n>"
        if value not in meters and not (node_meter in meters and is_decimal(channel)):
            raise GatewayConfigError(f"ems.{key}: {value!r} is not a configured meter")
        return str(value)

    site = meter("site_meter")
    assert site is not None
    pv = meter("pv_meter", None)
    spec = _path(base, t.get("appliances", str))
    repair = t.get("repair", str, "strict", choices=REPAIRS)
    try:
        appliances, notes = load_appliances(spec, repair)
    except (OSError, ValueError) as exc:
        raise GatewayConfigError(f"ems.appliances: {exc}") from exc
    node_ids = {n.node_id for n in nodes}
    for a in appliances:
        if a.node is not None and a.node not in node_ids:
            raise GatewayConfigError(f"ems.appliances: {a.name}: node {a.node} is not configured")
        if a.meter is not None and a.meter not in meters:
            node_meter, _, channel = a.meter.rpartition(".")
            if not (node_meter in meters and is_decimal(channel)):
                raise GatewayConfigError(
                    f"ems.appliances: {a.name}'s meter {a.meter!r} is not configured"
                )
    peak = t.get("peak_hours", list, list(PEAK_HOURS))
    if len(peak) != 2 or not all(type(h) is int and 0 <= h <= 24 for h in peak):
        raise GatewayConfigError(
            f"ems.peak_hours: expected [start, end] hours in 0..24, got {peak!r}"
        )
    try:
        tariff = Tariff(
            feed_in=t.get("feed_in", int, FEED_IN, min=0, max=10**9),
            retail_peak=t.get("retail_peak", int, RETAIL_PEAK, min=0, max=10**9),
            retail_offpeak=t.get("retail_offpeak", int, RETAIL_OFFPEAK_DEFAULT, min=0, max=10**9),
            peak_start_h=peak[0],
            peak_end_h=peak[1],
        )
    except TariffError as exc:
        raise GatewayConfigError(f"ems: {exc}") from exc
    id_grid = t.get("id_grid", str, None, pattern=ID_RE)
    res_id = t.get("res_id", str, None, pattern=ID_RE)
    res_rated_w = t.get("res_rated_w", int, 0, min=0, max=10**8)
    if id_grid is not None and not trading:
        raise GatewayConfigError("ems.id_grid: trading needs a [ledger] to send the orders to")
    if (res_id is None) != (res_rated_w == 0) or (res_id is not None and id_grid is None):
        raise GatewayConfigError(
            "ems.res_id: give res_id with res_rated_w, and id_grid, to sell PV"
        )
    signers: list[tuple[str, str]] = []
    if (st := t.table("dr_signers")) is not None:  # [ems.dr_signers] operator = ["<hex>"]
        for role in DR_ROLES:
            for i, k in enumerate(st.get(role, list, [])):
                if not isinstance(k, str) or not PUBKEY_RE.match(k):
                    raise GatewayConfigError(
                        f"ems.dr_signers.{role}[{i}]: expected an Ed25519 public key in hex "
                        "(64 digits, `wattmesh operator pubkey`)"
                    )
                signers.append((role, k.lower()))
        st.done()
    cfg = EmsConfig(
        dr_signers=tuple(signers),
        appliances=tuple(appliances),
        runner=RunnerConfig(
            site_meter=site,
            pv_meter=pv,
            limit_w=t.get("limit_w", int, DEFAULT_LIMIT_W, min=100, max=10**7),
            horizon_slots=t.get(
                "horizon_slots", int, SLOTS_PER_DAY, min=SLOTS_PER_HOUR, max=MAX_HORIZON
            ),
            history_days=t.get("history_days", int, 28, min=1, max=365),
            model=t.get("model", str, "ridge", choices=FORECAST_MODELS),
        ),
        tariff=tariff,
        id_grid=id_grid,
        res_id=res_id,
        res_rated_w=res_rated_w,
        sealed_orders=t.get("sealed_orders", bool, True),
        commit_deposit=t.get("commit_deposit", int, 100_000, min=0, max=10**9),
        notes=tuple(notes),
    )
    t.done()
    return cfg


def _calibrations(tables: list[_Table], found: _Meters) -> tuple[CalibrationConfig, ...]:
    """``[[calibration]]``: each names a configured node, its CT channel, and a configured
    Modbus meter with a voltage quantity on the same circuit; one entry per node channel."""
    node_ids = {n.node_id for n in found.nodes}
    models = {m.meter_id: m.model for b in found.buses for m in b.meters}
    out: list[CalibrationConfig] = []
    for t in tables:
        node_id = t.get("node_id", int, min=0, max=0xFFFF)
        if node_id not in node_ids:
            raise GatewayConfigError(f"{t.where}.node_id: node {node_id} is not configured")
        channel = t.get("channel", int, 0, min=0, max=255)
        if any(c.node_id == node_id and c.channel == channel for c in out):
            raise GatewayConfigError(
                f"{t.where}.channel: node {node_id} channel {channel} is listed twice"
            )
        reference = t.get("reference", str, pattern=ID_RE)
        if reference not in models:
            raise GatewayConfigError(
                f"{t.where}.reference: {reference!r} is not a configured Modbus meter"
            )
        volts = load_map(models[reference]).by_role("voltage_v")
        if volts is None:
            raise GatewayConfigError(
                f"{t.where}.reference: the {models[reference]} reads no voltage"
            )
        out.append(CalibrationConfig(
            node_id=node_id,
            channel=channel,
            reference=reference,
            voltage=volts.name,
            ical=float(t.get("ical", (int, float), min=0.001, max=3999)),
            # a channel without its own voltage sensor reads nominal volts and sends no
            # voltage: its frames cannot be paired, so it cannot be calibrated this way
            vcal=float(t.get("vcal", (int, float), min=0.001, max=3999)),
            phase_deg=float(t.get("phase_deg", (int, float), 0.0, min=-20, max=20)),
            points=t.get("points", int, 4, min=MIN_PAIRS, max=96),
            interval_s=t.get("interval_s", int, 60, min=10, max=3600),
            apply=t.get("apply", bool, False),
            round=t.get("round", int, 1, min=1, max=1_000_000),
            max_gain_change=float(t.get("max_gain_change", (int, float), 0.2, min=0.001, max=0.5)),
            max_phase_deg=float(t.get("max_phase_deg", (int, float), 10.0, min=0.01, max=20)),
        ))  # fmt: skip
        t.done()
    return tuple(out)


def load_config(path: str | Path) -> GatewayConfig:
    p = Path(path)
    doc = read_document(p, tomllib.loads, GatewayConfigError, syntax="not valid TOML")
    cfg = parse_config(doc, p.resolve().parent)
    return GatewayConfig(**{**_fields(cfg), "source": p})


def _fields(cfg: GatewayConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
