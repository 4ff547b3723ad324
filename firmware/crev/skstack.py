"""The B-route over ROHM's Wi-SUN modules (SKSTACK-IP on a serial port), without I/O.

Why a driver of our own rather than the PyPI package momonga, which drives
the same modules on CPython and is well kept: the controller is also a
microcontroller (SPEC §1), and a sans-I/O state machine in the portable core
serves the Raspberry Pi gateway and the MicroPython firmware alike; momonga
needs threads and pyserial. Beyond that, momonga turns counters into floats
(the unit 0.1 kWh as a float), where SPEC §2 wants integers end to end; it
writes WOPT to switch a BP35C0 to hex output, and WOPT is stored in the
module's flash, which takes a limited number of writes; and it parses hex
data only. This driver reads the module's output mode with ROPT and never
changes it. momonga is the tests' oracle instead: it is run against the same
module emulation, so the emulation speaks a dialect that an independent
driver accepts (tests/test_broute_driver.py).

Two dialects::

    BP35A1          SKSCAN 2 FFFFFFFF <dur>
                    SKSENDTO <h> <addr> <port> <sec> <len> <data>
                    EVENT <num> <addr> [<param>]
                    ERXUDP <src> <dst> <rport> <lport> <lla> <sec> <len> <hex data>
    BP35C0 / C2     SKSCAN 2 FFFFFFFF <dur> <side>
                    SKSENDTO <h> <addr> <port> <sec> <side> <len> <data>
                    EVENT <num> <addr> <side> [<param>]
                    ERXUDP <src> <dst> <rport> <lport> <lla> [<rssi>] <sec> <side> <len> <data>
                    where <data> is hex or, after WOPT 00 (the default), <len> raw bytes

The ``Driver`` goes: SKRESET, echo off (SKSREG SFE 0), ROPT, on BP35C0
SKSREG SA2 1 (so ERXUDP carries the RSSI), SKSETRBID, SKSETPWD, SKSCAN with
growing durations until a PAN answers, SKLL64, SKSREG S2 (channel) and S3
(PAN id), SKJOIN, then EVENT 25: joined. Payloads queued with ``send`` go
out one SKSENDTO at a time, and ECHONET Lite datagrams from the meter come
back as RX events. The module's own events:

    EVENT 21  a UDP send's result: param 01 (failed) re-sends, with backoff
    EVENT 24  PANA authentication failed: join again, up to join_attempts
    EVENT 25  PANA authenticated: joined (or re-authenticated)
    EVENT 26/27  the meter ended the session: join again
    EVENT 29  the PANA session's lifetime is up and the module re-authenticates
              by itself: sends wait for EVENT 25 (EVENT 24: join again)
    EVENT 32  the transmit-time limit (ARIB STD-T108) is in force: sends wait
    EVENT 33  the limit is lifted: sends resume after a backoff, which doubles
              each time the limit comes back within an hour

A command the module does not answer in time restarts the sequence from
SKRESET; after ``max_restarts`` restarts, or when no PAN answers a scan, or
joining fails join_attempts times in a row, the driver stops in FAILED and
says why; ``start`` tries again. Times are integer milliseconds of any
monotonic clock, given by the caller.

Errors: malformed module output never raises; it becomes a GARBLED event
with a reason (the stream goes on). ``send`` and the constructor raise
MisuseError for arguments they cannot honour.
"""

from crev.errors import MisuseError

BP35A1 = "bp35a1"
BP35C0 = "bp35c0"
MODELS = (BP35A1, BP35C0)

ECHONET_PORT = 0x0E1A
PANA_PORT = 0x02CC
MAX_LINE = 2048
MAX_DATALEN = 0x0500

EV_UDP_SENT = 0x21
EV_SCAN_DONE = 0x22
EV_PANA_FAILED = 0x24
EV_PANA_OK = 0x25
EV_TERMINATE_REQUEST = 0x26
EV_TERMINATED = 0x27
EV_TERMINATE_TIMEOUT = 0x28
EV_SESSION_EXPIRED = 0x29
EV_LIMIT_ON = 0x32
EV_LIMIT_OFF = 0x33

