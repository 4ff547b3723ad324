"""Site control (SPEC §12): operators' signed commands, applied to the inverters through SunSpec.

The rules (signature, device, time window, seq, what stays in force) are
the core's (crev.control.Controller); this module does the I/O:

- the inverters are the SunSpec generation meters of the configuration;
  each is driven through model 123 (WMaxLimPct, WMaxLimPct_RvrtTms,
  WMaxLim_Ena, Conn with Conn_RvrtTms) when it has it, else model 704
  (WMaxLimPct and WMaxLimPctEna, reverting to 100 % after
  WMaxLimPctRvrtTms). Connect and disconnect need model 123;
- every write is read back: a limit the inverter did not keep is a
  rejection (NOT_TAKEN), which is how an inverter that ignores writes shows;
- while a command is in force the same registers are written again at half
  its revert time, so the inverter's own timer lifts the command only when
  the controller has fallen silent;
- the last seq per operator, the commands in force and the signed acks live
  in the outbox: a seq is recorded before the inverter is touched, so the
  same command is never applied twice, and after a restart the commands in
  force are applied again unless they expired meanwhile;
- a limit already in the inverter that crev did not write (one without a
  revert time: crev always writes one), such as the utility's own output
  control, is never raised: crev writes at most that limit and puts it
  back when its own command ends.

All of it runs in the service thread, between meter reads. The Modbus
writes share the meters' bus and its lock.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from crev.control import (
    ACK_APPLIED,
    ACK_EXPIRED,
    ACK_REJECTED,
    ACK_REVERTED,
    CMD_CLEAR,
    CMD_CONNECT,
    INVERTER_ERROR,
    MAX_PCT,
    NO_CONTROL,
    NO_LIMIT_CENTI,
    NOT_TAKEN,
    Ack,
    Controller,
    Target,
    command_ack,
    target_of,
)
from crev.keys import SigningKey
from crev_gateway import MeterError
from crev_gateway.meters import MeterReader
from crev_gateway.metrics import GatewayMetrics
from crev_gateway.outbox import Outbox
from crev_gateway.profiles import Point, decode_signed

log = logging.getLogger("crev.gateway.control")

KIND_123 = "controls"
KIND_704 = "der_controls"
SF_NOT_IMPLEMENTED = -0x8000
RETRY_S = 1.0  # after a Modbus failure, try the inverters again this soon


def _fields(**values: object) -> dict[str, object]:
    return {"fields": values}


class ControlFailure(Exception):
    """The inverters could not be brought to the target; ``reason`` is an ack reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class InverterState:
    """What an inverter reports: its limit in 1/100 % (10000 when none is enabled), and its connection."""

    limit_centi: int
    limit_register: int
    limit_enabled: bool
    limit_revert_s: int
    connected: bool | None  # None: model 704 has no connect control
    connect_revert_s: int = 0


def pct_register(pct: int, sf: int) -> int:
    """A whole percentage as the register value under scale factor ``sf``, rounded down (a lower limit is safe)."""
    factor: int = 10 ** abs(sf)
    return pct * factor if sf <= 0 else pct // factor


