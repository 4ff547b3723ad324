"""Site control on the board (SPEC §12): operators' signed commands, applied through SunSpec over RTU.

The rules (signature, device, time window, seq, what stays in force) are
the core's ``crev.control.Controller``, the gateway's too, so a command gets
the same verdict on both. This module does the board's I/O:

- commands come on ``crev/v1/{dev}/cmd`` (QoS 1) through the uplink's one
  subscription; umqtt.simple hands them over from inside a publish or a
  check_msg, so they are queued (at most MAX_QUEUED) and handled in the
  loop's next pass;
- the operators' public keys are the ``operators`` of /config.json (the
  site file's ``[[operator]]`` list, written by ``crev provision``); the
  Ed25519 verify is the core's pure one, so no secret is shared with anyone;
- the inverters are the SunSpec generation meters whose compact map has the
  control models (``crev provision`` adds them when operators are listed).
  Each is found by the meters' own discovery (the layout is shared with the
  reading) and driven through model 123 (WMaxLimPct, WMaxLimPct_RvrtTms,
  WMaxLim_Ena; Conn with Conn_RvrtTms) when it has it, else model 704
  (WMaxLimPct and WMaxLimPctEna, reverting to 100 % after
  WMaxLimPctRvrtTms), with function 16 writes. Connect and disconnect need
  model 123. A limit is never written as 0 %;
- every write is read back: a limit the inverter did not keep is a rejection
  (NOT_TAKEN);
- while a command is in force its registers are written again at half its
  revert time, so the inverter's own timer lifts it only once the board has
  fallen silent;
- a limit already in the inverter that crev did not write (one without a
  revert time: crev always writes one), such as the utility's own output
  control, is never raised: crev writes at most that limit and puts it back
  when its own command ends;
- the last seq per operator and the commands in force live in one small
  file on flash (STATE_FILE, JSON, written to a temporary file then renamed,
  as the outbox writes its files). The seq is written before the inverter is
  touched, so a power cut cannot let the same bytes be applied twice; at
  boot the commands in force are checked again and applied again unless they
  expired meanwhile (then they are acknowledged as expired);
- acknowledgements are signed with the device key and published on
  ``crev/v1/{dev}/ack`` (QoS 1). They wait in RAM (at most MAX_ACKS) while
  the broker is away; unlike readings they are not kept on flash.

Memory: each command's verify runs the core's Ed25519 in Python ints, which
allocates about 200 kB of short-lived garbage on a 32-bit MicroPython, and
its ack's signature as much as a reading's (see
docs/provisioning-a-microcontroller.md). Commands are rare; nothing large
is kept: the controller holds the commands in force (a few hundred bytes
each) and the queues are bounded. A board without operators never imports
this module.
"""

import json

from crev.control import (
    ACK_APPLIED,
    ACK_EXPIRED,
    ACK_REJECTED,
    ACK_REVERTED,
    CMD_CLEAR,
    INVERTER_ERROR,
    MAX_DETAIL,
    MAX_PCT,
    NO_CONTROL,
    NO_LIMIT_CENTI,
    NOT_TAKEN,
    Controller,
    Target,
    command_ack,
    target_of,
)
from crev.registers import words_value
from dgc.meters import MeterError, _model_points, discover

STATE_FILE = "/control.json"
MAX_QUEUED = 4  # commands waiting for the loop; more in one pass are dropped (and logged)
MAX_ACKS = 16  # signed acks waiting for the broker; the oldest go first when more come
RETRY_MS = 1000  # after a Modbus failure, try the inverters again this soon

KIND_123 = "controls"
KIND_704 = "der_controls"
SF_NOT_IMPLEMENTED = -0x8000
POINTS_123 = ["Conn_RvrtTms", "Conn", "WMaxLimPct", "WMaxLimPct_RvrtTms", "WMaxLim_Ena"]
POINTS_704 = ["WMaxLimPctEna", "WMaxLimPct", "WMaxLimPctRvrt", "WMaxLimPctEnaRvrt", "WMaxLimPctRvrtTms"]


