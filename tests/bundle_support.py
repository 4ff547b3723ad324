"""Ledgers made to order for evidence-bundle tests, and bundle surgery."""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest

from crev import cbor
from crev.keys import SigningKey
from crev.ledger_format import LEAF_READING
from crev.reading import Reading
from crev_cli.bundle_verify import Verification, verify_bundle
from crev_ingest.export import ExportRequest, ExportSummary, export_bundle

ORIGIN = "crev.test/ledger"
DEV = "dgc-audit-0001"
START = NOW - 7200  # the first reading of DEV ends at START + 60


@dataclass
class AuditLedger:
    ingest: LocalIngest
    device: Device
    other: Device

    def seal(self) -> None:
        with self.ingest.store.transaction():
            if self.ingest.ledger.size > self.ingest.ledger.sealed_size:
                self.ingest.ledger.seal(NOW * 1000)

    def send(self, count: int) -> None:
        """``count`` readings of DEV, each followed by one of another device."""
        for _ in range(count):
            assert self.ingest.send(self.device.next()).status == "accepted"
            assert self.ingest.send(self.other.next()).status == "accepted"

    def append_unchecked(self, cose: bytes) -> None:
        """Record a reading the way a misbehaving ingest would: no validation."""
        reading = Reading.from_cose(cose)
        with self.ingest.store.transaction():
            leaf = self.ingest.ledger.append(LEAF_READING, NOW * 1000, cose)
            self.ingest.store.add_reading(reading.dev, reading.seq, reading.t0, reading.t1, leaf, cose)

    def export(self, out: Path, from_s: int = START, to_s: int = NOW, dev: str = DEV, group: int = 4) -> ExportSummary:
        """Small proof groups, so even a short bundle lists several blocks."""
        request = ExportRequest(dev, from_s, to_s, out, ORIGIN, LEDGER_KEY.public_key, 423.0, NOW * 1000, group)
        return export_bundle(self.ingest.store, request)


def make_ledger(directory: Path, readings: int = 30, start: int = START, location: str | None = None) -> AuditLedger:
    """DEV and another device, ``readings`` each, sealed: in ``directory``/crev.sqlite or at ``location``."""
    ingest = LocalIngest(directory, location)
    device = Device(DEV, SigningKey(bytes([71]) * 32), t1=start)
    other = Device("dgc-audit-0002", SigningKey(bytes([72]) * 32), t1=start)
    ingest.enroll(device)
    ingest.enroll(other)
    ledger = AuditLedger(ingest, device, other)
    ledger.send(readings)
    ledger.seal()
    return ledger


def verify(data: bytes, allow_gaps: bool = False, jobs: int = 1, key: bytes | None = None) -> Verification:
    return verify_bundle(io.BytesIO(data), key or LEDGER_KEY.public_key, allow_gaps, jobs)


def parts(data: bytes) -> list[Any]:
    """The bundle as one decoded value, readings unwrapped (fine for the small bundles of tests)."""
    value = cbor.loads(data)
    assert isinstance(value, list) and len(value) == 6
    value[5] = [cbor.loads(raw) for raw in value[5]]
    return value


def pack(value: list[Any]) -> bytes:
    """The inverse of parts(): each reading goes back into its byte string."""
    return cbor.dumps([*value[:5], [cbor.dumps(reading) for reading in value[5]]])


def first(result: Verification) -> tuple[int, str, int]:
    failure = result.first_failure()
    assert failure is not None, "the bundle verified"
    return failure.check, failure.item, failure.position
