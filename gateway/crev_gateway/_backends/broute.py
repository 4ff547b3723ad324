"""The only place that drives a Wi-SUN module's serial port for the B-route (pyserial).

The protocol is in the portable core, so that the MicroPython firmware can
read a smart meter the same way: crev.skstack (SKSTACK-IP: scan, join,
re-authentication, the transmit-time limit, both modules' ERXUDP), crev.echonet
(frames and TID matching) and crev.smartmeter (class 0x028801, counters to
mWh). This module only moves bytes between the port and those state
machines and keeps the time.

Why not the PyPI package momonga, which drives the same modules on CPython:
its energies are floats (it multiplies by the unit as 0.1, 0.01, ...), where
SPEC §2 keeps mWh integers end to end; it writes WOPT to the module's flash
(which takes a limited number of writes) to get hex output, and reads hex
only; and the firmware could not use it. momonga is instead the oracle of
the tests: it runs against the same SKSTACK emulation as this driver and
must read the same values (tests/test_broute_driver.py).

One ``BRouteMeter`` per module. Calls block, each with a timeout, and are
serialised by a lock; an INF or INFC push (the meter's 30-minute values)
that arrives while any call pumps the port is kept for ``notifications``,
and an INFC is acknowledged at once (INFC_Res). Failures are MeterErrors:
TIMEOUT (no answer in time), CONNECTION (the port, or the module gave up:
no PAN, authentication failed), EXCEPTION (the meter refused: Get_SNA or
SetC_SNA), IMPLAUSIBLE (a value that cannot be used, e.g. "no data").
"""

import logging
import threading
import time
from collections.abc import Callable

import serial  # type: ignore[import-untyped]  # pyserial ships no type hints

from crev import echonet, skstack
from crev import smartmeter as sm
from crev.errors import InvalidInput
from crev_gateway import MeterError

log = logging.getLogger("crev.gateway.broute")

READ_CHUNK = 4096


