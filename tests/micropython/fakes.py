# Stand-ins for what the WebAssembly port lacks, shared by the firmware tests
# and benchmarks: a clock under the test's control, a UART with meters on it
# answering in real Modbus RTU frames, and a socket with a minimal MQTT broker
# behind it. The firmware code that uses them is the real code.
from crev import modbus_rtu

# ---------------------------------------------------------------- time


# A board's ticks_ms() counts modulo 2**30 (MicroPython's TICKS_PERIOD), so it is
# always a small int; milliseconds since 1970 are not (a bigint on a 32-bit port,
# and every sum or quotient of one is a new object on the heap).
TICKS_PERIOD = 1 << 30
_TICKS_MASK = TICKS_PERIOD - 1
_TICKS_HALF = TICKS_PERIOD // 2


class FakeTime:
    """A board's two clocks, moved by the test: time() in whole seconds, ticks_ms() wrapping.

    They count as a board does, in small ints, so that sleeping and reading the
    clock allocate nothing a board would not: the firmware's heap is measured
    through this stand-in. The ticks start 5 minutes before they wrap, so every
    test runs through a wrap (a board's wraps after 12.4 days).
    """

    def __init__(self, start):
        self.wall = start  # seconds (a bigint after 2004, kept rather than rebuilt per call)
        self.ms = 0  # into the current second
        self.ticks = TICKS_PERIOD - 300 * 1000

    def time(self):
        return self.wall

    def ticks_ms(self):
        return self.ticks

    def ticks_add(self, a, b):
        return (a + b) & _TICKS_MASK

    def ticks_diff(self, a, b):
        return ((a - b + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF

    def sleep_ms(self, ms):
        self.ticks = (self.ticks + ms) & _TICKS_MASK
        ms += self.ms
        if ms >= 1000:
            self.wall += ms // 1000
            ms %= 1000
        self.ms = ms

    @property
    def now_ms(self):
        return self.wall * 1000 + self.ms

    @now_ms.setter
    def now_ms(self, value):
        # Setting the time moves both clocks, as time passing does (not a clock step).
        self.ticks = (self.ticks + (value - self.now_ms)) & _TICKS_MASK
        self.wall = value // 1000
        self.ms = value % 1000


# ---------------------------------------------------------------- UART


class FakeUart:
    """Meters on an RS-485 line, scripted register by register."""

    def __init__(self):
        self.images = {}  # unit -> {(function, address): word}
        self.silent = set()  # units that do not answer this step
        self.pending = b""
        self.chunk = 0
        self.requests = 0
        # Writes (function 16, site control's inverter registers): each is recorded as
        # (unit, address, [words]) and changes the image, unless the unit ignores writes
        # (it answers, and keeps its registers: what a read-back must catch).
        self.writes = []
        self.ignore_writes = set()

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
        if function == 16:
            return self._write_registers(data, unit, address, count)
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

    def _write_registers(self, data, unit, address, count):
        if data[6] != 2 * count or len(data) != 9 + 2 * count:
            raise AssertionError("the firmware sent a malformed write")
        values = [data[7 + 2 * i] << 8 | data[8 + 2 * i] for i in range(count)]
        image = self.images[unit]
        if any("3:%d" % (address + i) not in image for i in range(count)):
            self.pending = modbus_rtu.with_crc(bytes([unit, 16 | 0x80, 2]))
            return len(data)
        self.writes.append((unit, address, values))
        if unit not in self.ignore_writes:
            for i, value in enumerate(values):
                image["3:%d" % (address + i)] = value
        self.pending = modbus_rtu.with_crc(bytes(data[:6]))
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
        # A long benchmark keeps nothing (keep = False) and sees each PUBLISH
        # through on_publish(topic, payload) instead.
        self.keep = True
        self.on_publish = None
        # Subscriptions (site control): topic -> the socket that subscribed last, the
        # messages delivered to a topic while nobody listens (a persistent session
        # keeps them), and the packet ids the subscriber acknowledged.
        self.subscribed = {}
        self.queued = []
        self.pubacks = []
        self.pid = 0

    def deliver(self, topic, payload):
        """Send a QoS 1 PUBLISH to the topic's subscriber (or keep it until one subscribes)."""
        self.pid += 1
        topic_bytes = topic.encode()
        body = bytearray([len(topic_bytes) >> 8, len(topic_bytes) & 0xFF])
        body.extend(topic_bytes)
        body.append(self.pid >> 8)
        body.append(self.pid & 0xFF)
        body.extend(payload)
        packet = bytearray([0x32])
        length = len(body)
        while True:
            byte = length & 0x7F
            length >>= 7
            packet.append(byte | 0x80 if length else byte)
            if not length:
                break
        packet.extend(body)
        sock = self.subscribed.get(topic)
        if sock is not None and not sock.closed and self.up:
            sock.inbox.extend(packet)
        else:
            self.queued.append((topic, packet))
        return self.pid

    def handle(self, packet, sock):
        kind = packet[0] >> 4
        if kind == 1:  # CONNECT
            if self.keep:
                self.connects.append(bytes(packet).hex())
            sock.inbox.extend(b"\x20\x02\x00\x00")
        elif kind == 3:  # PUBLISH
            qos = (packet[0] >> 1) & 3
            at = 1
            while packet[at] & 0x80:
                at += 1
            at += 1
            topic_len = packet[at] << 8 | packet[at + 1]
            topic = bytes(packet[at + 2 : at + 2 + topic_len]).decode()
            at += 2 + topic_len
            pid = at
            if qos:
                at += 2
            if self.keep:
                self.published.append((topic, bytes(packet[at:]), qos, packet[0] & 1))
            if self.on_publish is not None:
                self.on_publish(topic, memoryview(packet)[at:])
            if qos == 1:
                sock.inbox.extend(b"\x40\x02")
                sock.inbox.append(packet[pid])
                sock.inbox.append(packet[pid + 1])
        elif kind == 12:  # PINGREQ
            sock.inbox.extend(b"\xd0\x00")
        elif kind == 8:  # SUBSCRIBE: one topic, as umqtt.simple sends it
            at = 1
            while packet[at] & 0x80:
                at += 1
            at += 1
            pid_hi, pid_lo = packet[at], packet[at + 1]
            topic_len = packet[at + 2] << 8 | packet[at + 3]
            topic = bytes(packet[at + 4 : at + 4 + topic_len]).decode()
            qos = packet[at + 4 + topic_len]
            self.subscribed[topic] = sock
            sock.inbox.extend(bytes([0x90, 3, pid_hi, pid_lo, min(qos, 1)]))
            waiting = [m for m in self.queued if m[0] == topic]
            self.queued = [m for m in self.queued if m[0] != topic]
            for _topic, message in waiting:
                sock.inbox.extend(message)
        elif kind == 4:  # PUBACK from a subscriber
            self.pubacks.append(packet[2] << 8 | packet[3])


BROKER = Broker()


class FakeSocket:
    # The byte streams are bytearrays grown and consumed in place, so the
    # stand-in allocates little of its own: the firmware's heap benchmark and
    # tests count everything allocated in a pass, this socket's share too.
    def __init__(self, *args):
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.closed = False
        self.blocking = True

    def connect(self, address):
        if not BROKER.up:
            raise OSError(111)  # ECONNREFUSED

    def setblocking(self, flag):
        self.blocking = flag  # umqtt.simple's check_msg reads without blocking

    def write(self, data, length=None):
        if not BROKER.up or self.closed:
            raise OSError(104)  # ECONNRESET
        # MicroPython's sockets take str as a buffer too, and so does bytearray.extend.
        self.outbox.extend(data if length is None else memoryview(data)[:length])
        self._packets()
        return len(data) if length is None else length

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
            BROKER.handle(memoryview(self.outbox)[: at + length], self)
            self.outbox[: at + length] = b""

    def read(self, n):
        if not BROKER.up:
            raise OSError(104)
        if not self.blocking and not self.inbox:
            return None  # a non-blocking socket with nothing to read
        out = bytes(memoryview(self.inbox)[:n])
        self.inbox[:n] = b""
        return out

    def close(self):
        self.closed = True


class FakeSocketModule:
    socket = FakeSocket

    @staticmethod
    def getaddrinfo(host, port, *args):
        return [(2, 1, 0, "", (host, port))]


def install_socket():
    """Make umqtt.simple use the fake socket: import umqtt only after this."""
    import sys

    sys.modules["usocket"] = FakeSocketModule
