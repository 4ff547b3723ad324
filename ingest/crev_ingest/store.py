"""Storage for ingest: readings, time series, gaps, quarantine, the device
registry and the ledger, in one SQLite file or one PostgreSQL database
(crev_ingest.database carries what differs between the two).

Ledger rows (leaves, blocks, readings, key events, full tiles, the
registry's events) are only ever inserted: this module has no UPDATE or
DELETE for them, and on PostgreSQL triggers refuse them (crev_ingest.grants).
Only the bookkeeping tables (the tile edge, gaps, stats, alarms, the fleet)
change in place, and a gap's history is kept as rows too.

The Merkle tree is kept as C2SP tlog-tiles (crev.merkle, docs/ledger-format.md):
``tiles (level, idx, width, data)``, data the ``width`` 32-byte hashes of tree
level 8 * level. A full tile (256 hashes) is written once and never changed.
The one partial tile per tile level, at the right edge, is a row of
``tile_edge`` that grows in place: each append concatenates one hash to it,
and the statement only matches while the row is exactly as wide as the new
hash's position; the 256th hash moves it to ``tiles``. Growing in place
rather than adding a row per width keeps the tree at about 50 bytes a leaf
(32 of hash, the rest the database's pages): ingest appends leaf by leaf, so
a row per width would store 1 + 2 + ... + 255 hashes for every 256 leaves,
some 4 KiB a leaf. Nothing is lost by it: the hashes of a tile are complete
subtrees that never change, so each narrower version of a partial tile (the
one a checkpoint of that size needs, say) is a prefix of the row, and
``tile(level, idx, width)`` gives it; the edge is recomputable from the
leaves, and ``crev audit ledger`` recomputes it.

The schema carries a version (``schema_version``). Opening a store upgrades
an older one in one transaction, and refuses one newer than this code. A
store from before tiles has a ``nodes`` table, one row per node: opening it
converts that table to tiles and drops it, in one transaction, once the
converted tree has been checked against the latest signed block.
"""

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crev import cbor, merkle
from crev.errors import CrevError
from crev.ledger_format import LEAF_READING, leaf_data
from crev.reading import Reading
from crev.reconcile import Verdict
from crev_ingest import ConfigError, LedgerError
from crev_ingest.database import Database, connect
from crev_ingest.grants import install_triggers
from crev_ingest.registry_store import REGISTRY_SCHEMA, RegistryRows

