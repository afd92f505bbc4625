"""The MQTT link (link_mqtt.py) on the VM, against a stand-in umqtt.simple with a broker model.

umqtt.simple is installed on the device by `wattmesh firmware flash` and is not in this
repository, so a stand-in with its API plays the client library and the broker: sessions (clean
or not) with their subscriptions, retained messages and the last will published when a connection
drops. Its failures are the ones umqtt.simple raises (read from its source): MQTTException for a
refused CONNACK, IndexError when the connection closes before the CONNACK (it indexes an empty
read), AssertionError for a malformed CONNACK, OSError(-1) from check_msg() once the broker has
closed the connection. The link's clock is the emulated HAL's, driven here: nothing sleeps.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.gateway.conftest import broker_tls, provision_node
from tools import mpvm
from tools.mqtt_auth import make_tls

NETWORK = """
STA_IF = 0
state = {'connected': True, 'connects': 0}
class WLAN:
    def __init__(self, i):
        pass
    def active(self, a=None):
        return True
    def isconnected(self):
        return state['connected']
    def connect(self, ssid, password):
        state['connects'] += 1
"""

UMQTT_SIMPLE = """
class MQTTException(Exception):
    pass

class Broker:
    def __init__(self):
        self.tls = None         # {'ca': PEM of the CA that signed its certificate, 'names': [...]}
        self.accounts = None    # user -> password; None: anyone
        self.handshakes = []    # what each TLS client asked for
        self.retained = {}
        self.stored = {}        # client id -> subscriptions of a persistent (non-clean) session
        self.conn = None        # the live connection: a Sock
        self.refuse = []        # exceptions for the next CONNECT attempts, in order
        self.fail_subscribe = 0
        self.log = []

    def deliver(self, topic, msg, retain=False):
        if retain:
            self.retained[topic] = msg
        c = self.conn
        if c is not None and c.alive and topic in c.subs:
            c.pending.append((topic.encode(), msg))

    def drop(self):
        # the broker goes away without a DISCONNECT from the client: the will is published
        c = self.conn
        if c is not None:
            c.alive = False
            self.conn = None
            if c.will:
                self.deliver(*c.will)
            self.log.append('drop')

broker = Broker()

class Sock:
    def __init__(self, client_id, clean, will):
        self.alive = True
        self.pending = []
        self.will = will
        if clean:
            broker.stored.pop(client_id, None)
            self.subs = set()
        else:
            self.subs = broker.stored.setdefault(client_id, set())
    def setblocking(self, flag):
        pass
    def close(self):
        self.alive = False
        if broker.conn is self:
            broker.drop()

class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,
                 ssl=None):
        self.client_id = client_id
        self.server = server
        self.user = user
        self.pswd = password
        self.ssl = ssl  # (keepalive: the link pings by itself, the fake broker never times out)
        self.sock = self.cb = self.lw = None  # set by connect, set_callback, set_last_will

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.lw = (topic, msg, retain)

    def connect(self, clean_session=True):
        broker.log.append('connect clean=%d' % clean_session)
        self.sock = Sock(self.client_id, clean_session, self.lw)
        if self.ssl:  # as umqtt.simple: the context wraps the socket, the server is the name
            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)
        if broker.tls is not None and not getattr(self.sock, 'tls', False):
            self.sock.alive = False
            raise IndexError('index out of range')  # plain MQTT to a TLS listener: closed
        if broker.accounts is not None and broker.accounts.get(self.user) != self.pswd:
            self.sock.alive = False
            raise MQTTException(5)  # CONNACK: not authorised (mosquitto, a wrong password)
        if broker.refuse:
            e = broker.refuse.pop(0)
            self.sock.alive = False
            raise e
        if broker.conn is not None:
            broker.drop()   # a new connection with the same client id takes over
        broker.conn = self.sock
        return 0

    def _live(self):
        if self.sock is None or not self.sock.alive:
            raise OSError(104)

    def disconnect(self):
        self._live()
        self.sock.will = None
        self.sock.close()

    def ping(self):
        self._live()
        broker.log.append('ping')

    def publish(self, topic, msg, retain=False, qos=0):
        self._live()
        if isinstance(topic, bytes):
            topic = topic.decode()
        broker.log.append('publish ' + topic)
        broker.deliver(topic, bytes(msg) if not isinstance(msg, str) else msg.encode(), retain)

    def subscribe(self, topic, qos=0):
        assert self.cb is not None, "Subscribe callback is not set"
        self._live()
        if broker.fail_subscribe:
            broker.fail_subscribe -= 1
            raise MQTTException(0x80)
        if isinstance(topic, bytes):
            topic = topic.decode()
        broker.log.append('subscribe ' + topic)
        self.sock.subs.add(topic)

    def wait_msg(self):
        if self.sock is None:
            raise AttributeError("'NoneType' object has no attribute 'read'")
        if not self.sock.alive:
            raise OSError(-1)
        if not self.sock.pending:
            return None
        topic, msg = self.sock.pending.pop(0)
        self.cb(topic, msg)
        return 0x30

    def check_msg(self):
        return self.wait_msg()
