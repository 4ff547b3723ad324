"""The readings of a whole ledger, checked leaf by leaf in ledger order, without I/O.

A mirror's audit (``crev audit ledger --mirror``) has the leaves alone, not
ingest's rows, so it checks what ingest checked when it took each reading
(SPEC §5), from the ledger's own key events:

- a key event is signed by the ledger key;
- a reading is a COSE_Sign1 of the reading schema, signed by a key enrolled
  for its device in an earlier leaf and not revoked at its t1;
- a (dev, seq) is in the ledger once;
- where the reading at seq - 1 is in the ledger (whichever came first: late
  backfill puts an older reading after a newer one), prev is its hash and
  e, gs and the rule flags follow from the two readings' counters; at seq 0
  they follow from the counters alone.

A missing seq is a gap, counted, not a failure: ingest records gaps too.
Failures are ReplayErrors naming the leaf, as the registry replay's are.
"""

from crev.cose import Sign1
from crev.errors import CrevError
from crev.evidence import KeyHistory
from crev.ledger_format import LedgerFormatError, parse_key_event
from crev.reading import Reading, reading_hash, recompute_problem
from crev.registry_format import generation_entries
from crev.registry_replay import SCHEMA, SIGNATURE, STATE, ReplayError


class LedgerReadings:
    def __init__(self, ledger_key: bytes) -> None:
        self.ledger_key = ledger_key
        self.keys = {}  # type: dict[str, KeyHistory]
        # (dev, seq) -> (leaf, own hash, channels) of every reading seen
        self.seen = {}  # type: dict[tuple, tuple]
        # (dev, seq) -> (leaf, Reading) of readings whose seq - 1 has not come yet
        self.waiting = {}  # type: dict[tuple, tuple]
        # leaf -> (dev, t1, generation entries): what the registry replay asks of a reading
        self.summaries = {}  # type: dict[int, tuple]
        self.readings = 0

    def key_event(self, leaf: int, data: bytes) -> None:
        try:
            action, dev, pubkey, when = parse_key_event(data, self.ledger_key)
        except LedgerFormatError as err:
            raise ReplayError(leaf, "key event", err.detail, SIGNATURE)
        history = self.keys.get(dev)
        if history is None:
            history = KeyHistory(self.ledger_key, dev)
            self.keys[dev] = history
        history.record(leaf, action, pubkey, when)

    def reading(self, leaf: int, cose: bytes) -> None:
        try:
            envelope = Sign1.from_bytes(cose)
            reading = Reading.from_payload(envelope.payload)
        except CrevError as err:
            raise ReplayError(leaf, "reading", "not a signed reading: %s" % err, SCHEMA)
        what = "reading %s seq %d" % (reading.dev, reading.seq)
        history = self.keys.get(reading.dev)
        public_key = history.key_for(envelope.kid) if history is not None else None
        if history is None or public_key is None:
            raise ReplayError(
                leaf, what, "key %s is not enrolled for %s" % (envelope.kid.hex(), reading.dev), SIGNATURE
            )
        try:
            envelope.verify(public_key)
        except CrevError as err:
            raise ReplayError(leaf, what, err.detail, SIGNATURE)
        problem = history.validity_problem(envelope.kid, leaf, reading.t1)
        if problem is not None:
            raise ReplayError(leaf, what, problem, SIGNATURE)
        here = (reading.dev, reading.seq)
        if here in self.seen:
            raise ReplayError(leaf, what, "the same seq is at leaf %d too" % self.seen[here][0], STATE)
        own_hash = reading_hash(cose)
        self.seen[here] = (leaf, own_hash, reading.channels)
        self.summaries[leaf] = (reading.dev, reading.t1, generation_entries(reading))
        self.readings += 1
        self._link(leaf, what, reading)
        following = self.waiting.pop((reading.dev, reading.seq + 1), None)
        if following is not None:
            later_leaf, later = following
            self._link(later_leaf, "reading %s seq %d" % (later.dev, later.seq), later)

    def _link(self, leaf: int, what: str, reading: Reading) -> None:
        """Check prev and the DGC-C values against seq - 1, or wait for it."""
        if reading.seq == 0:
            before = None
        else:
            previous = self.seen.get((reading.dev, reading.seq - 1))
            if previous is None:
                self.waiting[(reading.dev, reading.seq)] = (leaf, reading)
                return
            if reading.prev != previous[1]:
                raise ReplayError(leaf, what, "prev does not link to seq %d (leaf %d)" % (reading.seq - 1, previous[0]))
            before = previous[2]
        problem = recompute_problem(before, reading)
        if problem is not None:
            raise ReplayError(leaf, what, problem, STATE)

    def lookup(self, leaf: int) -> "tuple | None":
        """For RegistryReplay: ``(dev, t1, generation entries)`` of the reading at ``leaf``, or None."""
        return self.summaries.get(leaf)

    def gaps(self) -> int:
        """Readings whose seq - 1 is not in the ledger: each is the end of a gap."""
        return len(self.waiting)
