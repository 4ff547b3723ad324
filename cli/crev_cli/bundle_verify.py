"""``crev audit verify``: walk an evidence bundle from a file and check it offline.

The checks themselves are in the portable core (``crev.evidence``); this
module streams the file item by item, so memory stays bounded however many
readings the bundle holds, and spreads the reading checks over worker
processes. It opens no database and no socket.
"""

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import IO, Any

from crev import cbor, evidence
from crev.errors import CborError
from crev.evidence import FORMAT, Failure, ReadingChecks, SequenceChecks, Summary
from crev.keys import key_id

CHUNK = 1 << 20
MAX_ITEM = 4 << 20  # no reading, block or key event comes near this
BATCH = 256
MAX_LISTED_FAILURES = 100


class BundleFormatError(Exception):
    """The file is not an evidence bundle, or its structure is broken."""


class _BrokenReading(BundleFormatError):
    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position


class BundleReader:
    """Reads a bundle's items one at a time from a binary stream."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.buf = b""
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.eof = False

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _more(self) -> None:
        chunk = self.stream.read(CHUNK)
        if not chunk:
            self.eof = True
        self.buf = self.buf[self.pos :] + chunk
        self.base += self.pos
        self.pos = 0

    def _decode(self, head_only: bool) -> tuple[Any, ...]:
        while True:
            try:
                if head_only:
                    major, value, end = cbor.decode_head(self.buf, self.pos)
                    self.pos = end
                    return major, value
                item, end = cbor.load_prefix(self.buf, self.pos)
                self.pos = end
                return (item,)
            except CborError as err:
                incomplete = err.code in (cbor.TRUNCATED, cbor.LENGTH_EXCEEDS_INPUT)
                if incomplete and not self.eof and len(self.buf) - self.pos <= MAX_ITEM:
                    self._more()
                    continue
                if incomplete and self.eof:
                    raise BundleFormatError("the file ends inside an item at byte %d" % self.offset) from err
                raise BundleFormatError("byte %d: %s" % (self.offset, err)) from err

    def item(self) -> Any:
        return self._decode(False)[0]

    def array(self) -> int:
        """The length of the array that starts here; its elements follow."""
        major, length = self._decode(True)
        if major != 4:
            raise BundleFormatError("byte %d: expected an array" % self.offset)
        return int(length)

    def at_end(self) -> bool:
        if self.pos >= len(self.buf) and not self.eof:
            self._more()
        return self.pos >= len(self.buf) and self.eof


_worker_checks: ReadingChecks | None = None


def _init_worker(checks: ReadingChecks) -> None:
    global _worker_checks
    _worker_checks = checks


def _check_in_worker(first: int, items: list[Any], before: bytes | None) -> list[tuple[Failure | None, Any]]:
    assert _worker_checks is not None
    return _worker_checks.check_batch(first, items, before)


class FailureLog:
    """Every failure found, the first ones listed in full."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []
        self.failure_count = 0

    def fail(self, failure: Failure | None) -> None:
        if failure is None:
            return
        self.failure_count += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(failure)

    def first_failure(self) -> Failure | None:
        return self.failures[0] if self.failures else None


def check_lines(checks: list[dict[str, Any]]) -> list[str]:
    """The report's "Checks" section, one dotted line per check."""
    lines = ["Checks"]
    for check in checks:
        status = check["status"]
        if status == "failed":
            status = "FAILED (%d)" % check["failures"]
        name = "%d %s " % (check["number"], check["name"])
        lines.append("  %s%s %s" % (name, "." * max(2, 44 - len(name)), status))
    return lines


class Verification(FailureLog):
    """Everything the report needs; filled in as the bundle is read."""

    def __init__(self, ledger_public_key: bytes, allow_gaps: bool) -> None:
        FailureLog.__init__(self)
        self.ledger_public_key = ledger_public_key
        self.allow_gaps = allow_gaps
        self.meta: dict[int, Any] = {}
        self.blocks: evidence.BlockChecks = evidence.BlockChecks(ledger_public_key)
        self.key_events = 0
        self.readings = 0
        self.sequence: SequenceChecks | None = None
        self.bytes = 0


