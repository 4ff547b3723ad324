# Runs on MicroPython's unix port:
#   micropython sunspec_main.py BOARD PORT
# BOARD holds what `crev provision` writes for a site with SunSpec meters
# (config.json, the firmware compiled to .mpy under BOARD/lib). The firmware's
# application reads the meters through its RtuBus; the one stand-in is the
# UART: a TCP connection to 127.0.0.1:PORT carrying the same Modbus RTU frames
# an RS-485 line would (an RTU-over-TCP server on the simulator, as a serial
# device server would give). The clock is the test's: each line on stdin is
# the t1 of the next interval; each line out is the reading signed for it.
import json
import os
import socket
import sys

from dgc.app import App
from dgc.clock import Clock
from dgc.outbox import Files, Outbox
from dgc.rtu_bus import RtuBus
from fakes import FakeTime

from crev.keys import SigningKey

BOARD, PORT = sys.argv[1], int(sys.argv[2])


class TcpUart:
    """machine.UART's write() and non-blocking read(), over a TCP stream."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
        self.sock.setblocking(False)

    def write(self, data):
        return self.sock.write(data)

    def read(self, n):
        return self.sock.read(n)  # None when nothing has arrived


with open(BOARD + "/config.json") as f:
    config = json.load(f)
with open(BOARD + "/test/seed.hex") as f:
    key = SigningKey(bytes.fromhex(f.read().strip()))
bus = RtuBus(TcpUart(PORT), None, config["uart"].get("timeout_ms", 300))
time_source = FakeTime(0)
clock = Clock(lambda: None, time_source)  # NTP "succeeds" at once: clk = 1, as the gateway's bench clock
logs = []
app = App(config, bus, Outbox(BOARD + "/outbox", Files(os)), key, None, clock, None, logs.append)
sent = -1
for line in sys.stdin:
    t1 = int(line)
    if sent == -1 and clock.synced_at_ms is None:
        time_source.now_ms = (t1 - 30) * 1000
        clock.synchronise()
    time_source.now_ms = t1 * 1000 + 50
    clock.now()
    app.run_interval(t1)
    readings = [(seq, bytes(cose).hex()) for seq, cose in app.outbox.unacknowledged() if seq > sent]
    if readings:
        sent = readings[-1][0]
    print(json.dumps({"t1": t1, "readings": readings, "logs": logs}))
    del logs[:]  # App keeps this list's append
