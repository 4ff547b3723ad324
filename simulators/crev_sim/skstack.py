"""A Wi-SUN module (ROHM BP35A1 or BP35C0) speaking SKSTACK-IP on a pseudo-terminal.

The driver under test opens the pty's slave path as its serial port and
sees a module with a smart meter in radio range. Each dialect is kept to
the letter, so that a driver speaking the wrong one fails here:

- BP35A1: SKSCAN takes 3 arguments and SKSENDTO 5; EVENT and ERXUDP carry
  no side; ERXUDP data is hex; ROPT/WOPT are unknown (FAIL ER04).
- BP35C0: SKSCAN takes 4 (the last is the side) and SKSENDTO 6; EVENT and
  ERXUDP carry the side, ERXUDP the RSSI too once SKSREG SA2 1; ERXUDP data
  is raw bytes after WOPT 00 (the default) or hex after WOPT 01; ROPT answers
  ``OK 00``/``OK 01`` ending in a bare CR.

After SKRESET the module echoes what it is sent until SKSREG SFE 0. Frames
sent with SKSENDTO go to the smart meter's ``handle`` and its answers come
back as ERXUDP. The PANA session expires ``session_lifetime_s`` after each
authentication (EVENT 29, then EVENT 25 after ``reauth_s``, or EVENT 24 if
``reauth_fails``); sends during re-authentication fail (EVENT 21 with 01).
After ``rate_limit_after`` sends the transmit-time limit comes on (EVENT 32)
for ``rate_limit_s``; SKSENDTO then answers FAIL ER10 until EVENT 33. Tests
may also call ``expire_session`` and ``limit_transmission`` at any moment.
"""

import asyncio
import logging
import os
import tty
from collections.abc import Callable

from crev import skstack
from crev_sim.smartmeter import SkstackConfig, pty_link

log = logging.getLogger("crev.sim.skstack")

EER_UNKNOWN = "FAIL ER04"
EER_ARGUMENT = "FAIL ER05"
EER_SYNTAX = "FAIL ER06"
EER_EXECUTE = "FAIL ER10"


def link_local(mac: str) -> str:
    """The IPv6 link-local address of a 64-bit MAC (the U/L bit flipped)."""
    raw = bytearray(bytes.fromhex(mac))
    raw[0] ^= 0x02
    groups = ["FE80", "0000", "0000", "0000"] + ["%02X%02X" % (raw[i], raw[i + 1]) for i in range(0, 8, 2)]
    return ":".join(groups)


