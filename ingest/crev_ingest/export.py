"""``crev audit export``: write one device's evidence bundle for a time range.

The layout is in ``crev.evidence``. The export reads one consistent snapshot
of the store (a single read transaction, so ingest may keep writing), makes
two passes over the readings (count and pick proof blocks, then write), and
streams the file: memory stays flat for a year of one-minute readings. The
file appears under its name only when complete (written aside, fsynced,
renamed).

Readings are proven in groups of ``GROUP``, each against the first block
that covers the whole group, so a year needs a few hundred block headers
rather than one per block sealed; consistency proofs link them. Each group
carries one multi-proof: every tree node its readings need, once.

A device whose readings carry smart-meter values (SPEC §13; ingest has
reconciled a slot of it in the range) gets a version 3 bundle: it also
states ingest's [reconciliation] parameters, and carries the releases and
issuances of the device's slots inside the range, each proven in the newest
listed block, so that the verifier can judge the holds (crev.evidence).
Readings are written per device in seq order (``readings_between`` orders
by seq), which is what lets the verifier reconcile slot by slot.
"""

import functools
import os
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from crev import cbor, evidence, merkle, reconcile
from crev.keys import key_id
from crev.ledger_format import LEAF_READING, encode_leaf
from crev_ingest import ConfigError
from crev_ingest import config as ingest_config
from crev_ingest.keyfile import load_key
from crev_ingest.store import Store
from crev_ingest.witnessing import cosignatures, cosigned_checkpoint, newest_cosigned_height

GROUP = 1024


@dataclass
class ExportSummary:
    path: Path
    readings: int
    in_range: int
    blocks: int
    key_events: int
    bytes: int
    first_seq: int
    last_seq: int
    cosignatures: int = 0  # witnesses' cosignatures on the bundle's checkpoint
    # The newest block some witness cosigned, when the bundle had to be proven by a newer one
    # (which the witnesses had not answered yet): export again shortly for a cosigned bundle.
    cosigned_height: int | None = None
    registry_leaves: int = 0  # releases and issuances (version 3 only)
    version: int = evidence.VERSION


Row = tuple[int, int, int, bytes]  # seq, leaf_idx, received_ms, cose


class _Snapshot:
    """The readings to export, in bundle order, from one read transaction."""

    def __init__(self, store: Store, dev: str, from_s: int, to_s: int, sealed_size: int) -> None:
        self.store = store
        self.dev = dev
        self.from_s = from_s
        self.to_s = to_s
        self.in_range = store.count_readings_between(dev, from_s, to_s)
        if self.in_range == 0:
            raise ConfigError("the ledger has no readings of %s in the range; nothing to export" % dev)
        first = last = None
        unsealed = 0
        for seq, leaf, _received, _cose in store.readings_between(dev, from_s, to_s):
            first = seq if first is None else first
            last = seq
            unsealed += leaf >= sealed_size
        assert first is not None and last is not None
        if unsealed:
            raise ConfigError(
                "%d readings in the range are not sealed in a block yet; ingest seals one every "
                "block_interval_s seconds, so export again shortly" % unsealed
            )
        self.first_seq, self.last_seq = first, last
        # The neighbours make the first reading's energies recomputable and a cut-off end visible.
        self.before = store.reading_row(dev, first - 1) if first > 0 else None
        after = store.reading_row(dev, last + 1)
        self.after = after if after is not None and after[1] < sealed_size else None
        self.count = self.in_range + (self.before is not None) + (self.after is not None)

    def rows(self) -> Iterator[Row]:
        if self.before is not None:
            yield self.before
        yield from self.store.readings_between(self.dev, self.from_s, self.to_s)
        if self.after is not None:
            yield self.after


@dataclass
class ExportRequest:
    dev: str
    from_s: int
    to_s: int
    out: Path
    origin: str
    ledger_public_key: bytes
    factor_g_per_kwh: float
    now_ms: int
    group: int = GROUP  # readings proven against one block
    # ingest's [reconciliation], stated in a version 3 bundle; None: the defaults
    reconciliation: reconcile.Params | None = None


@contextmanager
def written_aside(out: Path) -> Iterator[BinaryIO]:
    """A file that appears under its name only when complete: written aside, fsynced, renamed.

    If the block raises, the partial file is removed and ``out`` is untouched.
    """
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def export_bundle(store: Store, request: ExportRequest) -> ExportSummary:
    if request.to_s <= request.from_s:
        raise ConfigError("--to must be after --from")
    store.begin_snapshot()  # one snapshot for both passes, while ingest writes on
    try:
        return _export(store, request)
    finally:
        store.db.execute("COMMIT")


