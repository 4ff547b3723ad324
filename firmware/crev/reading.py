"""The signed reading of SPEC §3: build, sign, parse, validate and chain.

A reading is parsed only through ``Reading.from_cose`` or
``Reading.from_payload``, which check every invariant, so a Reading object
in hand is always well formed. Signature checking needs the enrolled key and
is a separate step (``verify_reading``), in SPEC §5 order.
"""

import hashlib

from crev import cbor, dgcc
from crev.cose import Sign1, sign1
from crev.errors import CborError, MisuseError, ReadingError
from crev.keys import SigningKey

FORMAT_VERSION = 1
ZERO_HASH = bytes(32)
MAX_CHANNELS = 32
MAX_TEXT = 64

NON_CANONICAL = "NON_CANONICAL"
BAD_SCHEMA = "BAD_SCHEMA"

K_V, K_DEV, K_SEQ, K_PREV, K_T0, K_T1, K_CLK, K_CH, K_E, K_GS, K_FLAGS, K_FW, K_SM = range(13)
_REQUIRED_KEYS = (K_V, K_DEV, K_SEQ, K_PREV, K_T0, K_T1, K_CLK, K_CH, K_FLAGS, K_FW)
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def valid_device_id(dev: object) -> bool:
    """SPEC §3: ``^[a-z0-9][a-z0-9-]{2,62}$``."""
    if not isinstance(dev, str) or not 3 <= len(dev) <= 63:
        return False
    return all(not (c not in _ID_CHARS and (c != "-" or i == 0)) for i, c in enumerate(dev))


def reading_hash(cose_bytes: bytes) -> bytes:
    """SHA-256 of a reading's whole COSE_Sign1 bytes: the next reading's prev."""
    return hashlib.sha256(cose_bytes).digest()


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# Key 12's time is a mark of the smart meter's 30-minute fixed-time values (SPEC §13).
SM_SLOT_S = 1800


def sm_problem(sm: object) -> "str | None":
    """None when ``sm`` is a valid key 12 ``[meter_id, t, import_mWh, export_mWh]``."""
    if not isinstance(sm, list) or len(sm) != 4:
        return "sm must be [meter_id, t, import_mwh, export_mwh]"
    meter_id, t, imported, exported = sm
    if not isinstance(meter_id, str) or not 0 < len(meter_id) <= 64:
        return "sm meter_id must be a text of 1..64 characters"
    if not _is_uint(t) or t >= 1 << 64 or t % SM_SLOT_S:
        return "sm t must be a 30-minute mark in Unix seconds"
    if not _is_uint(imported) or not _is_uint(exported) or imported >= 1 << 64 or exported >= 1 << 64:
        return "sm import and export must be unsigned integers (mWh)"
    return None