# Driver events, as (kind, detail) tuples.
JOINED = "JOINED"  # detail: the meter's IPv6 address
RX = "RX"  # detail: the RxUdp of an ECHONET Lite datagram from the meter
BLOCKED = "BLOCKED"  # detail: "reauth" or "rate_limit"
RESUMED = "RESUMED"
LOST = "LOST"  # detail: why the session was lost (the driver joins again)
FAILED = "FAILED"  # detail: SCAN, JOIN, MODULE
GARBLED = "GARBLED"  # detail: what was wrong with a line of output
SEND_FAILED = "SEND_FAILED"  # detail: the payload, given up after send_attempts
DROPPED = "DROPPED"  # detail: a payload pushed out of a full queue

# Driver states.
IDLE = "IDLE"
CONFIGURING = "CONFIGURING"
SCANNING = "SCANNING"
JOINING = "JOINING"
READY = "READY"
FAILED_STATE = "FAILED"


# --- module output -------------------------------------------------------------


class Ok:
    def __init__(self, text: str) -> None:
        self.text = text


class Fail:
    def __init__(self, code: str) -> None:
        self.code = code


class Event:
    def __init__(self, num: int, addr: str, side: object, param: object) -> None:
        self.num = num
        self.addr = addr
        self.side = side
        self.param = param

    def __repr__(self) -> str:
        return "Event(0x%02X, %s, side=%r, param=%r)" % (self.num, self.addr, self.side, self.param)


class RxUdp:
    def __init__(
        self,
        src: str,
        dst: str,
        rport: int,
        lport: int,
        lla: str,
        rssi: object,
        secured: int,
        side: object,
        data: bytes,
    ) -> None:
        self.src = src
        self.dst = dst
        self.rport = rport
        self.lport = lport
        self.lla = lla
        self.rssi = rssi
        self.secured = secured
        self.side = side
        self.data = data

    def __repr__(self) -> str:
        return "RxUdp(%s:%d -> %s:%d, %d bytes)" % (self.src, self.rport, self.dst, self.lport, len(self.data))


class PanDesc:
    """A PAN found by SKSCAN (the EPANDESC block)."""

    def __init__(self, fields: dict) -> None:
        self.fields = fields
        self.channel = _hex_field(fields, "Channel", 2)
        self.page = _hex_field(fields, "Channel Page", 2)
        self.pan_id = _hex_field(fields, "Pan ID", 4)
        self.addr = fields.get("Addr", "")
        self.lqi = _hex_field(fields, "LQI", 2)
        self.pair_id = fields.get("PairID", "")
        self.side = _hex_field(fields, "Side", 1) if "Side" in fields else None

    def complete(self) -> bool:
        return self.channel is not None and self.pan_id is not None and _is_hex(self.addr, 16)


class Text:
    """Any other line: SKLL64's address, EINFO, EVER, an echo."""

    def __init__(self, text: str) -> None:
        self.text = text


class Garbled:
    def __init__(self, reason: str, text: str) -> None:
        self.reason = reason
        self.text = text

    def __repr__(self) -> str:
        return "Garbled(%s: %r)" % (self.reason, self.text)


_HEX = "0123456789ABCDEFabcdef"


def _is_hex(text: str, length: int = 0) -> bool:
    if not text or (length and len(text) != length):
        return False
    return all(ch in _HEX for ch in text)


def _hex_field(fields: dict, key: str, max_len: int) -> object:
    value = fields.get(key)
    if value is None or not _is_hex(value) or len(value) > max_len:
        return None
    return int(value, 16)


def _unhex(text: str) -> object:
    if len(text) % 2 or (text and not _is_hex(text)):
        return None
    return bytes([int(text[i : i + 2], 16) for i in range(0, len(text), 2)])