def _export(store: Store, request: ExportRequest) -> ExportSummary:
    dev, out = request.dev, request.out
    latest = store.last_block()
    key_leaves = store.key_event_leaves(dev)
    if latest is None or not key_leaves:
        raise ConfigError("%s is not enrolled in this ledger" % dev)
    registry = _RegistryLeaves(store, dev, request.from_s, request.to_s)
    anchor_height, sealed_size, cosigned_height = _anchor(
        store, request, latest, max(key_leaves[-1][0], registry.max_leaf)
    )
    snapshot = _Snapshot(store, dev, request.from_s, request.to_s, sealed_size)
    if key_leaves[-1][0] >= sealed_size:
        raise ConfigError("a key event of %s is not sealed in a block yet; export again shortly" % dev)
    if registry.max_leaf >= sealed_size:
        raise ConfigError("a release or issuance of %s is not sealed in a block yet; export again shortly" % dev)
    version = evidence.VERSION_RECONCILED if registry.reconciled else evidence.VERSION

    # Pass 1: the block each group of readings is proven in.
    group_blocks: list[int] = []
    group_max = -1
    for position, row in enumerate(snapshot.rows()):
        group_max = max(group_max, row[1])
        if position % request.group == request.group - 1 or position == snapshot.count - 1:
            group_blocks.append(_covering(store, group_max))
            group_max = -1
    key_block = _covering(store, key_leaves[-1][0])
    heights = sorted({*group_blocks, key_block, anchor_height})

    node = functools.lru_cache(maxsize=1 << 16)(store.node)
    sizes = {h: store.block_header(h)[1] for h in heights}
    meta = {
        evidence.M_ORIGIN: request.origin,
        evidence.M_LEDGER_KID: key_id(request.ledger_public_key),
        evidence.M_DEV: dev,
        evidence.M_FROM: request.from_s,
        evidence.M_TO: request.to_s,
        evidence.M_EXPORTED: request.now_ms,
        evidence.M_FACTOR: round(request.factor_g_per_kwh * 1000),
        # The witnesses' cosignatures ride on the checkpoint, as signature lines after the ledger's.
        evidence.M_CHECKPOINT: cosigned_checkpoint(store, max(heights)),
    }
    if version >= evidence.VERSION_RECONCILED:
        meta[evidence.M_RECONCILIATION] = evidence.params_value(request.reconciliation or reconcile.Params())
    with written_aside(out) as handle:
        head = cbor.encode_head(4, evidence.sections(version)) + cbor.dumps(evidence.MAGIC) + cbor.dumps(version)
        handle.write(head)
        handle.write(cbor.dumps(meta))
        handle.write(cbor.encode_head(4, len(heights)))
        previous_size = None
        for height in heights:
            header, size = store.block_header(height)
            proof: list[bytes] = [] if previous_size is None else merkle.consistency_path(previous_size, size, node)
            handle.write(cbor.dumps([height, header, proof]))
            previous_size = size
        handle.write(cbor.encode_head(4, len(key_leaves)))
        for leaf_idx, leaf in key_leaves:
            received_ms, statement = _key_event_leaf(leaf)
            path = merkle.inclusion_path(leaf_idx, sizes[key_block], node)
            handle.write(cbor.dumps([leaf_idx, received_ms, statement, key_block, path]))
        if version >= evidence.VERSION_RECONCILED:
            registry.write(handle, anchor_height, sizes[anchor_height], node)
        _write_readings(handle, snapshot, group_blocks, request.group, sizes, node)
    return ExportSummary(
        out,
        snapshot.count,
        snapshot.in_range,
        len(heights),
        len(key_leaves),
        out.stat().st_size,
        snapshot.first_seq,
        snapshot.last_seq,
        len(cosignatures(store, max(heights))),
        cosigned_height,
        registry.count if version >= evidence.VERSION_RECONCILED else 0,
        version,
    )


class _RegistryLeaves:
    """The releases and issuances of the device's slots inside [from_s, to_s) (SPEC §13), for a
    device ingest reconciles; read in the export's snapshot, streamed in ledger order."""

    # Slots (S, S+1800] with from_s <= S and S + 1800 <= to_s: those the verifier reconciles.
    WHERE = "dev = ? AND slot >= ? AND slot + 1800 <= ?"

    def __init__(self, store: Store, dev: str, from_s: int, to_s: int) -> None:
        self.store = store
        self.args = (dev, from_s, to_s, dev, from_s, to_s)
        row = store.db.execute(
            "SELECT 1 FROM reconciliation WHERE dev = ? AND slot_t0 >= ? AND slot_t0 + 1800 <= ? LIMIT 1",
            (dev, from_s, to_s),
        ).fetchone()
        released = store.db.execute("SELECT 1 FROM releases WHERE " + self.WHERE + " LIMIT 1", (dev, from_s, to_s))
        self.reconciled = row is not None or released.fetchone() is not None
        self.count, self.max_leaf = 0, -1
        if self.reconciled:
            found = store.db.execute(
                "SELECT count(*), max(leaf_idx) FROM (" + self._leaves_sql() + ") AS registry_leaves", self.args
            ).fetchone()
            self.count = int(found[0])
            self.max_leaf = -1 if found[1] is None else int(found[1])

    def _leaves_sql(self) -> str:
        return (
            "SELECT leaf_idx FROM releases WHERE "
            + self.WHERE
            + " UNION SELECT leaf_idx FROM issuances WHERE "
            + self.WHERE
        )

    def write(self, handle: BinaryIO, height: int, size: int, node: Callable[[int, int], bytes]) -> None:
        """[leaf, received_ms, type, statement, height, inclusion path], each proven in block ``height``."""
        handle.write(cbor.encode_head(4, self.count))
        written = 0
        rows = self.store.db.execute(
            "SELECT idx, data FROM leaves WHERE idx IN (" + self._leaves_sql() + ") ORDER BY idx", self.args
        )
        for idx, data in rows:
            decoded = cbor.loads(bytes(data))
            assert isinstance(decoded, list) and isinstance(decoded[2], bytes)
            leaf_type, received_ms, statement = decoded
            path = merkle.inclusion_path(int(idx), size, node)
            handle.write(cbor.dumps([int(idx), received_ms, leaf_type, statement, height, path]))
            written += 1
        if written != self.count:  # cannot happen inside one read transaction
            raise RuntimeError("the registry leaves changed during the export")


