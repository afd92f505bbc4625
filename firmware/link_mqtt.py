# MQTT link over WiFi with umqtt.simple, topics in the Tasmota style of hardware/node_profile.json:
#   tele/<topic>/FRAME  reading frames (raw bytes)    cmnd/<topic>/FRAME  command frames in
#   stat/<topic>/ACK    ack frames (raw bytes)        tele/<topic>/SENSOR JSON for people and tools
#   tele/<topic>/LWT    Online / Offline (retained)
#
# The link owns its reconnects. umqtt.robust reconnects inside publish()/check_msg() with
# connect(False) and neither subscribes again nor announces "Online", so after one broker drop the
# node never received a command again and its retained LWT stayed "Offline". Here every broker
# session starts in _connect(): CONNECT (clean session, will "Offline"), SUBSCRIBE to the command
# topic, LWT "Online" (retained).
#
# Any exception out of a broker session is "link down, retry later", not only OSError: umqtt.simple
# raises MQTTException for a refused CONNACK or SUBACK, IndexError when the broker closes the
# connection mid-reply (it indexes an empty read) and AssertionError for a malformed CONNACK; one
# of those escaping to main.py would reboot the node through the watchdog, again and again. The
# socket is closed and the next attempt waits a backoff (doubling up to BACKOFF_MAX_MS) on the
# clock passed in, so the link never sleeps: a dead broker costs frames (the counters are
# cumulative, nothing is lost), never metering time or a watchdog reset.
#
# TLS (mqtt.tls, on unless switched off by hand): umqtt.simple wraps its socket with the
# SSLContext it is given, passing the broker's host as server_hostname, so mbedtls checks the
# certificate's chain against the provisioned CA file (mqtt.ca) and its name against mqtt.host.
# MicroPython's ssl.SSLContext starts with verify_mode CERT_NONE (micropython-lib's ssl.py), so
# CERT_REQUIRED is set here: without it any certificate would do. A failed session is logged on
# the console in words (why()) and kept in last_error: an untrusted certificate, a refused login,
# an unreachable broker; a CA file that cannot be read is such an error too, never a reboot.
# MicroPython's ESP32 builds check a certificate's dates too (MBEDTLS_HAVE_TIME_DATE, against
# the RTC), and the RTC starts at 2000, before any certificate: before a TLS session the link
# sets the clock by NTP (`ntp` in config.json) when it was never set.
import json
import time

import config
import network
from umqtt.simple import MQTTClient, MQTTException

BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000
MAX_MSGS = 8  # messages taken per received() call, and kept in the inbox


CLOCK_SET_YEAR = 2024  # an RTC before this year was never set (the ESP32's starts at 2000)


class CaError(Exception):
    pass


class ClockError(Exception):
    pass


def rtc_year():
    return time.localtime()[0]


def set_clock(host):
    """The RTC by NTP from ``host``: certificates' dates are checked against it."""
    import ntptime

    ntptime.host = host
    try:
        ntptime.settime()
    except Exception as e:
        raise ClockError("TLS: the clock is not set and NTP (%s) failed (%r): a certificate's "
                         "dates cannot be checked" % (host, e))


