"""Validation of one received reading, in SPEC §5 order, and what to store.

    (1) MALFORMED          not a COSE_Sign1 (or larger than MAX_MESSAGE)
    (2) BAD_ALG            not EdDSA (-8) or Ed25519 (-19)
    (3) UNKNOWN_KEY / REVOKED_KEY
    (4) BAD_SIGNATURE
    (5) NON_CANONICAL / BAD_SCHEMA
    (6) DEVICE_MISMATCH    topic, payload and key must name one device
    (7) DUPLICATE (acknowledged, counted, not stored again) / CONFLICT (alarm);
        seq gaps opened and closed; prev must link to stored neighbours
    (8) FUTURE_TIMESTAMP   t1 more than max_future_s ahead of our clock
    (9) MISMATCH_RECOMPUTE e and gs recomputed from the counters differ

Everything that fails is kept in quarantine with its raw bytes and reason.
The caller holds the transaction; nothing here commits.
"""

import json
from dataclasses import dataclass

from crev.cose import Sign1
from crev.errors import ReadingError
from crev.reading import Reading, reading_hash, recompute_problem, valid_device_id
from crev.registry_format import generation_entries
from crev_ingest.config import IngestConfig
from crev_ingest.ledger import ACTION_ENROL, ACTION_REVOKE, LEAF_READING, Ledger
from crev_ingest.store import ChainHead, Store

MAX_MESSAGE = 16384
# Accepted readings kept decoded for their neighbours' chain checks: two intervals of a 50,000-device fleet.
RECENT_READINGS = 100_000

try:  # cbor2's C decoder, checked against the core's encoder, for the readings' hot path
    from crev_ingest import fastcbor
except ImportError:  # crev[ingest] installs cbor2; without it the pure decoder does all
    pass
else:
    fastcbor.install()


@dataclass
class Outcome:
    status: str  # accepted | duplicate | quarantined
    reason: str | None = None
    detail: str = ""
    dev: str | None = None
    seq: int | None = None
    reading: Reading | None = None


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def generation_json(reading: Reading) -> str:
    """The readings row's gs column: ``[[meter_id, source, self_mwh], ...]``, or null without energies."""
    return json.dumps(generation_entries(reading))


