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
DEFAULT_NTP = "pool.ntp.org"

# Physical and practical bounds (key -> (low, high, kind)), checked at boot so that a config that
# passes does not crash or exhaust the node later: mains_hz sizes the sample buffers (0.001 Hz
# asked for tens of MB, 1e-300 overflowed), and every interval that becomes a tick difference must
# stay well inside half the tick period (ticks_ms: about 6.2 days; ticks_us: about 9 minutes for the
# plug chip's pulse edges within one window).
BOUNDS = {
    "publish_s": (1, 3600, _NUM),
    "sample_s": (0.5, 300, _NUM),
    "save_wh": (1, 100000, _NUM),
    "save_min": (1, 1440, _NUM),
    "seq_block": (1, 65536, int),
    "wdt_ms": (1000, 600000, int),
    "nominal_v": (50, 300, _NUM),
    "mains_hz": (45, 65, _NUM),
}
MAX_RELAYS = 8  # one bit each in frames and in the stored lockouts
MAX_RELAY_S = 86400  # minimum on/off times
MAX_TRIP_A = 1000
MAX_WINDOW_SAMPLES = 8000  # per ADC channel: 16 kB each, in the ESP32's ~100 kB of free heap
# CT sampling a board can hold: `max_sample_rate_hz` is the rate its ADC loop reaches (V and I
# read in turn by bytecode; the node measures the rate it achieves in every window and flags one
# that fell behind), this default for a board that does not say. Fewer than MIN_CYCLES mains
# cycles per window leave the noise and the window's edges too much weight (1 cycle: 1.1-1.4 % of
# S in power), fewer than MIN_WINDOW_SAMPLES samples too.
DEFAULT_MAX_RATE_HZ = 4000
MIN_RATE_HZ = 1000
MIN_CYCLES = 5
MIN_WINDOW_SAMPLES = 200
# The starting current of a CT channel, as a share of its range_a, when the board gives no
# start_a: IEC 62053-21 starts class 1 meters at 0.4 % of the basic current; below it the channel
# reads 0 and books nothing (the no-load condition). Without range_a: START_A_DEFAULT.
START_FRACTION = 0.004
START_A_DEFAULT = 0.1
MAX_PHASE_DEG = 20


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
        if ok and v - v != 0:  # NaN or infinity (JSON parsers accept them)
            raise ConfigError(path + key + ": expected a finite number")
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


def _range(d, key, path, lo, hi, kind=_NUM, default=None):
    v = _get(d, key, path, kind, default)
    if v is not None and not lo <= v <= hi:
        raise ConfigError(path + key + ": %s..%s" % (lo, hi))
    return v