def verify_bundle(stream: IO[bytes], ledger_public_key: bytes, allow_gaps: bool = False, jobs: int = 1) -> Verification:
    """Check a whole bundle; the result lists every failure found, first first."""
    result = Verification(ledger_public_key, allow_gaps)
    reader = BundleReader(stream)
    where = ("bundle", -1)
    try:
        if reader.array() != 6 or reader.item() != evidence.MAGIC:
            raise BundleFormatError("not a crev evidence bundle")
        version = reader.item()
        if version != evidence.VERSION:
            raise BundleFormatError("bundle version %r; this crev reads version %d" % (version, evidence.VERSION))
        meta = reader.item()
        problem = evidence.check_meta(meta, ledger_public_key)
        if problem is not None:
            result.fail(problem)
            return result
        result.meta = meta
        for position in range(reader.array()):
            where = ("block", position)
            result.fail(result.blocks.add(position, reader.item()))
        where = ("bundle", -1)
        if result.failure_count == 0:
            result.fail(
                evidence.checkpoint_failure(
                    meta[evidence.M_CHECKPOINT], meta[evidence.M_ORIGIN], ledger_public_key, result.blocks
                )
            )
        keys = evidence.KeyHistory(ledger_public_key, meta[evidence.M_DEV])
        for position in range(reader.array()):
            where = ("key event", position)
            result.fail(keys.add(result.blocks.roots, position, reader.item()))
            result.key_events += 1
        result.sequence = SequenceChecks(meta[evidence.M_DEV], meta[evidence.M_FROM], meta[evidence.M_TO], allow_gaps)
        count = reader.array()
        where = ("reading", 0)
        for position, outcome in _check_readings(reader, count, ReadingChecks(result.blocks.roots, keys), jobs):
            where = ("reading", position)
            failure, summary = outcome
            result.readings += 1
            if failure is not None and failure.seq is None and result.sequence.last is not None:
                failure.expected_seq = result.sequence.last.seq + 1
            result.fail(failure)
            if summary is not None:
                result.fail(result.sequence.add(position, summary))
        where = ("bundle", -1)
        if not reader.at_end():
            raise BundleFormatError("bytes after the bundle's last item, at byte %d" % reader.offset)
    except _BrokenReading as err:
        result.fail(Failure(FORMAT, "reading", err.position, str(err)))
    except BundleFormatError as err:
        result.fail(Failure(FORMAT, where[0], where[1], str(err)))
    result.bytes = reader.offset
    return result


def _batches(
    reader: BundleReader, count: int, broken: list[_BrokenReading]
) -> Iterator[tuple[int, list[Any], bytes | None]]:
    """Batches of reading items; a structural error ends them and is left in ``broken``."""
    before: bytes | None = None
    position = 0
    while position < count:
        items = []
        for _ in range(min(BATCH, count - position)):
            try:
                items.append(reader.item())
            except BundleFormatError as err:
                broken.append(_BrokenReading(position + len(items), str(err)))
                break
        if items:
            yield position, items, before
        if broken:
            return
        before = items[-1] if isinstance(items[-1], bytes) else None
        position += len(items)


def _check_readings(
    reader: BundleReader, count: int, checks: ReadingChecks, jobs: int
) -> Iterator[tuple[int, tuple[Failure | None, Summary | None]]]:
    """Per reading, in bundle order: (position, (failure, summary)).

    A structural error is raised only after every reading before it is
    yielded, so the first failure reported is the first in the bundle.
    """
    broken: list[_BrokenReading] = []
    if jobs <= 1 or count <= 2 * BATCH:
        for first, items, before in _batches(reader, count, broken):
            for offset, outcome in enumerate(checks.check_batch(first, items, before)):
                yield first + offset, outcome
        if broken:
            raise broken[0]
        return
    # Worker processes check batches in parallel; results are consumed in
    # order, with a bounded number in flight so memory stays flat.
    with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker, initargs=(checks,)) as pool:
        pending: deque[tuple[int, Future[list[tuple[Failure | None, Any]]]]] = deque()
        for first, items, before in _batches(reader, count, broken):
            pending.append((first, pool.submit(_check_in_worker, first, items, before)))
            if len(pending) >= 2 * jobs:
                yield from _drain_one(pending)
        while pending:
            yield from _drain_one(pending)
    if broken:
        raise broken[0]


def _drain_one(
    pending: "deque[tuple[int, Future[list[tuple[Failure | None, Any]]]]]",
) -> Iterator[tuple[int, tuple[Failure | None, Summary | None]]]:
    first, future = pending.popleft()
    for offset, outcome in enumerate(future.result()):
        yield first + offset, outcome


def default_jobs() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def parse_ledger_key(text: str) -> bytes:
    """The ledger's public key: 64 hex digits, or a file holding them. Raises ValueError."""
    candidate = text.strip()
    if len(candidate) != 64 and os.path.exists(candidate):
        with open(candidate, encoding="ascii", errors="replace") as handle:
            candidate = handle.read().strip()
    try:
        key = bytes.fromhex(candidate)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(
            "--ledger-key must be the ledger's public key as 64 hex digits (printed by `crev ingest init`), "
            "or a file holding them"
        )
    return key


def ledger_kid(key: bytes) -> str:
    return key_id(key).hex()
