# Times the firmware's whole path for one reading on MicroPython, and its
# memory: read two meters over Modbus RTU (a stand-in UART), apply the rules,
# sign, append to the flash outbox, publish over umqtt.simple (a stand-in
# socket) and drop the acknowledged record. Prints one JSON line.
import gc
import json
import os
import struct
import sys
import time

sys.path.append("/bench")
from fakes import FakeTime, FakeUart, install_socket

install_socket()
from dgc.app import App
from dgc.clock import Clock
from dgc.outbox import Files, Outbox
from dgc.rtu_bus import RtuBus
from dgc.uplink import Uplink
from umqtt.simple import MQTTClient

from crev import ed25519

with open("/bench/params.json") as f:
    PARAMS = json.load(f)
ed25519.use_base_table(PARAMS["signing_table"])
ITERATIONS = PARAMS["iterations"]
CONFIG = {"device": {"id": "dgc-bench-0001", "interval_s": 60}, "meters": PARAMS["meters"]}


def image(serial, imported, exported):
    words = {"3:%d" % 0xFC00: serial >> 16, "3:%d" % 0xFC01: serial & 0xFFFF}
    for address, value in ((0x48, imported), (0x4A, exported), (0x156, imported + exported)):
        high, low = struct.unpack(">HH", struct.pack(">f", value))
        words["4:%d" % address] = high
        words["4:%d" % (address + 1)] = low
    return words


clock_source = FakeTime(1790000000)
uart = FakeUart()
clock = Clock(lambda: None, clock_source)
clock.synchronise()
app = App(
    CONFIG,
    RtuBus(uart, None, 300, clock_source),
    Outbox("/bench-outbox", Files(os)),
    __import__("crev.keys", None, None, ["SigningKey"]).SigningKey(bytes(range(32)), "pure"),
    Uplink(lambda: MQTTClient("dgc-bench-0001", "broker", 1883), "dgc-bench-0001", clock_source),
    clock,
    None,
    lambda line: None,
)


def one(i):
    t1 = 1790000040 + 60 * (i + 1)
    uart.images = {1: image(11112222, 0.0, 100.0 + 0.05 * i), 2: image(33334444, 50.0 + 0.02 * i, 20.0 + 0.01 * i)}
    clock_source.now_ms = t1 * 1000
    clock.now()
    app.run_interval(t1)
    app.publish()


one(0)  # the first reading builds the signing table (if used), as a device does once at boot
one(1)
gc.collect()
gc.disable()
before = gc.mem_alloc()
one(2)
per_reading = gc.mem_alloc() - before
gc.enable()
gc.collect()
start = time.ticks_us()
for i in range(ITERATIONS):
    one(i + 3)
elapsed = time.ticks_diff(time.ticks_us(), start)
print(
    json.dumps(
        {
            "us_per_reading": elapsed / ITERATIONS,
            "alloc_per_reading": per_reading,
            "uart_requests_per_reading": uart.requests / (ITERATIONS + 3),
            "signing_table": PARAMS["signing_table"],
        }
    )
)
