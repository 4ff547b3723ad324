# Runs the firmware's application loop on real MicroPython with two stand-ins:
#   - a fake UART, because there is no RS-485 hardware here: it answers each
#     Modbus RTU request with a real RTU frame built from a scripted meter
#     register image, in small pieces, or not at all (a timeout);
#   - a fake socket under umqtt.simple, because the WebAssembly port has no
#     network: it plays a minimal MQTT broker (CONNACK, PUBACK, PINGRESP) and
#     records what was published, and can refuse connections (an outage).
# Everything else is the real firmware code and the real umqtt.simple.
import json
import sys

from crev import modbus_rtu

with open("/test/script.json") as f:
    SCRIPT = json.load(f)


# ---------------------------------------------------------------- time


class FakeTime:
    def __init__(self, start):
        self.now_ms = start * 1000

    def time(self):
        return self.now_ms // 1000

    def ticks_ms(self):
        return self.now_ms

    def ticks_add(self, a, b):
        return a + b

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.now_ms += ms


CLOCK = FakeTime(SCRIPT["steps"][0]["t1"] - 30)


# ---------------------------------------------------------------- UART


class FakeUart:
    """Meters on an RS-485 line, scripted register by register."""

    def __init__(self):
        self.images = {}  # unit -> {(function, address): word}
        self.silent = set()  # units that do not answer this step
        self.pending = b""
        self.chunk = 0
        self.requests = 0

    def write(self, data):
        self.requests += 1
        data = bytes(data)
        if modbus_rtu.crc16(data[:-2]) != data[-2] | data[-1] << 8:
            raise AssertionError("the firmware sent a frame with a bad CRC")
        unit, function = data[0], data[1]
        address = data[2] << 8 | data[3]
        count = data[4] << 8 | data[5]
        if unit in self.silent:
            return len(data)
        image = self.images[unit]
        words = []
        for i in range(count):
            key = "%d:%d" % (function, address + i)
            if key not in image:
                self.pending = modbus_rtu.with_crc(bytes([unit, function | 0x80, 2]))
                return len(data)
            words.append(image[key])
        body = bytearray([unit, function, 2 * count])
        for w in words:
            body.append(w >> 8)
            body.append(w & 0xFF)
        self.pending = modbus_rtu.with_crc(bytes(body))
        return len(data)

    def read(self, n):
        if not self.pending:
            return None
        self.chunk = self.chunk % 4 + 1  # frames arrive split in 1..4-byte pieces
        take = min(n, self.chunk, len(self.pending))
        out, self.pending = self.pending[:take], self.pending[take:]
        return out


# ---------------------------------------------------------------- MQTT broker behind a fake socket


class Broker:
    def __init__(self):
        self.up = True
        self.published = []  # (topic, payload, qos, retain)
        self.connects = []

    def handle(self, packet, sock):
        kind = packet[0] >> 4
        if kind == 1:  # CONNECT
            self.connects.append(bytes(packet).hex())
            sock.inbox += b"\x20\x02\x00\x00"
        elif kind == 3:  # PUBLISH
            qos = (packet[0] >> 1) & 3
            at = 1
            while packet[at] & 0x80:
                at += 1
            at += 1
            topic_len = packet[at] << 8 | packet[at + 1]
            topic = bytes(packet[at + 2 : at + 2 + topic_len]).decode()
            at += 2 + topic_len
            pid = None
            if qos:
                pid = packet[at : at + 2]
                at += 2
            self.published.append((topic, bytes(packet[at:]), qos, packet[0] & 1))
            if qos == 1:
                sock.inbox += b"\x40\x02" + bytes(pid)
        elif kind == 12:  # PINGREQ
            sock.inbox += b"\xd0\x00"


BROKER = Broker()


class FakeSocket:
    def __init__(self, *args):
        self.inbox = b""
        self.outbox = b""
        self.closed = False

    def connect(self, address):
        if not BROKER.up:
            raise OSError(111)  # ECONNREFUSED

    def setblocking(self, flag):
        pass

    def write(self, data, length=None):
        if not BROKER.up or self.closed:
            raise OSError(104)  # ECONNRESET
        if isinstance(data, str):
            data = data.encode()  # MicroPython's sockets take str as a buffer too
        data = bytes(data[:length] if length is not None else data)
        self.outbox += data
        self._packets()
        return len(data)

    def _packets(self):
        # Split the byte stream into whole MQTT packets.
        while len(self.outbox) >= 2:
            length = 0
            shift = 0
            at = 1
            while True:
                if at >= len(self.outbox):
                    return
                byte = self.outbox[at]
                length |= (byte & 0x7F) << shift
                shift += 7
                at += 1
                if not byte & 0x80:
                    break
            if len(self.outbox) < at + length:
                return
            packet, self.outbox = self.outbox[: at + length], self.outbox[at + length :]
            BROKER.handle(packet, self)

    def read(self, n):
        if not BROKER.up:
            raise OSError(104)
        out, self.inbox = self.inbox[:n], self.inbox[n:]
        return out

    def close(self):
        self.closed = True


class FakeSocketModule:
    socket = FakeSocket

    @staticmethod
    def getaddrinfo(host, port, *args):
        return [(2, 1, 0, "", (host, port))]


sys.modules["usocket"] = FakeSocketModule
import os

from dgc.app import App
from dgc.clock import Clock
from dgc.keystore import announce, load_or_create
from dgc.outbox import Files, Outbox
from dgc.rtu_bus import RtuBus
from dgc.uplink import Uplink
from umqtt.simple import MQTTClient

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
    print(json.dumps({"t1": step["t1"], "sent": sent, "pending": len(app.outbox.unacknowledged())}))

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
