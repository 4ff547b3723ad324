# A broker outage long enough to fill the outbox ring, then the replay, on
# real MicroPython with the heap measured (run.mjs --steps).
#
# The real loop (App.run) runs one interval per top-level call, and one
# quiet interval and the first interval after the broker is back one pass
# per call (a boundary then falls between two calls of App.run); run.mjs runs
# gc.collect() between calls (this port collects only there), so the heap in
# use when a step starts is the live heap. Each step runs with the GC off:
# what it allocates is everything it allocated. The stand-ins are the tests'
# fake UART and MQTT broker; the broker keeps what it gets in one buffer made
# up front, so keeping it does not grow the heap either.
import gc
import json
import os
import struct
import sys
from array import array

sys.path.append("/test")
from fakes import BROKER, FakeTime, FakeUart, install_socket

install_socket()
from dgc.app import App
from dgc.clock import Clock
from dgc.limbs25519 import install as sign_without_allocating
from dgc.outbox import Files, Outbox
from dgc.rtu_bus import RtuBus
from dgc.uplink import Uplink
from umqtt.simple import MQTTClient

from crev.keys import SigningKey

with open("/test/params.json") as f:
    PARAMS = json.load(f)
DEV = "dgc-heap-0001"
INTERVAL_S = PARAMS["interval_s"]
PASSES = INTERVAL_S * 1000 // 200  # App.run sleeps 200 ms a pass
START = 1790000040  # a boundary of any interval that divides a minute
CAPACITY = PARAMS["segment_records"] * PARAMS["max_segments"]
MAX_READINGS = CAPACITY + 64


def image(serial, imported, exported):
    words = {"3:%d" % 0xFC00: serial >> 16, "3:%d" % 0xFC01: serial & 0xFFFF}
    for address, value in ((0x48, imported), (0x4A, exported), (0x156, imported + exported)):
        high, low = struct.unpack(">HH", struct.pack(">f", value))
        words["4:%d" % address] = high
        words["4:%d" % (address + 1)] = low
    return words


# What the broker got, in buffers made once: the readings' bytes back to back.
STORE = bytearray(512 * MAX_READINGS)
ENDS = array("I", bytes(4 * (MAX_READINGS + 1)))
COUNT = [0]


def on_publish(topic, payload):
    if not topic.endswith("/reading"):
        return
    n = COUNT[0]
    at = ENDS[n]
    STORE[at : at + len(payload)] = payload
    ENDS[n + 1] = at + len(payload)
    COUNT[0] = n + 1


BROKER.keep = False
BROKER.on_publish = on_publish
sign_without_allocating()  # as firmware/main.py does by default (no signing table)
clock_source = FakeTime(START - INTERVAL_S // 2)  # mid-interval: one boundary per App.run call
uart = FakeUart()
clock = Clock(lambda: None, clock_source)
clock.synchronise()
app = App(
    {"device": {"id": DEV, "interval_s": INTERVAL_S}, "meters": PARAMS["meters"]},
    RtuBus(uart, None, 300, clock_source),
    Outbox("/outbox", Files(os), PARAMS["segment_records"], PARAMS["max_segments"]),
    SigningKey(bytes(PARAMS["seed"]), "pure"),
    Uplink(lambda: MQTTClient(DEV, "broker.test", 1883, keepalive=60), DEV, clock_source),
    clock,
    None,
    lambda line: None,
)

STATE = {"phase": "steady", "interval": 0, "pass": 0, "drained": 0}
STEPS = 1 << 30  # until the last step lowers it


def run_interval(first):
    n = STATE["interval"]
    uart.images = {1: image(11112222, 0.0, 100.0 + 0.05 * n), 2: image(33334444, 50.0 + 0.02 * n, 20.0)}
    app.run(clock_source.sleep_ms, PASSES)


def run_pass(first):
    app.run(clock_source.sleep_ms, 1)


def measure(phase, work, first):
    live = gc.mem_alloc()
    gc.disable()
    before = gc.mem_alloc()
    seq_before = app.outbox.head.next_seq
    received_before = COUNT[0]
    work(first)
    allocated = gc.mem_alloc() - before
    gc.enable()
    print(
        json.dumps(
            {
                "phase": phase,
                "live": live,
                "alloc": allocated,
                "signed": app.outbox.head.next_seq != seq_before,
                "sent": COUNT[0] - received_before,
                "pending": app.outbox.pending(),
                "paused": app.paused,
            }
        )
    )


def step(i):
    global STEPS
    phase = STATE["phase"]
    if phase in ("steady", "outage", "after"):
        measure(phase, run_interval, True)
        STATE["interval"] += 1
        if phase == "steady" and STATE["interval"] >= PARAMS["steady"]:
            STATE["phase"] = "quiet pass"
        elif phase == "outage" and app.paused:
            BROKER.up = True  # the ring is full and readings pause: the broker is back
            STATE["phase"] = "replay"
        elif phase == "after" and app.outbox.pending() == 0:
            STATE["drained"] += 1
            if STATE["drained"] >= 2:
                STATE["phase"] = "done"
        if STATE["interval"] > MAX_READINGS:
            raise AssertionError("the outbox never filled or never drained")
    elif phase in ("quiet pass", "replay"):
        measure(phase, run_pass, True)
        STATE["pass"] += 1
        if STATE["pass"] >= PASSES:
            STATE["pass"] = 0
            STATE["interval"] += 1
            if phase == "quiet pass":
                BROKER.up = False
                STATE["phase"] = "outage"
            else:
                STATE["phase"] = "after"
    else:
        STEPS = 0
        readings = [bytes(STORE[ENDS[k] : ENDS[k + 1]]).hex() for k in range(COUNT[0])]
        print(json.dumps({"phase": "received", "readings": readings, "next_seq": app.outbox.head.next_seq}))
