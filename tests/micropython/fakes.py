# Stand-ins for what the WebAssembly port lacks, shared by the firmware tests
# and benchmarks: a clock under the test's control, a UART with meters on it
# answering in real Modbus RTU frames, and a socket with a minimal MQTT broker
# behind it. The firmware code that uses them is the real code.
from crev import modbus_rtu

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


def install_socket():
    """Make umqtt.simple use the fake socket: import umqtt only after this."""
    import sys

    sys.modules["usocket"] = FakeSocketModule
