# The firmware's whole path on MicroPython: read two meters over Modbus RTU
# (a stand-in UART), apply the rules, sign, append to the flash outbox,
# publish over umqtt.simple (a stand-in socket) and drop the acknowledged
# record. /bench/params.json picks the mode; each prints JSON lines.
#
# "timing": one reading at a time (run_interval, then publish), timed over
# many readings, and what one reading allocates with the GC off.
#
# "heap" (run.mjs --steps): the real loop, App.run, one interval per
# top-level call, and a gc.collect() between calls (this port collects only
# there), so the heap in use at the start of each step is the live heap. A
# step runs with the GC off: what it allocates is everything it allocated,
# an upper bound of the most it holds at once above that. Phases: steady state, one steady
# interval again one pass per step (which pass signs, which idle), a broker
# outage until the outbox ring is full and readings pause, then the first
# interval after the broker is back one pass per step (the replay), then
# intervals until the backlog is gone.
import gc
import json
import os
import struct
import sys
import time

sys.path.append("/bench")

with open("/bench/params.json") as f:
    PARAMS = json.load(f)
if PARAMS.get("mpy"):
    # The firmware compiled to .mpy, as `crev provision` writes it, ahead of run.mjs's sources.
    sys.path.insert(0, "/mpy")
MODE = PARAMS.get("mode", "timing")
INTERVAL_S = PARAMS.get("interval_s", 60)
PASS_MS = 200  # App.run sleeps this long between passes
PASSES = INTERVAL_S * 1000 // PASS_MS
DEV = "dgc-bench-0001"
START = 1790000040  # a minute boundary
CONFIG = {"device": {"id": DEV, "interval_s": INTERVAL_S}, "meters": PARAMS["meters"]}


def image(serial, imported, exported):
    words = {"3:%d" % 0xFC00: serial >> 16, "3:%d" % 0xFC01: serial & 0xFFFF}
    for address, value in ((0x48, imported), (0x4A, exported), (0x156, imported + exported)):
        high, low = struct.unpack(">HH", struct.pack(">f", value))
        words["4:%d" % address] = high
        words["4:%d" % (address + 1)] = low
    return words


def meter_images(i):
    # Counters that grow a little every interval, as on a sunny site.
    return {1: image(11112222, 0.0, 100.0 + 0.05 * i), 2: image(33334444, 50.0 + 0.02 * i, 20.0 + 0.01 * i)}


# ---------------------------------------------------------------- "timing"


def _choose_signing(ed25519):
    # As firmware/main.py does: the table, or else the limbs; "ints" is the comb in Python ints.
    signing = PARAMS.get("signing", "table" if PARAMS.get("signing_table") else "limbs")
    ed25519.use_base_table(signing == "table")
    if signing == "limbs":
        from dgc.limbs25519 import install

        install()


def timing():
    from fakes import FakeTime, FakeUart, install_socket

    install_socket()
    from dgc.app import App
    from dgc.clock import Clock
    from dgc.outbox import Files, Outbox
    from dgc.rtu_bus import RtuBus
    from dgc.uplink import Uplink
    from umqtt.simple import MQTTClient

    from crev import ed25519
    from crev.keys import SigningKey

    _choose_signing(ed25519)
    iterations = PARAMS["iterations"]
    clock_source = FakeTime(START)
    uart = FakeUart()
    clock = Clock(lambda: None, clock_source)
    clock.synchronise()
    app = App(
        CONFIG,
        RtuBus(uart, None, 300, clock_source),
        Outbox("/bench-outbox", Files(os)),
        SigningKey(bytes(range(32)), "pure"),
        Uplink(lambda: MQTTClient(DEV, "broker", 1883), DEV, clock_source),
        clock,
        None,
        lambda line: None,
    )

    def one(i):
        t1 = START + INTERVAL_S * (i + 1)
        uart.images = meter_images(i)
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
    for i in range(iterations):
        one(i + 3)
    elapsed = time.ticks_diff(time.ticks_us(), start)
    print(
        json.dumps(
            {
                "us_per_reading": elapsed / iterations,
                "alloc_per_reading": per_reading,
                "uart_requests_per_reading": uart.requests / (iterations + 3),
                "signing": PARAMS.get("signing"),
            }
        )
    )