class ControlFailure(Exception):
    """The inverters could not be brought to the target; ``reason`` is an ack reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail[:MAX_DETAIL]


def pct_register(pct: int, sf: int) -> int:
    """A whole percentage as the register value under scale factor ``sf``, rounded down (a lower limit is safe)."""
    factor = 10 ** abs(sf)  # type: int
    return pct * factor if sf <= 0 else pct // factor


def centi_pct(register: int, sf: int) -> int:
    shift = sf + 2
    factor = 10 ** abs(shift)  # type: int
    return min(NO_LIMIT_CENTI, register * factor if shift >= 0 else register // factor)


def _signed16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


class InverterState:
    """What an inverter reports: its limit in 1/100 % (10000 when none is enabled), and its connection."""

    def __init__(
        self,
        limit_centi: int,
        limit_register: int,
        limit_enabled: bool,
        limit_revert_s: int,
        connected: "bool | None",  # None: model 704 has no connect control
        connect_revert_s: int = 0,
    ) -> None:
        self.limit_centi = limit_centi
        self.limit_register = limit_register
        self.limit_enabled = limit_enabled
        self.limit_revert_s = limit_revert_s
        self.connected = connected
        self.connect_revert_s = connect_revert_s


class Inverter:
    """One SunSpec inverter's control registers, on the meters' RTU bus."""

    def __init__(self, bus: object, meter: dict) -> None:
        self.bus = bus
        self.meter = meter  # the compact meter of config.json; its "layout" is the meters' too
        self.name = meter["name"]
        self.wrote_limit = False
        self.wrote_disconnect = False
        self.foreign = None  # type: InverterState | None  # a limit crev found and did not write
        self.sf = 0  # WMaxLimPct_SF, as last read
        self.written_register = 0  # the WMaxLimPct crev wrote last

    def _layout(self) -> dict:
        meter = self.meter
        layout = meter.get("layout")
        if layout is None:
            try:
                layout = meter["layout"] = discover(self.bus, meter)
            except MeterError as err:
                raise ControlFailure(INVERTER_ERROR, "cannot reach the inverter: %s" % err)
        return layout

    def kind(self) -> str:
        layout = self._layout()
        for kind in (KIND_123, KIND_704):
            if kind in layout:
                return kind
        raise ControlFailure(NO_CONTROL, "inverter %s has neither SunSpec model 123 nor 704" % self.name)

    def _points(self, kind: str) -> dict:
        points = self.meter["sunspec"]["models"][kind]["points"]  # type: dict
        return points

    def _write(self, kind: str, point: str, values: list) -> None:
        address = self._layout()[kind][1] + self._points(kind)[point]["offset"]
        try:
            self.bus.write(self.meter["unit"], address, values)  # type: ignore[attr-defined]
        except Exception as err:  # a timeout, a CRC error, an exception reply
            self.meter.pop("layout", None)  # found again on the next try, as a failed read does
            raise ControlFailure(
                INVERTER_ERROR, "cannot reach the inverter: %s: writing %s at %d: %s" % (self.name, point, address, err)
            )

    def read_state(self) -> InverterState:
        kind = self.kind()
        names = POINTS_123 if kind == KIND_123 else POINTS_704
        try:
            words = _model_points(self.bus, self.meter, self._layout(), kind, names)
        except MeterError as err:
            self.meter.pop("layout", None)
            raise ControlFailure(INVERTER_ERROR, "cannot reach the inverter: %s" % err)
        points = self._points(kind)

        def word(name: str) -> int:
            point = points[name]
            value = words_value(words[name], point.get("word_order", "big"), point.get("byte_order", "big"))  # type: int
            return value

        sf = _signed16(word("WMaxLimPct_SF"))
        if sf == SF_NOT_IMPLEMENTED:
            sf = 0
        if not -4 <= sf <= 4:
            raise ControlFailure(INVERTER_ERROR, "inverter %s reports WMaxLimPct_SF = %d" % (self.name, sf))
        self.sf = sf
        register = word("WMaxLimPct")
        if kind == KIND_123:
            enabled = word("WMaxLim_Ena") == 1
            revert = word("WMaxLimPct_RvrtTms")
            connected = word("Conn") != 0  # type: bool | None
            connect_revert = word("Conn_RvrtTms")
        else:
            enabled = word("WMaxLimPctEna") == 1
            revert = word("WMaxLimPctRvrtTms") if word("WMaxLimPctEnaRvrt") == 1 else 0
            connected = None
            connect_revert = 0
        centi = centi_pct(register, sf) if enabled else NO_LIMIT_CENTI
        return InverterState(centi, register, enabled, revert, connected, connect_revert)

    def adopt_leftovers(self) -> None:
        """After a restart: a limit or a disconnect with a revert time still running is crev's own, to undo."""
        state = self.read_state()
        self.wrote_limit = state.limit_enabled and state.limit_revert_s > 0 and state.limit_centi < NO_LIMIT_CENTI
        self.wrote_disconnect = state.connected is False and state.connect_revert_s > 0

    def _limit(self, kind: str, register: int, revert_s: int) -> None:
        if kind == KIND_123:
            self._write(kind, "WMaxLimPct", [register])
            self._write(kind, "WMaxLimPct_RvrtTms", [revert_s])
            self._write(kind, "WMaxLim_Ena", [1])
        else:
            # The reversion first: 100 %, enabled, after revert_s; then the limit itself.
            full = pct_register(MAX_PCT, self.sf)
            self._write(kind, "WMaxLimPctRvrt", [full, 1, (revert_s >> 16) & 0xFFFF, revert_s & 0xFFFF])
            self._write(kind, "WMaxLimPctEna", [1, register])

    def _lift(self, kind: str) -> None:
        foreign = self.foreign
        if foreign is not None:
            # Put back the limit that was there before crev's.
            if kind == KIND_123:
                self._write(kind, "WMaxLimPct", [foreign.limit_register])
                self._write(kind, "WMaxLimPct_RvrtTms", [foreign.limit_revert_s])
                self._write(kind, "WMaxLim_Ena", [1])
            else:
                self._write(kind, "WMaxLimPctEna", [1, foreign.limit_register])
        elif kind == KIND_123:
            self._write(kind, "WMaxLim_Ena", [0])
        else:
            self._write(kind, "WMaxLimPctEna", [0, pct_register(MAX_PCT, self.sf)])

    def apply(self, target: Target) -> InverterState:
        """Bring this inverter to ``target`` and read it back; raises ControlFailure."""
        kind = self.kind()
        before = self.read_state()
        if (target.disconnected or self.wrote_disconnect) and kind != KIND_123:
            raise ControlFailure(NO_CONTROL, "inverter %s has no SunSpec model 123, whose Conn connects it" % self.name)
        if not self.wrote_limit:
            crev_limit = before.limit_enabled and before.limit_revert_s > 0
            foreign = before.limit_enabled and not crev_limit and before.limit_centi < NO_LIMIT_CENTI
            self.foreign = before if foreign else None
        expected = None  # type: int | None
        revert = target.revert_s or 0
        if target.limit_pct is not None:
            expected = pct_register(target.limit_pct, self.sf)
            if self.foreign is not None:
                expected = min(expected, self.foreign.limit_register)
            if expected <= 0:  # never 0 %: stopping output is a disconnect
                raise ControlFailure(
                    INVERTER_ERROR, "inverter %s cannot hold %d %% above 0 at its scale" % (self.name, target.limit_pct)
                )
            self._limit(kind, expected, revert)
            self.wrote_limit = True
            self.written_register = expected
        elif self.wrote_limit:
            self._lift(kind)
            self.wrote_limit = False
        if target.disconnected:
            self._write(kind, "Conn_RvrtTms", [revert, 0])
            self.wrote_disconnect = True
        elif self.wrote_disconnect:
            self._write(kind, "Conn_RvrtTms", [0, 1])
            self.wrote_disconnect = False
        after = self.read_state()
        if expected is not None and (not after.limit_enabled or after.limit_register != expected):
            shown = _pct_text(after.limit_centi) if after.limit_enabled else "no limit"
            raise ControlFailure(
                NOT_TAKEN, "the inverter did not take the limit: %s reads back %s" % (self.name, shown)
            )
        if target.disconnected and after.connected is not False:
            raise ControlFailure(NOT_TAKEN, "the inverter did not disconnect: %s reads back Conn = 1" % self.name)
        return after