def tls_context(mq):
    """The SSLContext for mqtt.tls: the broker's certificate must chain to the CA file mqtt.ca."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # (the ESP32 stubs' SSLContext lacks the attribute that micropython-lib's ssl.py has)
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]
    try:
        ctx.load_verify_locations(cafile=mq["ca"])
    except Exception as e:  # missing, unreadable, not a certificate
        raise CaError("TLS: cannot load the CA file mqtt.ca (%s): %r" % (mq["ca"], e))
    return ctx


def why(e):
    """A failed broker session in words, for the console."""
    if isinstance(e, (CaError, ClockError)):
        return e.args[0]
    if isinstance(e, MQTTException):
        code = e.args[0] if e.args else None
        if code in (4, 5):  # CONNACK: bad user name or password / not authorised
            return ("the broker refused the login: mqtt.user or mqtt.password wrong "
                    "(CONNACK %d)" % code)
        return "the broker refused the session (%r)" % (code,)
    if isinstance(e, ValueError):  # mbedtls' certificate check, in words (MicroPython's tls)
        return "TLS: the broker's certificate is not trusted (mqtt.ca, mqtt.host): %s" % e
    code = e.args[0] if isinstance(e, OSError) and e.args else 0
    if code == -0x2700:  # MBEDTLS_ERR_X509_CERT_VERIFY_FAILED, as a code
        return "TLS: the broker's certificate is not trusted (mqtt.ca, mqtt.host)"
    if isinstance(code, int) and code <= -0x1000:  # an mbedtls error code
        return ("TLS: the handshake failed (mbedtls -0x%04x; is mqtt.port the broker's TLS "
                "port?)" % -code)
    return "the broker is unreachable or closed the connection (%r)" % (e,)


class Link:
    def __init__(self, cfg, feed=None, clock=time):
        """feed: called before each connection attempt (it can block on the network);
        clock: ticks_ms/ticks_diff/ticks_add (the HAL; tests drive it)."""
        mq = cfg["mqtt"]
        topic = mq["topic"]
        self.t_frame = "tele/%s/FRAME" % topic
        self.t_sensor = "tele/%s/SENSOR" % topic
        self.t_lwt = "tele/%s/LWT" % topic
        self.t_ack = "stat/%s/ACK" % topic
        self.t_cmd = "cmnd/%s/FRAME" % topic
        self.wifi = cfg["wifi"]
        self.keepalive_ms = mq.get("keepalive", 60) * 1000
        self.tls = mq.get("tls", True)
        self.mq = mq
        self.ntp = cfg.get("ntp", config.DEFAULT_NTP)
        self.client = MQTTClient(cfg["name"], mq["host"], mq["port"], mq.get("user"),
                                 mq.get("password"), keepalive=mq.get("keepalive", 60))
        self.client.set_callback(self._on_msg)
        self.client.set_last_will(self.t_lwt, b"Offline", retain=True)
        self.feed = feed
        self.clock = clock
        self.inbox = []
        self.up = False
        self.retry_at = None  # ticks_ms before which no new attempt is made; None: try now
        self.backoff = BACKOFF_MIN_MS
        self.sent_at = 0  # ticks_ms of the last packet to the broker (for the keepalive ping)
        self.sessions = 0  # broker sessions set up so far
        self.failures = 0  # sessions or attempts that failed
        self.last_error = None  # why the last one failed, in words (also printed)

    def _on_msg(self, topic, msg):
        if topic == self.t_cmd.encode() and len(self.inbox) < MAX_MSGS:
            self.inbox.append(bytes(msg))

    def _later(self):
        """No new attempt before the backoff has passed; the next one waits twice as long."""
        c = self.clock
        self.retry_at = c.ticks_add(c.ticks_ms(), self.backoff)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_MS)

    def _down(self, e):
        self.up = False
        self.failures += 1
        self.last_error = why(e)
        print("mqtt: " + self.last_error)
        sock = self.client.sock
        self.client.sock = None
        if sock is not None:
            try:
                sock.close()
            except Exception:  # already gone: nothing left to release
                pass
        self._later()

    def _connect(self):
        if self.up:
            return True
        c = self.clock
        if self.retry_at is not None and c.ticks_diff(c.ticks_ms(), self.retry_at) < 0:
            return False
        if self.feed:
            self.feed()
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        if not wlan.isconnected():
            try:
                wlan.connect(self.wifi["ssid"], self.wifi.get("password", ""))
            except OSError:  # still associating from the last attempt
                pass
            self._later()
            return False
        try:
            if self.tls and self.client.ssl is None:
                self.client.ssl = tls_context(self.mq)
            if self.tls and rtc_year() < CLOCK_SET_YEAR:
                set_clock(self.ntp)
            self.client.connect()
            self.client.subscribe(self.t_cmd)
            self.client.publish(self.t_lwt, b"Online", retain=True)
        except Exception as e:  # any broker failure: see the top of the file
            self._down(e)
            return False
        self.up = True
        self.sessions += 1
        self.retry_at = None
        self.backoff = BACKOFF_MIN_MS
        self.sent_at = c.ticks_ms()
        return True

    def start(self):
        self._connect()

    def _publish(self, topic, payload):
        if not self._connect():
            return False
        try:
            self.client.publish(topic, payload)
        except Exception as e:
            self._down(e)
            return False
        self.sent_at = self.clock.ticks_ms()
        return True

    def send(self, frame_bytes):
        return self._publish(self.t_frame, frame_bytes)

    def send_ack(self, frame_bytes):
        return self._publish(self.t_ack, frame_bytes)

    def sensor(self, payload):
        t = time.localtime()
        if t[0] >= CLOCK_SET_YEAR:  # the RTC was set (ntptime): Tasmota's "Time" field
            payload["Time"] = "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6]
        return self._publish(self.t_sensor, json.dumps(payload))

    def received(self):
        """Command frames from the broker; also where a dropped session is noticed and set up
        again (with its subscription) when nothing is being published."""
        if self._connect():
            c = self.clock
            try:
                # umqtt.simple sends no pings itself; a ping also finds a half-open connection
                if c.ticks_diff(c.ticks_ms(), self.sent_at) >= self.keepalive_ms // 2:
                    self.client.ping()
                    self.sent_at = c.ticks_ms()
                for _ in range(MAX_MSGS):
                    if self.client.check_msg() is None:
                        break
            except Exception as e:
                self._down(e)
        out, self.inbox = self.inbox, []
        return out
