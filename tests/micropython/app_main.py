# Runs the firmware's application loop on real MicroPython with two stand-ins:
#   - a fake UART, because there is no RS-485 hardware here: it answers each
#     Modbus RTU request with a real RTU frame built from a scripted meter
#     register image, in small pieces, or not at all (a timeout);
#   - a fake socket under umqtt.simple, because the WebAssembly port has no
#     network: it plays a minimal MQTT broker (CONNACK, PUBACK, PINGRESP) and
#     records what was published, and can refuse connections (an outage).
# Everything else is the real firmware code and the real umqtt.simple.
import json
import os
import sys

sys.path.append("/test")
from fakes import BROKER, FakeTime, FakeUart, install_socket

install_socket()  # before umqtt.simple is imported
from dgc.app import App
from dgc.clock import Clock
from dgc.keystore import announce, load_or_create
from dgc.outbox import Files, Outbox
from dgc.rtu_bus import RtuBus
from dgc.uplink import Uplink
from umqtt.simple import MQTTClient

from crev import ed25519

with open("/test/script.json") as f:
    SCRIPT = json.load(f)
ed25519.use_base_table(False)  # as firmware/main.py does by default: no 200 kB table
CLOCK = FakeTime(SCRIPT["steps"][0]["t1"] - 30)

# ---------------------------------------------------------------- the run

files = Files(os)
seed = bytes.fromhex(SCRIPT["seed"])
key, created = load_or_create(files, lambda n: seed, "/device.key")
again, created_again = load_or_create(files, lambda n: bytes(32), "/device.key")
print(
    json.dumps(
        {
            "announce": announce(key, SCRIPT["device"]["id"]),
            "created": created,
            "kept": not created_again and again.public_key == key.public_key,
        }
    )
)

uart = FakeUart()
bus = RtuBus(uart, None, 300, CLOCK)
clock = Clock(lambda: None, CLOCK)
clock.synchronise()
uplink = Uplink(
    lambda: MQTTClient(SCRIPT["device"]["id"], "broker.test", 1883, keepalive=60), SCRIPT["device"]["id"], CLOCK
)
logs = []
app = App(SCRIPT, bus, Outbox("/outbox", files), key, uplink, clock, None, logs.append)

for step in SCRIPT["steps"]:
    uart.images = {int(unit): image for unit, image in step["images"].items()}
    uart.silent = set(step.get("silent", []))
    BROKER.up = not step.get("broker_down", False)
    CLOCK.now_ms = step["t1"] * 1000 + 50
    clock.now()
    app.run_interval(step["t1"])
    CLOCK.sleep_ms(2000)  # the reconnect backoff passes before the publish
    sent = app.publish()
    print(json.dumps({"t1": step["t1"], "sent": sent, "pending": app.outbox.pending()}))

print(
    json.dumps(
        {
            "published": [[t, p.hex(), q, r] for t, p, q, r in BROKER.published],
            "connects": BROKER.connects,
            "logs": logs,
            "requests": uart.requests,
        }
    )
)