def _pct_text(centi: int) -> str:
    return "%d.%02d %%" % (centi // 100, centi % 100)


def controllable(meter: dict) -> bool:
    """Whether a compact meter is an inverter site control can drive (SunSpec, with a control model)."""
    if meter.get("role") != "generation" or "sunspec" not in meter:
        return False
    models = meter["sunspec"]["models"]
    return KIND_123 in models or KIND_704 in models


def load_state(files: object, path: str = STATE_FILE) -> tuple:
    """``(last seq per operator, [raw commands in force])`` from flash; empty when there is no file.

    A file that does not parse raises ValueError: the board then runs without
    site control rather than forget which seqs it has accepted.
    """
    try:
        data = files.read(path)  # type: ignore[attr-defined]
    except OSError:
        return {}, []
    state = json.loads(data)
    seqs = state.get("seq", {})
    active = [bytes.fromhex(h) for h in state.get("active", [])]
    if not isinstance(seqs, dict) or not all(isinstance(v, int) for v in seqs.values()):
        raise ValueError("%s: seq is not a map of operator to seq" % path)
    return seqs, active


class Control:
    """Commands in, inverters driven, acks out; the app calls ``poll`` on every pass of its loop."""

    def __init__(
        self,
        device: str,
        operators: dict,
        key: object,
        uplink: object,
        inverters: list,
        files: object,
        ticks: object,
        path: str = STATE_FILE,
        log: object = print,
    ) -> None:
        self.device = device
        self.key = key
        self.uplink = uplink
        self.inverters = inverters
        self.files = files
        self.ticks = ticks  # ticks_ms, ticks_add, ticks_diff (the time module on a board)
        self.path = path
        self.log = log
        seqs, self.resumable = load_state(files, path)
        self.controller = Controller(device, operators, seqs)
        self.cmd_topic = "crev/v1/%s/cmd" % device
        self.ack_topic = "crev/v1/%s/ack" % device
        self.queue = []  # type: list[bytes]  # commands received, not yet handled
        self.acks = []  # type: list[bytes]  # signed acks not yet acknowledged by the broker
        self.applied = None  # type: Target | None  # what the inverters were last brought to
        self.refresh_at = None  # type: int | None  # ticks: when to write the target again
        self.retry_at = None  # type: int | None  # ticks: after a Modbus failure, not before this
        self.change_at = None  # type: int | None  # wall time: the next expiry or schedule slot
        self.curtailed_at = None  # type: int | None  # wall time: the last moment a limit was in force
        self.now = 0  # the wall time of the loop's pass
        self.started = False
        uplink.listen(self.cmd_topic, self._message)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ helpers

    def _message(self, topic: object, msg: object) -> None:
        """umqtt.simple's callback: queue only (it runs inside a publish)."""
        if len(self.queue) >= MAX_QUEUED:
            self.log("control: %d commands already waiting; one dropped" % MAX_QUEUED)  # type: ignore[operator]
            return
        self.queue.append(bytes(msg))  # type: ignore[call-overload]

    def _save(self) -> None:
        state = {"seq": self.controller.last_seq, "active": [c.raw.hex() for c in self.controller.active]}
        self.files.replace(self.path, json.dumps(state).encode())  # type: ignore[attr-defined]

    def _ack(self, ack: object) -> None:
        if len(self.acks) >= MAX_ACKS:
            self.acks.pop(0)
            self.log("control: too many acks waiting for the broker; the oldest dropped")  # type: ignore[operator]
        self.acks.append(ack.sign(self.key))  # type: ignore[attr-defined]

    def _note_curtailment(self, now: int) -> None:
        applied = self.applied
        if applied is not None and applied.curtails:
            self.curtailed_at = now

    def curtailed_since(self, t0: int) -> bool:
        """Whether a limit or a disconnect was in force after ``t0`` (an interval's start)."""
        self._note_curtailment(self.now)
        return self.curtailed_at is not None and self.curtailed_at > t0

    def _bring(self, target: Target, now: int) -> InverterState:
        """Apply ``target`` to every inverter; returns the most permissive read-back, for the ack."""
        states = []
        ticks = self.ticks
        try:
            for inverter in self.inverters:
                states.append(inverter.apply(target))
        except ControlFailure as err:
            if err.reason == INVERTER_ERROR:
                self.retry_at = ticks.ticks_add(ticks.ticks_ms(), RETRY_MS)  # type: ignore[attr-defined]
            raise
        self._note_curtailment(now)  # the old target was in force until now
        self.applied = target
        self.retry_at = None
        if target.idle or not target.revert_s:
            self.refresh_at = None
        else:
            self.refresh_at = ticks.ticks_add(ticks.ticks_ms(), target.revert_s * 500)  # type: ignore[attr-defined]
        self._note_curtailment(now)
        limit = max(s.limit_centi for s in states)
        connected = [s.connected for s in states if s.connected is not None]
        return InverterState(limit, 0, limit < NO_LIMIT_CENTI, 0, all(connected) if connected else None)

    # ------------------------------------------------------------ start-up

    def start(self, now: int) -> None:
        """Resume the commands in force before a restart; acknowledge those that expired meanwhile."""
        self.started = True
        self.now = now
        rows = self.resumable
        self.resumable = []
        for raw in rows:
            if self.controller.resume(raw, now) is not None:
                continue
            command = self.controller.signed(raw)
            if command is None:
                self.log("control: dropped a command in force whose operator is no longer listed")  # type: ignore[operator]
            else:
                self._ack(command_ack(command, self.device, ACK_EXPIRED, now))
        target = self.controller.target(now)
        if rows:
            # What crev left in the inverters is undone, or written again, now rather than at its revert time.
            try:
                for inverter in self.inverters:
                    inverter.adopt_leftovers()
            except ControlFailure as err:
                self.log("control: cannot read the inverters' controls at start-up: %s" % err.detail)  # type: ignore[operator]
        if rows or not target.idle:
            try:
                state = self._bring(target, now)
            except ControlFailure as err:
                # tick() tries again: the commands stay in force until they expire.
                self.log("control: cannot resume the commands in force yet: %s" % err.detail)  # type: ignore[operator]
                self.applied = None
            else:
                if target.idle:
                    self.applied = None  # nothing in force: nothing to refresh
                for command in self.controller.active:
                    ack = command_ack(
                        command,
                        self.device,
                        ACK_APPLIED,
                        now,
                        state.limit_centi,
                        state.connected,
                        detail="resumed after a restart",
                    )
                    self._ack(ack)
        if rows:
            self._save()
        self.change_at = self.controller.next_change(now)

    # ------------------------------------------------------------ the loop

    def poll(self, now: int) -> None:
        """One pass: receive, handle the commands waiting, expiries and refreshes, send acks."""
        self.now = now
        uplink = self.uplink
        if uplink.connected():  # type: ignore[attr-defined]
            uplink.poll()  # type: ignore[attr-defined]
        try:
            if not self.started:
                self.start(now)
            while self.queue:
                self.handle(self.queue.pop(0), now)
            self.tick(now)
        except Exception as err:  # a MemoryError in a verify, say: the readings go on regardless
            self.log("control: %s %s" % (type(err).__name__, err))  # type: ignore[operator]
        while self.acks:
            if not uplink.publish(self.ack_topic, self.acks[0]):  # type: ignore[attr-defined]
                break
            self.acks.pop(0)

    def handle(self, raw: bytes, now: int) -> None:
        """Check one command's bytes and act on it."""
        verdict = self.controller.check(raw, now)
        if not verdict.ok:
            if not verdict.ackable:
                self.log("control: ignored a malformed command: %s" % verdict.detail)  # type: ignore[operator]
                return
            self.log("control: rejected a command: %s: %s" % (verdict.reason, verdict.detail))  # type: ignore[operator]
            self._ack(verdict.ack(self.device, ACK_REJECTED, now))
            return
        command = verdict.command
        assert command is not None
        # The seq is spent on flash before the inverter is touched: a power cut after the
        # write cannot let the same bytes be applied a second time.
        self.controller.consume(command)
        self._save()
        active, superseded = self.controller.plan(command)
        target = target_of(active, now)
        if not self.inverters:
            failure = ControlFailure(NO_CONTROL, "this controller has no SunSpec inverter to command")
            self._ack(verdict.ack(self.device, ACK_REJECTED, now, reason=failure.reason, detail=failure.detail))
            return
        try:
            state = self._bring(target, now)
        except ControlFailure as err:
            self.log("control: command %s refused at the inverter: %s" % (command.id.hex(), err.detail))  # type: ignore[operator]
            self._ack(verdict.ack(self.device, ACK_REJECTED, now, reason=err.reason, detail=err.detail))
            self._restore(now)
            return
        self.controller.commit(command, active)
        self._save()
        self._ack(verdict.ack(self.device, ACK_APPLIED, now, state.limit_centi, state.connected))
        why = "cleared by" if command.type == CMD_CLEAR else "replaced by"
        for other in superseded:
            detail = "%s command %s" % (why, command.id.hex())
            self._ack(command_ack(other, self.device, ACK_REVERTED, now, detail=detail))
        self.change_at = self.controller.next_change(now)
        self.log(  # type: ignore[operator]
            "control: applied %s from %s: %s, read back %s"
            % (command.id.hex(), command.operator, command.describe(), _pct_text(state.limit_centi))
        )

    def _restore(self, now: int) -> None:
        """After a refused command, bring the inverters back to what is in force (best effort)."""
        target = self.controller.target(now)
        if self.applied == target:
            return
        try:
            self._bring(target, now)
        except ControlFailure as err:
            self.log("control: cannot restore the commands in force: %s" % err.detail)  # type: ignore[operator]

    def tick(self, now: int) -> None:
        """Expiries, schedule slots, refreshes and retries; cheap when none is due."""
        ticks = self.ticks
        clock = ticks.ticks_ms()  # type: ignore[attr-defined]
        refresh_at = self.refresh_at
        retry_at = self.retry_at
        due = refresh_at is not None and ticks.ticks_diff(clock, refresh_at) >= 0  # type: ignore[attr-defined]
        change = self.change_at is not None and now >= self.change_at
        if not (due or change or retry_at is not None):
            self._note_curtailment(now)
            return
        if retry_at is not None and ticks.ticks_diff(retry_at, clock) > 0:  # type: ignore[attr-defined]
            self._note_curtailment(now)
            return
        gone = self.controller.expire(now)
        target = self.controller.target(now)
        changed = (not target.idle) if self.applied is None else target != self.applied
        self.change_at = self.controller.next_change(now)
        if not gone and not (changed or due or retry_at is not None):
            self._note_curtailment(now)
            return
        state = None  # type: InverterState | None
        try:
            state = self._bring(target, now)
        except ControlFailure as err:
            if err.reason == INVERTER_ERROR:
                self.log("control: inverter not reachable, trying again: %s" % err.detail)  # type: ignore[operator]
            else:
                self._drop_all(now, err)
        if gone:
            for command in gone:
                limit = None if state is None else state.limit_centi
                connected = None if state is None else state.connected
                self._ack(command_ack(command, self.device, ACK_EXPIRED, now, limit, connected))
            self._save()

    def _drop_all(self, now: int, err: ControlFailure) -> None:
        """The inverters no longer take the commands in force, so these are not in force any more."""
        self.log("control: the inverters no longer take the commands in force: %s" % err.detail)  # type: ignore[operator]
        for command in self.controller.active:
            self._ack(command_ack(command, self.device, ACK_REVERTED, now, detail=err.detail))
        self.controller.active = []
        self._note_curtailment(now)
        self.applied = Target(None, False, None)
        self.refresh_at = None
        self.change_at = None
        self._save()


def from_config(
    config: dict, key: object, uplink: object, bus: object, files: object, ticks: object, log: object = print
) -> "Control | None":
    """The board's site control from config.json, or None without operators or an inverter to drive."""
    operators = config.get("operators")
    if not operators:
        return None
    inverters = [Inverter(bus, m) for m in config["meters"] if controllable(m)]
    if not inverters:
        log("control: operators are listed but no SunSpec inverter has a control model; commands ignored")  # type: ignore[operator]
        return None
    keys = {}
    for operator in operators:
        keys[operator] = bytes.fromhex(operators[operator])
    return Control(config["device"]["id"], keys, key, uplink, inverters, files, ticks, log=log)
