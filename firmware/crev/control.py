"""Site control (SPEC §12): an operator's signed commands, the controller's signed acknowledgements.

Both are COSE_Sign1 messages (SPEC §3 profile) over deterministic CBOR maps
with integer keys; key 0 is the format version, 1.

    command  {0: 1, 1: id (16 bytes), 2: dev, 3: seq, 4: issued, 5: not_before,
              6: expires, 7: type, 8: params}                      an operator's key
    ack      {0: 1, 1: dev, 2: cmd, 3: status, 4: time, and when known
              5: id, 6: operator, 7: seq; for a rejection 8: reason, 9: detail;
              when read back 10: limit, 11: connected}                the device's key

Times are Unix seconds. ``cmd`` is the SHA-256 of the command's whole COSE
bytes, so even a command that cannot be parsed is named exactly; ``limit``
is the inverter's limit as read back, in 1/100 % of its rating (10000 when
no limit is in force); ``connected`` is true or false.

Command types and their params map:

    1 limit       {0: pct (1..100), 1: revert_s}
    2 connect     {}
    3 disconnect  {1: revert_s}
    4 schedule    {1: revert_s, 2: start (a slot boundary), 3: [pct...] one per 30-minute slot}
    5 clear       {}

A limit is never 0 %: stopping output is ``disconnect``, which the inverter
knows as its own state. ``revert_s`` is written to the inverter's own revert
timer, which lifts the command if the controller falls silent; the controller
writes again at half that time while the command is in force.

Ack status: 1 applied, 2 rejected (with a reason), 3 expired (its time ran
out while in force), 4 reverted (no longer in force before it expired:
replaced, cleared, or the inverter dropped it).

``Controller`` holds the acceptance rules as a pure state machine: the
caller gives it the bytes and its clock, and does the I/O.
"""

import hashlib

from crev import cbor
from crev.cose import Sign1, sign1
from crev.errors import CborError, CrevError, InvalidInput, MisuseError
from crev.keys import SigningKey, key_id
from crev.reading import valid_device_id

FORMAT_VERSION = 1

CMD_LIMIT = 1
CMD_CONNECT = 2
CMD_DISCONNECT = 3
CMD_SCHEDULE = 4
CMD_CLEAR = 5
TYPE_NAMES = {CMD_LIMIT: "limit", CMD_CONNECT: "connect", CMD_DISCONNECT: "disconnect",
              CMD_SCHEDULE: "schedule", CMD_CLEAR: "clear"}  # fmt: skip
# Commands that stay in force until they expire, are replaced or are cleared;
# connect and clear act once, on what the same operator left in force.
LASTING = (CMD_LIMIT, CMD_DISCONNECT, CMD_SCHEDULE)

P_PCT = 0
P_REVERT = 1
P_START = 2
P_LIMITS = 3

ACK_APPLIED = 1
ACK_REJECTED = 2
ACK_EXPIRED = 3
ACK_REVERTED = 4
ACK_NAMES = {ACK_APPLIED: "applied", ACK_REJECTED: "rejected", ACK_EXPIRED: "expired", ACK_REVERTED: "reverted"}


ID_LENGTH = 16
MIN_PCT = 1
MAX_PCT = 100
NO_LIMIT_CENTI = 10000
MAX_REVERT_S = 65535  # model 123 keeps its revert times in 16 bits
MAX_WINDOW_S = 31 * 86400
MAX_SLOTS = 96  # two days of 30-minute slots
SLOT_S = 1800
MAX_TIME = 1 << 40
MAX_SEQ = (1 << 63) - 1  # SQLite keeps the last seq per operator in a signed 64-bit integer
MAX_DETAIL = 200

# Why a command was refused. MALFORMED commands are only logged: nobody can
# be named as their sender. Every other reason is acknowledged.
MALFORMED = "MALFORMED"
UNKNOWN_OPERATOR = "UNKNOWN_OPERATOR"
BAD_SIGNATURE = "BAD_SIGNATURE"
BAD_COMMAND = "BAD_COMMAND"
OTHER_DEVICE = "OTHER_DEVICE"
NOT_YET_VALID = "NOT_YET_VALID"
EXPIRED = "EXPIRED"
REPLAYED = "REPLAYED"
# Reasons the controller finds at the inverter.
NO_CONTROL = "NO_CONTROL"
NOT_TAKEN = "NOT_TAKEN"
INVERTER_ERROR = "INVERTER_ERROR"