# ---------------------------------------------------------------- "heap"


def _head_size(data, at):
    info = data[at] & 31
    return 1 if info < 24 else 1 + (1 << (info - 24))


def _argument(data, at):
    # The argument of the CBOR head at ``at`` (RFC 8949 §3.1), read without allocating.
    info = data[at] & 31
    if info < 24:
        return info
    value = 0
    for k in range(1 << (info - 24)):
        value = value << 8 | data[at + 1 + k]
    return value


def reading_seq(cose):
    """The seq of a reading's COSE_Sign1 (SPEC §3), walked without decoding it."""
    at = 2  # tag 18, array of 4
    at += _head_size(cose, at) + _argument(cose, at)  # the protected header
    at += 1  # the empty unprotected header
    at += _head_size(cose, at)  # the payload's byte string head
    at += _head_size(cose, at)  # the payload's map head
    at += 2  # 0: v
    at += 1  # 1: dev
    at += _head_size(cose, at) + _argument(cose, at)
    at += 1  # 2: seq
    return _argument(cose, at)


class Received:
    """What the broker got, in constant memory: counts and the order of seqs."""

    def __init__(self):
        self.readings = 0
        self.duplicates = 0  # at least once: a reading resent after a lost PUBACK
        self.gaps = 0
        self.last = -1
        self.online = 0  # status "online" messages: one per connection

    def __call__(self, topic, payload):
        if not topic.endswith("/reading"):
            if topic.endswith("/status") and bytes(payload) == b"online":
                self.online += 1
            return
        seq = reading_seq(payload)
        if seq <= self.last:
            self.duplicates += 1
            return
        if seq != self.last + 1:
            self.gaps += 1
        self.readings += 1
        self.last = seq


# Every key from the start: a key added later would grow the dict, and the live heap with it.
app = None  # made by _setup_app
STATE = {"phase": "interpreter", "n": 0, "pass": 0, "tail": 0, "failed": None, "no_reading": 0}


def _setup_firmware():
    global App, Clock, Files, Outbox, RtuBus, Uplink, SigningKey, ed25519, modbus_rtu, SEGMENT_RECORDS, MAX_SEGMENTS
    if PARAMS.get("signing", "limbs") == "limbs":
        from dgc import limbs25519  # noqa: F401  (main.py imports it for this mode: its code counts)
    from dgc.app import App
    from dgc.clock import Clock
    from dgc.outbox import MAX_SEGMENTS, SEGMENT_RECORDS, Files, Outbox
    from dgc.rtu_bus import RtuBus
    from dgc.uplink import Uplink

    from crev import ed25519, modbus_rtu
    from crev.keys import SigningKey


def _setup_stand_ins():
    global BROKER, FakeTime, FakeUart
    from fakes import BROKER, FakeTime, FakeUart, install_socket

    install_socket()  # before umqtt.simple is imported


def _setup_mqtt():
    global MQTTClient
    from umqtt.simple import MQTTClient


