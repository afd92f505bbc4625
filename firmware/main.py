# The node's entry point on the ESP32: load the config and key, start the link, run the loop.
#
# The loop body is node.Node.step(); this file only schedules it and moves frames to the link.
import asyncio
import gc

import config
import hal_esp32 as hal
import node

LOOP_MS = 50


def make_link(cfg, feed, key):
    if cfg["link"] == "ble":
        import link_ble

        return link_ble.Link(cfg, key)  # its pairing passkey comes from the node key
    if cfg["link"] == "mqtt":
        import link_mqtt

        return link_mqtt.Link(cfg, feed, hal)
    return None


async def run():
    cfg = config.load("config.json")
    key = config.load_key("node.key")
    n = node.Node(hal, cfg, key, "")
    link = make_link(cfg, n.wdt.feed, key)
    if link:
        link.start()
    gc.collect()
    while True:
        frames = n.step()
        if link:
            for f in frames:
                link.send(f)
            if frames:
                link.sensor(n.sensor())
            for c in link.received():
                ack = n.command(c)
                if ack:
                    link.send_ack(ack)
        await asyncio.sleep_ms(LOOP_MS)


asyncio.run(run())