class ControlError(InvalidInput):
    """A command or an acknowledgement is not what SPEC §12 says; ``code`` is the reason."""


def _uint(value: object, limit: int = MAX_SEQ) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _pct(value: object) -> bool:
    return _uint(value) and MIN_PCT <= value <= MAX_PCT  # type: ignore[operator]


def _revert(value: object) -> bool:
    return _uint(value) and 1 <= value <= MAX_REVERT_S  # type: ignore[operator]


def digest(raw: bytes) -> bytes:
    """What an acknowledgement names a command by: SHA-256 of its whole COSE bytes."""
    return hashlib.sha256(raw).digest()


def _map(payload: bytes, what: str) -> dict:
    try:
        fields = cbor.loads(payload)
    except CborError as err:
        raise ControlError(BAD_COMMAND, "%s is not deterministic CBOR: %s" % (what, err))
    if not isinstance(fields, dict):
        raise ControlError(BAD_COMMAND, "%s is not a map" % what)
    if fields.get(0) != FORMAT_VERSION:
        raise ControlError(BAD_COMMAND, "%s is not format version %d" % (what, FORMAT_VERSION))
    return fields


def _keys(fields: dict, required: tuple, optional: tuple, what: str) -> None:
    for key in required:
        if key not in fields:
            raise ControlError(BAD_COMMAND, "%s lacks field %d" % (what, key))
    for key in fields:
        if key not in required and key not in optional:
            raise ControlError(BAD_COMMAND, "%s has an unknown field %d" % (what, key))


# ------------------------------------------------------------------ commands