def is_ipv6(text: str) -> bool:
    """An IPv6 address in text: the modules print eight groups of four hex
    digits, and "::" shortening is accepted too."""
    halves = text.split("::")
    if len(halves) > 2:
        return False
    groups = []
    for half in halves:
        if half:
            groups.extend(half.split(":"))
    if len(halves) == 1 and len(groups) != 8:
        return False
    if len(halves) == 2 and len(groups) > 7:
        return False
    return all(_is_hex(group) and len(group) <= 4 for group in groups)


def redact(line: str) -> str:
    """A command line fit for a log: the Route-B ID and password hidden."""
    for secret in ("SKSETPWD", "SKSETRBID"):
        if line.startswith(secret):
            return secret + " ****"
    return line


class Reader:
    """Splits the module's output into records. Lines end at CR or LF (ROPT's
    answer ends with a bare CR); a binary ERXUDP is cut by its length field,
    since its data may hold any byte."""

    def __init__(self, model: str, binary: bool = False, rssi_field: bool = True) -> None:
        if model not in MODELS:
            raise MisuseError("model %r is not one of %s" % (model, ", ".join(MODELS)))
        self.model = model
        self.binary = binary
        self.rssi_field = rssi_field
        self.buffer = bytearray()
        self.pan = None  # type: object

    def _header_tokens(self) -> int:
        if self.model == BP35A1:
            return 8  # ERXUDP src dst rport lport lla sec len
        return 10 if self.rssi_field else 9

    def feed(self, data: bytes) -> list:
        self.buffer.extend(data)
        out = []  # type: list
        while self.buffer:
            if self.binary and self.buffer[:7] == b"ERXUDP ":
                record = self._binary_rx()
                if record is None:
                    break
                self._emit(record, out)
                continue
            end = _line_end(self.buffer)
            if end < 0:
                if len(self.buffer) > MAX_LINE:
                    text = _printable(bytes(self.buffer[:80]))
                    self.buffer = bytearray()
                    self._emit(Garbled("a line longer than %d bytes" % MAX_LINE, text), out)
                break
            raw = bytes(self.buffer[:end])
            self.buffer = self.buffer[end + 1 :]
            if not raw:
                continue
            self._emit(self._line(raw), out)
        return out

    def flush(self) -> list:
        """Records held back (a PAN descriptor waits for the line after it)."""
        out = []  # type: list
        if self.pan is not None:
            out.append(PanDesc(self.pan))  # type: ignore[arg-type]
            self.pan = None
        return out

    def _emit(self, record: object, out: list) -> None:
        # EPANDESC is followed by indented "Key:Value" lines; the block ends
        # at the first line that is not indented.
        if isinstance(record, Text) and record.text.startswith("  ") and self.pan is not None:
            key, sep, value = record.text.strip().partition(":")
            if sep:
                self.pan[key] = value  # type: ignore[index]
                return
        out.extend(self.flush())
        if isinstance(record, Text) and record.text == "EPANDESC":
            self.pan = {}
            return
        out.append(record)

    def _binary_rx(self) -> object:
        spaces = 0
        header_end = -1
        for i in range(min(len(self.buffer), MAX_LINE)):
            byte = self.buffer[i]
            if byte in (10, 13):
                # A line break inside the header: not a binary ERXUDP.
                text = _printable(bytes(self.buffer[:i]))
                self.buffer = self.buffer[i + 1 :]
                return Garbled("ERXUDP header cut short", text)
            if byte == 32:
                spaces += 1
                if spaces == self._header_tokens():
                    header_end = i
                    break
        if header_end < 0:
            if len(self.buffer) >= MAX_LINE:
                text = _printable(bytes(self.buffer[:80]))
                self.buffer = bytearray()
                return Garbled("an ERXUDP header longer than %d bytes" % MAX_LINE, text)
            return None
        header = _printable(bytes(self.buffer[:header_end]))
        tokens = header.split(" ")
        if not _is_hex(tokens[-1], 4):
            self._skip_line()
            return Garbled("ERXUDP data length %r is not 4 hex digits" % tokens[-1], header)
        datalen = int(tokens[-1], 16)
        if datalen > MAX_DATALEN:
            self._skip_line()
            return Garbled("ERXUDP data length %d is implausible" % datalen, header)
        total = header_end + 1 + datalen
        if len(self.buffer) < total + 2:
            return None
        data = bytes(self.buffer[header_end + 1 : total])
        tail = bytes(self.buffer[total : total + 2])
        self.buffer = self.buffer[total + 2 :]
        if tail != b"\r\n":
            self._skip_line()
            return Garbled("ERXUDP data runs past its length %d" % datalen, header)
        return self._rx(tokens[1:], data, header)

    def _skip_line(self) -> None:
        for i in range(len(self.buffer)):
            if self.buffer[i] == 10:
                self.buffer = self.buffer[i + 1 :]
                return
        self.buffer = bytearray()

    def _line(self, raw: bytes) -> object:
        if not _is_ascii(raw):
            return Garbled("not printable ASCII", _printable(raw[:80]))
        text = raw.decode()
        if text == "OK" or text.startswith("OK "):
            return Ok(text)
        if text.startswith("FAIL "):
            return Fail(text[5:].strip())
        if text.startswith("EVENT "):
            return self._event(text)
        if text.startswith("ERXUDP "):
            return self._hex_rx(text)
        return Text(text)

    def _event(self, text: str) -> object:
        tokens = text.split(" ")
        if len(tokens) < 3 or not _is_hex(tokens[1], 2):
            return Garbled("EVENT without a number and an address", text)
        side = None  # type: object
        rest = tokens[3:]
        if self.model == BP35C0 and rest:
            if not _is_hex(rest[0]):
                return Garbled("EVENT side %r is not hex" % rest[0], text)
            side = int(rest[0], 16)
            rest = rest[1:]
        param = None  # type: object
        if rest:
            if not _is_hex(rest[0]):
                return Garbled("EVENT parameter %r is not hex" % rest[0], text)
            param = int(rest[0], 16)
        return Event(int(tokens[1], 16), tokens[2], side, param)

    def _hex_rx(self, text: str) -> object:
        tokens = text.split(" ")
        # BP35C0: with and without the RSSI field (SA2 1 / 0).
        sizes = [9] if self.model == BP35A1 else [11, 10]
        if len(tokens) not in sizes:
            return Garbled("ERXUDP with %d fields" % len(tokens), text)
        data = _unhex(tokens[-1])
        if data is None:
            return Garbled("ERXUDP data is not hex", text)
        return self._rx(tokens[1:-1], data, text, len(tokens) == 11)  # type: ignore[arg-type]

    def _rx(self, fields: list, data: bytes, text: str, with_rssi: object = None) -> object:
        # fields: src dst rport lport lla [rssi] sec [side] len
        if with_rssi is None:
            with_rssi = self.model == BP35C0 and self.rssi_field
        expected = 7 if self.model == BP35A1 else (9 if with_rssi else 8)
        if len(fields) != expected:
            return Garbled("ERXUDP with %d fields before its data, expected %d" % (len(fields), expected), text)
        src, dst, rport, lport, lla = fields[0], fields[1], fields[2], fields[3], fields[4]
        rest = fields[5:]
        rssi = None  # type: object
        side = None  # type: object
        if self.model == BP35C0:
            if with_rssi:
                if not _is_hex(rest[0], 2):
                    return Garbled("ERXUDP RSSI %r is not 2 hex digits" % rest[0], text)
                value = int(rest[0], 16)
                rssi = value - 256 if value >= 128 else value
                rest = rest[1:]
            secured, side_text, length = rest[0], rest[1], rest[2]
            if not _is_hex(side_text, 1):
                return Garbled("ERXUDP side %r is not one hex digit" % side_text, text)
            side = int(side_text, 16)
        else:
            secured, length = rest[0], rest[1]
        if not (is_ipv6(src) and is_ipv6(dst)):
            return Garbled("ERXUDP addresses are not IPv6", text)
        if not (_is_hex(rport, 4) and _is_hex(lport, 4) and _is_hex(lla, 16) and _is_hex(length, 4)):
            return Garbled("ERXUDP ports, link address or length are malformed", text)
        if not _is_hex(secured, 1):
            return Garbled("ERXUDP secured flag %r is not one hex digit" % secured, text)
        if int(length, 16) != len(data):
            return Garbled("ERXUDP says %d bytes but carries %d" % (int(length, 16), len(data)), text)
        return RxUdp(src, dst, int(rport, 16), int(lport, 16), lla, rssi, int(secured, 16), side, data)


