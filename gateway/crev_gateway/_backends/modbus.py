"""The only place that touches pymodbus (pinned to 3.16.x in pyproject.toml).

One ``ModbusBus`` per physical bus (a TCP endpoint or a serial port): one
lock, so requests never interleave on RS-485; a pause between requests for
slow devices; a timeout, and retries with exponential backoff. After a
timeout the connection is closed, so a late answer cannot be mistaken for
the reply to the next request.
"""

import logging
import threading
import time

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from crev_gateway import MeterError
from crev_gateway.config import BusURL

# pymodbus logs every timeout at ERROR; our own log line says it once, better.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ModbusBus:
    def __init__(self, url: BusURL, timeout_s: float, retries: int, backoff_s: float, pause_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.pause_s = pause_s
        self.lock = threading.Lock()
        self._client: ModbusTcpClient | ModbusSerialClient | None = None
        self._last_request_end = 0.0

    def _connect(self, meter: str) -> ModbusTcpClient | ModbusSerialClient:
        if self._client is None:
            if self.url.scheme == "tcp":
                self._client = ModbusTcpClient(self.url.host, port=self.url.port, timeout=self.timeout_s, retries=0)
            else:
                self._client = ModbusSerialClient(
                    self.url.device,
                    framer=FramerType.RTU,
                    baudrate=self.url.baudrate,
                    parity=self.url.parity,
                    bytesize=self.url.bytesize,
                    stopbits=self.url.stopbits,
                    timeout=self.timeout_s,
                    retries=0,
                )
        if not self._client.connected and not self._client.connect():
            self.close()
            raise MeterError(meter, "CONNECTION", "cannot connect to %s" % self.url.key)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
            self._client = None

    def _read_once(self, meter: str, function: str, address: int, count: int, unit: int) -> list[int]:
        client = self._connect(meter)
        wait = self._last_request_end + self.pause_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            if function == "input":
                response = client.read_input_registers(address, count=count, device_id=unit)
            else:
                response = client.read_holding_registers(address, count=count, device_id=unit)
        except ModbusIOException as err:
            self.close()
            raise MeterError(
                meter, "TIMEOUT", "no answer from %s unit %d within %.1f s" % (self.url.key, unit, self.timeout_s)
            ) from err
        except ConnectionException as err:
            self.close()
            raise MeterError(meter, "CONNECTION", "connection to %s lost: %s" % (self.url.key, err)) from err
        except ModbusException as err:
            self.close()
            raise MeterError(meter, "TIMEOUT", "%s: %s" % (self.url.key, err)) from err
        finally:
            self._last_request_end = time.monotonic()
        if response.isError():
            code = getattr(response, "exception_code", None)
            error = MeterError(
                meter, "EXCEPTION", "exception code %s reading %d registers at %d" % (code, count, address)
            )
            # Illegal function, address or value will not change on a retry; busy or failure may.
            error.retryable = code not in (1, 2, 3)
            raise error
        registers = list(response.registers)
        if len(registers) != count:
            raise MeterError(meter, "EXCEPTION", "asked for %d registers, got %d" % (count, len(registers)))
        return registers

    def read(self, meter: str, function: str, address: int, count: int, unit: int) -> list[int]:
        """Read ``count`` registers; raises MeterError after the retries."""
        with self.lock:
            attempt = 0
            while True:
                try:
                    return self._read_once(meter, function, address, count, unit)
                except MeterError as err:
                    if not err.retryable or attempt >= self.retries:
                        raise
                    time.sleep(self.backoff_s * (2**attempt))
                    attempt += 1
