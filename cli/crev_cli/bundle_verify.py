"""``crev audit verify``: walk an evidence bundle from a file and check it offline.

The checks themselves are in the portable core (``crev.evidence``); this
module streams the file item by item, so memory stays bounded however many
readings the bundle holds, and spreads the reading checks over worker
processes. It opens no database and no socket.
"""

import itertools
import os
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import IO, Any

from crev import cbor, evidence, reconcile
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
        self.version = 0
        self.registry: evidence.RegistryItems | None = None  # version 3's registry section
        self.reconciliation: evidence.Reconciliation | None = None
        # Where each reconciliation parameter came from: "bundle" (stated by the exporter), "default", "option".
        self.params_from: dict[str, str] = {}


PARAM_NAMES = ("basis_points", "steps", "step_mwh", "digits")


def reconciliation_params(
    meta: dict[int, Any], version: int, given: dict[str, int | None] | None
) -> tuple[reconcile.Params, dict[str, str]]:
    """The bundle's stated parameters (version 3) or ingest's defaults, each replaced where ``given``
    names it (``digits`` 0 or None: roll-over unknown); and where each came from."""
    stated = evidence.params_of(meta.get(evidence.M_RECONCILIATION)) if version >= 3 else None
    base = stated or reconcile.Params()
    values: dict[str, int] = {name: getattr(base, name) or 0 for name in PARAM_NAMES}
    source = {name: "bundle" if stated is not None else "default" for name in PARAM_NAMES}
    for name, value in (given or {}).items():
        if name not in values:
            raise ValueError("no reconciliation parameter %r" % name)
        values[name] = value or 0
        source[name] = "option"
    params = reconcile.Params(values["basis_points"], values["steps"], values["step_mwh"], values["digits"] or None)
    return params, source


def verify_bundle(
    stream: IO[bytes],
    ledger_public_key: bytes,
    allow_gaps: bool = False,
    jobs: int = 1,
    tolerance: dict[str, int | None] | None = None,
) -> Verification:
    """Check a whole bundle; the result lists every failure found, first first.

    ``tolerance`` replaces the reconciliation parameters the bundle states (or, before version 3,
    ingest's defaults): any of basis_points, steps, step_mwh and digits (crev.reconcile.Params).
    """
    result = Verification(ledger_public_key, allow_gaps)
    reader = BundleReader(stream)
    where = ("bundle", -1)
    try:
        length = reader.array()
        if length not in (6, 7) or reader.item() != evidence.MAGIC:
            raise BundleFormatError("not a crev evidence bundle")
        version = reader.item()
        if version not in evidence.VERSIONS:
            raise BundleFormatError(
                "bundle version %r; this crev reads versions %s and %d"
                % (version, ", ".join("%d" % v for v in evidence.VERSIONS[:-1]), evidence.VERSIONS[-1])
            )
        if length != evidence.sections(version):
            raise BundleFormatError(
                "a version %d bundle has %d sections, not %d" % (version, evidence.sections(version), length)
            )
        result.version = version
        meta = reader.item()
        problem = evidence.check_meta(meta, ledger_public_key, version)
        if problem is not None:
            result.fail(problem)
            return result
        result.meta = meta
        params, result.params_from = reconciliation_params(meta, version, tolerance)
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
        if version >= evidence.VERSION_RECONCILED:
            result.registry = evidence.RegistryItems(ledger_public_key, meta[evidence.M_DEV])
            for position in range(reader.array()):
                where = ("registry leaf", position)
                result.fail(result.registry.add(result.blocks.roots, position, reader.item()))
        result.sequence = SequenceChecks(meta[evidence.M_DEV], meta[evidence.M_FROM], meta[evidence.M_TO], allow_gaps)
        reconciling = evidence.Reconciliation(
            meta[evidence.M_DEV], meta[evidence.M_FROM], meta[evidence.M_TO], params, result.registry
        )
        result.reconciliation = reconciling
        checks = ReadingChecks(result.blocks.roots, keys)
        outcomes: Iterator[Outcome]
        if version == 1:
            outcomes = _check_readings(reader, reader.array(), checks, jobs)
        else:
            outcomes = _check_groups(reader, reader.array(), checks, jobs)
        where = ("reading", 0)
        for at, outcome in outcomes:
            failure, summary = outcome
            if isinstance(at, str):  # a proof group's own failure
                result.fail(failure)
                continue
            position = at
            where = ("reading", position)
            result.readings += 1
            if failure is not None and failure.seq is None and result.sequence.last is not None:
                failure.expected_seq = result.sequence.last.seq + 1
            result.fail(failure)
            if summary is not None:
                result.fail(result.sequence.add(position, summary))
                for held in reconciling.add(summary):
                    result.fail(held)
        where = ("bundle", -1)
        if not reader.at_end():
            raise BundleFormatError("bytes after the bundle's last item, at byte %d" % reader.offset)
        for held in reconciling.finish():
            result.fail(held)
    except _BrokenReading as err:
        item = "proof group" if isinstance(err, _BrokenGroup) else "reading"
        result.fail(Failure(FORMAT, item, err.position, str(err)))
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


# ---------------------------------------------------------------- version 2: proof groups


