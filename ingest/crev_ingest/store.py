"""SQLite storage for ingest: readings, time series, gaps, quarantine, the
device registry and the ledger, in one file.

Ledger rows (leaves, nodes, blocks, readings, key events) are only ever
inserted: this module has no UPDATE or DELETE for them. Only the
bookkeeping tables (gaps, stats, alarms) change in place, and a gap's
history is kept as rows too. The Store is the small interface a server
database would implement to take over.
"""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crev_ingest.registry_store import REGISTRY_SCHEMA, RegistryRows

SCHEMA = """
CREATE TABLE IF NOT EXISTS leaves (
    idx INTEGER PRIMARY KEY,
    type INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    data BLOB NOT NULL,
    leaf_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
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
    leaf_idx INTEGER NOT NULL,
    cose BLOB NOT NULL,
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


class Store(RegistryRows):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self.db.executescript(SCHEMA)
        self.db.executescript(REGISTRY_SCHEMA)

    def _migrate(self) -> None:
        """Bring a store written by an older crev up to this schema (columns only ever added)."""
        columns = [row[1] for row in self.db.execute("PRAGMA table_info(readings)")]
        if columns and "gs" not in columns:
            self.db.execute("ALTER TABLE readings ADD COLUMN gs TEXT")

    # ------------------------------------------------------------ transactions

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises."""
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        self.db.execute("ROLLBACK")

    def savepoint(self) -> None:
        self.db.execute("SAVEPOINT message")

    def release(self) -> None:
        self.db.execute("RELEASE message")

    def rollback_to_savepoint(self) -> None:
        self.db.execute("ROLLBACK TO message")
        self.db.execute("RELEASE message")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ ledger rows

    def add_leaf(self, idx: int, leaf_type: int, received_ms: int, data: bytes, leaf_hash: bytes) -> None:
        self.db.execute(
            "INSERT INTO leaves (idx, type, received_ms, data, leaf_hash) VALUES (?, ?, ?, ?, ?)",
            (idx, leaf_type, received_ms, data, leaf_hash),
        )

    def add_nodes(self, nodes: list[tuple[int, int, bytes]]) -> None:
        self.db.executemany("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)

    def node(self, level: int, idx: int) -> bytes:
        row = self.db.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, idx)).fetchone()
        if row is None:
            raise KeyError("no node at level %d index %d" % (level, idx))
        return bytes(row[0])

    def leaf_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM leaves").fetchone()[0])

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
        self.db.execute(
            "INSERT INTO readings (dev, seq, t0, t1, leaf_idx, cose, gs) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (dev, seq, t0, t1, leaf_idx, cose, gs),
        )

    def reading(self, dev: str, seq: int) -> bytes | None:
        row = self.db.execute("SELECT cose FROM readings WHERE dev = ? AND seq = ?", (dev, seq)).fetchone()
        return None if row is None else bytes(row[0])

    def max_seq(self, dev: str) -> int | None:
        row = self.db.execute("SELECT max(seq) FROM readings WHERE dev = ?", (dev,)).fetchone()
        return None if row[0] is None else int(row[0])

    def count_readings_between(self, dev: str, from_s: int, to_s: int) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM readings WHERE dev = ? AND t1 > ? AND t0 < ?", (dev, from_s, to_s)
        ).fetchone()
        return int(row[0])

    def readings_between(self, dev: str, from_s: int, to_s: int) -> Iterator[tuple[int, int, int, bytes]]:
        """(seq, leaf_idx, received_ms, cose) of the readings overlapping [from_s, to_s), by seq."""
        for row in self.db.execute(
            "SELECT r.seq, r.leaf_idx, l.received_ms, r.cose FROM readings r JOIN leaves l ON l.idx = r.leaf_idx "
            "WHERE r.dev = ? AND r.t1 > ? AND r.t0 < ? ORDER BY r.seq",
            (dev, from_s, to_s),
        ):
            yield int(row[0]), int(row[1]), int(row[2]), bytes(row[3])

    def reading_row(self, dev: str, seq: int) -> tuple[int, int, int, bytes] | None:
        """(seq, leaf_idx, received_ms, cose) of one stored reading."""
        row = self.db.execute(
            "SELECT r.seq, r.leaf_idx, l.received_ms, r.cose FROM readings r JOIN leaves l ON l.idx = r.leaf_idx "
            "WHERE r.dev = ? AND r.seq = ?",
            (dev, seq),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]), bytes(row[3]))

    def key_event_leaves(self, dev: str) -> list[tuple[int, bytes]]:
        """(leaf_idx, leaf bytes) of a device's key events, in ledger order."""
        rows = self.db.execute(
            "SELECT k.leaf_idx, l.data FROM key_events k JOIN leaves l ON l.idx = k.leaf_idx "
            "WHERE k.dev = ? ORDER BY k.leaf_idx",
            (dev,),
        )
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def add_series(self, row: tuple[str, int, int, str, int, int, int, int, int, float]) -> None:
        self.db.execute(
            "INSERT INTO series (dev, seq, t1, site, gen_mwh, import_mwh, export_mwh, self_mwh, demand_mwh, co2_g) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    # ------------------------------------------------------------ the fleet (for the dashboard)

    def note_reading(self, dev: str, site: str, t1: int, received_ms: int) -> None:
        self.db.execute(
            "INSERT INTO devices (dev, site, last_t1, last_received_ms, readings) VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT (dev) DO UPDATE SET site = excluded.site, readings = readings + 1, "
            "last_t1 = max(coalesce(last_t1, 0), excluded.last_t1), "
            "last_received_ms = max(coalesce(last_received_ms, 0), excluded.last_received_ms)",
            (dev, site, t1, received_ms),
        )

    def note_daily(self, dev: str, day: str, self_mwh: int, gen_mwh: int, co2_g: float, flags: int) -> None:
        """Today's sums per device, and every flag its readings carried (bitwise or)."""
        self.db.execute(
            "INSERT INTO daily (dev, day, self_mwh, gen_mwh, co2_g, readings, flags) VALUES (?, ?, ?, ?, ?, 1, ?) "
            "ON CONFLICT (dev, day) DO UPDATE SET self_mwh = self_mwh + excluded.self_mwh, "
            "gen_mwh = gen_mwh + excluded.gen_mwh, co2_g = co2_g + excluded.co2_g, readings = readings + 1, "
            "flags = flags | excluded.flags",
            (dev, day, self_mwh, gen_mwh, co2_g, flags),
        )

    def note_quarantined(self, dev: str, site: str) -> None:
        self.db.execute(
            "INSERT INTO devices (dev, site, quarantined) VALUES (?, ?, 1) "
            "ON CONFLICT (dev) DO UPDATE SET quarantined = quarantined + 1",
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
        self.db.execute(
            "INSERT INTO gaps (dev, first_seq, last_seq, opened_ms) VALUES (?, ?, ?, ?)", (dev, first, last, now_ms)
        )

    def fill_gap(self, dev: str, seq: int, now_ms: int) -> bool:
        """Close the open gap holding ``seq``, reopening what is still missing around it."""
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

    def bump(self, name: str, by: int = 1) -> None:
        self.db.execute(
            "INSERT INTO stats (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def stat(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM stats WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])