if TYPE_CHECKING:
    from crev_ingest.config import IngestConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS leaves (
    idx INTEGER PRIMARY KEY,
    type INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    data BLOB NOT NULL,
    leaf_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tiles (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    width INTEGER NOT NULL CHECK (width BETWEEN 1 AND 256),
    data BLOB NOT NULL CHECK (length(data) = 32 * width),
    PRIMARY KEY (level, idx)
);
-- The rightmost, partial tile of each tile level, growing by one hash per
-- append until it is full and moves to tiles: bookkeeping, recomputable from
-- the leaves, the one tree table that changes in place.
CREATE TABLE IF NOT EXISTS tile_edge (
    level INTEGER PRIMARY KEY,
    idx INTEGER NOT NULL,
    width INTEGER NOT NULL CHECK (width BETWEEN 1 AND 255),
    data BLOB NOT NULL CHECK (length(data) = 32 * width)
);
-- Verified readings that workers committed (and acknowledged), waiting for the
-- integrator to give them leaf indices (PostgreSQL; SQLite workers integrate at
-- once). id is arrival order only, never a leaf index: sequence values commit
-- out of order. (dev, seq, digest) deduplicates redeliveries while keeping a
-- conflicting second reading of one seq, for the integrator to quarantine.
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY,
    dev TEXT NOT NULL,
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    cose BLOB NOT NULL,
    UNIQUE (dev, seq, digest)
);
-- Each device's chain head: its highest stored reading's seq, the SHA-256 of
-- that reading's COSE_Sign1 (what the next reading's prev must be) and its
-- channels as deterministic CBOR (where the next one's recomputation starts).
-- Bookkeeping kept with the readings in the same transaction, so that a
-- reading that extends its chain is checked without reading or decoding its
-- neighbour; every value follows from the readings and their leaves.
CREATE TABLE IF NOT EXISTS chain_heads (
    dev TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    channels BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    header BLOB NOT NULL,
    block_hash BLOB NOT NULL,
    tree_size INTEGER NOT NULL,
    root BLOB NOT NULL,
    time_ms INTEGER NOT NULL,
    checkpoint TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_size ON blocks (tree_size);
CREATE TABLE IF NOT EXISTS key_events (
    leaf_idx INTEGER PRIMARY KEY,
    action INTEGER NOT NULL,
    dev TEXT NOT NULL,
    pubkey BLOB NOT NULL,
    kid BLOB NOT NULL,
    time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS key_events_kid ON key_events (kid);
CREATE TABLE IF NOT EXISTS readings (
    dev TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t0 INTEGER NOT NULL,
    t1 INTEGER NOT NULL,
    -- The reading's COSE bytes are its leaf's data (leaves.data): kept once, not here too.
    leaf_idx INTEGER NOT NULL,
    -- What issuance needs of key 9, so it need not decode the COSE again:
    -- JSON [[meter_id, source, self_mwh], ...], or 'null' without energies.
    -- NULL only in rows written before the registry existed.
    gs TEXT,
    PRIMARY KEY (dev, seq)
);
CREATE INDEX IF NOT EXISTS readings_t1 ON readings (dev, t1);
CREATE INDEX IF NOT EXISTS readings_leaf ON readings (dev, leaf_idx);
CREATE TABLE IF NOT EXISTS series (
    dev TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t1 INTEGER NOT NULL,
    site TEXT NOT NULL,
    gen_mwh INTEGER NOT NULL,
    import_mwh INTEGER NOT NULL,
    export_mwh INTEGER NOT NULL,
    self_mwh INTEGER NOT NULL,
    demand_mwh INTEGER NOT NULL,
    co2_g REAL NOT NULL,
    PRIMARY KEY (dev, seq)
);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    dev TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    opened_ms INTEGER NOT NULL,
    closed_ms INTEGER
);
CREATE INDEX IF NOT EXISTS gaps_open ON gaps (dev, closed_ms);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    dev TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stats (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS series_site_t1 ON series (site, t1);
CREATE TABLE IF NOT EXISTS devices (
    dev TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'unknown',
    status_ms INTEGER NOT NULL DEFAULT 0,
    last_t1 INTEGER,
    last_received_ms INTEGER,
    readings INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS devices_site ON devices (site, dev);
-- Witnesses (SPEC §11): what each has cosigned, and their cosignature lines per block.
CREATE TABLE IF NOT EXISTS witness_state (
    witness TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    checked_ms INTEGER NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS cosignatures (
    height INTEGER NOT NULL,
    witness TEXT NOT NULL,
    size INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (height, witness)
);
-- Smart-meter reconciliation per device and 30-minute slot (SPEC §13): OK, SMART_METER_MISMATCH
-- or UNCHECKED (inputs incomplete; recomputed when they complete). Energies in mWh.
CREATE TABLE IF NOT EXISTS reconciliation (
    dev TEXT NOT NULL,
    slot_t0 INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    meter_id TEXT,
    grid_import INTEGER,
    grid_export INTEGER,
    sm_import INTEGER,
    sm_export INTEGER,
    tolerance_import INTEGER,
    tolerance_export INTEGER,
    detail TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (dev, slot_t0)
);
CREATE TABLE IF NOT EXISTS daily (
    dev TEXT NOT NULL,
    day TEXT NOT NULL,
    self_mwh INTEGER NOT NULL,
    gen_mwh INTEGER NOT NULL,
    co2_g REAL NOT NULL,
    readings INTEGER NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dev, day)
);
"""


def open_configured(config: "IngestConfig", read_only: bool = False) -> "Store":
    """The configured store; ConfigError when a SQLite ledger has not been created yet."""
    if config.storage_url is None and not config.storage_path.exists():
        raise ConfigError("no ledger at %s (storage.path in %s)" % (config.storage_path, config.path))
    return Store(config.store_location, read_only=read_only)


# 1: tiles grew in place in ``tiles``; 2: partial tiles in ``tile_edge``, a schema_version row,
# the witness tables; 3: pending (readings sequenced, not yet integrated); 4: a reading's COSE
# bytes only in its leaf, no longer in readings.cose too; 5: chain_heads; 6: reconciliation
# (SPEC §13, smart-meter verdicts per slot); 7: releases (SPEC §13, held slots released). Every change to the
# schema raises it, with its upgrade in _create_or_upgrade: a store at this version is opened
# without any DDL.
SCHEMA_VERSION = 7

LEAF_COLUMNS = ("idx", "type", "received_ms", "data", "leaf_hash")
READING_COLUMNS = ("dev", "seq", "t0", "t1", "leaf_idx", "gs")
SERIES_COLUMNS = ("dev", "seq", "t1", "site", "gen_mwh", "import_mwh", "export_mwh", "self_mwh", "demand_mwh", "co2_g")
SERIES_INSERT = "INSERT INTO series (%s) VALUES (%s)" % (
    ", ".join(SERIES_COLUMNS),
    ", ".join("?" * len(SERIES_COLUMNS)),
)
DEVICE_UPSERT = (
    "INSERT INTO devices (dev, site, last_t1, last_received_ms, readings) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (dev) DO UPDATE SET site = excluded.site, readings = devices.readings + excluded.readings, "
    "last_t1 = CASE WHEN devices.last_t1 > excluded.last_t1 THEN devices.last_t1 ELSE excluded.last_t1 END, "
    "last_received_ms = CASE WHEN devices.last_received_ms > excluded.last_received_ms "
    "THEN devices.last_received_ms ELSE excluded.last_received_ms END"
)
DAILY_UPSERT = (
    "INSERT INTO daily (dev, day, self_mwh, gen_mwh, co2_g, readings, flags) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (dev, day) DO UPDATE SET self_mwh = daily.self_mwh + excluded.self_mwh, "
    "gen_mwh = daily.gen_mwh + excluded.gen_mwh, co2_g = daily.co2_g + excluded.co2_g, "
    "readings = daily.readings + excluded.readings, flags = daily.flags | excluded.flags"
)
HEAD_UPSERT = (
    "INSERT INTO chain_heads (dev, seq, hash, channels) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (dev) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, channels = excluded.channels "
    "WHERE excluded.seq > chain_heads.seq"
)
STATS_UPSERT = (
    "INSERT INTO stats (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = stats.value + excluded.value"
)
# Reading keys per prefetch query (two parameters each).
PREFETCH_CHUNK = 400


@dataclass(frozen=True)
class ChainHead:
    """A device's highest stored reading, as its successor's chain check needs it."""

    seq: int
    hash: bytes  # SHA-256 of its COSE_Sign1
    channels: list[tuple[int, str, int, int]]


def _decode_channels(data: bytes) -> list[tuple[int, str, int, int]]:
    return [tuple(channel) for channel in cbor.loads(data)]  # type: ignore[attr-defined]


@dataclass
class _Batch:
    """The rows of a batch of readings, written at commit in a few statements instead of a dozen a reading.

    ``known`` holds the stored readings the batch's chain checks will ask
    for, read in one query up front (None: known not to be stored).
    """

    known: dict[tuple[str, int], bytes | None]
    # dev -> its chain head (None: no reading stored yet), for every device in the batch.
    heads: dict[str, "ChainHead | None"]
    leaves: list[tuple[int, int, int, bytes, bytes]] = field(default_factory=list)
    readings: dict[tuple[str, int], tuple[str, int, int, int, int, bytes, str | None]] = field(default_factory=dict)
    series: list[tuple[str, int, int, str, int, int, int, int, int, float]] = field(default_factory=list)
    devices: dict[str, list[Any]] = field(default_factory=dict)
    daily: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    # dev -> [id (None: new), first_seq, last_seq, opened_ms, closed_ms (None: open)]: the device's
    # open gaps when the batch began, and those it opened, as the rows they will be.
    gaps: dict[str, list[list[Any]]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    moved_heads: set[str] = field(default_factory=set)


# Decoded tiles kept by node(): a proof touches a few tiles per tile level, and
# a full tile's seven inner heights cost 255 hashes to rebuild.
CACHED_TILES = 256


class Store(RegistryRows):
    """The ledger's store, in an SQLite file (a path) or on PostgreSQL (a postgresql:// URL)."""

    def __init__(self, location: Path | str, read_only: bool = False) -> None:
        self.path = location
        self.db: Database = connect(location, read_only=read_only)
        # (tile level, tile index) -> the tile's hashes at heights 0, 1, ... as
        # far as asked, each height one bytes of 32-byte hashes. A cached tile
        # may be narrower than its row, never different from it: what a
        # committed row holds never changes. Rolled-back rows are the
        # exception, so a rollback empties the cache.
        self._tiles: OrderedDict[tuple[int, int], list[bytes]] = OrderedDict()
        # Tile level -> (tile index, its hashes so far, the width its stored edge row has) for the
        # edges grown in this transaction: written once, at commit, not once per leaf, for a
        # PostgreSQL UPDATE of a row of up to 8 KiB rewrites it whole (and its WAL) every time.
        self._edges: dict[int, tuple[int, bytes, int]] = {}
        self._edges_at_savepoint: dict[int, tuple[int, bytes, int]] = {}
        self._batch: _Batch | None = None
        try:
            if not read_only:
                with self.transaction():
                    self._create_or_upgrade()
                self._migrate_nodes_to_tiles()
            else:
                self._check_version()
        except BaseException:
            self.db.close()
            raise

    def _check_version(self) -> int | None:
        """The store's schema version (None before versions); LedgerError if newer than this code."""
        if not self.db.has_table("schema_version"):
            return None
        row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
        version = None if row is None or row[0] is None else int(row[0])
        if version is not None and version > SCHEMA_VERSION:
            raise LedgerError(
                "%s: the store has schema version %d, newer than this crev's %d: run a crev at least as new "
                "as the one that wrote it" % (self.db.label, version, SCHEMA_VERSION)
            )
        return version

    def _create_or_upgrade(self) -> None:
        """Create the schema, or bring an older store up to SCHEMA_VERSION, in the caller's transaction."""
        version = self._check_version()
        if version == SCHEMA_VERSION:
            # Nothing to create: the application role, which may not create, opens here.
            return
        columns = self.db.columns("readings")
        if columns and "gs" not in columns:  # a store from before the registry
            self.db.execute("ALTER TABLE readings ADD COLUMN gs TEXT")
        self.db.script(SCHEMA)
        self.db.script(REGISTRY_SCHEMA)
        if version is None or version < 2:
            self._move_partial_tiles_to_the_edge()
        if "cose" in self.db.columns("readings"):
            self._drop_the_second_cose()
        if version is None or version < 5:
            self._fill_chain_heads()
        if version is None:
            self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            self.db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        if self.db.dialect == "postgresql":
            install_triggers(self.db)

    def _drop_the_second_cose(self) -> None:
        """Before version 4 each reading's COSE was in readings.cose as well as in its leaf.

        The copy goes only once every row has been checked to equal its
        leaf's data: a row that differs is a changed store, and the upgrade
        refuses (LedgerError, naming the row) and leaves it as it was.
        """
        rows = self.db.execute(
            "SELECT r.dev, r.seq, r.cose, l.type, l.data FROM readings r LEFT JOIN leaves l ON l.idx = r.leaf_idx"
        )
        for dev, seq, cose, leaf_type, leaf in rows:
            if leaf is None or int(leaf_type) != LEAF_READING or leaf_data(bytes(leaf)) != bytes(cose):
                raise LedgerError(
                    "%s: not upgrading to schema version 4 (the store is left as it was): readings row (%s, %d): "
                    "its cose differs from its ledger leaf; run crev audit ledger" % (self.db.label, dev, seq)
                )
        self.db.execute("ALTER TABLE readings DROP COLUMN cose")

    def _fill_chain_heads(self) -> None:
        """Before version 5 the chain heads were read from the readings: derive them once."""
        rows = self.db.execute(
            "SELECT r.dev, r.seq, l.data FROM readings r JOIN leaves l ON l.idx = r.leaf_idx "
            "JOIN (SELECT dev, max(seq) AS seq FROM readings GROUP BY dev) top ON top.dev = r.dev AND top.seq = r.seq"
        ).fetchall()
        for dev, seq, leaf in rows:
            try:
                raw = leaf_data(bytes(leaf))
                channels = Reading.from_cose(raw).channels
            except CrevError as err:
                raise LedgerError(
                    "%s: not upgrading to schema version 5 (the store is left as it was): readings row (%s, %d): "
                    "its leaf is not a reading (%s); run crev audit ledger" % (self.db.label, dev, seq, err)
                ) from None
            head = ChainHead(int(seq), hashlib.sha256(raw).digest(), channels)
            self.db.execute(HEAD_UPSERT, _head_row(str(dev), head))

    def _move_partial_tiles_to_the_edge(self) -> None:
        """Version 1 grew partial tiles in place in ``tiles``; from 2 they live in ``tile_edge``."""
        rows = self.db.execute(
            "SELECT level, idx, width, data FROM tiles WHERE width < ? ORDER BY level", (merkle.TILE_WIDTH,)
        ).fetchall()
        for level, idx, width, data in rows:
            self.db.execute(
                "INSERT INTO tile_edge (level, idx, width, data) VALUES (?, ?, ?, ?)", (level, idx, width, data)
            )
        if rows:
            self.db.execute("DELETE FROM tiles WHERE width < ?", (merkle.TILE_WIDTH,))

    def _migrate_nodes_to_tiles(self) -> None:
        """Convert the one-row-per-node tree of an older crev to tiles, all or nothing.

        The converted tree must give the root the latest block signs, and
        every full tile must hash to its entry one tile level up, before the
        nodes table is dropped; otherwise nothing changes and the store does
        not open (LedgerError, one line).
        """
        if not self.db.has_table("nodes"):
            return
        with self.transaction():
            if self.db.has_table("nodes"):  # another process may have converted it meanwhile
                self._convert_nodes()
                self.db.execute("DROP TABLE nodes")
        self._tiles.clear()

    def _convert_nodes(self) -> None:
        refuse = "%s: not converting its Merkle nodes to tiles (the store is left as it was): " % self.db.label
        size = self.leaf_count()
        if self.tile_count():
            raise LedgerError(refuse + "it has both a nodes table and tiles")
        rows = int(self.db.execute("SELECT count(*) FROM nodes").fetchone()[0])
        complete = sum(size >> level for level in range(size.bit_length()))
        if rows != complete:
            raise LedgerError(refuse + "it has %d node rows where a tree of %d leaves has %d" % (rows, size, complete))
        tile_level = 0
        while size >> (merkle.TILE_HEIGHT * tile_level):
            level = merkle.TILE_HEIGHT * tile_level
            expected = size >> level
            pending: list[bytes] = []
            count = 0
            for idx, value in self.db.execute(
                "SELECT idx, hash FROM nodes WHERE level = ? ORDER BY idx LIMIT ?", (level, expected)
            ):
                if idx != count or len(value) != merkle.HASH_SIZE:
                    raise LedgerError(refuse + "node level %d idx %d is missing or malformed" % (level, count))
                pending.append(bytes(value))
                count += 1
                if len(pending) == merkle.TILE_WIDTH:
                    self._insert_tile(tile_level, (count - 1) >> merkle.TILE_HEIGHT, b"".join(pending))
                    pending = []
            if count != expected:
                raise LedgerError(refuse + "node level %d idx %d is missing or malformed" % (level, count))
            if pending:
                self._insert_tile(tile_level, count >> merkle.TILE_HEIGHT, b"".join(pending))
            tile_level += 1
        for level, idx, data in self.db.execute(
            "SELECT level, idx, data FROM tiles WHERE width = ? ORDER BY level, idx", (merkle.TILE_WIDTH,)
        ):
            try:
                above = self.node(merkle.TILE_HEIGHT * (level + 1), idx)
            except KeyError:
                above = b""
            if merkle.tile_root(bytes(data)) != above:
                raise LedgerError(
                    refuse + "tile level %d idx %d does not hash to its node one tile level up" % (level, idx)
                )

        # The signed root first: it is what every proof handed out so far verifies against.
        last = self.db.execute("SELECT height, tree_size, root FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        if last is not None:
            height, sealed, signed_root = int(last[0]), int(last[1]), bytes(last[2])
            converted = merkle.root_of(sealed, self.node) if sealed <= size else None
            if converted != signed_root:
                raise LedgerError(
                    refuse
                    + "the converted tree of %d leaves has root %s where block %d signs %s"
                    % (sealed, converted.hex() if converted else "(none: too few leaves)", height, signed_root.hex())
                )

        # Then the leaves appended since that block, which only the nodes vouch for.
        def old_node(level: int, idx: int) -> bytes:
            row = self.db.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, idx)).fetchone()
            if row is None:
                raise LedgerError(refuse + "node level %d idx %d is missing" % (level, idx))
            return bytes(row[0])

        if merkle.root_of(size, self.node) != merkle.root_of(size, old_node):
            raise LedgerError(refuse + "the tree of %d leaves has another root from tiles than from nodes" % size)

    def _insert_tile(self, level: int, idx: int, data: bytes) -> None:
        """A full tile into tiles, a partial one as its level's edge."""
        width = len(data) // merkle.HASH_SIZE
        table = "tiles" if width == merkle.TILE_WIDTH else "tile_edge"
        self.db.execute(
            "INSERT INTO %s (level, idx, width, data) VALUES (?, ?, ?, ?)" % table, (level, idx, width, data)
        )

    # ------------------------------------------------------------ transactions

    def begin(self, lock: bool = True) -> None:
        """Start a write transaction: one writer at a time, across every process sharing the store.

        ``lock=False`` is for writes that give no leaf index (pending
        readings, quarantine, bookkeeping): PostgreSQL then runs them beside
        the writer; SQLite has one writer whatever is asked.
        """
        self.db.begin(lock)

    @contextmanager
    def transaction(self, lock: bool = True) -> Iterator[None]:
        """begin() ... COMMIT, or ROLLBACK if the block raises."""
        self.begin(lock)
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def commit(self) -> None:
        self._flush_batch()
        self._flush_edges()
        self.db.commit()

    def begin_batch(self, readings: list[tuple[str, int]]) -> None:
        """Inside a write transaction, buffer the rows of these (dev, seq) readings until commit.

        Prefetches what their chain checks read: each device's chain head
        and, for a reading that does not simply extend its device's chain
        (a gap filled, a duplicate, a conflict), the stored readings at its
        seq and beside it. No savepoints while it is on: a batch that fails
        is rolled back whole and done again without it.
        """
        devices = sorted({dev for dev, _seq in readings})
        heads: dict[str, ChainHead | None] = dict.fromkeys(devices)
        for start in range(0, len(devices), PREFETCH_CHUNK):
            names = devices[start : start + PREFETCH_CHUNK]
            rows = self.db.execute(
                "SELECT dev, seq, hash, channels FROM chain_heads WHERE dev IN (%s)" % ", ".join("?" * len(names)),
                names,
            )
            for dev, seq, digest, channels in rows:
                heads[str(dev)] = ChainHead(int(seq), bytes(digest), _decode_channels(bytes(channels)))
        # Which readings will not extend their chain, assuming the others are accepted: those
        # need their neighbours. A guess that turns out wrong only costs a query later.
        highest = {dev: (-1 if head is None else head.seq) for dev, head in heads.items()}
        wanted: set[tuple[str, int]] = set()
        for dev, seq in readings:
            if seq != highest[dev] + 1:
                wanted.update((dev, seq + d) for d in (-1, 0, 1) if seq + d >= 0)
            highest[dev] = max(highest[dev], seq)
        known: dict[tuple[str, int], bytes | None] = dict.fromkeys(wanted)
        ordered = sorted(wanted)
        for start in range(0, len(ordered), PREFETCH_CHUNK):
            chunk = ordered[start : start + PREFETCH_CHUNK]
            rows = self.db.execute(
                "SELECT r.dev, r.seq, l.data FROM readings r JOIN leaves l ON l.idx = r.leaf_idx "
                "WHERE (r.dev, r.seq) IN (VALUES %s)" % ", ".join(["(?, ?)"] * len(chunk)),
                [value for key in chunk for value in key],
            )
            for dev, seq, leaf in rows:
                known[(str(dev), int(seq))] = leaf_data(bytes(leaf))
        self._batch = _Batch(known, heads)

    def _batch_gaps(self, batch: _Batch, dev: str) -> list[list[Any]]:
        """The device's open gaps, and those the batch opened, read from the store on first use."""
        gaps = batch.gaps.get(dev)
        if gaps is None:
            rows = self.db.execute(
                "SELECT id, first_seq, last_seq, opened_ms FROM gaps WHERE closed_ms IS NULL AND dev = ? ORDER BY id",
                (dev,),
            )
            gaps = [[int(gap), int(first), int(last), int(opened), None] for gap, first, last, opened in rows]
            batch.gaps[dev] = gaps
        return gaps

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        self.db.insert_many("leaves", LEAF_COLUMNS, batch.leaves)
        self.db.insert_many("readings", READING_COLUMNS, [(*row[:5], row[6]) for row in batch.readings.values()])
        self.db.insert_many("series", SERIES_COLUMNS, batch.series)
        self.db.executemany(DEVICE_UPSERT, [(dev, *seen) for dev, seen in sorted(batch.devices.items())])
        self.db.executemany(DAILY_UPSERT, [(*key, *sums) for key, sums in sorted(batch.daily.items())])
        self.db.executemany(STATS_UPSERT, sorted(batch.stats.items()))
        self.db.executemany(HEAD_UPSERT, [_head_row(dev, batch.heads[dev]) for dev in sorted(batch.moved_heads)])
        rows = [gap for dev_gaps in batch.gaps.values() for gap in dev_gaps]
        self.db.executemany(
            "UPDATE gaps SET closed_ms = ? WHERE id = ?",
            [(g[4], g[0]) for g in rows if g[0] is not None and g[4] is not None],
        )
        self.db.insert_many(
            "gaps",
            ("dev", "first_seq", "last_seq", "opened_ms", "closed_ms"),
            [(dev, *g[1:]) for dev, dev_gaps in batch.gaps.items() for g in dev_gaps if g[0] is None],
        )

    def begin_snapshot(self) -> None:
        """Start a read transaction that sees one state of the store throughout, while others write."""
        self.db.begin_snapshot()

    def rollback(self) -> None:
        self._tiles.clear()
        self._edges.clear()
        self._batch = None
        self.db.rollback()

    def savepoint(self) -> None:
        self.db.execute("SAVEPOINT message")
        self._edges_at_savepoint = dict(self._edges)

    def release(self) -> None:
        self.db.execute("RELEASE message")

    def rollback_to_savepoint(self) -> None:
        self.db.execute("ROLLBACK TO message")
        self.db.execute("RELEASE message")
        self._tiles.clear()
        self._edges = dict(self._edges_at_savepoint)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ ledger rows

    def add_leaf(self, idx: int, leaf_type: int, received_ms: int, data: bytes, leaf_hash: bytes) -> None:
        if self._batch is not None:
            self._batch.leaves.append((idx, leaf_type, received_ms, data, leaf_hash))
            return
        self.db.execute(
            "INSERT INTO leaves (idx, type, received_ms, data, leaf_hash) VALUES (?, ?, ?, ?, ?)",
            (idx, leaf_type, received_ms, data, leaf_hash),
        )

    def add_tile_hash(self, level: int, idx: int, position: int, value: bytes) -> None:
        """Put hash ``value`` at ``position`` of tile (level, idx): a new edge at 0, else one hash more.

        Only the edge exactly ``position`` wide takes it: a full tile, or a
        hash out of order, changes nothing and is refused. The 256th hash
        moves the tile from the edge to tiles, where it never changes again.
        The grown edge is written at commit (``_flush_edges``), its stored
        width the guard that nobody else grew it meanwhile.
        """
        refused = LedgerError("tiles row level %d idx %d: cannot take a hash at position %d" % (level, idx, position))
        grown = self._edges.get(level)
        if grown is not None and grown[0] == idx:
            data, stored_width = grown[1], grown[2]
        elif position == 0:
            if self.tile_row(level, idx) is not None:
                raise refused
            data, stored_width = b"", 0
        else:
            row = self.db.execute(
                "SELECT width, data FROM tile_edge WHERE level = ? AND idx = ?", (level, idx)
            ).fetchone()
            if row is None:
                raise refused
            data, stored_width = bytes(row[1]), int(row[0])
        if len(data) != position * merkle.HASH_SIZE:
            raise refused
        data += value
        if position + 1 == merkle.TILE_WIDTH:
            if stored_width:
                gone = self.db.execute(
                    "DELETE FROM tile_edge WHERE level = ? AND idx = ? AND width = ?", (level, idx, stored_width)
                )
                if gone.rowcount != 1:
                    raise refused
            self._insert_tile(level, idx, data)
            self._edges.pop(level, None)
        else:
            self._edges[level] = (idx, data, stored_width)
        # The appender reads the row it grows on the next append: keep it decoded.
        key = (level, idx)
        self._tiles[key] = [data]
        self._tiles.move_to_end(key)
        if len(self._tiles) > CACHED_TILES:
            self._tiles.popitem(last=False)

    def _flush_edges(self) -> None:
        """Write the edges grown in this transaction: one statement per tile level, not per leaf."""
        for level, (idx, data, stored_width) in sorted(self._edges.items()):
            width = len(data) // merkle.HASH_SIZE
            if stored_width == 0:
                self._insert_tile(level, idx, data)
                continue
            written = self.db.execute(
                "UPDATE tile_edge SET width = ?, data = ? WHERE level = ? AND idx = ? AND width = ?",
                (width, data, level, idx, stored_width),
            )
            if written.rowcount != 1:
                self._edges.clear()
                raise LedgerError(
                    "tiles row level %d idx %d: changed by another writer since width %d" % (level, idx, stored_width)
                )
        self._edges.clear()

    def tile(self, level: int, idx: int, width: int = merkle.TILE_WIDTH) -> bytes:
        """The first ``width`` hashes of tile (level, idx); KeyError if it is not that wide yet."""
        row = self.tile_row(level, idx)
        if row is None or row[0] < width:
            raise KeyError("no tile at level %d index %d width %d" % (level, idx, width))
        return row[1][: width * merkle.HASH_SIZE]

    def tile_row(self, level: int, idx: int) -> tuple[int, bytes] | None:
        """(width, data) of tile (level, idx) as stored now (no cache): full, or its level's edge.

        An edge grown in this transaction and not yet written counts as stored.
        """
        grown = self._edges.get(level)
        if grown is not None and grown[0] == idx:
            return len(grown[1]) // merkle.HASH_SIZE, grown[1]
        row = self.db.execute("SELECT width, data FROM tiles WHERE level = ? AND idx = ?", (level, idx)).fetchone()
        if row is None:
            row = self.db.execute(
                "SELECT width, data FROM tile_edge WHERE level = ? AND idx = ?", (level, idx)
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def tile_rows(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(level, idx, width, data) of every stored tile, full and partial, by level then index."""
        for row in self.db.execute(
            "SELECT level, idx, width, data FROM tiles UNION ALL SELECT level, idx, width, data FROM tile_edge "
            "ORDER BY 1, 2"
        ):
            yield int(row[0]), int(row[1]), int(row[2]), bytes(row[3])

    def tile_count(self) -> int:
        row = self.db.execute("SELECT (SELECT count(*) FROM tiles) + (SELECT count(*) FROM tile_edge)").fetchone()
        return int(row[0])

    def node(self, level: int, idx: int) -> bytes:
        """The hash of complete subtree (level, idx), RFC 9162 levels, from the tile that holds it."""
        where: tuple[int, int, int, int] = merkle.node_tile(level, idx)
        tile_level, tile_idx, height, offset = where
        needed = (offset + (1 << height)) * merkle.HASH_SIZE
        key = (tile_level, tile_idx)
        heights = self._tiles.get(key)
        if heights is None or len(heights[0]) < needed:
            row = self.tile_row(tile_level, tile_idx)
            if row is None or len(row[1]) < needed:
                raise KeyError("no node at level %d index %d" % (level, idx))
            heights = [row[1]]
            self._tiles[key] = heights
            if len(self._tiles) > CACHED_TILES:
                self._tiles.popitem(last=False)
        else:
            self._tiles.move_to_end(key)
        while len(heights) <= height:
            heights.append(merkle.hash_pairs(heights[-1]))
        start = (offset >> height) * merkle.HASH_SIZE
        return heights[height][start : start + merkle.HASH_SIZE]

    def forget_tiles(self) -> None:
        """Drop the decoded tiles, so that node() reads the rows as they are now."""
        self._tiles.clear()

    def leaf_count(self) -> int:
        stored = int(self.db.execute("SELECT count(*) FROM leaves").fetchone()[0])
        return stored + (len(self._batch.leaves) if self._batch is not None else 0)

    def add_block(
        self, height: int, header: bytes, block_hash: bytes, size: int, root: bytes, time_ms: int, checkpoint: str
    ) -> None:
        self.db.execute(
            "INSERT INTO blocks (height, header, block_hash, tree_size, root, time_ms, checkpoint) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (height, header, block_hash, size, root, time_ms, checkpoint),
        )

    def last_block(self) -> tuple[int, bytes, int] | None:
        row = self.db.execute(
            "SELECT height, block_hash, tree_size FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), int(row[2]))

    def block_covering(self, leaf_idx: int) -> tuple[int, int] | None:
        """(height, tree_size) of the first block whose tree holds leaf ``leaf_idx``."""
        row = self.db.execute(
            "SELECT height, tree_size FROM blocks WHERE tree_size > ? ORDER BY tree_size, height LIMIT 1", (leaf_idx,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def block_header(self, height: int) -> tuple[bytes, int]:
        """(signed header, tree_size) of the block at ``height``."""
        row = self.db.execute("SELECT header, tree_size FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            raise KeyError("no block at height %d" % height)
        return bytes(row[0]), int(row[1])

    def checkpoint(self, height: int) -> str:
        """The block's C2SP checkpoint signed note."""
        row = self.db.execute("SELECT checkpoint FROM blocks WHERE height = ?", (height,)).fetchone()
        if row is None:
            raise KeyError("no block at height %d" % height)
        return str(row[0])

    def add_key_event(self, leaf_idx: int, action: int, dev: str, pubkey: bytes, kid: bytes, time_s: int) -> None:
        self.db.execute(
            "INSERT INTO key_events (leaf_idx, action, dev, pubkey, kid, time) VALUES (?, ?, ?, ?, ?, ?)",
            (leaf_idx, action, dev, pubkey, kid, time_s),
        )

    def key_event_mark(self) -> int:
        """The newest key event's leaf index (-1: none), which changes whenever one is added."""
        row = self.db.execute("SELECT max(leaf_idx) FROM key_events").fetchone()
        return -1 if row[0] is None else int(row[0])

    def key_events_for_kid(self, kid: bytes) -> list[tuple[int, str, bytes, int]]:
        rows = self.db.execute(
            "SELECT action, dev, pubkey, time FROM key_events WHERE kid = ? ORDER BY leaf_idx", (kid,)
        )
        return [(int(r[0]), str(r[1]), bytes(r[2]), int(r[3])) for r in rows]

    def key_events_for_device(self, dev: str) -> list[tuple[int, bytes, int]]:
        rows = self.db.execute("SELECT action, pubkey, time FROM key_events WHERE dev = ? ORDER BY leaf_idx", (dev,))
        return [(int(r[0]), bytes(r[1]), int(r[2])) for r in rows]

    def add_reading(
        self, dev: str, seq: int, t0: int, t1: int, leaf_idx: int, cose: bytes, gs: str | None = None
    ) -> None:
        """A reading's row. Its chain head moves with it: see ``advance_head``."""
        if self._batch is not None:
            self._batch.readings[(dev, seq)] = (dev, seq, t0, t1, leaf_idx, cose, gs)
            return
        self.db.execute(
            "INSERT INTO readings (dev, seq, t0, t1, leaf_idx, gs) VALUES (?, ?, ?, ?, ?, ?)",
            (dev, seq, t0, t1, leaf_idx, gs),
        )

    def advance_head(self, dev: str, head: ChainHead) -> None:
        """``head`` is now the device's highest stored reading (if it is higher than the one kept)."""
        batch = self._batch
        if batch is not None and dev in batch.heads:
            kept = batch.heads[dev]
            if kept is None or head.seq > kept.seq:
                batch.heads[dev] = head
                batch.moved_heads.add(dev)
            return
        self.db.execute(HEAD_UPSERT, _head_row(dev, head))

    def chain_head(self, dev: str) -> ChainHead | None:
        """The device's highest stored reading, or None before its first."""
        batch = self._batch
        if batch is not None and dev in batch.heads:
            return batch.heads[dev]
        row = self.db.execute("SELECT seq, hash, channels FROM chain_heads WHERE dev = ?", (dev,)).fetchone()
        return None if row is None else ChainHead(int(row[0]), bytes(row[1]), _decode_channels(bytes(row[2])))

    def reading(self, dev: str, seq: int) -> bytes | None:
        batch = self._batch
        if batch is not None:
            added = batch.readings.get((dev, seq))
            if added is not None:
                return added[5]
            if (dev, seq) in batch.known:
                return batch.known[(dev, seq)]
        row = self.db.execute(
            "SELECT l.data FROM readings r JOIN leaves l ON l.idx = r.leaf_idx WHERE r.dev = ? AND r.seq = ?",
            (dev, seq),
        ).fetchone()
        return None if row is None else leaf_data(bytes(row[0]))

    def max_seq(self, dev: str) -> int | None:
        head = self.chain_head(dev)
        return None if head is None else head.seq

    def count_readings_between(self, dev: str, from_s: int, to_s: int) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM readings WHERE dev = ? AND t1 > ? AND t0 < ?", (dev, from_s, to_s)
        ).fetchone()
        return int(row[0])

    def max_reading_leaf_between(self, dev: str, from_s: int, to_s: int) -> int | None:
        """The newest leaf among the device's readings overlapping [from_s, to_s), or None."""
        row = self.db.execute(
            "SELECT max(leaf_idx) FROM readings WHERE dev = ? AND t1 > ? AND t0 < ?", (dev, from_s, to_s)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def readings_between(self, dev: str, from_s: int, to_s: int) -> Iterator[tuple[int, int, int, bytes]]:
        """(seq, leaf_idx, received_ms, cose) of the readings overlapping [from_s, to_s), by seq."""
        for row in self.db.execute(
            "SELECT r.seq, r.leaf_idx, l.received_ms, l.data FROM readings r JOIN leaves l ON l.idx = r.leaf_idx "
            "WHERE r.dev = ? AND r.t1 > ? AND r.t0 < ? ORDER BY r.seq",
            (dev, from_s, to_s),
        ):
            yield int(row[0]), int(row[1]), int(row[2]), leaf_data(bytes(row[3]))

    def reading_row(self, dev: str, seq: int) -> tuple[int, int, int, bytes] | None:
        """(seq, leaf_idx, received_ms, cose) of one stored reading."""
        row = self.db.execute(
            "SELECT r.seq, r.leaf_idx, l.received_ms, l.data FROM readings r JOIN leaves l ON l.idx = r.leaf_idx "
            "WHERE r.dev = ? AND r.seq = ?",
            (dev, seq),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]), leaf_data(bytes(row[3])))

    def key_event_leaves(self, dev: str) -> list[tuple[int, bytes]]:
        """(leaf_idx, leaf bytes) of a device's key events, in ledger order."""
        rows = self.db.execute(
            "SELECT k.leaf_idx, l.data FROM key_events k JOIN leaves l ON l.idx = k.leaf_idx "
            "WHERE k.dev = ? ORDER BY k.leaf_idx",
            (dev,),
        )
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def add_series(self, row: tuple[str, int, int, str, int, int, int, int, int, float]) -> None:
        if self._batch is not None:
            self._batch.series.append(row)
            return
        self.db.execute(SERIES_INSERT, row)

    def add_pending(self, dev: str, seq: int, received_ms: int, topic: str, cose: bytes) -> bool:
        """Keep one verified reading for the integrator; False if this very reading is already waiting."""
        return self.add_pending_many([(dev, seq, received_ms, topic, cose)])[0]

    def add_pending_many(self, readings: list[tuple[str, int, int, str, bytes]]) -> list[bool]:
        """Keep verified (dev, seq, received_ms, topic, cose) readings for the integrator, a statement per
        few hundred; for each, False if this very reading was already waiting (or came twice)."""
        added: list[bool] = []
        for start in range(0, len(readings), PREFETCH_CHUNK):
            chunk = [(dev, seq, hashlib.sha256(cose).digest(), ms, topic, cose) for dev, seq, ms, topic, cose in
                     readings[start : start + PREFETCH_CHUNK]]  # fmt: skip
            inserted = {
                (str(dev), int(seq), bytes(digest))
                for dev, seq, digest in self.db.execute(
                    "INSERT INTO pending (dev, seq, digest, received_ms, topic, cose) VALUES %s "
                    "ON CONFLICT (dev, seq, digest) DO NOTHING RETURNING dev, seq, digest"
                    % ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
                    [value for row in chunk for value in row],
                ).fetchall()
            }
            for dev, seq, digest, _ms, _topic, _cose in chunk:
                key = (dev, seq, digest)
                added.append(key in inserted)
                inserted.discard(key)  # a second copy in the same chunk is a duplicate
        return added

    def pending_batch(self, limit: int) -> list[tuple[int, int, str, bytes]]:
        """(id, received_ms, topic, cose) of the oldest waiting readings, in arrival order."""
        rows = self.db.execute(
            "SELECT id, received_ms, topic, cose FROM pending ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [(int(r[0]), int(r[1]), str(r[2]), bytes(r[3])) for r in rows]

    def drop_pending(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 2 * PREFETCH_CHUNK):
            chunk = ids[start : start + 2 * PREFETCH_CHUNK]
            self.db.execute("DELETE FROM pending WHERE id IN (%s)" % ", ".join("?" * len(chunk)), chunk)

    def pending_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM pending").fetchone()[0])

    # ------------------------------------------------------------ the fleet (for the dashboard)

    def note_reading(self, dev: str, site: str, t1: int, received_ms: int, count: int = 1) -> None:
        if self._batch is not None:
            seen = self._batch.devices.get(dev)
            if seen is None:
                self._batch.devices[dev] = [site, t1, received_ms, count]
            else:
                seen[:] = [site, max(seen[1], t1), max(seen[2], received_ms), seen[3] + count]
            return
        self.db.execute(DEVICE_UPSERT, (dev, site, t1, received_ms, count))

    def note_daily(
        self, dev: str, day: str, self_mwh: int, gen_mwh: int, co2_g: float, flags: int, readings: int = 1
    ) -> None:
        """Today's sums per device, and every flag its readings carried (bitwise or)."""
        if self._batch is not None:
            sums = self._batch.daily.get((dev, day))
            if sums is None:
                self._batch.daily[(dev, day)] = [self_mwh, gen_mwh, co2_g, readings, flags]
            else:
                sums[:] = [sums[0] + self_mwh, sums[1] + gen_mwh, sums[2] + co2_g, sums[3] + readings, sums[4] | flags]
            return
        self.db.execute(DAILY_UPSERT, (dev, day, self_mwh, gen_mwh, co2_g, readings, flags))

    def note_quarantined(self, dev: str, site: str) -> None:
        self.db.execute(
            "INSERT INTO devices (dev, site, quarantined) VALUES (?, ?, 1) "
            "ON CONFLICT (dev) DO UPDATE SET quarantined = devices.quarantined + 1",
            (dev, site),
        )

    def note_status(self, dev: str, site: str, status: str, now_ms: int) -> None:
        self.db.execute(
            "INSERT INTO devices (dev, site, status, status_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (dev) DO UPDATE SET status = excluded.status, status_ms = excluded.status_ms",
            (dev, site, status, now_ms),
        )

    # ------------------------------------------------------------ bookkeeping

    def open_gap(self, dev: str, first: int, last: int, now_ms: int) -> None:
        if self._batch is not None:
            self._batch_gaps(self._batch, dev).append([None, first, last, now_ms, None])
            return
        self.db.execute(
            "INSERT INTO gaps (dev, first_seq, last_seq, opened_ms) VALUES (?, ?, ?, ?)", (dev, first, last, now_ms)
        )

    def fill_gap(self, dev: str, seq: int, now_ms: int) -> bool:
        """Close the open gap holding ``seq``, reopening what is still missing around it."""
        if self._batch is not None:
            for gap in self._batch_gaps(self._batch, dev):
                if gap[4] is None and gap[1] <= seq <= gap[2]:
                    gap[4] = now_ms
                    first, last = gap[1], gap[2]
                    break
            else:
                return False
            if first < seq:
                self.open_gap(dev, first, seq - 1, now_ms)
            if seq < last:
                self.open_gap(dev, seq + 1, last, now_ms + 1 if first < seq else now_ms)
            return True
        row = self.db.execute(
            "SELECT first_seq, last_seq, opened_ms FROM gaps WHERE dev = ? AND closed_ms IS NULL "
            "AND first_seq <= ? AND last_seq >= ?",
            (dev, seq, seq),
        ).fetchone()
        if row is None:
            return False
        first, last, opened = int(row[0]), int(row[1]), int(row[2])
        self.db.execute(
            "UPDATE gaps SET closed_ms = ? WHERE dev = ? AND first_seq = ? AND opened_ms = ?",
            (now_ms, dev, first, opened),
        )
        if first < seq:
            self.open_gap(dev, first, seq - 1, now_ms)
        if seq < last:
            self.open_gap(dev, seq + 1, last, now_ms + 1 if first < seq else now_ms)
        return True

    def open_gaps(self, dev: str | None = None) -> list[tuple[str, int, int]]:
        query = "SELECT dev, first_seq, last_seq FROM gaps WHERE closed_ms IS NULL"
        rows = self.db.execute(
            query + (" AND dev = ?" if dev else "") + " ORDER BY dev, first_seq", (dev,) if dev else ()
        )
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    def quarantine(self, received_ms: int, topic: str, reason: str, detail: str, raw: bytes) -> None:
        self.db.execute(
            "INSERT INTO quarantine (received_ms, topic, reason, detail, raw) VALUES (?, ?, ?, ?, ?)",
            (received_ms, topic, reason, detail[:1000], raw),
        )

    def quarantine_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason")
        return {str(r[0]): int(r[1]) for r in rows}

    def alarm(self, now_ms: int, kind: str, dev: str, detail: str) -> None:
        self.db.execute(
            "INSERT INTO alarms (time_ms, kind, dev, detail) VALUES (?, ?, ?, ?)", (now_ms, kind, dev, detail)
        )

    # --- smart-meter reconciliation (SPEC §13), bookkeeping

    def reconciliation_verdict(self, dev: str, slot_t0: int) -> str | None:
        row = self.db.execute(
            "SELECT verdict FROM reconciliation WHERE dev = ? AND slot_t0 = ?", (dev, slot_t0)
        ).fetchone()
        return None if row is None else str(row[0])

    def record_reconciliation(self, dev: str, verdict: Verdict, now_ms: int) -> bool:
        """Record a slot's verdict; an UNCHECKED one is replaced, a final one never. True if written."""
        grid = verdict.grid or (None, None)
        smart = verdict.smart or (None, None)
        tolerance = verdict.tolerance or (None, None)
        cursor = self.db.execute(
            "INSERT INTO reconciliation (dev, slot_t0, verdict, meter_id, grid_import, grid_export, sm_import, "
            "sm_export, tolerance_import, tolerance_export, detail, time_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (dev, slot_t0) DO UPDATE SET verdict = excluded.verdict, meter_id = excluded.meter_id, "
            "grid_import = excluded.grid_import, grid_export = excluded.grid_export, sm_import = excluded.sm_import, "
            "sm_export = excluded.sm_export, tolerance_import = excluded.tolerance_import, "
            "tolerance_export = excluded.tolerance_export, detail = excluded.detail, time_ms = excluded.time_ms "
            "WHERE reconciliation.verdict = 'UNCHECKED'",
            (
                dev,
                verdict.slot_t0,
                verdict.verdict,
                verdict.meter_id,
                *grid,
                *smart,
                *tolerance,
                verdict.detail,
                now_ms,
            ),
        )
        return bool(cursor.rowcount)

    def reconciliations(self, dev: str | None = None, verdict: str | None = None) -> list[tuple[Any, ...]]:
        """(dev, slot_t0, verdict, meter_id, grid_import, grid_export, sm_import, sm_export,
        tolerance_import, tolerance_export, detail) by device and slot."""
        sql = (
            "SELECT dev, slot_t0, verdict, meter_id, grid_import, grid_export, sm_import, sm_export, "
            "tolerance_import, tolerance_export, detail FROM reconciliation"
        )
        where, args = [], []
        if dev is not None:
            where.append("dev = ?")
            args.append(dev)
        if verdict is not None:
            where.append("verdict = ?")
            args.append(verdict)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [tuple(row) for row in self.db.execute(sql + " ORDER BY dev, slot_t0", tuple(args)).fetchall()]

    def bump(self, name: str, by: int = 1) -> None:
        if self._batch is not None:
            self._batch.stats[name] = self._batch.stats.get(name, 0) + by
            return
        self.db.execute(STATS_UPSERT, (name, by))

    def stat(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM stats WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])


def _head_row(dev: str, head: "ChainHead | None") -> tuple[str, int, bytes, bytes]:
    assert head is not None, "only a head that moved is written"
    return dev, head.seq, head.hash, cbor.dumps([list(channel) for channel in head.channels])
