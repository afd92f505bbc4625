# MQTT link over WiFi with umqtt.robust, topics in the Tasmota style of hardware/node_profile.json:
#   tele/<topic>/FRAME  reading frames (raw bytes)    cmnd/<topic>/FRAME  command frames in
#   stat/<topic>/ACK    ack frames (raw bytes)        tele/<topic>/SENSOR JSON for people and tools
#   tele/<topic>/LWT    Online / Offline (retained)
# umqtt.robust retries forever; `delay` is overridden to feed the watchdog and give up after a few
# tries, so a dead broker costs frames (the counters are cumulative, nothing is lost) but never
# stalls metering or makes the watchdog reset the node.
import json
import time

import network
from umqtt.robust import MQTTClient

RETRIES = 3


class _Client(MQTTClient):
    feed = None

    def delay(self, i):
        if self.feed:
            self.feed()
        if i > RETRIES:
            raise OSError("mqtt: broker unreachable")
        time.sleep_ms(200 * i)


class Link:
    def __init__(self, cfg, feed=None):
        mq = cfg["mqtt"]
        topic = mq["topic"]
        self.t_frame = "tele/%s/FRAME" % topic
        self.t_sensor = "tele/%s/SENSOR" % topic
        self.t_lwt = "tele/%s/LWT" % topic
        self.t_ack = "stat/%s/ACK" % topic
        self.t_cmd = "cmnd/%s/FRAME" % topic
        self.wifi = cfg["wifi"]
        self.client = _Client(cfg["name"], mq["host"], mq["port"], mq.get("user"),
                              mq.get("password"), keepalive=mq.get("keepalive", 60))
        self.client.feed = feed
        self.client.set_callback(self._on_msg)
        self.client.set_last_will(self.t_lwt, b"Offline", retain=True)
        self.inbox = []
        self.up = False

    def _on_msg(self, topic, msg):
        if topic == self.t_cmd.encode() and len(self.inbox) < 8:
            self.inbox.append(bytes(msg))

    def _connect(self):
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        if not wlan.isconnected():
            wlan.connect(self.wifi["ssid"], self.wifi.get("password", ""))
            return False
        try:
            self.client.connect()
            self.client.subscribe(self.t_cmd)
            self.client.publish(self.t_lwt, b"Online", retain=True)
            self.up = True
        except OSError:
            self.up = False
        return self.up

    def start(self):
        self._connect()

    def _publish(self, topic, payload):
        if not self.up and not self._connect():
            return
        try:
            self.client.publish(topic, payload)
        except OSError:
            self.up = False

    def send(self, frame_bytes):
        self._publish(self.t_frame, frame_bytes)

    def send_ack(self, frame_bytes):
        self._publish(self.t_ack, frame_bytes)

    def sensor(self, payload):
        t = time.localtime()
        if t[0] >= 2024:  # the RTC was set (ntptime): Tasmota's "Time" field
            payload["Time"] = "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6]
        self._publish(self.t_sensor, json.dumps(payload))

    def received(self):
        if self.up:
            try:
                self.client.check_msg()
            except OSError:
                self.up = False
        out, self.inbox = self.inbox, []
        return out