def _is_ascii(raw: bytes) -> bool:
    return all(not (byte < 32 or byte > 126) for byte in raw)


def _printable(raw: bytes) -> str:
    return "".join([chr(b) if 32 <= b <= 126 else "." for b in raw])


def _line_end(buffer: bytearray) -> int:
    cr = buffer.find(b"\r")
    lf = buffer.find(b"\n")
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)


# --- commands ------------------------------------------------------------------


def scan_command(model: str, duration: int) -> str:
    if model == BP35A1:
        return "SKSCAN 2 FFFFFFFF %X" % duration
    return "SKSCAN 2 FFFFFFFF %X 0" % duration


def sendto_command(model: str, addr: str, payload: bytes, port: int = ECHONET_PORT, handle: int = 1) -> bytes:
    """SKSENDTO with the payload as raw bytes after its length (no line end)."""
    if not is_ipv6(addr):
        raise MisuseError("%r is not an IPv6 address in the module's form" % (addr,))
    if not 1 <= len(payload) <= MAX_DATALEN:
        raise MisuseError("a UDP payload here is 1..%d bytes" % MAX_DATALEN)
    if model == BP35A1:
        head = "SKSENDTO %d %s %04X 1 %04X " % (handle, addr, port, len(payload))
    else:
        head = "SKSENDTO %d %s %04X 1 0 %04X " % (handle, addr, port, len(payload))
    return head.encode() + bytes(payload)