GroupTask = tuple[int, Any, Any, Any, int, Any]  # group position, height, nodes, count, first reading, packed
Outcome = tuple["int | str", tuple[Failure | None, Any]]
MAX_UNPACKED = 64 << 20  # a group of 1,024 readings unpacks to about 270 kB


def _read_groups(reader: BundleReader, count: int, broken: list[_BrokenReading]) -> Iterator[list[GroupTask]]:
    """Tasks of whole proof groups, about BATCH readings each; a structural error ends them, left in ``broken``."""
    task: list[GroupTask] = []
    in_task = 0
    position = 0
    for index in range(count):
        try:
            if reader.array() != 4:
                raise BundleFormatError("a proof group is [height, nodes, count, readings]")
            height = reader.item()
            nodes = reader.item()
            length = reader.item()
            packed = reader.item()
        except BundleFormatError as err:
            broken.append(_BrokenGroup(index, str(err)))
            break
        if not evidence._uint(length):
            broken.append(_BrokenGroup(index, "a proof group's reading count is an unsigned integer"))
            break
        task.append((index, height, nodes, length, position, packed))
        position += length
        in_task += length
        if in_task >= BATCH:
            yield task
            task, in_task = [], 0
    if task:
        yield task


class _BrokenGroup(_BrokenReading):
    pass


def unpack_readings(packed: object, count: int) -> list[bytes]:
    """A group's readings: the zlib stream (RFC 1950) of ``count`` byte strings, each holding one reading item."""
    if not isinstance(packed, bytes):
        raise ValueError("its readings are not a byte string")
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(packed, MAX_UNPACKED)
    except zlib.error as err:
        raise ValueError("its readings do not inflate (zlib): %s" % err) from err
    if inflater.unconsumed_tail:
        raise ValueError("its readings inflate to more than %d bytes" % MAX_UNPACKED)
    if not inflater.eof or inflater.unused_data:
        raise ValueError("its readings are not exactly one complete zlib stream")
    items: list[bytes] = []
    at = 0
    while at < len(data) and len(items) < count:
        try:
            major, length, start = cbor.decode_head(data, at)
        except CborError as err:
            raise ValueError("reading #%d of the group: %s" % (len(items), err)) from err
        if major != 2 or start + length > len(data):
            raise ValueError("reading #%d of the group is not a whole byte string" % len(items))
        items.append(data[start : start + length])
        at = start + length
    if len(items) != count or at != len(data):
        raise ValueError("its readings are not the %d byte strings it states" % count)
    return items


def pack_readings(items: list[bytes]) -> bytes:
    """The inverse of unpack_readings, for tests and tools (the exporter streams the same)."""
    return zlib.compress(b"".join(cbor.dumps(item) for item in items), 9)


def check_task(checks: ReadingChecks, task: list[GroupTask], previous: GroupTask | None) -> list[Outcome]:
    """Check a task's groups in order: per reading (position, (failure, summary)); per bad group ("group", ...).

    ``previous`` is the group before the task's first, whose last reading
    lets the first one's energies be recomputed.
    """
    out: list[Outcome] = []
    before: bytes | None = None
    if previous is not None:
        try:
            before = unpack_readings(previous[5], previous[3])[-1]
        except (ValueError, IndexError):
            before = None
    for index, height, nodes, count, first, packed in task:
        group = evidence.ProofGroup(checks.roots, index, height, nodes, first)
        head = group.head_failure()
        try:
            items = unpack_readings(packed, count)
        except ValueError as err:
            out.append(("group", (group.failure(FORMAT, str(err)), None)))
            before = None
            continue
        if head is not None:
            out.append(("group", (head, None)))
        for offset, outcome in enumerate(checks.check_group(group, items, before)):
            out.append((first + offset, outcome))
        if head is None:
            tail = group.finish()
            if tail is not None:
                out.append(("group", (tail, None)))
        before = items[-1] if items else before
    return out


def _check_task_in_worker(task: list[GroupTask], previous: GroupTask | None) -> list[Outcome]:
    assert _worker_checks is not None
    return check_task(_worker_checks, task, previous)


def _check_groups(reader: BundleReader, count: int, checks: ReadingChecks, jobs: int) -> Iterator[Outcome]:
    """As _check_readings, for version 2's proof groups; a group's own failure comes as ("group", ...)."""
    broken: list[_BrokenReading] = []
    previous: GroupTask | None = None  # the group before a task's first
    tasks = _read_groups(reader, count, broken)
    # Worker processes only when there are at least three tasks: a small bundle is quicker alone.
    ahead = list(itertools.islice(tasks, 3 if jobs > 1 else 0))
    if jobs <= 1 or len(ahead) < 3:
        for task in itertools.chain(ahead, tasks):
            yield from check_task(checks, task, previous)
            previous = task[-1]
    else:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker, initargs=(checks,)) as pool:
            pending: deque[Future[list[Outcome]]] = deque()
            for task in itertools.chain(ahead, tasks):
                pending.append(pool.submit(_check_task_in_worker, task, previous))
                previous = task[-1]
                if len(pending) >= 2 * jobs:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
    if broken:
        raise broken[0]


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