"""

# micropython-lib's ssl.py over the tls module, as far as the link uses it: a new context does
# not verify (verify_mode CERT_NONE), load_verify_locations(cafile=) reads the file;
# wrap_socket(server_hostname=) is where mbedtls checks the broker's chain and name when asked
# to, and raises ValueError in words (extmod/modtls_mbedtls.c) when they fail.
SSL = """
CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
PROTOCOL_TLS_CLIENT = 0

class SSLContext:
    def __init__(self, protocol):
        self.verify_mode = CERT_NONE
        self.cadata = None

    def load_verify_locations(self, cafile=None, cadata=None):
        if cafile:
            with open(cafile, 'rb') as f:
                cadata = f.read()
        if not cadata or b'-----BEGIN CERTIFICATE-----' not in cadata:
            raise OSError(-0x2180)  # MBEDTLS_ERR_X509_INVALID_FORMAT
        self.cadata = cadata

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    server_hostname=None):
        from umqtt.simple import broker
        broker.handshakes.append({'verify': self.verify_mode, 'name': server_hostname,
                                  'ca': self.cadata == (broker.tls or {}).get('ca')})
        t = broker.tls
        if t is not None and self.verify_mode == CERT_REQUIRED:
            if self.cadata != t['ca']:
                raise ValueError('The certificate is not correctly signed by the trusted CA')
            if server_hostname not in t['names']:
                raise ValueError('The certificate Common Name (CN) does not match with the '
                                 'expected CN')
        sock.tls = True
        return sock
"""

# micropython-lib's ntptime, as far as the link uses it: settime() from `host`; the year the
# RTC reads (link_mqtt.rtc_year) is `year` here, set by a settime() that gets through.
NTPTIME = """
host = 'pool.ntp.org'
year = 2026
fail = []
calls = []

def settime():
    global year
    calls.append(host)
    if fail:
        raise fail.pop(0)
    year = 2026
"""

SCRIPT = """
import hal_host as hal, link_mqtt, network
from umqtt.simple import broker, MQTTException
CFG = {'name': 'n7', 'mqtt': {'host': 'b', 'port': 1883, 'topic': 'n7', 'keepalive': 60,
                              'tls': False},
       'wifi': {'ssid': 's'}}
CMD = 'cmnd/n7/FRAME'
LWT = 'tele/n7/LWT'
fed = [0]
def feed():
    fed[0] += 1
def state(L, tag):
    emit({'tag': tag, 'up': L.up, 'lwt': broker.retained.get(LWT, b'').decode(),
          'log': broker.log[:], 'fed': fed[0]})
    broker.log.clear()

hal.reset()
L = link_mqtt.Link(CFG, feed, hal)
L.start()
broker.deliver(CMD, b'c1')
emit({'tag': 'c1', 'got': [m.decode() for m in L.received()]})
state(L, 'started')
"""

RECONNECT = """
# 1. the broker drops the connection: the will says Offline; the link notices, reconnects after
#    its backoff, subscribes again and says Online; commands arrive again
broker.drop()
state(L, 'dropped')
emit({'tag': 'noticed', 'got': L.received(), 'up': L.up})
for k in range(4):
    hal.advance_ms(500)
    L.received()
state(L, 'again')
broker.deliver(CMD, b'c2')
broker.deliver(CMD, b'c3')
emit({'tag': 'c2', 'got': [m.decode() for m in L.received()]})
"""

FAILURES = """
# 2. a drop noticed by a publish; then the broker refuses, closes mid-handshake, answers
#    garbage, fails the SUBSCRIBE: never an exception out of the link, attempts spaced by a
#    growing backoff on the driven clock, and then a full session again
broker.drop()
broker.refuse = [MQTTException(5), IndexError('index out of range'), AssertionError(),
                 OSError(113)]
broker.fail_subscribe = 1
attempts = []
errors = []
for k in range(200):
    try:
        L.send(b'frame')
        L.received()
    except Exception as e:
        errors.append(repr(e))
    attempts.append(sum(1 for x in broker.log if x.startswith('connect')))
    if L.up:
        break
    hal.advance_ms(500)