def _check_secret(value: str, what: str, low: int, high: int) -> None:
    if not low <= len(value) <= high:
        raise MisuseError("the %s is %d..%d characters" % (what, low, high))
    for ch in value:
        if ch <= " " or ch > "~":
            raise MisuseError("the %s has a character that cannot go on the command line" % what)


# --- the driver ----------------------------------------------------------------


class Driver:
    """Joins the smart meter's PAN and carries ECHONET Lite payloads to and from it."""

    def __init__(
        self,
        model: str,
        rbid: str,
        password: str,
        scan_durations: tuple = (4, 5, 6, 7),
        join_attempts: int = 3,
        send_attempts: int = 3,
        max_restarts: int = 3,
        command_timeout_ms: int = 5000,
        join_timeout_ms: int = 60000,
        reauth_timeout_ms: int = 60000,
        backoff_ms: int = 1000,
        max_backoff_ms: int = 60000,
        queue_limit: int = 16,
    ) -> None:
        if model not in MODELS:
            raise MisuseError("model %r is not one of %s" % (model, ", ".join(MODELS)))
        _check_secret(rbid, "Route-B ID", 32, 32)
        _check_secret(password, "Route-B password", 1, 32)
        if not scan_durations:
            raise MisuseError("at least one scan duration")
        self.model = model
        self.rbid = rbid
        self.password = password
        self.scan_durations = scan_durations
        self.join_attempts = join_attempts
        self.send_attempts = send_attempts
        self.max_restarts = max_restarts
        self.command_timeout_ms = command_timeout_ms
        self.join_timeout_ms = join_timeout_ms
        self.reauth_timeout_ms = reauth_timeout_ms
        self.backoff_ms = backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self.queue_limit = queue_limit
        self.reader = Reader(model)
        self.state = IDLE
        self.step = ""
        self.deadline = -1  # when the awaited answer is overdue; -1: nothing awaited
        self.wake = -1  # when a backoff ends; -1: none
        self.out = bytearray()
        self.events_out = []  # type: list
        self.queue = []  # type: list
        self.in_flight = None  # type: object
        self.unconfirmed = None  # type: object
        self.attempts = 0
        self.pan = None  # type: object
        self.meter_addr = ""
        self.scan_index = 0
        self.join_failures = 0
        self.restarts = 0
        self.reauth = False
        self.reauth_deadline = -1
        self.early_result = None  # type: object
        self.rate_limited = False
        self.limit_backoff_ms = backoff_ms
        self.last_limit = -1
        self.resume_at = -1
        self.failure = ""

    # -- the caller's side

    def start(self, now: int) -> None:
        """Begin (or begin again) from SKRESET."""
        self.restarts = 0
        self.failure = ""
        self._restart(now, count=False)

    def feed(self, data: bytes, now: int) -> None:
        for record in self.reader.feed(data):
            self._record(record, now)
        self._pump(now)

    def tick(self, now: int) -> None:
        """Run the timers; call at least by ``next_wakeup``."""
        if self.wake >= 0 and now >= self.wake:
            self.wake = -1
            self._woken(now)
        if self.deadline >= 0 and now >= self.deadline:
            self.deadline = -1
            self._overdue(now)
        if self.reauth_deadline >= 0 and now >= self.reauth_deadline:
            self.reauth_deadline = -1
            if self.reauth:
                self._lost("re-authentication did not finish", now)
        if self.resume_at >= 0 and now >= self.resume_at:
            self.resume_at = -1
            self._resumed()
        self._pump(now)

    def next_wakeup(self) -> int:
        """The earliest time ``tick`` has something to do, or -1."""
        times = [t for t in (self.wake, self.deadline, self.reauth_deadline, self.resume_at) if t >= 0]
        return min(times) if times else -1

    def send(self, payload: bytes, now: int) -> None:
        """Queue an ECHONET Lite payload for the meter; it goes out when the
        session can carry it."""
        if not 1 <= len(payload) <= MAX_DATALEN:
            raise MisuseError("a UDP payload here is 1..%d bytes" % MAX_DATALEN)
        if len(self.queue) >= self.queue_limit:
            self.events_out.append((DROPPED, self.queue.pop(0)))
        self.queue.append(bytes(payload))
        self._pump(now)

    def output(self) -> bytes:
        """Bytes to write to the module now."""
        data = bytes(self.out)
        self.out = bytearray()
        return data

    def events(self) -> list:
        events = self.events_out
        self.events_out = []
        return events

    def ready(self) -> bool:
        """Joined, and nothing holds sends back."""
        return self.state == READY and not self.reauth and not self.rate_limited and self.resume_at < 0

    # -- internals

    def _command(self, line: str, step: str, now: int, timeout_ms: int = -1) -> None:
        self.out.extend(line.encode() + b"\r\n")
        self.step = step
        self.deadline = now + (self.command_timeout_ms if timeout_ms < 0 else timeout_ms)

    def _restart(self, now: int, count: bool = True) -> None:
        if count:
            self.restarts += 1
            if self.restarts > self.max_restarts:
                self._fail("MODULE", "the module stopped answering")
                return
        self.state = CONFIGURING
        self.reauth = False
        self.reauth_deadline = -1
        self.rate_limited = False
        self.resume_at = -1
        self.in_flight = None
        self.unconfirmed = None
        self.wake = -1
        self.reader = Reader(self.model)
        self._command("SKRESET", "reset", now)

    def _fail(self, what: str, why: str) -> None:
        self.state = FAILED_STATE
        self.step = ""
        self.deadline = -1
        self.wake = -1
        self.failure = what
        self.events_out.append((FAILED, "%s: %s" % (what, why)))

    def _lost(self, why: str, now: int) -> None:
        was_ready = self.state == READY
        self.reauth = False
        self.reauth_deadline = -1
        if self.in_flight is not None:
            self.queue.insert(0, self.in_flight)
            self.in_flight = None
        self.unconfirmed = None
        if was_ready:
            self.events_out.append((LOST, why))
        self.state = JOINING
        self.join_failures = 0
        self._command("SKJOIN " + self.meter_addr, "join", now, self.join_timeout_ms)

    def _scan(self, now: int) -> None:
        self.state = SCANNING
        self.pan = None
        duration = self.scan_durations[self.scan_index]
        # An active scan dwells 0.01536 s x (2^duration + 1) on each of 28 channels.
        timeout = 28 * 16 * ((1 << duration) + 1) + self.command_timeout_ms
        self._command(scan_command(self.model, duration), "scan", now, timeout)

    def _record(self, record: object, now: int) -> None:
        if isinstance(record, Garbled):
            self.events_out.append((GARBLED, "%s: %s" % (record.reason, record.text)))
        elif isinstance(record, Event):
            self._event(record, now)
        elif isinstance(record, RxUdp):
            if record.src == self.meter_addr and record.lport == ECHONET_PORT and self.state == READY:
                self.events_out.append((RX, record))
        elif isinstance(record, Ok):
            self._ok(record, now)
        elif isinstance(record, Fail):
            self._fail_answer(record, now)
        elif isinstance(record, PanDesc):
            if self.step == "scan" and record.complete() and record.side in (None, 0):
                self.pan = record
        elif isinstance(record, Text) and self.step == "ll64" and is_ipv6(record.text):
            self.meter_addr = record.text
            self._command("SKSREG S2 %X" % self.pan.channel, "s2", now)  # type: ignore[attr-defined]

    def _ok(self, record: Ok, now: int) -> None:
        step = self.step
        if step == "reset":
            self._command("SKSREG SFE 0", "echo", now)
        elif step == "echo":
            self._command("ROPT", "ropt", now)
        elif step == "ropt":
            self.reader.binary = record.text.strip() == "OK 00"
            self._after_ropt(now)
        elif step == "sa2":
            self._command("SKSETRBID " + self.rbid, "rbid", now)
        elif step == "rbid":
            self._command("SKSETPWD %X %s" % (len(self.password), self.password), "pwd", now)
        elif step == "pwd":
            self.scan_index = 0
            self._scan(now)
        elif step == "s2":
            self._command("SKSREG S3 %X" % self.pan.pan_id, "s3", now)  # type: ignore[attr-defined]
        elif step == "s3":
            self.state = JOINING
            self.join_failures = 0
            self._command("SKJOIN " + self.meter_addr, "join", now, self.join_timeout_ms)
        elif step == "send":
            self.step = ""
            self.deadline = -1
            payload = self.in_flight
            self.in_flight = None
            result = self.early_result
            self.early_result = None
            if result == 1:
                self._retry(payload, now)
            elif result is None:
                self.unconfirmed = payload  # its EVENT 21 is still to come
            else:
                self.attempts = 0
            self._pump(now)
        # "scan" and "join" answer OK at once and report later by EVENT.

    def _after_ropt(self, now: int) -> None:
        if self.model == BP35C0:
            self.reader.rssi_field = True
            self._command("SKSREG SA2 1", "sa2", now)
        else:
            self._command("SKSETRBID " + self.rbid, "rbid", now)

    def _fail_answer(self, record: Fail, now: int) -> None:
        step = self.step
        if step == "ropt":
            # BP35A1 firmware before ROPT existed answers ER04 and prints hex.
            self.reader.binary = False
            self._after_ropt(now)
        elif step == "send":
            self.step = ""
            self.deadline = -1
            payload = self.in_flight
            self.in_flight = None
            self._retry(payload, now)
        elif step:
            self._restart(now)

    def _retry(self, payload: object, now: int) -> None:
        self.attempts += 1
        if self.attempts >= self.send_attempts:
            self.attempts = 0
            self.events_out.append((SEND_FAILED, payload))
            self._pump(now)
            return
        self.queue.insert(0, payload)
        self.wake = now + min(self.max_backoff_ms, self.backoff_ms << (self.attempts - 1))

    def _event(self, event: Event, now: int) -> None:
        num = event.num
        if num == EV_SCAN_DONE and self.step == "scan":
            if self.pan is not None:
                self._command("SKLL64 " + self.pan.addr, "ll64", now)  # type: ignore[attr-defined]
            else:
                self.scan_index += 1
                if self.scan_index >= len(self.scan_durations):
                    self._fail("SCAN", "no smart meter answered the scan (check the Route-B ID and the distance)")
                else:
                    self._scan(now)
        elif num == EV_PANA_OK:
            if self.step == "join":
                self.step = ""
                self.deadline = -1
                self.state = READY
                self.join_failures = 0
                self.restarts = 0
                self.events_out.append((JOINED, self.meter_addr))
            elif self.reauth:
                self.reauth = False
                self.reauth_deadline = -1
                self._resumed()
        elif num == EV_PANA_FAILED:
            if self.step == "join":
                self.join_failures += 1
                self.deadline = -1
                if self.join_failures >= self.join_attempts:
                    self._fail("JOIN", "PANA authentication failed %d times (check the password)" % self.join_failures)
                else:
                    self.step = "join-wait"
                    self.wake = now + min(self.max_backoff_ms, self.backoff_ms << (self.join_failures - 1))
            elif self.state == READY:
                self._lost("re-authentication failed", now)
        elif num == EV_SESSION_EXPIRED and self.state == READY:
            self.reauth = True
            self.reauth_deadline = now + self.reauth_timeout_ms
            self.events_out.append((BLOCKED, "reauth"))
        elif num in (EV_TERMINATE_REQUEST, EV_TERMINATED, EV_TERMINATE_TIMEOUT) and self.state == READY:
            self._lost("the meter ended the PANA session", now)
        elif num == EV_LIMIT_ON:
            if self.last_limit >= 0 and now - self.last_limit < 3600000:
                self.limit_backoff_ms = min(self.max_backoff_ms, self.limit_backoff_ms * 2)
            else:
                self.limit_backoff_ms = self.backoff_ms
            self.last_limit = now
            self.rate_limited = True
            self.resume_at = -1
            self.events_out.append((BLOCKED, "rate_limit"))
        elif num == EV_LIMIT_OFF and self.rate_limited:
            self.rate_limited = False
            self.resume_at = now + self.limit_backoff_ms
        elif num == EV_UDP_SENT and self.state == READY:
            if self.step == "send":
                # Some firmware reports the send before its OK.
                if event.param in (0, 1):
                    self.early_result = event.param
            elif event.param == 0:
                self.attempts = 0
                self.unconfirmed = None
            elif event.param == 1 and self.unconfirmed is not None:
                payload = self.unconfirmed
                self.unconfirmed = None
                self._retry(payload, now)

    def _resumed(self) -> None:
        if self.state == READY and not self.reauth and not self.rate_limited and self.resume_at < 0:
            self.events_out.append((RESUMED, ""))

    def _woken(self, now: int) -> None:
        if self.step == "join-wait":
            self._command("SKJOIN " + self.meter_addr, "join", now, self.join_timeout_ms)

    def _overdue(self, now: int) -> None:
        step = self.step
        if step == "join":
            self.join_failures += 1
            if self.join_failures >= self.join_attempts:
                self._fail("JOIN", "the meter did not answer SKJOIN")
            else:
                self._command("SKJOIN " + self.meter_addr, "join", now, self.join_timeout_ms)
        elif step == "send":
            was_ready = self.state == READY
            if self.in_flight is not None:
                self.queue.insert(0, self.in_flight)
            self._restart(now)
            if was_ready and self.state != FAILED_STATE:
                self.events_out.append((LOST, "the module did not confirm a send"))
        elif step:
            self._restart(now)

    def _pump(self, now: int) -> None:
        if not self.queue or not self.ready() or self.step or self.wake >= 0:
            return
        payload = self.queue.pop(0)
        self.in_flight = payload
        self.early_result = None
        self.out.extend(sendto_command(self.model, self.meter_addr, payload))
        self.step = "send"
        self.deadline = now + self.command_timeout_ms