def _setup_stand_in_objects():
    global uart, clock_source, received
    # Half an interval before a boundary, so each call of App.run holds one boundary.
    clock_source = FakeTime(START - INTERVAL_S // 2)
    uart = FakeUart()
    uart.images = meter_images(0)
    received = Received()
    BROKER.keep = False
    BROKER.on_publish = received


def _setup_app():
    global app
    _choose_signing(ed25519)
    clock = Clock(lambda: None, clock_source)
    clock.synchronise()
    records = PARAMS.get("segment_records", SEGMENT_RECORDS)
    segments = PARAMS.get("max_segments", MAX_SEGMENTS)
    print(json.dumps({"phase": "ring", "segments": segments, "records": records}))
    outbox = Outbox("/bench-outbox", Files(os), records, segments)
    app = App(
        CONFIG,
        RtuBus(uart, None, 300, clock_source),
        outbox,
        SigningKey(bytes(range(32)), "pure"),
        Uplink(lambda: MQTTClient(DEV, "broker", 1883, keepalive=60), DEV, clock_source),
        clock,
        None,
        _log,
    )


def _log(line):
    # A meter read that failed (a MemoryError inside it counts as one) leaves an interval without a reading.
    if line.startswith("no reading"):
        STATE["no_reading"] += 1


# Each setup step prints the live heap before it runs: the interpreter alone, then after each part.
SETUP = (
    ("interpreter", _setup_firmware),
    ("firmware imported", _setup_stand_ins),
    ("stand-ins imported", _setup_mqtt),
    ("umqtt imported", _setup_stand_in_objects),
    ("stand-in objects made", _setup_app),
    ("warm-up", None),
)


def _measure(work, first):
    live = gc.mem_alloc()  # at the start of a step: what the last collection kept
    gc.disable()
    before = gc.mem_alloc()
    signed_before = app.outbox.head.next_seq
    work(first)
    allocated = gc.mem_alloc() - before
    gc.enable()
    return live, allocated, app.outbox.head.next_seq != signed_before


def _interval(first):
    uart.images = meter_images(STATE["n"])
    app.run(clock_source.sleep_ms, PASSES)


def _pass(first):
    if first:  # the meters move on once an interval
        uart.images = meter_images(STATE["n"])
    app.run(clock_source.sleep_ms, 1)


def _report(phase, live, allocated, signed):
    print(
        json.dumps(
            {
                "phase": phase,
                "live": live,
                "alloc": allocated,
                "signed": signed,
                "pending": app.outbox.pending(),
                "paused": app.paused,
            }
        )
    )


def step(i):
    global STEPS
    phase = STATE["phase"]
    setup = [k for k, (name, _work) in enumerate(SETUP) if name == phase and _work is not None]
    if setup:
        # Each part of the setup in a step of its own, so the live heap after it is its size.
        print(json.dumps({"phase": phase, "live": gc.mem_alloc()}))
        SETUP[setup[0]][1]()
        STATE["phase"] = SETUP[setup[0] + 1][0]
    elif phase in ("warm-up", "steady", "outage", "after"):
        live, allocated, signed = _measure(_interval, True)
        STATE["n"] += 1
        _report(phase, live, allocated, signed)
        if phase == "warm-up" and STATE["n"] >= 2:
            STATE["phase"] = "steady"
        elif phase == "steady" and STATE["n"] >= 2 + PARAMS["steady"]:
            STATE["phase"] = "steady pass"
            STATE["pass"] = 0
        elif phase == "outage" and app.paused:
            # The ring is full and readings pause: the broker comes back for the next interval.
            BROKER.up = True
            STATE["phase"] = "replay pass"
            STATE["pass"] = 0
        elif phase == "after" and app.outbox.pending() == 0:
            STATE["tail"] += 1
            if STATE["tail"] >= 3:
                STATE["phase"] = "done"
    elif phase in ("steady pass", "replay pass"):
        live, allocated, signed = _measure(_pass, STATE["pass"] == 0)
        STATE["pass"] += 1
        _report(phase, live, allocated, signed)
        if STATE["pass"] >= PASSES:
            STATE["n"] += 1
            if phase == "steady pass":
                STATE["phase"] = "outage"
                BROKER.up = False
            else:
                STATE["phase"] = "after"
    elif phase == "done":
        STEPS = 0  # run.mjs stops here
        print(
            json.dumps(
                {
                    "phase": "received",
                    "readings": received.readings,
                    "last_seq": received.last,
                    "duplicates": received.duplicates,
                    "gaps": received.gaps,
                    "next_seq": app.outbox.head.next_seq,
                    "pending": app.outbox.pending(),
                    "loaded": [
                        getattr(module, "__file__", "")
                        for name, module in sys.modules.items()
                        if name.split(".")[0] in ("crev", "dgc", "umqtt")
                    ],
                }
            )
        )


# ---------------------------------------------------------------- "floor"


def _floor_pass():
    if STATE["pass"] == 0:  # the meters move on once an interval
        uart.images = meter_images(STATE["n"])
    app.run(clock_source.sleep_ms, 1)


def _floor_interval_done(phase):
    STATE["n"] += 1
    if phase == "warm-up" and STATE["n"] >= 2:
        STATE["phase"] = "steady"
    elif phase == "steady" and STATE["n"] >= 2 + PARAMS["steady"]:
        if PARAMS.get("outage"):
            STATE["phase"] = "outage"
            BROKER.up = False
        else:
            STATE["phase"] = "done"
    elif phase == "outage" and app.paused:
        BROKER.up = True
        STATE["phase"] = "replay"
    elif phase == "replay" and app.outbox.pending() == 0:
        STATE["phase"] = "after"
    elif phase == "after":
        STATE["tail"] += 1
        if STATE["tail"] >= 2:
            STATE["phase"] = "done"


# One module a step at boot, leaves first: a board collects while main.py imports them,
# this port only between steps.
FLOOR_IMPORTS = (
    "crev.errors",
    "crev.cbor",
    "crev.sha512",
    "crev.ed25519",
    "crev.keys",
    "crev.registers",
    "crev.modbus_rtu",
    "crev.dgcc",
    "crev.cose",
    "crev.reading",
    "dgc",
    "dgc.limbs25519",
    "dgc.clock",
    "dgc.rtu_bus",
    "dgc.meters",
    "dgc.outbox",
    "dgc.uplink",
    "dgc.app",
)


def floor_step(i):
    global STEPS
    phase = STATE["phase"]
    if phase == "interpreter" and STATE["n"] < len(FLOOR_IMPORTS):
        try:
            name = FLOOR_IMPORTS[STATE["n"]]
            if name != "dgc.limbs25519" or PARAMS["signing"] == "limbs":  # as firmware/main.py imports
                __import__(name)
        except MemoryError:
            STATE["failed"] = FLOOR_IMPORTS[STATE["n"]]
            STATE["phase"] = "MemoryError"
            return
        STATE["n"] += 1
        if STATE["n"] == len(FLOOR_IMPORTS):
            STATE["n"] = 0
        else:
            return
    # Once booted no list is made per step: what a step allocates is the firmware's.
    setup = [] if app is not None else [k for k, (name, work) in enumerate(SETUP) if name == phase and work]
    if setup:
        try:
            SETUP[setup[0]][1]()
        except MemoryError:  # the heap is too small to boot
            STATE["failed"] = phase
            STATE["phase"] = "MemoryError"
            return
        STATE["phase"] = SETUP[setup[0] + 1][0]
        return
    if phase == "MemoryError" and app is None:
        STEPS = 0
        print(json.dumps({"phase": "floor", "ok": False, "failed_in": STATE["failed"], "intervals": 0}))
        return
    if phase in ("done", "MemoryError"):
        STEPS = 0
        connections = 2 if PARAMS.get("outage") else 1
        ok = (
            phase == "done"
            and STATE["no_reading"] == 0
            and received.gaps == 0
            and received.duplicates == 0
            and received.readings == app.outbox.head.next_seq
            and app.outbox.pending() == 0
            and received.online == connections
        )
        print(
            json.dumps(
                {
                    "phase": "floor",
                    "ok": ok,
                    "failed_in": STATE["failed"],
                    "intervals": STATE["n"],
                    "readings": received.readings,
                    "next_seq": app.outbox.head.next_seq,
                    "gaps": received.gaps,
                    "duplicates": received.duplicates,
                    "no_reading": STATE["no_reading"],
                    "connections": received.online,
                    "heap": gc.mem_alloc() + gc.mem_free() - (128 << 20),
                }
            )
        )
        return
    try:
        _floor_pass()
    except MemoryError:
        # Nothing more may be allocated here (the heap is full until the step returns and
        # the runner collects): the next step reports.
        STATE["failed"] = phase
        STATE["phase"] = "MemoryError"
        return
    STATE["pass"] += 1
    if STATE["pass"] >= PASSES:
        STATE["pass"] = 0
        _floor_interval_done(phase)


if MODE == "timing":
    timing()
elif MODE == "floor":
    step = floor_step
    STEPS = 1 << 30  # until the report lowers it
else:
    STEPS = 1 << 30  # until the "done" step lowers it
