"""Modbus RTU framing for reading registers (function codes 3 and 4) and writing them (16), without I/O.

A request is ``unit, function, address (2), count (2), CRC-16 (2, low byte
first)``. The reply is either ``unit, function, byte count, registers...,
CRC`` or an exception ``unit, function | 0x80, code, CRC``. The caller owns
the UART and the clock: it writes ``read_request(...)``, feeds whatever bytes
arrive to a ``ReplyParser`` (frames may be split across reads), asks
``needed()`` how many more bytes to wait for, and decides itself when a
silence is a timeout.

A write of holding registers (function 16, "write multiple registers") is
``unit, 16, address (2), count (2), byte count, registers..., CRC``
(``write_request``); its reply echoes ``unit, 16, address, count, CRC``, or
is an exception, and ``WriteReplyParser`` collects it the same way.
"""

from crev.errors import InvalidInput, MisuseError

READ_HOLDING = 3
READ_INPUT = 4
WRITE_MULTIPLE = 16
MAX_REGISTERS = 125  # Modbus: at most 125 registers per read
MAX_WRITE_REGISTERS = 123  # and 123 per write

# ReplyParser error codes.
BAD_CRC = "BAD_CRC"
WRONG_UNIT = "WRONG_UNIT"
WRONG_FUNCTION = "WRONG_FUNCTION"
WRONG_LENGTH = "WRONG_LENGTH"
TRAILING = "TRAILING"
EXCEPTION = "EXCEPTION"

EXCEPTION_NAMES = {
    1: "ILLEGAL_FUNCTION",
    2: "ILLEGAL_DATA_ADDRESS",
    3: "ILLEGAL_DATA_VALUE",
    4: "SERVER_DEVICE_FAILURE",
    5: "ACKNOWLEDGE",
    6: "SERVER_DEVICE_BUSY",
    10: "GATEWAY_PATH_UNAVAILABLE",
    11: "GATEWAY_TARGET_FAILED_TO_RESPOND",
}


class RtuError(InvalidInput):
    """A reply that is not the answer to our request; ``exception_code`` for Modbus exceptions."""

    def __init__(self, code: str, detail: str = "", exception_code: int = 0) -> None:
        super().__init__(code, detail)
        self.exception_code = exception_code


def _crc_table() -> list:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    crc = crc16(frame)
    return bytes(frame) + bytes([crc & 0xFF, crc >> 8])


def read_request(unit: int, function: int, address: int, count: int) -> bytes:
    """The RTU frame asking ``unit`` for ``count`` registers from ``address``."""
    if function not in (READ_HOLDING, READ_INPUT):
        raise MisuseError("only function codes 3 and 4 are supported, not %r" % (function,))
    if not 1 <= unit <= 247:
        raise MisuseError("unit %r is not 1..247" % (unit,))
    if not 0 <= address <= 0xFFFF or not 1 <= count <= MAX_REGISTERS or address + count > 0x10000:
        raise MisuseError("registers %r..+%r are out of range" % (address, count))
    return with_crc(bytes([unit, function, address >> 8, address & 0xFF, count >> 8, count & 0xFF]))