def topic_device(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "crev" and parts[1] == "v1" and parts[3] == "reading":
        return parts[2]
    return None


class Ingestor:
    def __init__(self, store: Store, ledger: Ledger, config: IngestConfig) -> None:
        self.store = store
        self.ledger = ledger
        self.config = config
        # Readings this process accepted lately, by (dev, seq), so that a neighbour's chain check
        # need not decode them again. Checked against the stored bytes before use: other
        # workers write to the same store.
        self._recent: dict[tuple[str, int], tuple[bytes, Reading]] = {}
        # kid -> its key events, while the store's newest key event stays the one seen by
        # refresh_keys (they are append-only). None: not refreshed, so look each one up.
        self._keys: dict[bytes, list[tuple[int, str, bytes, int]]] | None = None
        self._keys_mark: int | None = None

    def refresh_keys(self) -> None:
        """Before a run of check_message calls: keep the enrolled keys read so far, unless one was added."""
        mark = self.store.key_event_mark()
        if self._keys is None or mark != self._keys_mark:
            self._keys, self._keys_mark = {}, mark

    def _key_for(self, envelope: Sign1) -> tuple[str, bytes, int | None]:
        """(3): the device, key and revocation time (or None) enrolled under this kid."""
        current: tuple[str, bytes, int | None] | None = None
        keys = self._keys
        events = None if keys is None else keys.get(envelope.kid)
        if events is None:
            events = self.store.key_events_for_kid(envelope.kid)
            if keys is not None:
                keys[envelope.kid] = events
        for action, dev, pubkey, when in events:
            if action == ACTION_ENROL:
                current = (dev, pubkey, None)
            elif action == ACTION_REVOKE and current is not None and current[1] == pubkey:
                current = (current[0], current[1], when)
        if current is None:
            raise Rejected("UNKNOWN_KEY", "kid %s is not enrolled" % envelope.kid.hex())
        return current

    def check_message(self, topic: str, raw: bytes) -> Reading:
        """Steps (1)-(6): what needs no write lock. Raises Rejected.

        Run outside the write transaction, so several workers verify
        signatures in parallel; only the registry is read.
        """
        if len(raw) > MAX_MESSAGE:
            raise Rejected("MALFORMED", "%d bytes is larger than %d" % (len(raw), MAX_MESSAGE))
        try:
            envelope = Sign1.from_bytes(raw)  # (1), (2)
        except ReadingError as err:
            raise Rejected(err.code, err.detail) from err
        key_dev, public_key, revoked_at = self._key_for(envelope)  # (3)
        try:
            envelope.verify(public_key)  # (4)
            reading = Reading.from_payload(envelope.payload)  # (5)
        except ReadingError as err:
            if revoked_at is not None:
                raise Rejected("REVOKED_KEY", "the key of %s was revoked at %d" % (key_dev, revoked_at)) from err
            raise Rejected(err.code, err.detail) from err
        if revoked_at is not None and reading.t1 >= revoked_at:  # (3) needs the signed t1
            raise Rejected("REVOKED_KEY", "the key of %s was revoked at %d" % (key_dev, revoked_at))
        reading.cose = envelope
        dev = topic_device(topic)  # (6)
        if dev != reading.dev or reading.dev != key_dev:
            raise Rejected("DEVICE_MISMATCH", "topic %s, payload %s, key %s" % (dev, reading.dev, key_dev))
        return reading

    def _stored(self, dev: str, seq: int) -> tuple[bytes, Reading] | None:
        raw = self.store.reading(dev, seq)
        if raw is None:
            return None
        cached = self._recent.get((dev, seq))
        if cached is not None and cached[0] == raw:
            return cached
        return raw, Reading.from_cose(raw)

    def _remember(self, raw: bytes, reading: Reading) -> None:
        recent = self._recent
        if len(recent) >= RECENT_READINGS:
            del recent[next(iter(recent))]  # the oldest: dicts keep insertion order
        recent[(reading.dev, reading.seq)] = (raw, reading)

    def check_chain(self, reading: Reading, raw: bytes, now_s: int) -> Outcome | None:
        """Steps (7)-(9), inside the write transaction. Raises Rejected."""
        head = self.store.chain_head(reading.dev)
        if head is None:
            # The device's first stored reading: nothing to duplicate, link to or count from.
            self._check_time(reading, now_s)
            return None
        if reading.seq == head.seq + 1:
            # The common case: it extends its chain, so nothing is stored at its seq or after it,
            # and the head says what it must link to and count from.
            if reading.prev != head.hash:
                raise Rejected("CONFLICT", "prev does not link to the stored seq %d" % head.seq)
            self._check_time(reading, now_s)
            problem = recompute_problem(head.channels, reading)
            if problem is not None:
                raise Rejected("MISMATCH_RECOMPUTE", "%s (from the counters of seq %d)" % (problem, head.seq))
            return None
        stored = self.store.reading(reading.dev, reading.seq)  # (7)
        if stored is not None:
            if stored == raw:
                return Outcome("duplicate", "DUPLICATE", "", reading.dev, reading.seq)
            raise Rejected("CONFLICT", "a different reading is stored as %s seq %d" % (reading.dev, reading.seq))
        before = self._stored(reading.dev, reading.seq - 1) if reading.seq > 0 else None
        if before is not None and reading.prev != reading_hash(before[0]):
            raise Rejected("CONFLICT", "prev does not link to the stored seq %d" % (reading.seq - 1))
        after = self._stored(reading.dev, reading.seq + 1)
        if after is not None and after[1].prev != reading_hash(raw):
            raise Rejected("CONFLICT", "the stored seq %d does not link to this reading" % (reading.seq + 1))
        self._check_time(reading, now_s)
        if before is not None:  # (9)
            problem = recompute_problem(before[1].channels, reading)
            if problem is not None:
                raise Rejected("MISMATCH_RECOMPUTE", "%s (from the counters of seq %d)" % (problem, before[1].seq))
        return None

    def _check_time(self, reading: Reading, now_s: int) -> None:
        if reading.t1 > now_s + self.config.max_future_s:  # (8)
            raise Rejected("FUTURE_TIMESTAMP", "t1 %d is %d s ahead" % (reading.t1, reading.t1 - now_s))

    def quarantine(self, topic: str, raw: bytes, received_ms: int, rejected: Rejected) -> Outcome:
        self.store.quarantine(received_ms, topic, rejected.reason, rejected.detail, raw)
        self.store.bump("quarantined")
        dev = topic_device(topic)
        if dev is not None and valid_device_id(dev):
            self.store.note_quarantined(dev, self.config.site_of(dev))
        if rejected.reason == "CONFLICT":
            self.store.alarm(received_ms, "CONFLICT", topic_device(topic) or "?", rejected.detail)
        return Outcome("quarantined", rejected.reason, rejected.detail, topic_device(topic))

    def store_checked(self, topic: str, raw: bytes, received_ms: int, checked: "Reading | Rejected") -> Outcome:
        """Finish a message, given what check_message made of it (inside the transaction)."""
        if isinstance(checked, Rejected):
            return self.quarantine(topic, raw, received_ms, checked)
        try:
            duplicate = self.check_chain(checked, raw, received_ms // 1000)
        except Rejected as rejected:
            return self.quarantine(topic, raw, received_ms, rejected)
        if duplicate is not None:
            self.store.bump("duplicates")
            return duplicate
        self._store_reading(checked, raw, received_ms)
        self._remember(raw, checked)
        return Outcome("accepted", None, "", checked.dev, checked.seq, checked)

    def process(self, topic: str, raw: bytes, received_ms: int) -> Outcome:
        """Validate and store one message (inside the caller's transaction)."""
        self.refresh_keys()
        try:
            checked: Reading | Rejected = self.check_message(topic, raw)
        except Rejected as rejected:
            checked = rejected
        return self.store_checked(topic, raw, received_ms, checked)

    def _store_reading(self, reading: Reading, raw: bytes, received_ms: int) -> None:
        dev = reading.dev
        highest = self.store.max_seq(dev)
        leaf = self.ledger.append(LEAF_READING, received_ms, raw)
        self.store.add_reading(dev, reading.seq, reading.t0, reading.t1, leaf, raw, generation_json(reading))
        if highest is None or reading.seq > highest:
            self.store.advance_head(dev, ChainHead(reading.seq, reading_hash(raw), reading.channels))
        if highest is None:
            if reading.seq > 0:
                self.store.open_gap(dev, 0, reading.seq - 1, received_ms)
        elif reading.seq > highest + 1:
            self.store.open_gap(dev, highest + 1, reading.seq - 1, received_ms)
        elif reading.seq < highest:
            self.store.fill_gap(dev, reading.seq, received_ms)
        site = self.config.site_of(dev)
        self.store.note_reading(dev, site, reading.t1, received_ms)
        g = s = 0
        co2 = 0.0
        if reading.energies is not None:
            g, i, e, s, d = reading.energies
            co2 = s * self.config.factor_for(dev) / 1e6
            self.store.add_series((dev, reading.seq, reading.t1, site, g, i, e, s, d, co2))
        self.store.note_daily(dev, self.config.local_day(reading.t1), s, g, co2, reading.flags)
        self.store.bump("accepted")
