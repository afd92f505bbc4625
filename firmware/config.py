# The node's config.json (written by `wattmesh provision node`, board data from hardware/boards/),
# checked once at boot. Errors name the key, e.g. "board.meters[0].ical: expected a number".
import json

LINKS = ("ble", "mqtt", "none")
METER_TYPES = ("ct", "hlw8012", "cse7766", "pzem")

DEFAULTS = {
    "link": "ble",
    "publish_s": 5,  # a reading frame per channel this often
    "sample_s": 1,  # a metering window this often
    "save_wh": 50,  # save counters after this much energy moved (the most a power cut loses)...
    "save_min": 15,  # ...or this many minutes after the last save, if anything moved
    "seq_block": 256,  # frame sequence numbers reserved per flash write
    "wdt_ms": 10000,
    "nominal_v": 230,
    "mains_hz": 50,
}

_NUM = (int, float)


class ConfigError(ValueError):
    pass


def _get(d, key, path, kind, default=None, required=True):
    if key not in d:
        if required and default is None:
            raise ConfigError(path + key + ": missing")
        return default
    v = d[key]
    if kind is _NUM:
        ok = isinstance(v, _NUM) and not isinstance(v, bool)
    else:
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise ConfigError(path + key + ": expected " + _name(kind))
    return v


def _name(kind):
    if kind is _NUM:
        return "a number"
    return {int: "an integer", str: "a string", dict: "an object", list: "a list",
            bool: "true or false"}.get(kind, "another type")


def _positive(d, key, path, kind=_NUM, default=None):
    v = _get(d, key, path, kind, default)
    if v is not None and v <= 0:
        raise ConfigError(path + key + ": must be > 0")
    return v


def _meter(m, path):
    t = _get(m, "type", path, str)
    if t not in METER_TYPES:
        raise ConfigError(path + "type: one of " + ", ".join(METER_TYPES))
    ch = _get(m, "channel", path, int)
    if not 0 <= ch <= 255:
        raise ConfigError(path + "channel: 0..255")
    if t == "ct":
        _get(m, "adc_pin", path, int)
        _positive(m, "ical", path)
        if "v_pin" in m:
            _get(m, "v_pin", path, int)
            _positive(m, "vcal", path)
            _positive(m, "phasecal", path, _NUM, 1.0)
    elif t == "hlw8012":
        for k in ("cf_pin", "cf1_pin", "sel_pin"):
            _get(m, k, path, int)
        for k in ("w_per_hz", "a_per_hz", "v_per_hz"):
            _positive(m, k, path)
    elif t == "cse7766":
        _get(m, "uart", path, int)
        _get(m, "rx_pin", path, int)
    else:
        _get(m, "uart", path, int)
        _get(m, "tx_pin", path, int)
        _get(m, "rx_pin", path, int)
        addr = _get(m, "addr", path, int, 0xF8)
        if not 1 <= addr <= 0xF8:
            raise ConfigError(path + "addr: 1..248")
    return m


def _relay(r, path):
    _get(r, "pin", path, int)
    for k in ("min_on_s", "min_off_s", "trip_a"):
        v = _get(r, k, path, _NUM, 0, required=False)
        if v is not None and v < 0:
            raise ConfigError(path + k + ": must be >= 0")
    _get(r, "active_high", path, bool, True, required=False)
    _get(r, "boot_on", path, bool, False, required=False)
    _get(r, "channel", path, int, 0, required=False)
    return r


def check(cfg):
    """Validate a config dict and fill in defaults; returns it or raises ConfigError."""
    if not isinstance(cfg, dict):
        raise ConfigError("config: expected an object")
    nid = _get(cfg, "node_id", "", int)
    if not 0 <= nid <= 0xFFFF:
        raise ConfigError("node_id: 0..65535")
    for k in DEFAULTS:
        if k == "link":
            continue
        if k in cfg:
            _positive(cfg, k, "")
        else:
            cfg[k] = DEFAULTS[k]
    link = _get(cfg, "link", "", str, DEFAULTS["link"])
    if link not in LINKS:
        raise ConfigError("link: one of " + ", ".join(LINKS))
    cfg["link"] = link
    cfg["name"] = _get(cfg, "name", "", str, "wattmesh_%d" % nid)
    if link == "mqtt":
        mq = _get(cfg, "mqtt", "", dict)
        _get(mq, "host", "mqtt.", str)
        port = mq["port"] = _get(mq, "port", "mqtt.", int, 1883)
        if not 0 < port < 65536:
            raise ConfigError("mqtt.port: 1..65535")
        mq["topic"] = _get(mq, "topic", "mqtt.", str, cfg["name"])
        wifi = _get(cfg, "wifi", "", dict)
        _get(wifi, "ssid", "wifi.", str)
    board = _get(cfg, "board", "", dict)
    meters = _get(board, "meters", "board.", list)
    if not 1 <= len(meters) <= 8:
        raise ConfigError("board.meters: 1 to 8 meters")
    seen = []
    for i in range(len(meters)):
        p = "board.meters[%d]." % i
        if not isinstance(meters[i], dict):
            raise ConfigError(p[:-1] + ": expected an object")
        _meter(meters[i], p)
        if meters[i]["channel"] in seen:
            raise ConfigError(p + "channel: used twice")
        seen.append(meters[i]["channel"])
    relays = _get(board, "relays", "board.", list, [], required=False)
    for i in range(len(relays)):
        p = "board.relays[%d]." % i
        if not isinstance(relays[i], dict):
            raise ConfigError(p[:-1] + ": expected an object")
        _relay(relays[i], p)
        if relays[i].get("channel", 0) not in seen:
            raise ConfigError(p + "channel: no meter has this channel")
    board["relays"] = relays
    board["sample_rate_hz"] = _positive(board, "sample_rate_hz", "board.", _NUM, 2000)
    board["cycles"] = _positive(board, "cycles", "board.", int, 10)
    return cfg


def load(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError(path + ": cannot read")
    try:
        cfg = json.loads(text)
    except ValueError:
        raise ConfigError(path + ": not valid JSON")
    return check(cfg)


def load_key(path):
    """The node's 32-byte HMAC key, stored as 64 hex characters."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        raise ConfigError(path + ": cannot read")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(path + ": not hex")
    if len(key) != 32:
        raise ConfigError(path + ": expected 32 bytes")
    return key