class SkstackEmulator:
    def __init__(self, config: SkstackConfig, handle: Callable[[bytes], list[bytes]], loop: asyncio.AbstractEventLoop):
        self.config = config
        self.handle = handle
        self.loop = loop
        self.a1 = config.model == skstack.BP35A1
        self.meter_ip = link_local(config.mac)
        self.own_ip = link_local(config.own_mac)
        self.master = -1
        self.slave = -1
        self.path = ""
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.writing = False
        self.wopt_writes = 0
        self.commands: list[str] = []
        self.sent_frames: list[bytes] = []
        self.scans = 0
        self.sends = 0
        self.refused = 0  # sends answered FAIL ER10 (no session, or the transmit-time limit)
        self.failed_sends = 0  # sends answered EVENT 21 with 01 (during re-authentication)
        self._timers: list[asyncio.TimerHandle] = []
        self.binary = config.binary
        self._reset()

    def _reset(self) -> None:
        self.echo = True
        self.rssi = False
        self.rbid = ""
        self.password = ""
        self.channel = -1
        self.pan_id = -1
        self.joined = False
        self.reauth = False
        self.limited = False
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    # -- the pty

    def open(self) -> str:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no CR/LF translation by the line discipline
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.loop.add_reader(self.master, self._readable)
        if self.config.link is not None:
            pty_link(self.config.link, self.path)
        return self.path

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.master >= 0:
            self.loop.remove_reader(self.master)
            if self.writing:
                self.loop.remove_writer(self.master)
            os.close(self.master)
            os.close(self.slave)
            self.master = self.slave = -1

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return  # EIO while no one has the slave open
        self.inbox.extend(data)
        self._parse()

    def _write(self, data: bytes) -> None:
        self.outbox.extend(data)
        self._flush()

    def _flush(self) -> None:
        while self.outbox:
            try:
                n = os.write(self.master, self.outbox)
            except BlockingIOError:
                n = 0
            except OSError:
                self.outbox = bytearray()
                return
            if n == 0:
                break
            del self.outbox[:n]
        if self.outbox and not self.writing:
            self.writing = True
            self.loop.add_writer(self.master, self._writable)
        elif not self.outbox and self.writing:
            self.writing = False
            self.loop.remove_writer(self.master)

    def _writable(self) -> None:
        self._flush()

    def line(self, text: str) -> None:
        self._write(text.encode() + b"\r\n")

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        self._timers.append(self.loop.call_later(delay, action))

    # -- commands

    def _parse(self) -> None:
        while self.inbox:
            if self.inbox.startswith(b"SKSENDTO "):
                if not self._sendto():
                    return
                continue
            ends = [i for i in (self.inbox.find(b"\r"), self.inbox.find(b"\n")) if i >= 0]
            if not ends:
                if len(self.inbox) > 4096:
                    self.inbox = bytearray()
                return
            end = min(ends)
            raw = bytes(self.inbox[:end])
            del self.inbox[: end + 1]
            if not raw:
                continue
            text = raw.decode("ascii", errors="replace")
            if self.echo:
                self.line(text)
            self.commands.append(skstack.redact(text))
            self._command(text.split(" "))

    def _event(self, num: int, addr: str, param: int | None = None) -> None:
        parts = ["EVENT", "%02X" % num, addr]
        if not self.a1:
            parts.append("0")
        if param is not None:
            parts.append("%02X" % param)
        self.line(" ".join(parts))

    def _command(self, args: list[str]) -> None:
        name = args[0]
        handler = getattr(self, "_cmd_" + name.lower(), None) if name.startswith(("SK", "ROPT", "WOPT")) else None
        if handler is None:
            self.line(EER_UNKNOWN)
            return
        handler(args[1:])

    def _cmd_skreset(self, args: list[str]) -> None:
        self._reset()
        self.line("OK")

    def _cmd_skver(self, args: list[str]) -> None:
        self.line("EVER 1.2.10" if self.a1 else "EVER 1.5.2")
        self.line("OK")

    def _cmd_skappver(self, args: list[str]) -> None:
        self.line("EAPPVER crev-sim")
        self.line("OK")

    def _cmd_skinfo(self, args: list[str]) -> None:
        last = "FFFE" if self.a1 else "0"
        channel = max(self.channel, 0)
        pan = max(self.pan_id, 0)
        self.line("EINFO %s %s %02X %04X %s" % (self.own_ip, self.config.own_mac, channel, pan, last))
        self.line("OK")

    def _cmd_ropt(self, args: list[str]) -> None:
        if self.a1:
            self.line(EER_UNKNOWN)
            return
        # The BP35C0 ends this one answer with a bare CR.
        self._write(b"OK 00\r" if self.binary else b"OK 01\r")

    def _cmd_wopt(self, args: list[str]) -> None:
        if self.a1:
            self.line(EER_UNKNOWN)
            return
        if args not in (["00"], ["01"]):
            self.line(EER_ARGUMENT)
            return
        self.wopt_writes += 1  # each one is a flash write on the real module
        self.binary = args[0] == "00"
        self.line("OK")

    def _cmd_sksreg(self, args: list[str]) -> None:
        if len(args) != 2:
            self.line(EER_SYNTAX)
            return
        reg, value = args
        try:
            number = int(value, 16)
        except ValueError:
            self.line(EER_ARGUMENT)
            return
        if reg == "SFE":
            self.echo = number == 1
        elif reg == "S2":
            self.channel = number
        elif reg == "S3":
            self.pan_id = number
        elif reg == "SA2":
            self.rssi = number == 1 and not self.a1
        else:
            self.line(EER_ARGUMENT)
            return
        self.line("OK")

    def _cmd_sksetrbid(self, args: list[str]) -> None:
        if len(args) != 1 or len(args[0]) != 32:
            self.line(EER_ARGUMENT)
            return
        self.rbid = args[0]
        self.line("OK")

    def _cmd_sksetpwd(self, args: list[str]) -> None:
        try:
            length = int(args[0], 16)
        except (ValueError, IndexError):
            self.line(EER_SYNTAX)
            return
        if len(args) != 2 or len(args[1]) != length:
            self.line(EER_ARGUMENT)
            return
        self.password = args[1]
        self.line("OK")

    def _cmd_skscan(self, args: list[str]) -> None:
        if len(args) != (3 if self.a1 else 4) or args[0] != "2":
            self.line(EER_SYNTAX if len(args) != (3 if self.a1 else 4) else EER_ARGUMENT)
            return
        self.line("OK")
        self.scans += 1
        found = self.scans > self.config.scan_misses and self.rbid == self.config.rbid
        self._later(self.config.scan_s, lambda: self._scan_done(found))

    def _scan_done(self, found: bool) -> None:
        if found:
            self._event(0x20, self.meter_ip)
            lines = [
                "EPANDESC",
                "  Channel:%02X" % self.config.channel,
                "  Channel Page:09",
                "  Pan ID:%04X" % self.config.pan_id,
                "  Addr:%s" % self.config.mac,
                "  LQI:E1",
            ]
            if not self.a1:
                lines.append("  Side:0")
            lines.append("  PairID:%s" % self.config.pair_id)
            for text in lines:
                self.line(text)
        self._event(0x22, self.own_ip)

    def _cmd_skll64(self, args: list[str]) -> None:
        if len(args) != 1 or len(args[0]) != 16:
            self.line(EER_ARGUMENT)
            return
        self.line(link_local(args[0]))

    def _cmd_skjoin(self, args: list[str]) -> None:
        if len(args) != 1 or not skstack.is_ipv6(args[0]):
            self.line(EER_ARGUMENT)
            return
        self.line("OK")
        good = (
            args[0] == self.meter_ip
            and self.channel == self.config.channel
            and self.pan_id == self.config.pan_id
            and self.rbid == self.config.rbid
            and self.password == self.config.password
        )
        self._later(self.config.join_s, lambda: self._joined(good))

    def _joined(self, good: bool) -> None:
        # The PANA exchange itself: the module reports its own sends.
        self._event(0x21, self.meter_ip, 0)
        if not good:
            self.joined = False
            self._event(0x24, self.meter_ip)
            return
        self.joined = True
        self.reauth = False
        self._event(0x25, self.meter_ip)
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self.config.session_lifetime_s > 0:
            self._later(self.config.session_lifetime_s, self.expire_session)

    def expire_session(self, fails: bool | None = None) -> None:
        """EVENT 29: the session's lifetime is up and the module re-authenticates."""
        if not self.joined:
            return
        self.reauth = True
        self._event(0x29, self.meter_ip)
        failing = self.config.reauth_fails if fails is None else fails
        self._later(self.config.reauth_s, lambda: self._reauthenticated(not failing))

    def _reauthenticated(self, good: bool) -> None:
        self.reauth = False
        if good:
            self._event(0x25, self.meter_ip)
            self._schedule_expiry()
        else:
            self.joined = False
            self._event(0x24, self.meter_ip)

    def limit_transmission(self, seconds: float | None = None) -> None:
        """EVENT 32 now, EVENT 33 after ``seconds``."""
        if self.limited:
            return
        self.limited = True
        self._event(0x32, self.own_ip)
        self._later(self.config.rate_limit_s if seconds is None else seconds, self._unlimit)

    def _unlimit(self) -> None:
        self.limited = False
        self._event(0x33, self.own_ip)

    def _cmd_skterm(self, args: list[str]) -> None:
        self.line("OK")
        if self.joined:
            self.joined = False
            self._event(0x27, self.meter_ip)
        else:
            self._event(0x28, self.meter_ip)

    def _sendto(self) -> bool:
        """SKSENDTO: its header, then exactly <len> raw bytes. False: incomplete."""
        fields = 7 if self.a1 else 8  # the command, its arguments, then the data
        parts = bytes(self.inbox).split(b" ", fields - 1)
        if len(parts) < fields:
            if b"\r" in self.inbox or b"\n" in self.inbox:
                end = min(i for i in (self.inbox.find(b"\r"), self.inbox.find(b"\n")) if i >= 0)
                del self.inbox[: end + 1]
                self.line(EER_SYNTAX)
                return True
            return False
        header = [p.decode("ascii", errors="replace") for p in parts[: fields - 1]]
        try:
            length = int(header[-1], 16)
        except ValueError:
            self.inbox = bytearray()
            self.line(EER_SYNTAX)
            return True
        head_len = sum(len(p) + 1 for p in parts[: fields - 1])
        if len(self.inbox) < head_len + length:
            return False
        payload = bytes(self.inbox[head_len : head_len + length])
        del self.inbox[: head_len + length]
        if self.echo:
            self.line(" ".join(header))
        self.commands.append(" ".join(header))
        args = header[1:]
        if len(args[-1]) != 4 or not skstack.is_ipv6(args[1]) or args[2] != "0E1A":
            self.line(EER_ARGUMENT)
            return True
        if not self.a1 and args[4] != "0":
            self.line(EER_ARGUMENT)
            return True
        if not self.joined or self.limited:
            self.refused += 1
            self.line(EER_EXECUTE)
            return True
        self.sends += 1
        delivered = not self.reauth and args[1] == self.meter_ip and args[3] in ("1", "2")
        result = 0 if delivered else 1
        self.failed_sends += result
        # The send that uses up the transmit time is reported with the limit.
        limit = bool(self.config.rate_limit_after and self.sends % self.config.rate_limit_after == 0)
        if self.config.event21_first:
            self._event(0x21, self.meter_ip, result)
            if limit:
                self.limit_transmission()
            self.line("OK")
        else:
            self.line("OK")
            self._event(0x21, self.meter_ip, result)
            if limit:
                self.limit_transmission()
        if delivered:
            self.sent_frames.append(payload)
            for reply in self.handle(payload):
                self.loop.call_soon(self.push, reply)
        return True

    def push(self, data: bytes) -> None:
        """An ECHONET Lite datagram from the meter to the module."""
        if not self.joined or self.master < 0:
            return
        fields = [self.meter_ip, self.own_ip, "0E1A", "0E1A", self.config.mac]
        if self.a1:
            fields += ["1", "%04X" % len(data)]
        else:
            if self.rssi:
                fields.append("%02X" % (0xC8))  # -56 dBm, as a signed byte
            fields += ["1", "0", "%04X" % len(data)]
        head = ("ERXUDP " + " ".join(fields) + " ").encode()
        body = data if self.binary and not self.a1 else data.hex().upper().encode()
        self._write(head + body + b"\r\n")

    def __repr__(self) -> str:
        return "SkstackEmulator(%s on %s)" % (self.config.model, self.path)
