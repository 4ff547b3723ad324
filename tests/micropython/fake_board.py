# Stand-ins for the hardware the WebAssembly port lacks, installed before a
# board session starts (serial_bridge.mjs --prelude):
#   - machine.UART with two SDM630 meters on its RS-485 line, whose counters
#     grow with real time at the rates in /test/board.json;
#   - machine.Pin and machine.WDT that do nothing;
#   - os.urandom from the JavaScript host's crypto.getRandomValues (a real
#     CSPRNG; the port has no os.urandom of its own).
# Everything else on the "board" is real MicroPython.
import json
import os as _os
import struct
import sys
import time

import js

with open("/test/board.json") as f:
    BOARD = json.load(f)
STARTED = time.ticks_ms()


def _with_crc(frame):
    # The meters' own CRC-16, written here so the stand-in does not lean on the firmware under test.
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes(frame) + bytes([crc & 0xFF, crc >> 8])


def _float_words(value):
    high_low = struct.unpack(">HH", struct.pack(">f", value))
    return [high_low[0], high_low[1]]


def _image(unit):
    hours = time.ticks_diff(time.ticks_ms(), STARTED) / 3600000
    meter = BOARD["meters"][str(unit)]
    imported = meter["import_kwh"] + meter["import_w"] * hours / 1000
    exported = meter["export_kwh"] + meter["export_w"] * hours / 1000
    words = {(3, 0xFC00): meter["serial"] >> 16, (3, 0xFC01): meter["serial"] & 0xFFFF}
    for address, value in ((0x48, imported), (0x4A, exported), (0x156, imported + exported)):
        high, low = _float_words(value)
        words[(4, address)] = high
        words[(4, address + 1)] = low
    return words


class UART:
    def __init__(self, *args, **kwargs):
        self.pending = b""

    def write(self, data):
        data = bytes(data)
        unit, function = data[0], data[1]
        address = data[2] << 8 | data[3]
        count = data[4] << 8 | data[5]
        if str(unit) not in BOARD["meters"]:
            return len(data)  # nobody at that address: a timeout
        image = _image(unit)
        body = bytearray([unit, function, 2 * count])
        for i in range(count):
            word = image.get((function, address + i), 0)
            body.append(word >> 8)
            body.append(word & 0xFF)
        self.pending = _with_crc(bytes(body))
        return len(data)

    def read(self, n):
        if not self.pending:
            return None
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


class Pin:
    OUT = 1

    def __init__(self, *args, **kwargs):
        pass

    def value(self, v=None):
        return 0


class WDT:
    def __init__(self, *args, **kwargs):
        pass

    def feed(self):
        pass


class _Machine:
    pass


machine = _Machine()
machine.UART = UART
machine.Pin = Pin
machine.WDT = WDT
sys.modules["machine"] = machine


class _OsWithRandom:
    def __getattr__(self, name):
        return getattr(_os, name)

    def urandom(self, n):
        buffer = js.Uint8Array.new(n)
        js.crypto.getRandomValues(buffer)
        return bytes(buffer[i] for i in range(n))


sys.modules["os"] = _OsWithRandom()
sys.path.append("/lib")