emit({'tag': 'storm', 'errors': errors, 'attempts': attempts, 'up': L.up})
state(L, 'recovered')
broker.deliver(CMD, b'c4')
emit({'tag': 'c4', 'got': [m.decode() for m in L.received()]})

# 3. WiFi lost: no broker attempt, a WiFi connect, and the same backoff
network.state['connected'] = False
broker.drop()
L.received()
hal.advance_ms(60000)
L.received()
emit({'tag': 'wifi', 'up': L.up, 'wifi_connects': network.state['connects'],
      'log': [x for x in broker.log if x.startswith('connect')]})
network.state['connected'] = True
hal.advance_ms(60000)
broker.log.clear()
L.received()
# 4. the keepalive: a ping when nothing was sent for half the keepalive
hal.advance_ms(31000)
L.received()
state(L, 'keepalive')
"""


def _run(part: str, script: str = SCRIPT, files: dict[str, str] | None = None,
         output: list[str] | None = None) -> dict[str, dict]:
    lib = {
        "/lib/network.py": NETWORK,
        "/lib/umqtt/__init__.py": "",
        "/lib/umqtt/simple.py": UMQTT_SIMPLE,
        "/lib/ssl.py": SSL,
        "/lib/ntptime.py": NTPTIME,
    }
    res = mpvm.run_job(script + part, files=lib | (files or {}))
    if output is not None:
        output.extend(res.output)
    return {r["tag"]: r for r in res.results}


def test_mqtt_link_resubscribes_and_reannounces_after_every_reconnect() -> None:
    out = _run(RECONNECT)
    assert out["c1"]["got"] == ["c1"]
    start = out["started"]
    assert start["up"] and start["lwt"] == "Online"
    assert start["log"][:3] == ["connect clean=1", "subscribe cmnd/n7/FRAME", "publish tele/n7/LWT"]
    assert out["dropped"]["lwt"] == "Offline"  # the will
    assert out["noticed"] == {"tag": "noticed", "got": [], "up": False}
    again = out["again"]
    assert again["up"] and again["lwt"] == "Online"
    # one new session, a clean one with its subscription, after the 1 s backoff
    assert [x for x in again["log"] if not x.startswith("publish tele/n7/LWT")] == [
        "connect clean=1", "subscribe cmnd/n7/FRAME"]
    assert out["c2"]["got"] == ["c2", "c3"]


def test_mqtt_link_survives_any_broker_failure_with_backoff() -> None:
    out = _run(FAILURES)
    storm = out["storm"]
    assert storm["errors"] == []
    assert storm["up"]
    # attempts (cumulative) at 500 ms steps: 2 s, 4 s, 8 s, 16 s, 32 s apart, none in between
    changes = [k for k in range(1, len(storm["attempts"]))
               if storm["attempts"][k] != storm["attempts"][k - 1]]
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    assert gaps == [4, 8, 16, 32, 64], storm["attempts"]
    assert storm["attempts"][-1] == 6  # refused, closed, garbage, OSError, SUBACK failure, ok
    rec = out["recovered"]
    assert rec["lwt"] == "Online"
    assert "subscribe cmnd/n7/FRAME" in rec["log"]
    assert rec["fed"] == 7  # the watchdog is fed before every attempt (start + 6)
    assert out["c4"]["got"] == ["c4"]
    wifi = out["wifi"]
    assert not wifi["up"] and wifi["wifi_connects"] == 1 and wifi["log"] == []
    keep = out["keepalive"]
    assert keep["up"] and keep["log"][-1] == "ping"


TLS_SCRIPT = """
import os
import hal_host as hal, link_mqtt, config, ntptime
from umqtt.simple import broker
link_mqtt.rtc_year = lambda: ntptime.year
os.chdir('/node')  # the node's files as `wattmesh provision node` wrote them, as on its flash
cfg = config.load('config.json')
mq = cfg['mqtt']
with open('ca.crt', 'rb') as f:
    CA = f.read()
with open('/other-ca.crt', 'rb') as f:
    OTHER = f.read()
NAMES = ['127.0.0.1', 'localhost']  # what the broker's certificate names (tools.mqtt_auth)
ACCOUNT = {mq['user']: mq['password']}

