"""Ledgers made to order for evidence-bundle tests, and bundle surgery."""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest

from crev import cbor, evidence, merkle
from crev.keys import SigningKey
from crev.ledger_format import B_SIZE, LEAF_READING, encode_leaf
from crev.reading import Reading
from crev_cli.bundle_verify import Verification, pack_readings, unpack_readings, verify_bundle
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
    """The bundle as one decoded value (fine for the small bundles of tests).

    ``[5]`` is the readings, unpacked from their proof groups and unwrapped,
    in bundle order; ``[6]`` is the groups' (height, count), and every tree
    node their proofs show, so that pack() can prove a changed list again.
    """
    value = cbor.loads(data)
    assert isinstance(value, list) and len(value) == 6 and value[1] == evidence.VERSION
    sizes = {block[0]: cbor.loads(cbor.loads(block[1]).value[2])[B_SIZE] for block in value[3]}  # type: ignore[attr-defined,index]
    readings: list[Any] = []
    known: dict[tuple[int, int, int], bytes] = {}
    heights = []
    for height, nodes, count, packed in value[5]:
        group: list[Any] = [cbor.loads(raw) for raw in unpack_readings(packed, count)]
        leaves = {r[0]: merkle.leaf_hash(encode_leaf(LEAF_READING, r[1], r[2])) for r in group}
        _walk(sorted(leaves), leaves, 0, sizes[height], sizes[height], nodes, [0], known)
        readings.extend(group)
        heights.append((height, count))
    value[5] = readings
    value.append({"groups": heights, "known": known, "sizes": sizes})
    return value


def _walk(
    indices: list[int],
    leaves: dict[int, bytes],
    start: int,
    end: int,
    size: int,
    nodes: bytes,
    at: list[int],
    known: dict[tuple[int, int, int], bytes],
) -> bytes:
    """Every node of a multi-proof's walk, keyed (tree size or 0 if complete, start, end)."""
    inside = [i for i in indices if start <= i < end]
    complete = (end - start) & (end - start - 1) == 0 and start % (end - start) == 0
    if not inside:
        found = nodes[at[0] : at[0] + 32]
        at[0] += 32
    elif end - start == 1:
        found = leaves[start]
    else:
        k = 1
        while k << 1 < end - start:
            k <<= 1
        left = _walk(inside, leaves, start, start + k, size, nodes, at, known)
        found = merkle.node_hash(left, _walk(inside, leaves, start + k, end, size, nodes, at, known))
    known[(0 if complete else size, start, end)] = found
    return found


def pack(value: list[Any]) -> bytes:
    """The inverse of parts(): the readings regrouped as the groups were, each group proven anew."""
    readings = value[5]
    info = value[6]
    known = info["known"]
    groups = []
    at = 0
    for number, (height, count) in enumerate(info["groups"]):
        if number == len(info["groups"]) - 1:
            count = len(readings) - at
        chunk = readings[at : at + count]
        at += len(chunk)
        size = info["sizes"][height]

        def node(level: int, index: int, size: int = size) -> bytes:
            return bytes(known[(0, index << level, (index + 1) << level)])

        indices = sorted({r[0] for r in chunk if r[0] < size})
        nodes = b"".join(_proof(indices, 0, size, size, known)) if indices else b""
        del node
        groups.append([height, nodes, len(chunk), pack_readings([cbor.dumps(r) for r in chunk])])
    return cbor.dumps([*value[:5], groups])


def _proof(
    indices: list[int], start: int, end: int, size: int, known: dict[tuple[int, int, int], bytes]
) -> list[bytes]:
    inside = [i for i in indices if start <= i < end]
    complete = (end - start) & (end - start - 1) == 0 and start % (end - start) == 0
    if not inside:
        return [known[(0 if complete else size, start, end)]]
    if end - start == 1:
        return []
    k = 1
    while k << 1 < end - start:
        k <<= 1
    return _proof(inside, start, start + k, size, known) + _proof(inside, start + k, end, size, known)


def first(result: Verification) -> tuple[int, str, int]:
    failure = result.first_failure()
    assert failure is not None, "the bundle verified"
    return failure.check, failure.item, failure.position
