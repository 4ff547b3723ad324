"""Modbus RTU over a UART: one request at a time, with a deadline the bus decides.

Reads (functions 3 and 4) for the meters, and writes of holding registers
(function 16) for the inverter controls of SPEC §12 (dgc/control.py).

The UART is ``machine.UART`` on a device (any object with ``write(bytes)`` and
``read(n) -> bytes | None`` that does not block). An RS-485 transceiver's
driver-enable pin, when given, is raised while the request goes out.
"""

import time

from crev import modbus_rtu


class ReadTimeout(Exception):
    pass


class RtuBus:
    def __init__(self, uart: object, de_pin: object = None, timeout_ms: int = 300, clock: object = time) -> None:
        self.uart = uart
        self.de_pin = de_pin
        self.timeout_ms = timeout_ms
        self.clock = clock

    def read(self, unit: int, function: int, address: int, count: int) -> list:
        """The registers, or ReadTimeout / modbus_rtu.RtuError."""
        request = modbus_rtu.read_request(unit, function, address, count)
        return self._exchange(unit, request, modbus_rtu.ReplyParser(unit, function, count))

    def write(self, unit: int, address: int, values: list) -> int:
        """Write holding registers (function 16); how many were written, or ReadTimeout / RtuError."""
        request = modbus_rtu.write_request(unit, address, values)
        return self._exchange(unit, request, modbus_rtu.WriteReplyParser(unit, address, len(values)))

    def _exchange(self, unit: int, request: bytes, parser: object):
        while self.uart.read(256):  # type: ignore[attr-defined]
            pass  # a late answer to an earlier request must not be taken for this one
        if self.de_pin is not None:
            self.de_pin.value(1)  # type: ignore[attr-defined]
        self.uart.write(request)  # type: ignore[attr-defined]
        if self.de_pin is not None:
            if hasattr(self.uart, "flush"):
                # Waits until the last bit is out, so the driver is not released too early.
                self.uart.flush()
            self.de_pin.value(0)  # type: ignore[attr-defined]
        clock = self.clock
        deadline = clock.ticks_add(clock.ticks_ms(), self.timeout_ms)  # type: ignore[attr-defined]
        while parser.needed():  # type: ignore[attr-defined]
            chunk = self.uart.read(parser.needed())  # type: ignore[attr-defined]
            if chunk:
                parser.feed(chunk)  # type: ignore[attr-defined]
            elif clock.ticks_diff(deadline, clock.ticks_ms()) <= 0:  # type: ignore[attr-defined]
                raise ReadTimeout("unit %d did not answer within %d ms" % (unit, self.timeout_ms))
            else:
                clock.sleep_ms(2)  # type: ignore[attr-defined]
        return parser.result()  # type: ignore[attr-defined]
