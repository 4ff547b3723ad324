"""An in-process ingest over a real SQLite file (or a PostgreSQL database), and readings made to order."""

import time
from dataclasses import dataclass, field
from pathlib import Path

from crev import cbor
from crev.cose import sig_structure
from crev.keys import SigningKey
from crev.reading import ChainHead, Reading
from crev_ingest.config import parse
from crev_ingest.ledger import ACTION_ENROL, ACTION_REVOKE, Ledger
from crev_ingest.store import Store
from crev_ingest.validate import Ingestor, Outcome

LEDGER_KEY = SigningKey(bytes([9]) * 32)
NOW = int(time.time()) // 60 * 60


@dataclass
class Device:
    dev: str
    key: SigningKey
    head: ChainHead = field(default_factory=ChainHead)
    counters: list[int] = field(default_factory=lambda: [1_000_000, 500_000, 200_000])
    t1: int = NOW - 3600

    def channels(self) -> list[tuple[int, str, int, int]]:
        g, i, e = self.counters
        return [(0, "PV-" + self.dev, 1, g), (1, "G-" + self.dev, 0, i), (2, "G-" + self.dev, 0, e)]

    def next(self, gen: int = 50_000, imp: int = 10_000, exp: int = 20_000, advance: bool = True) -> bytes:
        """Sign the next reading; ``advance`` commits it to the device's chain."""
        counters = [self.counters[0] + gen, self.counters[1] + imp, self.counters[2] + exp]
        saved, self.counters = self.counters, counters
        t1 = self.t1 + 60
        reading = self.head.next_reading(self.dev, t1, 1, self.channels(), "crev-test/1", t0=t1 - 60)
        cose = reading.sign(self.key)
        if advance:
            self.head = self.head.advance(reading, cose)
            self.t1 = t1
        else:
            self.counters = saved
        return cose


def resign(fields: dict[int, object], key: SigningKey, payload: bytes | None = None) -> bytes:
    """A COSE_Sign1 over arbitrary payload bytes (for hostile cases)."""
    protected = cbor.dumps({1: -8, 4: key.kid})
    body = cbor.dumps(fields) if payload is None else payload
    return cbor.dumps(cbor.Tag(18, [protected, {}, body, key.sign(sig_structure(protected, body))]))


class LocalIngest:
    def __init__(self, path: Path, location: str | None = None) -> None:
        """The store is ``path``/crev.sqlite, or the PostgreSQL database at ``location``."""
        self.config = parse({"ledger": {"origin": "crev.test/ledger", "block_max_leaves": 8}}, path / "ingest.toml")
        self.store = Store(location or path / "crev.sqlite")
        self.ledger = Ledger(self.store, LEDGER_KEY, "crev.test/ledger", 3600, 8)
        self.ingestor = Ingestor(self.store, self.ledger, self.config)

    def enroll(self, device: Device) -> None:
        self._key_event(ACTION_ENROL, device.dev, device.key.public_key, NOW - 86400)

    def revoke(self, device: Device, when: int) -> None:
        self._key_event(ACTION_REVOKE, device.dev, device.key.public_key, when)

    def _key_event(self, action: int, dev: str, public_key: bytes, when: int) -> None:
        self.store.begin()
        self.ledger.key_event(action, dev, public_key, when, when * 1000)
        self.store.commit()

    def send(self, raw: bytes, dev: str | None = None, topic: str | None = None) -> Outcome:
        if topic is None:
            topic = "crev/v1/%s/reading" % (dev or Reading.from_cose(raw).dev)
        self.store.begin()
        outcome = self.ingestor.process(topic, raw, NOW * 1000)
        if self.ledger.due():
            self.ledger.seal(NOW * 1000)
        self.store.commit()
        return outcome