class Command:
    """A parsed command; ``operator`` is set once a Controller knows who signed it."""

    def __init__(self, fields: dict, raw: bytes, kid: bytes) -> None:
        self.id = fields[1]  # type: bytes
        self.dev = fields[2]  # type: str
        self.seq = fields[3]  # type: int
        self.issued = fields[4]  # type: int
        self.not_before = fields[5]  # type: int
        self.expires = fields[6]  # type: int
        self.type = fields[7]  # type: int
        params = fields[8]
        self.pct = params.get(P_PCT)  # type: int | None
        self.revert_s = params.get(P_REVERT)  # type: int | None
        self.start = params.get(P_START)  # type: int | None
        self.limits = params.get(P_LIMITS)  # type: list | None
        self.raw = raw
        self.digest = digest(raw)
        self.kid = kid
        self.operator = ""

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type, "?")

    def limit_at(self, now: int) -> "int | None":
        """The output limit in % this command asks for at ``now``; None when it asks for none."""
        if self.type == CMD_LIMIT:
            return self.pct
        if self.type == CMD_SCHEDULE and self.start is not None and self.limits is not None and now >= self.start:
            slot = (now - self.start) // SLOT_S
            if slot < len(self.limits):
                pct = self.limits[slot]  # type: int
                return pct
        return None

    def next_change(self, now: int) -> "int | None":
        """When ``limit_at`` next changes after ``now`` (a schedule's next slot), else None."""
        if self.type != CMD_SCHEDULE or self.start is None or self.limits is None:
            return None
        end = self.start + SLOT_S * len(self.limits)
        if now < self.start:
            return self.start
        if now >= end:
            return None
        return self.start + SLOT_S * ((now - self.start) // SLOT_S + 1)

    def describe(self) -> str:
        if self.type == CMD_LIMIT:
            return "limit %d %% (revert %d s)" % (self.pct or 0, self.revert_s or 0)
        if self.type == CMD_SCHEDULE:
            return "schedule of %d slots from %d (revert %d s)" % (
                len(self.limits or []), self.start or 0, self.revert_s or 0)  # fmt: skip
        if self.type == CMD_DISCONNECT:
            return "disconnect (revert %d s)" % (self.revert_s or 0)
        return self.type_name


def command_map(
    command_id: bytes,
    dev: str,
    seq: int,
    issued: int,
    not_before: int,
    expires: int,
    command_type: int,
    pct: "int | None" = None,
    revert_s: "int | None" = None,
    start: "int | None" = None,
    limits: "list | None" = None,
) -> dict:
    """The map an operator signs; raises MisuseError for a command the controller would refuse."""
    params = {}  # type: dict[int, object]
    if pct is not None:
        params[P_PCT] = pct
    if revert_s is not None:
        params[P_REVERT] = revert_s
    if start is not None:
        params[P_START] = start
    if limits is not None:
        params[P_LIMITS] = list(limits)
    fields = {0: FORMAT_VERSION, 1: command_id, 2: dev, 3: seq, 4: issued, 5: not_before, 6: expires,
              7: command_type, 8: params}  # fmt: skip
    problem = fields_problem(fields)
    if problem:
        raise MisuseError(problem)
    return fields


def sign_command(fields: dict, key: SigningKey) -> bytes:
    return sign1(cbor.dumps(fields), key)


_PARAMS = {
    CMD_LIMIT: ((P_PCT, P_REVERT), ()),
    CMD_CONNECT: ((), ()),
    CMD_DISCONNECT: ((P_REVERT,), ()),
    CMD_SCHEDULE: ((P_REVERT, P_START, P_LIMITS), ()),
    CMD_CLEAR: ((), ()),
}


def fields_problem(fields: dict) -> "str | None":
    """None when ``fields`` is a well-formed command map, else what is wrong."""
    for key in (0, 1, 2, 3, 4, 5, 6, 7, 8):
        if key not in fields:
            return "the command lacks field %d" % key
    for key in fields:
        if not _uint(key, 8):
            return "the command has an unknown field %r" % (key,)
    if fields[0] != FORMAT_VERSION:
        return "the command is not format version %d" % FORMAT_VERSION
    if not isinstance(fields[1], bytes) or len(fields[1]) != ID_LENGTH:
        return "the command id is %d bytes" % ID_LENGTH
    if not valid_device_id(fields[2]):
        return "dev is not a device id"
    if not _uint(fields[3]):
        return "seq is an unsigned integer below 2^63"
    issued, not_before, expires = fields[4], fields[5], fields[6]
    if not _uint(issued, MAX_TIME) or not _uint(not_before, MAX_TIME) or not _uint(expires, MAX_TIME):
        return "issued, not_before and expires are Unix seconds"
    if expires <= not_before or expires < issued:
        return "the command expires before it becomes valid"
    if expires - not_before > MAX_WINDOW_S:
        return "a command is valid for at most %d days" % (MAX_WINDOW_S // 86400)
    kind = fields[7]
    if not _uint(kind) or kind not in _PARAMS:
        return "type must be 1 (limit), 2 (connect), 3 (disconnect), 4 (schedule) or 5 (clear)"
    params = fields[8]
    if not isinstance(params, dict):
        return "params is a map"
    required, optional = _PARAMS[kind]
    for key in required:
        if key not in params:
            return "a %s command needs param %d" % (TYPE_NAMES[kind], key)
    for key in params:
        if key not in required and key not in optional:
            return "a %s command has no param %r" % (TYPE_NAMES[kind], key)
    if P_PCT in params and not _pct(params[P_PCT]):
        return "a limit is a whole percentage from %d to %d (disconnect is its own command)" % (MIN_PCT, MAX_PCT)
    if P_REVERT in params and not _revert(params[P_REVERT]):
        return "the revert time is 1 to %d seconds" % MAX_REVERT_S
    if kind == CMD_SCHEDULE:
        start, limits = params[P_START], params[P_LIMITS]
        if not _uint(start, MAX_TIME) or start % SLOT_S:
            return "a schedule starts on a 30-minute boundary"
        if not isinstance(limits, list) or not 0 < len(limits) <= MAX_SLOTS:
            return "a schedule has 1 to %d slots" % MAX_SLOTS
        for pct in limits:
            if not _pct(pct):
                return "each slot's limit is a whole percentage from %d to %d" % (MIN_PCT, MAX_PCT)
    return None


def open_envelope(raw: bytes) -> Sign1:
    """The COSE_Sign1 around a command; ControlError(MALFORMED) when it is not one."""
    try:
        return Sign1.from_bytes(raw)
    except CrevError as err:
        raise ControlError(MALFORMED, err.detail or err.code)


def parse_command(envelope: Sign1) -> Command:
    """The command in an envelope whose signature the caller has checked; ControlError(BAD_COMMAND)."""
    fields = _map(envelope.payload, "the command")
    problem = fields_problem(fields)
    if problem:
        raise ControlError(BAD_COMMAND, problem)
    return Command(fields, envelope.raw, envelope.kid)


# ------------------------------------------------------------------ acknowledgements


class Ack:
    def __init__(
        self,
        dev: str,
        cmd: bytes,
        status: int,
        time_s: int,
        command_id: "bytes | None" = None,
        operator: "str | None" = None,
        seq: "int | None" = None,
        reason: "str | None" = None,
        detail: "str | None" = None,
        limit_centi: "int | None" = None,
        connected: "bool | None" = None,
    ) -> None:
        self.dev = dev
        self.cmd = cmd
        self.status = status
        self.time_s = time_s
        self.command_id = command_id
        self.operator = operator
        self.seq = seq
        self.reason = reason
        self.detail = detail
        self.limit_centi = limit_centi
        self.connected = connected

    @property
    def status_name(self) -> str:
        return ACK_NAMES.get(self.status, "?")

    def to_map(self) -> dict:
        fields = {0: FORMAT_VERSION, 1: self.dev, 2: self.cmd, 3: self.status, 4: self.time_s}  # type: dict[int, object]
        for key, value in ((5, self.command_id), (6, self.operator), (7, self.seq), (8, self.reason),
                           (9, self.detail), (10, self.limit_centi), (11, self.connected)):  # fmt: skip
            if value is not None:
                fields[key] = value
        return fields

    def sign(self, key: SigningKey) -> bytes:
        problem = self.problem()
        if problem:
            raise MisuseError("invalid acknowledgement: " + problem)
        return sign1(cbor.dumps(self.to_map()), key)

    def problem(self) -> "str | None":
        if not valid_device_id(self.dev):
            return "dev is not a device id"
        if not isinstance(self.cmd, bytes) or len(self.cmd) != 32:
            return "cmd is the command's 32-byte SHA-256"
        if self.status not in ACK_NAMES or not _uint(self.status):
            return "status must be 1 (applied), 2 (rejected), 3 (expired) or 4 (reverted)"
        if not _uint(self.time_s, MAX_TIME):
            return "time is Unix seconds"
        if self.command_id is not None and (not isinstance(self.command_id, bytes) or len(self.command_id) != 16):
            return "the command id is %d bytes" % ID_LENGTH
        if self.operator is not None and not valid_device_id(self.operator):
            return "operator is an id"
        if self.seq is not None and not _uint(self.seq):
            return "seq is an unsigned integer"
        if (self.reason is None) != (self.status != ACK_REJECTED):
            return "a rejection, and only a rejection, carries a reason"
        if self.reason is not None and not (isinstance(self.reason, str) and 0 < len(self.reason) <= 32):
            return "the reason is a short code"
        if self.detail is not None and not (isinstance(self.detail, str) and len(self.detail) <= MAX_DETAIL):
            return "the detail is at most %d characters" % MAX_DETAIL
        if self.limit_centi is not None and not _uint(self.limit_centi, NO_LIMIT_CENTI):
            return "the limit read back is 0 to 10000 (1/100 %)"
        if self.connected is not None and self.connected is not True and self.connected is not False:
            return "connected is true or false"
        return None

    @classmethod
    def parse(cls, raw: bytes, device_key: "bytes | None") -> "Ack":
        """Parse an acknowledgement; with ``device_key``, also check the device's signature."""
        envelope = open_envelope(raw)
        if device_key is not None:
            try:
                envelope.verify(device_key)
            except CrevError as err:
                raise ControlError(BAD_SIGNATURE, err.detail)
        fields = _map(envelope.payload, "the acknowledgement")
        _keys(fields, (0, 1, 2, 3, 4), (5, 6, 7, 8, 9, 10, 11), "the acknowledgement")
        ack = cls(fields[1], fields[2], fields[3], fields[4], fields.get(5), fields.get(6), fields.get(7),
                  fields.get(8), fields.get(9), fields.get(10), fields.get(11))  # fmt: skip
        problem = ack.problem()
        if problem:
            raise ControlError(BAD_COMMAND, "acknowledgement: " + problem)
        return ack


# ------------------------------------------------------------------ the controller's rules


class Verdict:
    """What the controller makes of a command's bytes.

    ``ok``: accepted, ``command`` in hand. Otherwise ``reason`` and
    ``detail`` say why; ``ackable`` is False only for a MALFORMED message.
    """

    def __init__(
        self,
        raw: bytes,
        ok: bool,
        reason: "str | None" = None,
        detail: str = "",
        command: "Command | None" = None,
    ) -> None:
        self.raw = raw
        self.digest = digest(raw)
        self.ok = ok
        self.reason = reason
        self.detail = detail[:MAX_DETAIL]
        self.command = command

    @property
    def ackable(self) -> bool:
        return self.ok or self.reason != MALFORMED

    def ack(
        self,
        dev: str,
        status: int,
        time_s: int,
        limit_centi: "int | None" = None,
        connected: "bool | None" = None,
        reason: "str | None" = None,
        detail: "str | None" = None,
    ) -> Ack:
        """The acknowledgement of this verdict (``reason`` overrides a refusal found later, at the inverter)."""
        command = self.command
        return Ack(
            dev,
            self.digest,
            status,
            time_s,
            None if command is None else command.id,
            None if command is None or not command.operator else command.operator,
            None if command is None else command.seq,
            reason if reason is not None else (self.reason if status == ACK_REJECTED else None),
            detail if detail is not None else (self.detail if status == ACK_REJECTED else None),
            limit_centi,
            connected,
        )


class Target:
    """What the inverters should do now: the lowest limit in force, and whether to stay disconnected."""

    def __init__(self, limit_pct: "int | None", disconnected: bool, revert_s: "int | None") -> None:
        self.limit_pct = limit_pct
        self.disconnected = disconnected
        self.revert_s = revert_s  # the shortest revert time of the commands in force

    @property
    def curtails(self) -> bool:
        return self.disconnected or (self.limit_pct is not None and self.limit_pct < MAX_PCT)

    @property
    def idle(self) -> bool:
        return self.limit_pct is None and not self.disconnected

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Target)
            and other.limit_pct == self.limit_pct
            and other.disconnected == self.disconnected
            and other.revert_s == self.revert_s
        )

    def __repr__(self) -> str:
        return "Target(limit_pct=%r, disconnected=%r, revert_s=%r)" % (self.limit_pct, self.disconnected, self.revert_s)


