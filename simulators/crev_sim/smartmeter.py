"""A simulated utility smart meter (ECHONET Lite class 0x028801) beside the site's grid meter.

``crev sim smartmeter --config sim.toml`` runs the site and its Modbus meters,
exactly as ``crev sim meters`` does, and in the same process a smart meter
that counts the same site's import and export: every tick of the site model
adds the tick's import and export to the smart meter's own counters, so over
any 30-minute slot its EA/EB deltas equal the grid meter's import/export
deltas to within one step of the smart meter's resolution (its counters show
whole steps). It is reached two ways:

- ECHONET Lite over UDP (``host``/``port``; port 0 picks a free one, which is
  logged): Get, SetC (E5, ED), INF_REQ, and the 30-minute INF (or INFC) push
  of EA and EB to whoever last sent it a request;
- a Wi-SUN module speaking SKSTACK-IP on a pseudo-terminal
  (``[smartmeter.skstack]``, crev_sim.skstack), whose slave path is logged
  and linked from ``link``.

The site's clock must put the slot boundaries on tick ends (``tick_s``
divides 1800 and ``site.start`` is on a 30-minute mark), so that a slot's
fixed-time values are the counters at exactly that moment.

Faults (``[[smartmeter.fault]]``, in simulated hours like the Modbus meters'):

    drift        the meter counts ``pct`` % more (or, negative, less) than the
                 site imported/exported while the window lasts
    missed_push  no INF for the slots that end in the window
    reboot       at from_h the counters and the TID restart at 0, and the
                 meter answers nothing until to_h
    outage       the meter answers nothing (and pushes nothing) in the window
    sna          Get of one of ``epcs`` gets Get_SNA (the others are served)
"""

import asyncio
import contextlib
import logging
import os
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

from crev import echonet
from crev import smartmeter as sm
from crev.errors import InvalidInput
from crev_sim import config as sim_config
from crev_sim.config import SimConfig, SimConfigError
from crev_sim.server import Simulation
from crev_sim.site import Counters, Site, Tick

log = logging.getLogger("crev.sim.smartmeter")

FAULT_KINDS = ("drift", "missed_push", "reboot", "outage", "sna")
PUSH_KINDS = ("INF", "INFC", "none")
MANUFACTURER = b"\x00\x00\x16"  # a three-byte manufacturer code; this one is made up
SERVED = (0x80, 0x8A, 0x8D, 0xD3, 0xD7, 0xE0, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE7, 0xEA, 0xEB, 0xEC, 0xED)
SETTABLE = (0xE5, 0xED)


@dataclass
class SmFault:
    kind: str
    from_h: float
    to_h: float
    pct: float = 0.0
    epcs: tuple[int, ...] = ()
    fired: bool = False

    def active(self, hours: float) -> bool:
        return self.from_h <= hours < self.to_h


@dataclass
class SkstackConfig:
    model: str = "bp35c0"
    binary: bool = False  # the BP35C0's WOPT state: binary data in ERXUDP
    rbid: str = "0" * 32
    password: str = "0123456789AB"
    link: Path | None = None
    mac: str = "001D129012345678"  # the smart meter's MAC
    own_mac: str = "001D129087654321"  # the module's
    channel: int = 0x21
    pan_id: int = 0x8888
    pair_id: str = "00112233"
    scan_s: float = 0.05  # wall seconds a scan takes here
    join_s: float = 0.05
    scan_misses: int = 0  # scans that find nothing before one finds the meter
    session_lifetime_s: float = 0.0  # EVENT 29 this long after each (re-)authentication; 0: never
    reauth_s: float = 0.1
    reauth_fails: bool = False
    rate_limit_after: int = 0  # EVENT 32 after this many sends; 0: never
    rate_limit_s: float = 0.5
    event21_first: bool = True  # EVENT 21 before the OK of SKSENDTO (BP35A1 does so)


@dataclass
class SmartMeterConfig:
    host: str = "127.0.0.1"
    port: int = 3610
    serve_coefficient: bool = True
    coefficient: int = 1
    unit: int = 0x01
    digits: int = 6
    start_import_wh: int = 0
    start_export_wh: int = 0
    utc_offset_s: int = sm.JST_OFFSET_S
    push: str = "INF"
    serial: str = "SM0000000001"
    faults: list[SmFault] = field(default_factory=list)
    skstack: SkstackConfig | None = None