class BRouteMeter:
    def __init__(
        self,
        name: str,
        port: str,
        model: str,
        rbid: str,
        password: str,
        baudrate: int = 115200,
        utc_offset_s: int = sm.JST_OFFSET_S,
        request_timeout_s: float = 20.0,
        driver: skstack.Driver | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.baudrate = baudrate
        self.utc_offset_s = utc_offset_s
        self.request_timeout_s = request_timeout_s
        try:
            self.driver = driver or skstack.Driver(model, rbid, password)
        except InvalidInput as err:
            raise MeterError(name, "CONFIG", err.detail) from err
        except Exception as err:  # MisuseError: a bad model, ID or password
            raise MeterError(name, "CONFIG", str(err)) from err
        self.tracker = echonet.Tracker()
        self.lock = threading.RLock()
        self._serial: serial.Serial | None = None
        self._answers: dict[int, echonet.Frame] = {}
        self.pushes: list[echonet.Frame] = []
        self.events: list[tuple[str, object]] = []  # what the driver reported, for logs and tests
        self.scale: sm.Scale | None = None
        self._start = time.monotonic()

    # -- the port

    def _now(self) -> int:
        return int((time.monotonic() - self._start) * 1000)

    def open(self, timeout_s: float = 180.0) -> None:
        """Open the port and join the meter's PAN."""
        with self.lock:
            if self._serial is None:
                try:
                    self._serial = serial.Serial(self.port, self.baudrate, timeout=0)
                except (serial.SerialException, OSError) as err:
                    raise MeterError(self.name, "CONNECTION", "cannot open %s: %s" % (self.port, err)) from err
            self.driver.start(self._now())
            self._pump(lambda: self.driver.state == skstack.READY, timeout_s, "joining the PAN")

    def close(self) -> None:
        with self.lock:
            if self._serial is not None:
                try:
                    if self.driver.state == skstack.READY:
                        self._serial.write(b"SKTERM\r\n")
                        self._serial.flush()
                finally:
                    self._serial.close()
                    self._serial = None

    def _io(self, wait_s: float) -> None:
        port = self._serial
        if port is None:
            raise MeterError(self.name, "CONNECTION", "the port is not open")
        try:
            out = self.driver.output()
            if out:
                port.write(out)
            port.timeout = max(0.0, wait_s)
            data = port.read(1)
            if data:
                port.timeout = 0
                data += port.read(READ_CHUNK)
        except (serial.SerialException, OSError) as err:
            raise MeterError(self.name, "CONNECTION", "%s: %s" % (self.port, err)) from err
        now = self._now()
        if data:
            self.driver.feed(data, now)
        self.driver.tick(now)
        out = self.driver.output()
        if out:
            try:
                port.write(out)
            except (serial.SerialException, OSError) as err:
                raise MeterError(self.name, "CONNECTION", "%s: %s" % (self.port, err)) from err
        for kind, detail in self.driver.events():
            self._event(kind, detail)

    def _event(self, kind: str, detail: object) -> None:
        self.events.append((kind, detail))
        if kind == skstack.RX:
            assert isinstance(detail, skstack.RxUdp)
            self._datagram(detail.data)
        elif kind == skstack.FAILED:
            raise MeterError(self.name, "CONNECTION", "B-route: %s" % detail)
        elif kind == skstack.SEND_FAILED:
            log.warning("%s: a request could not be sent to the smart meter", self.name)
        elif kind == skstack.GARBLED:
            log.warning("%s: the Wi-SUN module printed %s", self.name, detail)
        elif kind == skstack.JOINED:
            # The tracker is kept: a request queued while the session was down
            # goes out now, and its answer must still match.
            log.info("%s: joined the smart meter at %s", self.name, detail)
        else:
            log.info("%s: B-route %s %s", self.name, kind, detail)

    def _datagram(self, data: bytes) -> None:
        try:
            frame = echonet.decode(data)
        except echonet.EchonetError as err:
            log.warning("%s: dropped a malformed ECHONET Lite frame: %s", self.name, err)
            return
        if frame.seoj != sm.CLASS_EOJ:
            return
        if frame.esv == echonet.INFC:
            self.driver.send(echonet.infc_response(frame).encode(), self._now())
        try:
            request = self.tracker.match(frame)
        except echonet.EchonetError as err:
            log.warning("%s: dropped an answer: %s", self.name, err)
            return
        if request is None:
            if frame.esv in (echonet.INF, echonet.INFC):
                self.pushes.append(frame)
            return
        self._answers[frame.tid] = frame

    def _pump(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise MeterError(self.name, "TIMEOUT", "%s took longer than %.1f s" % (what, timeout_s))
            self._io(self._wait_s(left))

    def _wait_s(self, left_s: float) -> float:
        """How long the port may be waited on: ``left_s``, or less if the driver has something to do sooner.

        Data from the module ends a wait at once, so nothing is gained by waking
        earlier; waking every few milliseconds would cost as much CPU as the
        gateway's whole interval.
        """
        wake = self.driver.next_wakeup()
        if wake < 0:
            return max(0.0, left_s)
        return max(0.0, min(left_s, (wake - self._now()) / 1000.0))

    # -- ECHONET Lite

    def request(self, esv: int, props: list[tuple[int, bytes]], timeout_s: float | None = None) -> echonet.Frame:
        """Send one request to the smart meter and wait for its answer."""
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        with self.lock:
            if self.driver.state in (skstack.FAILED_STATE, skstack.IDLE):
                self.driver.start(self._now())  # the module gave up earlier: begin again
            if self.driver.state != skstack.READY:
                self._pump(lambda: self.driver.state == skstack.READY, timeout, "joining the PAN again")
            frame = self.tracker.request(esv, sm.CLASS_EOJ, props, self._now() + int(timeout * 1000))
            self.driver.send(frame.encode(), self._now())
            try:
                self._pump(lambda: frame.tid in self._answers, timeout, "the answer to %s" % echonet.esv_name(esv))
            except MeterError:
                self.tracker.expire(self._now() + int(timeout * 1000) + 1)
                raise
            return self._answers.pop(frame.tid)

    def get(self, epcs: list[int], allow_partial: bool = False) -> echonet.Frame:
        answer = self.request(echonet.GET, [(epc, b"") for epc in epcs])
        if answer.esv == echonet.GET_SNA and not allow_partial:
            missing = ["%02X" % epc for epc, edt in answer.props if not edt]
            raise MeterError(self.name, "EXCEPTION", "the smart meter cannot serve EPC %s" % ", ".join(missing))
        return answer

    def setc(self, epc: int, edt: bytes) -> None:
        answer = self.request(echonet.SETC, [(epc, edt)])
        if answer.esv != echonet.SET_RES:
            raise MeterError(self.name, "EXCEPTION", "the smart meter refused to set EPC %02X" % epc)

    def read_scale(self) -> sm.Scale:
        """Coefficient (optional), unit and effective digits."""
        answer = self.get([sm.EPC_COEFFICIENT, sm.EPC_UNIT, sm.EPC_DIGITS], allow_partial=True)
        try:
            self.scale = sm.scale_from(
                answer.get(sm.EPC_COEFFICIENT), answer.edt(sm.EPC_UNIT), answer.edt(sm.EPC_DIGITS)
            )
        except InvalidInput as err:
            raise MeterError(self.name, "IMPLAUSIBLE", str(err)) from err
        return self.scale

    def _scale(self) -> sm.Scale:
        return self.scale if self.scale is not None else self.read_scale()

    def _pair(self, frame: echonet.Frame) -> sm.SlotValues:
        scale = self._scale()
        try:
            normal = sm.decode_fixed(frame.edt(sm.EPC_FIXED_NORMAL), self.utc_offset_s)
            reverse = sm.decode_fixed(frame.edt(sm.EPC_FIXED_REVERSE), self.utc_offset_s)
            return sm.fixed_pair(normal, reverse, scale)
        except InvalidInput as err:
            raise MeterError(self.name, "IMPLAUSIBLE", str(err)) from err

    def read_fixed(self) -> sm.SlotValues:
        """The latest 30-minute fixed-time import (EA) and export (EB)."""
        return self._pair(self.get([sm.EPC_FIXED_NORMAL, sm.EPC_FIXED_REVERSE]))

    def notifications(self) -> list[sm.SlotValues]:
        """The 30-minute pushes received so far (each EA with EB), oldest first."""
        with self.lock:
            frames, self.pushes = self.pushes, []
        found = []
        for frame in frames:
            if frame.get(sm.EPC_FIXED_NORMAL) is None or frame.get(sm.EPC_FIXED_REVERSE) is None:
                continue
            try:
                found.append(self._pair(frame))
            except MeterError as err:
                log.warning("%s: %s", self.name, err)
        return found

    def poll(self, timeout_s: float) -> list[sm.SlotValues]:
        """Listen for pushes for up to ``timeout_s``; return those received."""
        with self.lock:
            deadline = time.monotonic() + timeout_s
            while not self.pushes and time.monotonic() < deadline:
                self._io(self._wait_s(deadline - time.monotonic()))
        return self.notifications()

    def history2(self, t: int, count: int) -> list[sm.SlotValues]:
        """Up to ``count`` slots ending at ``t`` and before, from EC (set by ED)."""
        try:
            edt = sm.encode_history2_time(t, count, self.utc_offset_s)
        except Exception as err:
            raise MeterError(self.name, "CONFIG", str(err)) from err
        self.setc(sm.EPC_HISTORY2_TIME, edt)
        answer = self.get([sm.EPC_HISTORY2])
        try:
            return sm.history2_slots(answer.edt(sm.EPC_HISTORY2), self._scale(), self.utc_offset_s)
        except InvalidInput as err:
            raise MeterError(self.name, "IMPLAUSIBLE", str(err)) from err

    def history1(self, day: int, today: tuple[int, int, int]) -> list[sm.SlotValues]:
        """The slots of ``day`` days before the meter's local date ``today``, from E2 and E4 (set by E5)."""
        self.setc(sm.EPC_HISTORY1_DAY, sm.encode_history1_day(day))
        answer = self.get([sm.EPC_HISTORY1_NORMAL, sm.EPC_HISTORY1_REVERSE])
        try:
            return sm.history1_slots(
                answer.edt(sm.EPC_HISTORY1_NORMAL),
                answer.edt(sm.EPC_HISTORY1_REVERSE),
                today,
                self._scale(),
                self.utc_offset_s,
            )
        except InvalidInput as err:
            raise MeterError(self.name, "IMPLAUSIBLE", str(err)) from err

    def fill(self, slot_ends: list[int], today: tuple[int, int, int] | None = None) -> dict[int, sm.SlotValues]:
        """The values of missed slots (their end times), from EC; where the
        meter has no EC, from E2/E4 of each slot's day (``today`` is then the
        meter's local date). Slots the meter has no data for stay missing."""
        wanted = sorted(set(slot_ends), reverse=True)
        found: dict[int, sm.SlotValues] = {}
        while wanted:
            newest = wanted[0]
            span = [t for t in wanted if newest - t < sm.SLOT_S * sm.HISTORY2_MAX_POINTS]
            count = (newest - span[-1]) // sm.SLOT_S + 1
            try:
                slots = self.history2(newest, count)
            except MeterError as err:
                if err.code != "EXCEPTION" or today is None:
                    raise
                return self._fill_history1(wanted, today, found)
            for values in slots:
                if values.t in span:
                    found[values.t] = values
            wanted = wanted[len(span) :]
        return found

    def _fill_history1(
        self, wanted: list[int], today: tuple[int, int, int], found: dict[int, sm.SlotValues]
    ) -> dict[int, sm.SlotValues]:
        midnight = sm.unix_time(today[0], today[1], today[2], 0, 0, 0, self.utc_offset_s)
        days = sorted({(midnight + 86400 - 1 - t) // 86400 for t in wanted if t < midnight + 86400})
        for day in days:
            if day > sm.HISTORY1_MAX_DAY:
                continue
            for values in self.history1(day, today):
                if values.t in wanted:
                    found[values.t] = values
        return found


def check_pairing(argv: list[str] | None = None) -> int:
    """``python -m crev_gateway._backends.broute --port DEV --model MODEL``: join the
    smart meter once and print what it serves (docs/installing-a-gateway.md,
    "Pairing the B-route"). The Route-B ID and password come from the environment
    (CREV_BROUTE_ID, CREV_BROUTE_PASSWORD) or a prompt, never the command line,
    where any user could read them."""
    import argparse
    import getpass
    import os
    import sys

    parser = argparse.ArgumentParser(prog="python -m crev_gateway._backends.broute", description=check_pairing.__doc__)
    parser.add_argument("--port", required=True, help="the Wi-SUN module's serial port, e.g. /dev/ttyUSB0")
    parser.add_argument("--model", required=True, choices=skstack.MODELS, help="bp35a1, or bp35c0 for the C0/C2 family")
    parser.add_argument("--baudrate", type=int, default=115200)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to find and join the meter")
    args = parser.parse_args(argv)
    rbid = os.environ.get("CREV_BROUTE_ID") or getpass.getpass("Route-B ID: ")
    password = os.environ.get("CREV_BROUTE_PASSWORD") or getpass.getpass("Route-B password: ")
    try:
        meter = BRouteMeter("smartmeter", args.port, args.model, rbid.strip(), password.strip(), args.baudrate)
        try:
            meter.open(args.timeout)
            scale = meter.read_scale()
            latest = meter.read_fixed()
        finally:
            meter.close()
    except MeterError as err:
        print("B-route: %s" % err, file=sys.stderr)
        return 2
    print("joined the smart meter at %s" % meter.driver.meter_addr)
    print(
        "coefficient %d, unit code 0x%02X, %d digits: one step is %d mWh"
        % (scale.coefficient, scale.unit_code, scale.digits, scale.mwh_per_step)
    )
    print("30-minute values at %d: import %d mWh, export %d mWh" % (latest.t, latest.import_mwh, latest.export_mwh))
    return 0


if __name__ == "__main__":
    raise SystemExit(check_pairing())