def _text_ok(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


class Reading:
    """One interval's signed measurement. Energies are integer mWh."""

    def __init__(
        self,
        dev: str,
        seq: int,
        prev: bytes,
        t0: int,
        t1: int,
        clk: int,
        channels: list,
        energies: list | None,
        generator_self: list | None,
        flags: int,
        fw: str,
        smart_meter: list | None = None,
    ) -> None:
        self.dev = dev
        self.seq = seq
        self.prev = prev
        self.t0 = t0
        self.t1 = t1
        self.clk = clk
        self.channels = channels
        self.energies = energies
        self.generator_self = generator_self
        self.flags = flags
        self.fw = fw
        # Key 12 (SPEC §13): [meter_id, t, import_mWh, export_mWh] of the smart meter, or None.
        self.smart_meter = smart_meter
        self.cose = None  # type: Sign1 | None

    # ------------------------------------------------------------ schema

    def schema_problem(self) -> str | None:
        """None when the reading obeys SPEC §3, else what is wrong."""
        if not valid_device_id(self.dev):
            return "dev %r is not a valid device id" % (self.dev,)
        if not _is_uint(self.seq) or self.seq >= 1 << 64:
            return "seq must be an unsigned 64-bit integer"
        if not isinstance(self.prev, bytes) or len(self.prev) != 32:
            return "prev must be 32 bytes"
        if self.seq == 0 and self.prev != ZERO_HASH:
            return "prev must be 32 zero bytes at seq 0"
        if not _is_uint(self.t0) or not _is_uint(self.t1) or self.t1 >= 1 << 64:
            return "t0 and t1 must be unsigned integers"
        if self.t1 <= self.t0:
            return "t1 must be after t0"
        if self.clk not in (0, 1) or isinstance(self.clk, bool):
            return "clk must be 0 or 1"
        if not isinstance(self.flags, int) or isinstance(self.flags, bool) or not 0 <= self.flags <= dgcc.ALL_FLAGS:
            return "flags has unknown bits"
        if not _text_ok(self.fw):
            return "fw must be a text of 1..%d characters" % MAX_TEXT
        problem = self._channels_problem()
        if problem:
            return problem
        if self.smart_meter is not None:
            problem = sm_problem(self.smart_meter)
            if problem:
                return problem
        return self._energies_problem()

    def _channels_problem(self) -> str | None:
        if not isinstance(self.channels, list) or not 0 < len(self.channels) <= MAX_CHANNELS:
            return "ch must hold 1..%d channels" % MAX_CHANNELS
        for channel in self.channels:
            try:
                dgcc.check_channel(channel)
            except MisuseError as err:
                return err.detail
            if len(channel[1]) > MAX_TEXT:
                return "meter_id longer than %d characters" % MAX_TEXT
        return None

    def _energies_problem(self) -> str | None:
        no_energy_flags = self.flags & (dgcc.COUNTER_RESET | dgcc.NO_BASELINE)
        if self.energies is None or self.generator_self is None:
            if self.energies is not None or self.generator_self is not None:
                return "e and gs are present together or not at all"
            if not no_energy_flags:
                return "energies are absent without COUNTER_RESET or NO_BASELINE"
            return None
        if no_energy_flags:
            return "energies are present despite COUNTER_RESET or NO_BASELINE"
        e = self.energies
        if not isinstance(e, list) or len(e) != 5 or not all(_is_uint(x) for x in e):
            return "e must be five unsigned integers"
        generated, imported, exported, self_mwh, demand = e
        if exported > generated:
            if not self.flags & dgcc.EXPORT_EXCEEDS_GEN:
                return "E > G without EXPORT_EXCEEDS_GEN"
            if self_mwh != 0 or demand != max(0, generated + imported - exported):
                return "with EXPORT_EXCEEDS_GEN, self must be 0 and demand max(0, G+I-E)"
        else:
            if self.flags & dgcc.EXPORT_EXCEEDS_GEN:
                return "EXPORT_EXCEEDS_GEN set but E <= G"
            if self_mwh != generated - exported or demand != self_mwh + imported:
                return "self must be G-E and demand self+I"
        gen_ids = [c[1] for c in self.channels if c[0] == dgcc.ROLE_GENERATION]
        gs = self.generator_self
        if not isinstance(gs, list) or len(gs) != len(gen_ids):
            return "gs must have one entry per generation channel"
        total = 0
        for entry, meter_id in zip(gs, gen_ids):
            if not isinstance(entry, list) or len(entry) != 2 or entry[0] != meter_id or not _is_uint(entry[1]):
                return "gs entries must be [meter_id, self_mwh] in generation channel order"
            total += entry[1]
        if total != self_mwh:
            return "the gs values must sum to self"
        return None

    # ------------------------------------------------------------ encoding

    def to_map(self) -> dict:
        fields = {
            K_V: FORMAT_VERSION,
            K_DEV: self.dev,
            K_SEQ: self.seq,
            K_PREV: self.prev,
            K_T0: self.t0,
            K_T1: self.t1,
            K_CLK: self.clk,
            K_CH: [list(c) for c in self.channels],
            K_FLAGS: self.flags,
            K_FW: self.fw,
        }  # type: dict[int, object]
        if self.energies is not None:
            fields[K_E] = self.energies
            fields[K_GS] = self.generator_self
        if self.smart_meter is not None:
            fields[K_SM] = list(self.smart_meter)
        return fields

    def to_payload(self) -> bytes:
        """The deterministic CBOR payload; raises MisuseError if invalid."""
        problem = self.schema_problem()
        if problem:
            raise MisuseError("invalid reading: " + problem)
        return cbor.dumps(self.to_map())

    def sign(self, key: SigningKey) -> bytes:
        """The COSE_Sign1 bytes of this reading, signed by ``key``."""
        return sign1(self.to_payload(), key)

    # ------------------------------------------------------------ parsing

    @classmethod
    def from_map(cls, fields: dict) -> "Reading":
        """The reading of a decoded payload map, unchecked: see from_payload for the checks."""
        return cls(
            fields[K_DEV],
            fields[K_SEQ],
            fields[K_PREV],
            fields[K_T0],
            fields[K_T1],
            fields[K_CLK],
            [tuple(c) for c in fields[K_CH]],
            fields.get(K_E),
            fields.get(K_GS),
            fields[K_FLAGS],
            fields[K_FW],
            fields.get(K_SM),
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> "Reading":
        """(5) NON_CANONICAL or BAD_SCHEMA unless ``payload`` is a valid reading."""
        try:
            fields = cbor.loads(payload)
        except CborError as err:
            raise ReadingError(NON_CANONICAL if err.canonical else BAD_SCHEMA, "payload: " + str(err))
        if not isinstance(fields, dict):
            raise ReadingError(BAD_SCHEMA, "payload is not a map")
        for key in _REQUIRED_KEYS:
            if key not in fields:
                raise ReadingError(BAD_SCHEMA, "payload lacks key %d" % key)
        for key in fields:
            if key > K_SM:
                raise ReadingError(BAD_SCHEMA, "payload has unknown key %d" % key)
        if fields[K_V] != FORMAT_VERSION or isinstance(fields[K_V], bool):
            raise ReadingError(BAD_SCHEMA, "format version %r is not 1" % (fields[K_V],))
        raw_channels = fields[K_CH]
        if not isinstance(raw_channels, list) or not all(isinstance(c, list) for c in raw_channels):
            raise ReadingError(BAD_SCHEMA, "ch must be an array of arrays")
        reading = cls.from_map(fields)
        problem = reading.schema_problem()
        if problem:
            raise ReadingError(BAD_SCHEMA, problem)
        return reading

    @classmethod
    def from_cose(cls, raw: bytes) -> "Reading":
        """Parse a COSE_Sign1 reading: SPEC §5 steps (1), (2) and (5).

        The signature is not checked here; see ``verify_reading``.
        """
        envelope = Sign1.from_bytes(raw)
        reading = cls.from_payload(envelope.payload)
        reading.cose = envelope
        return reading

    def describe(self) -> dict:
        """A JSON-ready view with field names, for people and tools."""
        view = {
            "v": FORMAT_VERSION,
            "dev": self.dev,
            "seq": self.seq,
            "prev": self.prev.hex(),
            "t0": self.t0,
            "t1": self.t1,
            "clk": self.clk,
            "channels": [
                {
                    "role": ("generation", "import", "export")[c[0]],
                    "meter_id": c[1],
                    "source": dgcc.SOURCE_NAMES[c[2]],
                    "counter_mwh": c[3],
                }
                for c in self.channels
            ],
            "flags": self.flags,
            "flag_names": dgcc.flag_names(self.flags),
            "fw": self.fw,
        }  # type: dict[str, object]
        if self.energies is not None and self.generator_self is not None:
            g, i, e, s, d = self.energies
            view["energies_mwh"] = {"generation": g, "import": i, "export": e, "self": s, "demand": d}
            view["generator_self_mwh"] = [{"meter_id": m, "self": v} for m, v in self.generator_self]
        if self.smart_meter is not None:
            meter_id, t, imported, exported = self.smart_meter
            view["smart_meter"] = {"meter_id": meter_id, "t": t, "import_mwh": imported, "export_mwh": exported}
        return view


def verify_reading(raw: bytes, public_key: bytes, backend: str | None = None) -> Reading:
    """Parse and verify a reading against an enrolled key, in SPEC §5 order.

    (1) MALFORMED, (2) BAD_ALG, (4) BAD_SIGNATURE, (5) NON_CANONICAL or
    BAD_SCHEMA. Step (3), finding the key from the kid, is the caller's.
    Raises ReadingError with the reason code.
    """
    envelope = Sign1.from_bytes(raw)  # (1), (2)
    envelope.verify(public_key, backend)  # (4)
    reading = Reading.from_payload(envelope.payload)  # (5)
    reading.cose = envelope
    return reading


class ChainHead:
    """What a device remembers between readings (SPEC §3 seq and prev).

    Immutable: ``advance`` returns the head after a reading was committed.
    A head can always be rebuilt from the last committed reading alone, so
    an outbox that keeps that reading keeps the chain.
    """

    def __init__(
        self,
        next_seq: int = 0,
        prev_hash: bytes = ZERO_HASH,
        last_t1: int | None = None,
        last_channels: list | None = None,
    ) -> None:
        self.next_seq = next_seq
        self.prev_hash = prev_hash
        self.last_t1 = last_t1
        self.last_channels = last_channels

    @classmethod
    def after(cls, cose_bytes: bytes) -> "ChainHead":
        """The head that follows the committed reading ``cose_bytes``."""
        reading = Reading.from_cose(cose_bytes)
        return cls(reading.seq + 1, reading_hash(cose_bytes), reading.t1, reading.channels)

    def advance(self, reading: Reading, cose_bytes: bytes) -> "ChainHead":
        if reading.seq != self.next_seq:
            raise MisuseError("reading seq %d does not follow head %d" % (reading.seq, self.next_seq))
        return ChainHead(reading.seq + 1, reading_hash(cose_bytes), reading.t1, reading.channels)

    def next_reading(
        self,
        dev: str,
        t1: int,
        clk: int,
        channels: list,
        fw: str,
        adapter_flags: int = 0,
        t0: int | None = None,
        smart_meter: list | None = None,
    ) -> Reading:
        """Apply the DGC-C rules and build the next reading in the chain.

        ``t0`` is only used for the first reading of a chain, which has no
        previous t1; later readings always start where the last one ended,
        so an interval whose reads failed is covered by the next one.
        ``smart_meter`` is key 12 (SPEC §13): the smart meter's latest
        fixed-time values ``[meter_id, t, import_mWh, export_mWh]``, or None.
        """
        if adapter_flags & ~dgcc.ADAPTER_FLAGS:
            raise MisuseError("only METER_ERROR, CLOCK_STEP and RESTARTED come from the adapter")
        if self.last_t1 is not None:
            if t1 <= self.last_t1:
                raise MisuseError("t1 %d is not after the previous reading's t1 %d" % (t1, self.last_t1))
            t0 = self.last_t1
        elif t0 is None:
            raise MisuseError("the first reading of a chain needs t0")
        energies, generator_self, rule_flags = dgcc.apply_rules(self.last_channels, channels)
        reading = Reading(
            dev,
            self.next_seq,
            self.prev_hash,
            t0,
            t1,
            clk,
            list(channels),
            energies,
            generator_self,
            rule_flags | adapter_flags,
            fw,
            None if smart_meter is None else list(smart_meter),
        )
        problem = reading.schema_problem()
        if problem:
            raise MisuseError("invalid reading: " + problem)
        return reading


# The flags the DGC-C rules decide; the adapter's own flags are not recomputable.
RULE_FLAGS = dgcc.COUNTER_RESET | dgcc.NO_BASELINE | dgcc.EXPORT_EXCEEDS_GEN


def recompute_problem(previous_channels: list | None, reading: Reading) -> str | None:
    """SPEC §5 (9): None when e, gs and the rule flags follow from the counters.

    ``previous_channels`` are the channels of the reading at seq - 1, or None
    at seq 0, where the rules give NO_BASELINE.
    """
    energies, generator_self, flags = dgcc.apply_rules(previous_channels, reading.channels)
    if energies != reading.energies:
        return "e is %r; the counters give %r" % (reading.energies, energies)
    if generator_self != reading.generator_self:
        return "gs is %r; the counters give %r" % (reading.generator_self, generator_self)
    if flags != reading.flags & RULE_FLAGS:
        return "rule flags are %d; the counters give %d" % (reading.flags & RULE_FLAGS, flags)
    return None