def attempt(tag, tls, accounts, steps=16):
    # a fresh boot against this broker; then the clock runs 500 ms a step for `steps` steps
    broker.tls, broker.accounts = tls, accounts
    broker.handshakes.clear()
    broker.log.clear()
    hal.reset()
    L = link_mqtt.Link(cfg, None, hal)
    errors, connects = [], []
    for k in range(steps + 1):
        try:
            L.received()
        except Exception as e:
            errors.append(repr(e))
        connects.append(sum(1 for x in broker.log if x.startswith('connect')))
        hal.advance_ms(500)
    emit({'tag': tag, 'up': L.up, 'error': L.last_error, 'errors': errors,
          'handshakes': broker.handshakes[:3], 'connects': connects,
          'mqtt': [mq['host'], mq['port'], mq['tls'], mq['ca']]})

attempt('good', {'ca': CA, 'names': NAMES}, ACCOUNT, steps=0)
attempt('other_ca', {'ca': OTHER, 'names': NAMES}, ACCOUNT)
attempt('other_name', {'ca': CA, 'names': ['broker.example']}, ACCOUNT)
attempt('password', {'ca': CA, 'names': NAMES}, {mq['user']: 'not-the-password'})
# the RTC was never set (2000): NTP first, from the config's server; one failure, then it works
ntptime.year = 2000
ntptime.fail = [OSError(110)]
attempt('clock', {'ca': CA, 'names': NAMES}, ACCOUNT, steps=2)
emit({'tag': 'ntp', 'calls': ntptime.calls, 'year': ntptime.year})
os.remove('ca.crt')
attempt('no_ca', {'ca': CA, 'names': NAMES}, ACCOUNT)
"""


def test_mqtt_link_checks_the_broker_certificate_and_says_why_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's TLS on the VM with the files `wattmesh provision node` wrote: the context it
    builds (CERT_REQUIRED, the provisioned CA, the broker's host as the name to check), and what
    it does when the check or the login fails: a line on the console naming the cause, retries
    spaced by the backoff, never an exception. The handshake itself is the stand-in's (the
    WebAssembly VM has no sockets); the emulator's TLS to a real mosquitto is in
    tests/hardware/test_mqtt_node_emulator.py."""
    monkeypatch.setenv("WATTMESH_WIFI_PASSWORD", "wifi")
    node = provision_node(tmp_path, 7, broker_tls(tmp_path / "broker").ca_cert)
    other = make_tls(tmp_path / "other")  # a CA that did not sign the broker's certificate
    files = {f"/node/{name}": (node / name).read_text() for name in ("config.json", "ca.crt")}
    files["/other-ca.crt"] = other.ca_cert.read_text()
    console: list[str] = []
    out = _run("", TLS_SCRIPT, files, console)
    good = out["good"]
    assert good["up"] and good["error"] is None and good["errors"] == []
    assert good["mqtt"] == ["127.0.0.1", 8883, True, "ca.crt"]
    # an unset clock (a certificate's dates are checked against it) is set by NTP first; its
    # failure is said and retried like any other
    clock = out["clock"]
    assert clock["up"] and clock["errors"] == [] and clock["connects"][-1] == 1
    assert clock["error"].startswith("TLS: the clock is not set and NTP (pool.ntp.org) failed")
    assert f"mqtt: {clock['error']}" in console
    assert out["ntp"] == {"tag": "ntp", "calls": ["pool.ntp.org"] * 2, "year": 2026}
    # checked (not micropython-lib's default CERT_NONE), against the provisioned CA, by name
    assert good["handshakes"] == [{"verify": 2, "name": "127.0.0.1", "ca": True}]
    why = {
        "other_ca": "TLS: the broker's certificate is not trusted (mqtt.ca, mqtt.host): The "
                    "certificate is not correctly signed by the trusted CA",
        "other_name": "TLS: the broker's certificate is not trusted (mqtt.ca, mqtt.host): The "
                      "certificate Common Name (CN) does not match with the expected CN",
        "password": "the broker refused the login: mqtt.user or mqtt.password wrong (CONNACK 5)",
        "no_ca": "TLS: cannot load the CA file mqtt.ca (ca.crt)",
    }
    for tag, text in why.items():
        r = out[tag]
        assert not r["up"] and r["errors"] == [], r
        assert r["error"].startswith(text), r["error"]
        assert f"mqtt: {r['error']}" in console
        # attempts at 0, 1, 3 and 7 s of the 8 s (backoff 1 s doubling), not a loop
        changes = [k for k in range(1, len(r["connects"]))
                   if r["connects"][k] != r["connects"][k - 1]]
        if tag != "no_ca":
            assert r["connects"][0] == 1 and changes == [2, 6, 14], r["connects"]
        else:  # no CA: no connection is even tried, the file is looked for again each time
            assert r["connects"][-1] == 0
        assert console.count(f"mqtt: {r['error']}") == 4