def _int(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SimConfigError("%s.%s must be an integer" % (where, key))
    return value


def _float(table: dict[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SimConfigError("%s.%s must be a number" % (where, key))
    return float(value)


def _skstack(raw: dict[str, Any], base_dir: Path) -> SkstackConfig:
    where = "smartmeter.skstack"
    model = raw.get("model", "bp35c0")
    if model not in ("bp35a1", "bp35c0"):
        raise SimConfigError("%s.model must be bp35a1 or bp35c0, got %r" % (where, model))
    output = raw.get("output", "hex")
    if output not in ("hex", "binary"):
        raise SimConfigError("%s.output must be hex or binary, got %r" % (where, output))
    if model == "bp35a1" and output == "binary":
        raise SimConfigError("%s: the BP35A1 prints ERXUDP data in hex only" % where)
    rbid = str(raw.get("rbid", "0" * 32))
    password = str(raw.get("password", "0123456789AB"))
    if len(rbid) != 32 or not 1 <= len(password) <= 32:
        raise SimConfigError("%s: rbid is 32 characters and password 1..32" % where)
    link = raw.get("link")
    return SkstackConfig(
        model=model,
        binary=output == "binary",
        rbid=rbid,
        password=password,
        link=(base_dir / link) if link else None,
        scan_misses=_int(raw, "scan_misses", 0, where),
        session_lifetime_s=_float(raw, "session_lifetime_s", 0, where),
        reauth_s=_float(raw, "reauth_s", 0.1, where),
        reauth_fails=bool(raw.get("reauth_fails", False)),
        rate_limit_after=_int(raw, "rate_limit_after", 0, where),
        rate_limit_s=_float(raw, "rate_limit_s", 0.5, where),
        event21_first=bool(raw.get("event21_first", True)),
    )


def parse(raw: dict[str, Any], base_dir: Path) -> SmartMeterConfig:
    """The ``[smartmeter]`` table of a simulator configuration."""
    table = raw.get("smartmeter")
    if not isinstance(table, dict):
        raise SimConfigError("the configuration has no [smartmeter] table")
    where = "smartmeter"
    unit = _int(table, "unit", 0x01, where)
    digits = _int(table, "digits", 6, where)
    coefficient = _int(table, "coefficient", 1, where)
    try:
        sm.Scale(coefficient, unit, digits)
    except InvalidInput as err:
        raise SimConfigError("%s: %s" % (where, err.detail)) from err
    except Exception as err:
        raise SimConfigError("%s: coefficient, unit or digits: %s" % (where, err)) from err
    push = table.get("push", "INF")
    if push not in PUSH_KINDS:
        raise SimConfigError("%s.push must be one of %s, got %r" % (where, ", ".join(PUSH_KINDS), push))
    faults = []
    for entry in table.get("fault", []):
        kind = entry.get("kind")
        if kind not in FAULT_KINDS:
            raise SimConfigError("%s.fault.kind must be one of %s, got %r" % (where, ", ".join(FAULT_KINDS), kind))
        start = _float(entry, "from_h", 0, where + ".fault")
        end = _float(entry, "to_h", start if kind == "reboot" else start + 1, where + ".fault")
        epcs = entry.get("epcs", [])
        if not isinstance(epcs, list) or not all(isinstance(e, int) and 0 <= e <= 255 for e in epcs):
            raise SimConfigError("%s.fault.epcs must be a list of EPC bytes" % where)
        faults.append(SmFault(kind, start, end, _float(entry, "pct", 0, where + ".fault"), tuple(epcs)))
    sk = table.get("skstack")
    return SmartMeterConfig(
        host=str(table.get("host", "127.0.0.1")),
        port=_int(table, "port", 3610, where),
        serve_coefficient=bool(table.get("serve_coefficient", True)),
        coefficient=coefficient,
        unit=unit,
        digits=digits,
        start_import_wh=_int(table, "start_import_wh", 0, where),
        start_export_wh=_int(table, "start_export_wh", 0, where),
        utc_offset_s=int(_float(table, "utc_offset_h", 9, where) * 3600),
        push=push,
        serial=str(table.get("serial", "SM0000000001")),
        faults=faults,
        skstack=_skstack(sk, base_dir) if isinstance(sk, dict) else None,
    )


def load(path: Path) -> tuple[SimConfig, SmartMeterConfig]:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as err:
        raise SimConfigError("cannot read %s: %s" % (path, err.strerror)) from err
    except tomllib.TOMLDecodeError as err:
        raise SimConfigError("%s is not valid TOML: %s" % (path, err)) from err
    return sim_config.parse(raw, path.parent), parse(raw, path.parent)


class SmartMeterModel:
    """What the meter counts and answers; no I/O. ``hours`` are simulated
    hours since the simulation's start, as for the Modbus meters' faults."""

    def __init__(self, config: SmartMeterConfig, sim_start: float) -> None:
        self.config = config
        self.scale = sm.Scale(config.coefficient, config.unit, config.digits)
        self.sim_start = sim_start
        # The meter's own counters in mWh, exact fractions so that a drift of
        # a few per cent accumulates without rounding.
        self.import_mwh = Fraction(config.start_import_wh * 1000)
        self.export_mwh = Fraction(config.start_export_wh * 1000)
        self.seen = Counters()
        self.now = int(sim_start)
        self.power_w = 0
        self.history: dict[int, tuple[int, int]] = {}
        self.latest = 0
        self.tid = 0
        self.day = 0
        start_slot = int(sim_start) - int(sim_start) % sm.SLOT_S
        self.history2 = (start_slot, sm.HISTORY2_MAX_POINTS)
        self.notifications: list[bytes] = []
        self.acks: list[int] = []
        self._record(start_slot)

    def active(self, kind: str, hours: float) -> list[SmFault]:
        return [f for f in self.config.faults if f.kind == kind and f.active(hours)]

    def silent(self, hours: float) -> bool:
        return bool(self.active("outage", hours) or self.active("reboot", hours))

    def raw(self) -> tuple[int, int]:
        return (
            self.scale.raw_from_mwh(int(self.import_mwh)),
            self.scale.raw_from_mwh(int(self.export_mwh)),
        )

    def _record(self, t: int) -> None:
        self.history[t] = self.raw()
        self.latest = t

    def on_tick(self, end: float, counters: Counters, power_w: tuple[float, float, float]) -> None:
        """The site finished a tick ending at ``end`` (simulated Unix seconds)."""
        hours = (end - self.sim_start) / 3600.0
        for fault in self.config.faults:
            if fault.kind == "reboot" and not fault.fired and hours >= fault.from_h:
                fault.fired = True
                self.import_mwh = Fraction(0)
                self.export_mwh = Fraction(0)
                self.tid = 0
                log.info("fault: smart meter reboots at %.3f h", hours)
        factor = Fraction(1)
        for fault in self.active("drift", hours):
            factor *= 1 + Fraction(str(fault.pct)) / 100
        self.import_mwh += (counters.import_wh - self.seen.import_wh) * 1000 * factor
        self.export_mwh += (counters.export_wh - self.seen.export_wh) * 1000 * factor
        self.seen = Counters(import_wh=counters.import_wh, export_wh=counters.export_wh)
        self.now = int(end)
        self.power_w = round(power_w[2] - power_w[0] - power_w[1])
        if int(end) % sm.SLOT_S == 0:
            self._record(int(end))
            if self.config.push == "none" or self.silent(hours) or self.active("missed_push", hours):
                return
            self._push()

    def _push(self) -> None:
        esv = echonet.INFC if self.config.push == "INFC" else echonet.INF
        self.tid = (self.tid + 1) & 0xFFFF
        frame = echonet.Frame(
            self.tid,
            sm.CLASS_EOJ,
            echonet.CONTROLLER_EOJ,
            esv,
            [(sm.EPC_FIXED_NORMAL, self._fixed(0)), (sm.EPC_FIXED_REVERSE, self._fixed(1))],
        )
        self.notifications.append(frame.encode())

    def take_notifications(self) -> list[bytes]:
        out, self.notifications = self.notifications, []
        return out

    def _fixed(self, which: int) -> bytes:
        return sm.encode_fixed(self.latest, self.history[self.latest][which], self.config.utc_offset_s)

    def _value(self, epc: int) -> bytes | None:
        offset = self.config.utc_offset_s
        imp, exp = self.raw()
        if epc == 0x80:
            return b"\x30"
        if epc == 0x8A:
            return MANUFACTURER
        if epc == 0x8D:
            return self.config.serial.encode()[:12].ljust(12, b"\x00")
        if epc == sm.EPC_COEFFICIENT:
            return self.config.coefficient.to_bytes(4, "big") if self.config.serve_coefficient else None
        if epc == sm.EPC_DIGITS:
            return bytes([self.config.digits])
        if epc == sm.EPC_UNIT:
            return bytes([self.config.unit])
        if epc in (sm.EPC_CUMULATIVE_NORMAL, sm.EPC_CUMULATIVE_REVERSE):
            return (imp if epc == sm.EPC_CUMULATIVE_NORMAL else exp).to_bytes(4, "big")
        if epc == sm.EPC_INSTANT_POWER:
            return self.power_w.to_bytes(4, "big", signed=True)
        if epc in (sm.EPC_FIXED_NORMAL, sm.EPC_FIXED_REVERSE):
            return self._fixed(0 if epc == sm.EPC_FIXED_NORMAL else 1)
        if epc == sm.EPC_HISTORY1_DAY:
            return bytes([self.day])
        if epc in (sm.EPC_HISTORY1_NORMAL, sm.EPC_HISTORY1_REVERSE):
            which = 0 if epc == sm.EPC_HISTORY1_NORMAL else 1
            today = sm.local_datetime(self.now, offset)[:3]
            times = sm.history1_times(today, self.day, offset)
            values = [self.history[t][which] if t in self.history else None for t in times]
            return sm.encode_history1(self.day, values)
        if epc == sm.EPC_HISTORY2_TIME:
            return sm.encode_history2_time(self.history2[0], self.history2[1], offset)
        if epc == sm.EPC_HISTORY2:
            t, count = self.history2
            points = [self.history.get(t - sm.SLOT_S * i, (None, None)) for i in range(count)]
            return sm.encode_history2(t, points, offset)
        return None

    def _set(self, epc: int, edt: bytes) -> bool:
        try:
            if epc == sm.EPC_HISTORY1_DAY:
                self.day = sm.decode_history1_day(edt)
                return True
            if epc == sm.EPC_HISTORY2_TIME:
                self.history2 = sm.decode_history2_time(edt, self.config.utc_offset_s)
                return True
        except InvalidInput:
            return False
        return False

    def handle(self, data: bytes, hours: float) -> list[bytes]:
        """The answers to one datagram (none to a malformed one, as devices do)."""
        if self.silent(hours):
            return []
        try:
            frame = echonet.decode(data)
        except echonet.EchonetError as err:
            log.info("smart meter ignores a malformed frame: %s", err)
            return []
        if frame.deoj != sm.CLASS_EOJ:
            return []
        if frame.esv == echonet.INFC_RES:
            self.acks.append(frame.tid)
            return []
        refused = {e for f in self.active("sna", hours) for e in f.epcs}
        props: list[tuple[int, bytes]] = []
        ok = True
        if frame.esv in (echonet.GET, echonet.INF_REQ):
            for epc, _ in frame.props:
                value = None if epc in refused else self._value(epc)
                ok = ok and value is not None
                props.append((epc, value or b""))
            if frame.esv == echonet.GET:
                esv = echonet.GET_RES if ok else echonet.GET_SNA
            else:
                esv = echonet.INF if ok else echonet.INF_SNA
        elif frame.esv in (echonet.SETC, echonet.SETI):
            for epc, edt in frame.props:
                done = epc in SETTABLE and epc not in refused and self._set(epc, edt)
                ok = ok and done
                props.append((epc, b"" if done else edt))
            if frame.esv == echonet.SETI:
                if ok:
                    return []
                esv = echonet.SETI_SNA
            else:
                esv = echonet.SET_RES if ok else echonet.SETC_SNA
        else:
            return []
        return [echonet.Frame(frame.tid, sm.CLASS_EOJ, frame.seoj, esv, props).encode()]


class _HookedSite(Site):
    """The site model, advanced one tick at a time so that a listener sees
    the counters at the end of every tick (a slot's end among them)."""

    listener: Callable[[float, Counters, tuple[float, float, float]], None] | None = None

    def advance_to(self, sim_time: float) -> list[Tick]:
        done: list[Tick] = []
        tick_s = self.params.tick_s
        while self.sim_start + (self.ticks_done + 1) * tick_s <= sim_time:
            ticks = super().advance_to(self.sim_start + (self.ticks_done + 1) * tick_s)
            for tick in ticks:
                if self.listener is not None:
                    self.listener(tick.sim_end, self.counters, self.power_w)
            done.extend(ticks)
        return done


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: "SmartMeterSimulation") -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: tuple[Any, ...] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.peer = addr
        for reply in self.owner.answer(data):
            if self.transport is not None:
                self.transport.sendto(reply, addr)

    def push(self, data: bytes) -> None:
        if self.transport is not None and self.peer is not None:
            self.transport.sendto(data, self.peer)


class SmartMeterSimulation(Simulation):
    """The Modbus meters' simulation with a smart meter on the same site."""

    def __init__(self, config: SimConfig, meter: SmartMeterConfig, wall_start: float | None = None) -> None:
        if 1800 % config.site.tick_s or int(config.sim_start) % 1800:
            raise SimConfigError("the smart meter needs site.tick_s to divide 1800 and site.start on a 30-minute mark")
        super().__init__(config, wall_start)
        self.meter_config = meter
        self.model = SmartMeterModel(meter, config.sim_start)
        site = _HookedSite(config.site, config.sim_start)
        site.listener = self.model.on_tick
        self.site = site
        self.udp: _Udp | None = None
        self.udp_port = 0
        self.skstack: Any = None
        self.pty_path = ""
        self.loop: asyncio.AbstractEventLoop | None = None

    def call_soon(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the simulation's event loop, from any thread."""
        if self.loop is None:
            raise RuntimeError("the simulation is not running")
        self.loop.call_soon_threadsafe(action)

    def answer(self, data: bytes) -> list[bytes]:
        self.step()
        return self.model.handle(data, self.sim_hours())

    def _deliver(self) -> None:
        for frame in self.model.take_notifications():
            if self.udp is not None:
                self.udp.push(frame)
            if self.skstack is not None:
                self.skstack.push(frame)

    async def run(self, ready: asyncio.Event | None = None) -> None:
        from crev_sim.skstack import SkstackEmulator

        modbus_ready = asyncio.Event()
        modbus = asyncio.create_task(super().run(modbus_ready))
        waiter = asyncio.create_task(modbus_ready.wait())
        await asyncio.wait({modbus, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if modbus.done():
            waiter.cancel()
            await modbus  # raises what stopped it (a port in use)
        loop = asyncio.get_running_loop()
        self.loop = loop
        cfg = self.meter_config
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(cfg.host, cfg.port)
            )
        except OSError as err:
            modbus.cancel()
            raise OSError("cannot listen on udp %s:%d (is the port in use?)" % (cfg.host, cfg.port)) from err
        self.udp = protocol
        self.udp_port = transport.get_extra_info("sockname")[1]
        log.info("smart meter: ECHONET Lite on udp %s:%d", cfg.host, self.udp_port)
        if cfg.skstack is not None:
            self.skstack = SkstackEmulator(cfg.skstack, self.answer, loop)
            self.pty_path = self.skstack.open()
            log.info("smart meter: %s on pty %s", cfg.skstack.model.upper(), self.pty_path)
        if ready is not None:
            ready.set()
        try:
            while True:
                self.step()
                self._deliver()
                await asyncio.sleep(0.02)
        finally:
            transport.close()
            if self.skstack is not None:
                self.skstack.close()
            modbus.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await modbus


def pty_link(path: Path, target: str) -> None:
    """Point ``path`` at the pty's slave device (like socat's link=)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.symlink(target, path)


@contextlib.contextmanager
def in_background(simulation: SmartMeterSimulation, timeout_s: float = 10.0) -> Iterator[SmartMeterSimulation]:
    """Run ``simulation`` on an event loop in a thread of this process (for tests)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        started = asyncio.Event()

        async def main() -> None:
            task = asyncio.create_task(simulation.run(started))
            tasks.append(task)
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            ready.set()
            waiter.cancel()
            await task

        try:
            loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        except BaseException as err:  # handed to the test's thread below
            failure.append(err)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="smartmeter-sim", daemon=True)
    thread.start()
    if not ready.wait(timeout_s):
        raise RuntimeError("the simulation did not start within %.0f s" % timeout_s)
    if failure:
        raise failure[0]
    try:
        yield simulation
    finally:
        if tasks:
            loop.call_soon_threadsafe(tasks[0].cancel)
        thread.join(timeout=timeout_s)