def _optional_str(d, key, path):
    if key in d and d[key] is not None:
        _get(d, key, path, str)


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
        # Board facts the firmware does not need (the offset is tracked from the samples) but the
        # emulator and the board checks read: a wrong type is caught here, not later.
        for k in ("bias_mv", "range_a", "burden_ohm"):
            if k in m:
                _positive(m, k, path)
        if "phasecal" in m:
            raise ConfigError(path + "phasecal: replaced by phase_deg (the sensors' phase error "
                              "in degrees; the read lag is measured by the node)")
        rng = m.get("range_a")
        m["start_a"] = _range(m, "start_a", path, 0, rng if rng else MAX_TRIP_A, _NUM,
                              START_FRACTION * rng if rng else START_A_DEFAULT)
        if "v_pin" in m:
            _get(m, "v_pin", path, int)
            _positive(m, "vcal", path)
            _range(m, "phase_deg", path, -MAX_PHASE_DEG, MAX_PHASE_DEG, _NUM, 0.0)
            if "v_bias_mv" in m:
                _positive(m, "v_bias_mv", path)
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
    for k, hi in (("min_on_s", MAX_RELAY_S), ("min_off_s", MAX_RELAY_S), ("trip_a", MAX_TRIP_A)):
        v = _get(r, k, path, _NUM, 0, required=False)
        if v is not None and v < 0:
            raise ConfigError(path + k + ": must be >= 0")
        if v is not None and v > hi:
            raise ConfigError(path + k + ": at most %d" % hi)
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
            lo, hi, kind = BOUNDS[k]
            _range(cfg, k, "", lo, hi, kind)
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
        # TLS unless switched off by hand: the broker's certificate is checked against the CA
        # file `ca` (written beside config.json by `wattmesh provision node`) and its host name
        tls = mq["tls"] = _get(mq, "tls", "mqtt.", bool, True, required=False)
        if tls:
            ca = mq["ca"] = _get(mq, "ca", "mqtt.", str, "ca.crt")
            if not ca:
                raise ConfigError("mqtt.ca: the broker's CA certificate file, not empty")
        elif "ca" in mq:
            raise ConfigError("mqtt.ca: needs tls true")
        port = mq["port"] = _get(mq, "port", "mqtt.", int, 8883 if tls else 1883)
        # the clock for the certificates' dates (the ESP32's RTC starts at 2000)
        if not _get(cfg, "ntp", "", str, DEFAULT_NTP):
            raise ConfigError("ntp: an NTP server's name, not empty")
        cfg["ntp"] = cfg.get("ntp", DEFAULT_NTP)
        if not 0 < port < 65536:
            raise ConfigError("mqtt.port: 1..65535")
        mq["topic"] = _get(mq, "topic", "mqtt.", str, cfg["name"])
        _optional_str(mq, "user", "mqtt.")
        _optional_str(mq, "password", "mqtt.")
        _range(mq, "keepalive", "mqtt.", 1, 65535, int, 60)  # umqtt asserts < 65536
        wifi = _get(cfg, "wifi", "", dict)
        _get(wifi, "ssid", "wifi.", str)
        _optional_str(wifi, "password", "wifi.")
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
    if len(relays) > MAX_RELAYS:
        raise ConfigError("board.relays: at most %d relays" % MAX_RELAYS)
    for i in range(len(relays)):
        p = "board.relays[%d]." % i
        if not isinstance(relays[i], dict):
            raise ConfigError(p[:-1] + ": expected an object")
        _relay(relays[i], p)
        if relays[i].get("channel", 0) not in seen:
            raise ConfigError(p + "channel: no meter has this channel")
    board["relays"] = relays
    top = board["max_sample_rate_hz"] = _range(board, "max_sample_rate_hz", "board.",
                                               MIN_RATE_HZ, 20000, _NUM, DEFAULT_MAX_RATE_HZ)
    rate = _get(board, "sample_rate_hz", "board.", _NUM, 2000)
    if not MIN_RATE_HZ <= rate <= top:
        raise ConfigError("board.sample_rate_hz: %s..%s (the rate this board's ADC loop reaches: "
                          "board.max_sample_rate_hz)" % (MIN_RATE_HZ, top))
    board["sample_rate_hz"] = rate
    cycles = board["cycles"] = _range(board, "cycles", "board.", MIN_CYCLES, 100, int, 10)
    # the CT window's buffer, as ct.Clamp sizes it
    n = int(rate / cfg["mains_hz"] * (cycles + 1.5))
    if n > MAX_WINDOW_SAMPLES:
        raise ConfigError("board.cycles: a window of %d samples, at most %d (fewer cycles or a "
                          "lower sample_rate_hz)" % (n, MAX_WINDOW_SAMPLES))
    if int(rate / cfg["mains_hz"] * cycles) < MIN_WINDOW_SAMPLES:
        raise ConfigError("board.cycles: a window of %d samples, at least %d (more cycles or a "
                          "higher sample_rate_hz)" % (int(rate / cfg["mains_hz"] * cycles),
                                                      MIN_WINDOW_SAMPLES))
    return cfg


def _read(path, parse, what):
    """``parse`` of the text of the file at ``path``; ``what`` says why when it refuses it."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError(path + ": cannot read")
    try:
        return parse(text)
    except ValueError:
        raise ConfigError(path + ": " + what)


def load(path):
    return check(_read(path, json.loads, "not valid JSON"))


def load_key(path):
    """The node's 32-byte HMAC key, stored as 64 hex characters."""
    key = _read(path, lambda text: bytes.fromhex(text.strip()), "not hex")
    if len(key) != 32:
        raise ConfigError(path + ": expected 32 bytes")
    return key