def _anchor(
    store: Store, request: ExportRequest, latest: tuple[int, bytes, int], other_leaf: int
) -> tuple[int, int, int | None]:
    """(height, tree size) of the block that proves the bundle, and the newest cosigned height if it is older.

    ``other_leaf``: the newest leaf the bundle proves besides readings (key events, registry leaves).

    The newest block, unless the witnesses have not cosigned it yet and the
    newest block they did cosign already holds everything the bundle needs:
    then that one, so the bundle carries their cosignatures. A bundle that
    needs the newest block goes out without them, and says so.
    """
    height, _hash, size = latest
    cosigned = newest_cosigned_height(store)
    if cosigned is None or cosigned >= height:
        return height, size, None
    cosigned_size = store.block_header(cosigned)[1]
    needed = store.max_reading_leaf_between(request.dev, request.from_s, request.to_s)
    if max(other_leaf, -1 if needed is None else needed) < cosigned_size:
        return cosigned, cosigned_size, None
    return height, size, cosigned


def _write_readings(
    handle: BinaryIO,
    snapshot: _Snapshot,
    group_blocks: list[int],
    group: int,
    sizes: dict[int, int],
    node: Callable[[int, int], bytes],
) -> None:
    """The groups: [height, multi-proof nodes, count, zlib of the readings], one group's rows held at a time."""
    handle.write(cbor.encode_head(4, len(group_blocks)))
    written = 0
    rows: list[Row] = []

    def flush() -> None:
        height = group_blocks[written // group]
        indices = sorted(row[1] for row in rows)
        nodes = b"".join(merkle.multiproof(indices, sizes[height], node))
        packer = zlib.compressobj(9)
        packed = []
        for _seq, leaf_idx, received_ms, cose in rows:
            tag = merkle.leaf_hash(encode_leaf(LEAF_READING, received_ms, cose))[: evidence.LEAF_TAG_SIZE]
            packed.append(packer.compress(cbor.dumps(cbor.dumps([leaf_idx, received_ms, cose, tag]))))
        packed.append(packer.flush())
        handle.write(cbor.encode_head(4, 4) + cbor.dumps(height) + cbor.dumps(nodes) + cbor.dumps(len(rows)))
        handle.write(cbor.dumps(b"".join(packed)))

    for row in snapshot.rows():
        rows.append(row)
        if len(rows) == group:
            flush()
            written += len(rows)
            rows = []
    if rows:
        flush()
        written += len(rows)
    if written != snapshot.count:  # cannot happen inside one read transaction
        raise RuntimeError("the readings changed during the export")


def _key_event_leaf(leaf: bytes) -> tuple[int, bytes]:
    decoded = cbor.loads(leaf)
    assert isinstance(decoded, list) and isinstance(decoded[1], int) and isinstance(decoded[2], bytes)
    return decoded[1], decoded[2]


def _covering(store: Store, leaf_idx: int) -> int:
    found = store.block_covering(leaf_idx)
    if found is None:
        raise ConfigError("leaf %d is not sealed in a block yet; export again shortly" % leaf_idx)
    return found[0]


__all__ = ["GROUP", "ExportRequest", "ExportSummary", "export_bundle", "written_aside"]


def export_configured(config_path: Path, device: str, from_s: int, to_s: int, out: Path) -> ExportSummary:
    """One device's bundle from the store and key that ``config_path`` names (the CLI's and the dashboard's)."""
    config = ingest_config.load(config_path)
    if config.storage_url is None and not config.storage_path.exists():
        raise ConfigError("no ledger at %s (storage.path in %s)" % (config.storage_path, config_path))
    if out.is_dir():
        raise ConfigError("--out %s is a directory; name the bundle file" % out)
    if not out.parent.is_dir():
        raise ConfigError("--out: the directory %s does not exist" % out.parent)
    key = load_key(config.ledger_key_path)
    store = Store(config.store_location)
    try:
        request = ExportRequest(
            device,
            from_s,
            to_s,
            out,
            config.origin,
            key.public_key,
            config.factor_for(device),
            int(time.time() * 1000),
            reconciliation=config.reconciliation,
        )
        return export_bundle(store, request)
    finally:
        store.close()