def centi_pct(register: int, sf: int) -> int:
    shift = sf + 2
    factor: int = 10 ** abs(shift)
    return min(NO_LIMIT_CENTI, register * factor if shift >= 0 else register // factor)


class SunSpecInverter:
    """One inverter's control registers, found by the meter reader's SunSpec discovery."""

    def __init__(self, reader: MeterReader) -> None:
        self.reader = reader
        self.name = reader.config.name
        self.wrote_limit = False
        self.wrote_disconnect = False
        self.foreign: InverterState | None = None  # a limit crev found and did not write
        self.sf = 0  # WMaxLimPct_SF, as last read
        self.written_register = 0  # the WMaxLimPct crev wrote last

    # ------------------------------------------------------------ registers

    def kind(self) -> str:
        layout = self.reader.layout if self.reader.layout is not None else self.reader.discover()
        for kind in (KIND_123, KIND_704):
            if kind in layout.models:
                return kind
        raise ControlFailure(NO_CONTROL, "inverter %s has neither SunSpec model 123 nor 704" % self.name)

    def _points(self, kind: str) -> dict[str, Point]:
        return next(m.points for m in self.reader.profile.models if m.kind == kind)

    def _address(self, kind: str, point: str) -> int:
        layout = self.reader.layout if self.reader.layout is not None else self.reader.discover()
        return layout.models[kind][1] + self._points(kind)[point].address

    def _write(self, kind: str, point: str, values: list[int]) -> None:
        """Write registers from ``point`` on; raises MeterError like a failed read."""
        address = self._address(kind, point)
        bus = self.reader.bus
        unit = self.reader.config.unit
        # The bus backend only reads; the write goes through its client under its lock, so it never
        # interleaves with a meter's request on the same wire.
        with bus.lock:
            client = bus._connect(self.name)
            try:
                response = client.write_registers(address, values, device_id=unit)
            except Exception as err:  # pymodbus raises its own errors for timeouts and lost connections
                bus.close()
                raise MeterError(self.name, "TIMEOUT", "writing %s at %d: %s" % (point, address, err)) from err
            finally:
                bus._last_request_end = time.monotonic()
        if response.isError():
            code = getattr(response, "exception_code", None)
            raise MeterError(self.name, "EXCEPTION", "exception code %s writing %s at %d" % (code, point, address))

    def read_state(self) -> InverterState:
        kind = self.kind()
        points, block = self.reader._model(kind)

        def word(name: str) -> int:
            point = points[name]
            words = block[point.address : point.address + point.count]
            value = 0
            for w in words:
                value = (value << 16) | w
            return value

        sf = decode_signed(points["WMaxLimPct_SF"], word("WMaxLimPct_SF"))
        if sf == SF_NOT_IMPLEMENTED:
            sf = 0
        if not -4 <= sf <= 4:
            raise ControlFailure(INVERTER_ERROR, "inverter %s reports WMaxLimPct_SF = %d" % (self.name, sf))
        self.sf = sf
        if kind == KIND_123:
            enabled = word("WMaxLim_Ena") == 1
            register = word("WMaxLimPct")
            revert = word("WMaxLimPct_RvrtTms")
            connected: bool | None = word("Conn") != 0
            connect_revert = word("Conn_RvrtTms")
        else:
            enabled = word("WMaxLimPctEna") == 1
            register = word("WMaxLimPct")
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

    # ------------------------------------------------------------ applying

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
        """Bring this inverter to ``target`` and read it back; raises ControlFailure or MeterError."""
        kind = self.kind()
        before = self.read_state()
        if (target.disconnected or self.wrote_disconnect) and kind != KIND_123:
            raise ControlFailure(NO_CONTROL, "inverter %s has no SunSpec model 123, whose Conn connects it" % self.name)
        if not self.wrote_limit:
            crev_limit = before.limit_enabled and before.limit_revert_s > 0
            self.foreign = before if before.limit_enabled and not crev_limit and before.limit_centi < 10000 else None
        expected: int | None = None
        revert = target.revert_s or 0
        if target.limit_pct is not None:
            expected = pct_register(target.limit_pct, self.sf)
            if self.foreign is not None:
                expected = min(expected, self.foreign.limit_register)
            if expected <= 0:
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
            raise ControlFailure(
                NOT_TAKEN,
                "the inverter did not take the limit: %s reads back %s"
                % (self.name, _pct_text(after.limit_centi) if after.limit_enabled else "no limit"),
            )
        if target.disconnected and after.connected is not False:
            raise ControlFailure(NOT_TAKEN, "the inverter did not disconnect: %s reads back Conn = 1" % self.name)
        return after

    def holds(self, target: Target, state: InverterState) -> bool:
        """Whether the inverter still holds what crev wrote for ``target``."""
        if target.limit_pct is not None and (not state.limit_enabled or state.limit_register != self.written_register):
            return False
        return not (target.disconnected and state.connected is not False)


def _pct_text(centi: int) -> str:
    return "%d.%02d %%" % (centi // 100, centi % 100)


class SiteControl:
    """Commands in, inverters driven, acks committed; called from the gateway's loop."""

    def __init__(
        self,
        device_id: str,
        operators: dict[str, bytes],
        key: SigningKey,
        outbox: Outbox,
        readers: list[MeterReader],
        metrics: GatewayMetrics,
        now: Callable[[], float],
    ) -> None:
        self.device_id = device_id
        self.key = key
        self.outbox = outbox
        self.metrics = metrics
        self.now = now
        self.controller = Controller(device_id, operators, outbox.control_seqs())
        self.inverters = [
            SunSpecInverter(r) for r in readers if r.profile.kind == "sunspec" and r.config.role == "generation"
        ]
        self.applied: Target | None = None  # what the inverters were last brought to
        self.next_refresh: float | None = None  # monotonic: when to write the target again
        self.retry_at: float | None = None  # monotonic: after a Modbus failure, not before this
        self.curtailed_at: float | None = None  # the gateway's clock: the last moment a limit was in force
        self.metrics.output_limit.set(100)

    # ------------------------------------------------------------ helpers

    def _commit(self, seq: tuple[str, int] | None = None, active: bool = False, acks: list[Ack] | None = None) -> None:
        rows = [(c.digest, c.raw) for c in self.controller.active] if active else None
        self.outbox.commit_control(seq, rows, [ack.sign(self.key) for ack in acks or ()])
        self.metrics.acks_pending.set(self.outbox.ack_depth())

    def _note_curtailment(self) -> None:
        if self.applied is not None and self.applied.curtails:
            self.curtailed_at = self.now()

    def curtailed_since(self, t0: float) -> bool:
        """Whether a limit or a disconnect was in force after ``t0`` (an interval's start)."""
        self._note_curtailment()
        return self.curtailed_at is not None and self.curtailed_at > t0

    def _bring(self, target: Target) -> InverterState:
        """Apply ``target`` to every inverter; returns the most permissive read-back, for the ack."""
        if not self.inverters:
            raise ControlFailure(NO_CONTROL, "this controller has no SunSpec inverter to command")
        states = []
        try:
            for inverter in self.inverters:
                states.append(inverter.apply(target))
        except MeterError as err:
            self.retry_at = time.monotonic() + RETRY_S
            raise ControlFailure(INVERTER_ERROR, "cannot reach the inverter: %s" % err.detail[:150]) from err
        self._note_curtailment()  # the old target was in force until now
        self.applied = target
        self.retry_at = None
        self.next_refresh = None if target.idle or not target.revert_s else time.monotonic() + target.revert_s / 2
        self._note_curtailment()
        self.metrics.output_limit.set(0 if target.disconnected else (target.limit_pct or 100))
        limit = max(s.limit_centi for s in states)
        connected = [s.connected for s in states if s.connected is not None]
        return InverterState(limit, 0, limit < NO_LIMIT_CENTI, 0, all(connected) if connected else None)

    # ------------------------------------------------------------ start-up

    def start(self) -> None:
        """Resume the commands in force before a restart; acknowledge those that expired meanwhile."""
        now = int(self.now())
        acks = []
        rows = self.outbox.control_active()
        for raw in rows:
            if self.controller.resume(raw, now) is not None:
                continue
            command = self.controller.signed(raw)
            if command is None:
                log.warning("dropped a command in force whose operator is no longer listed")
            else:
                log.info(
                    "command %s expired while the gateway was down",
                    command.id.hex(),
                    extra=_fields(event="control_expired", operator=command.operator),
                )
                acks.append(command_ack(command, self.device_id, ACK_EXPIRED, now))
        target = self.controller.target(now)
        if rows:
            # What crev left in the inverters is undone, or written again, now rather than at
            # its revert time.
            try:
                for inverter in self.inverters:
                    inverter.adopt_leftovers()
            except (MeterError, ControlFailure) as err:
                log.warning("cannot read the inverters' controls at start-up: %s", err)
        if rows or not target.idle:
            try:
                state = self._bring(target)
            except ControlFailure as err:
                # tick() tries again: the commands stay in force until they expire.
                log.error("cannot resume the commands in force yet: %s", err.detail)
            else:
                if target.idle:
                    self.applied = None  # nothing in force: tick() has nothing to refresh
                for command in self.controller.active:
                    acks.append(
                        command_ack(
                            command,
                            self.device_id,
                            ACK_APPLIED,
                            now,
                            state.limit_centi,
                            state.connected,
                            detail="resumed after a restart",
                        )
                    )
                log.info(
                    "resumed %d commands: %r",
                    len(self.controller.active),
                    target,
                    extra=_fields(event="control_resume"),
                )
        self._commit(active=True, acks=acks)

    # ------------------------------------------------------------ commands

    def handle(self, raw: bytes) -> None:
        """Check one command's bytes and act on it."""
        now = int(self.now())
        verdict = self.controller.check(raw, now)
        if not verdict.ok:
            self.metrics.commands.labels(verdict.reason or "?").inc()
            if not verdict.ackable:
                log.warning("ignored a malformed command: %s", verdict.detail, extra=_fields(event="command_malformed"))
                return
            log.warning(
                "rejected a command: %s: %s",
                verdict.reason,
                verdict.detail,
                extra=_fields(event="command_rejected", reason=verdict.reason, cmd=verdict.digest.hex()),
            )
            self._commit(acks=[verdict.ack(self.device_id, ACK_REJECTED, now)])
            return
        command = verdict.command
        assert command is not None
        # The seq is spent before the inverter is touched: a crash after the write
        # cannot let the same bytes be applied a second time.
        self.controller.consume(command)
        self._commit(seq=(command.operator, command.seq))
        active, superseded = self.controller.plan(command)
        target = target_of(active, now)
        try:
            state = self._bring(target)
        except ControlFailure as err:
            self.metrics.commands.labels(err.reason).inc()
            log.warning(
                "command %s (%s from %s) refused at the inverter: %s",
                command.id.hex(),
                command.describe(),
                command.operator,
                err.detail,
                extra=_fields(event="command_rejected", reason=err.reason, cmd=verdict.digest.hex()),
            )
            self._commit(acks=[verdict.ack(self.device_id, ACK_REJECTED, now, reason=err.reason, detail=err.detail)])
            self._restore(now)
            return
        self.controller.commit(command, active)
        acks = [verdict.ack(self.device_id, ACK_APPLIED, now, state.limit_centi, state.connected)]
        why = "cleared by" if command.type == CMD_CLEAR else "replaced by"
        for other in superseded:
            detail = "%s command %s" % (why, command.id.hex())
            acks.append(command_ack(other, self.device_id, ACK_REVERTED, now, detail=detail))
        self._commit(active=True, acks=acks)
        self.metrics.commands.labels("applied").inc()
        log.info(
            "applied command %s from %s: %s; in force now %r, read back %s",
            command.id.hex(),
            command.operator,
            command.describe(),
            target,
            _pct_text(state.limit_centi),
            extra=_fields(event="command_applied", seq=command.seq, operator=command.operator, type=command.type_name),
        )
        if command.type in (CMD_CONNECT, CMD_CLEAR) and not superseded:
            log.info("command %s found nothing of %s's in force", command.id.hex(), command.operator)

    def _restore(self, now: int) -> None:
        """After a refused command, bring the inverters back to what is in force (best effort)."""
        target = self.controller.target(now)
        if self.applied == target:
            return
        try:
            self._bring(target)
        except ControlFailure as err:
            log.error("cannot restore the commands in force: %s", err.detail)

    # ------------------------------------------------------------ the loop

    def tick(self) -> None:
        """Expiries, schedule slots, refreshes and retries; called on every pass of the loop."""
        now = int(self.now())
        gone = self.controller.expire(now)
        target = self.controller.target(now)
        changed = (not target.idle) if self.applied is None else target != self.applied
        clock = time.monotonic()
        due = self.next_refresh is not None and clock >= self.next_refresh
        waiting = self.retry_at is not None and clock < self.retry_at
        if not gone and (waiting or not (changed or due)):
            self._note_curtailment()
            return
        if due and not changed:
            self._warn_if_dropped(target)
        state: InverterState | None = None
        try:
            state = self._bring(target)
        except ControlFailure as err:
            if err.reason == INVERTER_ERROR:
                log.warning("inverter not reachable, trying again: %s", err.detail)
            else:
                self._drop_all(now, err)
        if gone:
            acks = []
            for command in gone:
                log.info(
                    "command %s expired",
                    command.id.hex(),
                    extra=_fields(event="control_expired", operator=command.operator),
                )
                acks.append(
                    command_ack(
                        command,
                        self.device_id,
                        ACK_EXPIRED,
                        now,
                        None if state is None else state.limit_centi,
                        None if state is None else state.connected,
                    )
                )
            self._commit(active=True, acks=acks)

    def _warn_if_dropped(self, target: Target) -> None:
        """Before a refresh: say so when an inverter no longer holds the target (it reverted too soon, or restarted)."""
        for inverter in self.inverters:
            try:
                state = inverter.read_state()
            except (MeterError, ControlFailure):
                return  # the refresh itself will say what is wrong
            if not inverter.holds(target, state):
                log.warning(
                    "inverter %s no longer holds %r; writing it again",
                    inverter.name,
                    target,
                    extra=_fields(event="control_lost", inverter=inverter.name),
                )

    def _drop_all(self, now: int, err: ControlFailure) -> None:
        """The inverters no longer take the commands in force, so these are not in force any more."""
        log.error(
            "the inverters no longer take the commands in force: %s", err.detail, extra=_fields(event="control_lost")
        )
        acks = [command_ack(c, self.device_id, ACK_REVERTED, now, detail=err.detail) for c in self.controller.active]
        self.controller.active = []
        self._note_curtailment()
        self.applied = Target(None, False, None)
        self.next_refresh = None
        self.metrics.output_limit.set(100)
        self._commit(active=True, acks=acks)