class ReplyParser:
    """Collects the reply to one request from bytes that arrive in any pieces."""

    def __init__(self, unit: int, function: int, count: int) -> None:
        self.unit = unit
        self.function = function
        self.count = count
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer.extend(data)

    def _length(self) -> int:
        """The whole frame's length, as far as the bytes so far tell it."""
        if len(self.buffer) >= 2 and self.buffer[1] == self.function | 0x80:
            return 5
        return 5 + 2 * self.count

    def needed(self) -> int:
        """How many more bytes complete the frame (0 when it is complete)."""
        return max(0, self._length() - len(self.buffer))

    def result(self) -> list:
        """The registers; call when ``needed()`` is 0. Raises RtuError."""
        frame = bytes(self.buffer)
        length = self._length()
        if len(frame) < length:
            raise MisuseError("the reply is not complete: %d more bytes" % (length - len(frame)))
        if len(frame) > length:
            raise RtuError(TRAILING, "%d bytes after the frame" % (len(frame) - length))
        if crc16(frame[:-2]) != frame[-2] | frame[-1] << 8:
            raise RtuError(BAD_CRC, "the reply's CRC does not match")
        if frame[0] != self.unit:
            raise RtuError(WRONG_UNIT, "reply from unit %d, asked unit %d" % (frame[0], self.unit))
        if frame[1] == self.function | 0x80:
            code = frame[2]
            name = EXCEPTION_NAMES.get(code, "code %d" % code)
            raise RtuError(EXCEPTION, "unit %d answered with exception %s" % (self.unit, name), code)
        if frame[1] != self.function:
            raise RtuError(WRONG_FUNCTION, "reply for function %d, asked %d" % (frame[1], self.function))
        if frame[2] != 2 * self.count:
            raise RtuError(WRONG_LENGTH, "reply holds %d bytes, asked %d registers" % (frame[2], self.count))
        return [frame[3 + 2 * i] << 8 | frame[4 + 2 * i] for i in range(self.count)]


def write_request(unit: int, address: int, values: list) -> bytes:
    """The RTU frame writing ``values`` (16-bit words) to ``unit``'s holding registers from ``address``."""
    count = len(values)
    if not 1 <= unit <= 247:
        raise MisuseError("unit %r is not 1..247" % (unit,))
    if not 0 <= address <= 0xFFFF or not 1 <= count <= MAX_WRITE_REGISTERS or address + count > 0x10000:
        raise MisuseError("registers %r..+%r are out of range" % (address, count))
    frame = bytearray([unit, WRITE_MULTIPLE, address >> 8, address & 0xFF, count >> 8, count & 0xFF, 2 * count])
    for value in values:
        if not 0 <= value <= 0xFFFF:
            raise MisuseError("a register holds 0..65535, not %r" % (value,))
        frame.append(value >> 8)
        frame.append(value & 0xFF)
    return with_crc(bytes(frame))


class WriteReplyParser:
    """Collects the reply to one write request (function 16), like ReplyParser."""

    def __init__(self, unit: int, address: int, count: int) -> None:
        self.unit = unit
        self.address = address
        self.count = count
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer.extend(data)

    def _length(self) -> int:
        if len(self.buffer) >= 2 and self.buffer[1] == WRITE_MULTIPLE | 0x80:
            return 5
        return 8

    def needed(self) -> int:
        return max(0, self._length() - len(self.buffer))

    def result(self) -> int:
        """How many registers the device wrote; call when ``needed()`` is 0. Raises RtuError."""
        frame = bytes(self.buffer)
        length = self._length()
        if len(frame) < length:
            raise MisuseError("the reply is not complete: %d more bytes" % (length - len(frame)))
        if len(frame) > length:
            raise RtuError(TRAILING, "%d bytes after the frame" % (len(frame) - length))
        if crc16(frame[:-2]) != frame[-2] | frame[-1] << 8:
            raise RtuError(BAD_CRC, "the reply's CRC does not match")
        if frame[0] != self.unit:
            raise RtuError(WRONG_UNIT, "reply from unit %d, asked unit %d" % (frame[0], self.unit))
        if frame[1] == WRITE_MULTIPLE | 0x80:
            code = frame[2]
            name = EXCEPTION_NAMES.get(code, "code %d" % code)
            raise RtuError(EXCEPTION, "unit %d answered with exception %s" % (self.unit, name), code)
        if frame[1] != WRITE_MULTIPLE:
            raise RtuError(WRONG_FUNCTION, "reply for function %d, asked %d" % (frame[1], WRITE_MULTIPLE))
        address = frame[2] << 8 | frame[3]
        count = frame[4] << 8 | frame[5]
        if address != self.address or count != self.count:
            raise RtuError(
                WRONG_LENGTH,
                "reply for %d registers at %d, wrote %d at %d" % (count, address, self.count, self.address),
            )
        return count