def target_of(active: list, now: int) -> Target:
    limit = None  # type: int | None
    revert = None  # type: int | None
    disconnected = False
    for command in active:
        if command.type == CMD_DISCONNECT:
            disconnected = True
        pct = command.limit_at(now)
        if pct is not None and (limit is None or pct < limit):
            limit = pct
        if (pct is not None or command.type == CMD_DISCONNECT) and command.revert_s is not None:
            revert = command.revert_s if revert is None else min(revert, command.revert_s)
    return Target(limit, disconnected, revert)


class Controller:
    """The acceptance rules of SPEC §12, with no I/O.

    ``operators`` maps each operator id to its public key (the controller's
    ``[[operator]]`` list); ``last_seq`` the highest seq accepted from each,
    which the caller keeps across restarts. ``active`` holds the lasting
    commands in force. The caller checks a command, plans what it would
    leave in force, tries that on the inverters, and then commits it, or
    only consumes its seq when the inverters refused it.
    """

    def __init__(self, dev: str, operators: dict, last_seq: "dict | None" = None) -> None:
        if not valid_device_id(dev):
            raise MisuseError("%r is not a device id" % (dev,))
        self.dev = dev
        self.by_kid = {}  # type: dict[bytes, tuple[str, bytes]]
        for operator in operators:
            pubkey = operators[operator]
            self.by_kid[key_id(pubkey)] = (operator, pubkey)
        self.last_seq = dict(last_seq or {})  # type: dict[str, int]
        self.active = []  # type: list[Command]

    def _signed(self, raw: bytes) -> "tuple[Command | None, Verdict | None]":
        """The command if an enrolled operator signed it; else the verdict that refuses it."""
        try:
            envelope = open_envelope(raw)
        except ControlError as err:
            return None, Verdict(raw, False, MALFORMED, err.detail)
        found = self.by_kid.get(envelope.kid)
        if found is None:
            return None, Verdict(
                raw,
                False,
                UNKNOWN_OPERATOR,
                "kid %s is not a key of an operator this controller lists" % envelope.kid.hex(),
            )
        operator, pubkey = found
        try:
            envelope.verify(pubkey)
        except CrevError:
            return None, Verdict(raw, False, BAD_SIGNATURE, "the signature does not verify for operator %s" % operator)
        try:
            command = parse_command(envelope)
        except ControlError as err:
            return None, Verdict(raw, False, BAD_COMMAND, err.detail)
        command.operator = operator
        return command, None

    def signed(self, raw: bytes) -> "Command | None":
        """The command if a listed operator signed it (``operator`` set), whatever else it says."""
        command, _refused = self._signed(raw)
        return command

    def check(self, raw: bytes, now: int) -> Verdict:
        """Every rule, in order: envelope, operator key, signature, schema, device, time window, seq."""
        command, refused = self._signed(raw)
        if command is None:
            assert refused is not None
            return refused
        if command.dev != self.dev:
            return Verdict(raw, False, OTHER_DEVICE, "the command is for %s, not %s" % (command.dev, self.dev), command)
        if now < command.not_before:
            return Verdict(
                raw, False, NOT_YET_VALID, "valid from %d; it is %d here" % (command.not_before, now), command
            )
        if now >= command.expires:
            return Verdict(raw, False, EXPIRED, "expired at %d; it is %d here" % (command.expires, now), command)
        last = self.last_seq.get(command.operator)
        if last is not None and command.seq <= last:
            detail = "seq %d is not above %d, the last accepted from %s" % (command.seq, last, command.operator)
            return Verdict(raw, False, REPLAYED, detail, command)
        return Verdict(raw, True, None, "", command)

    def plan(self, command: Command) -> tuple:
        """``(active after, superseded)``: what stays in force if ``command`` is applied."""
        keep = []
        superseded = []
        for other in self.active:
            same = other.operator == command.operator
            replaced = same and (
                command.type == CMD_CLEAR
                or (command.type in (CMD_CONNECT, CMD_DISCONNECT) and other.type == CMD_DISCONNECT)
                or (command.type in (CMD_LIMIT, CMD_SCHEDULE) and other.type in (CMD_LIMIT, CMD_SCHEDULE))
            )
            if replaced:
                superseded.append(other)
            else:
                keep.append(other)
        if command.type in LASTING:
            keep.append(command)
        return keep, superseded

    def consume(self, command: Command) -> None:
        """Record the command's seq: it is never accepted again, whatever came of it."""
        last = self.last_seq.get(command.operator)
        if last is None or command.seq > last:
            self.last_seq[command.operator] = command.seq

    def commit(self, command: Command, active: list) -> None:
        self.consume(command)
        self.active = list(active)

    def resume(self, raw: bytes, now: int) -> "Command | None":
        """A command that was in force before a restart, checked again; None if it no longer holds.

        Its seq was consumed when it was accepted, so only its signer (who
        must still be listed), its device and its expiry are checked.
        """
        command, _refused = self._signed(raw)
        if command is None or command.dev != self.dev or command.type not in LASTING or now >= command.expires:
            return None
        self.active.append(command)
        return command

    def expire(self, now: int) -> list:
        """Remove and return the commands whose time has run out."""
        gone = [c for c in self.active if now >= c.expires]
        if gone:
            self.active = [c for c in self.active if now < c.expires]
        return gone

    def target(self, now: int) -> Target:
        return target_of(self.active, now)

    def next_change(self, now: int) -> "int | None":
        """The next time the target can change by itself: an expiry or a schedule's slot."""
        soonest = None  # type: int | None
        for command in self.active:
            for when in (command.expires, command.next_change(now)):
                if when is not None and when > now and (soonest is None or when < soonest):
                    soonest = when
        return soonest


def command_ack(
    command: Command,
    dev: str,
    status: int,
    time_s: int,
    limit_centi: "int | None" = None,
    connected: "bool | None" = None,
    reason: "str | None" = None,
    detail: "str | None" = None,
) -> Ack:
    """An acknowledgement about a command that was accepted earlier (it expired, was reverted, ...)."""
    return Ack(
        dev,
        command.digest,
        status,
        time_s,
        command.id,
        command.operator or None,
        command.seq,
        reason,
        None if detail is None else detail[:MAX_DETAIL],
        limit_centi,
        connected,
    )
