"""The witness's state in SQLite: per log, the latest cosigned checkpoint; and the evidence.

WAL with synchronous=FULL, so a committed transaction is on disk when commit
returns: the witness answers only after that (tlog-witness: "The witness MUST
persist the new checkpoint before responding"). BEGIN IMMEDIATE takes the
write lock before the old size is read, so checking it and recording the new
checkpoint are one atomic step, even against a second process on the file.
"""

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from crev_witness import ConfigError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latest (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,          -- the checkpoint with the log's signatures and our cosignature
    cosigned_at INTEGER NOT NULL -- the cosignature's timestamp
);
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    reason TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    latest_size INTEGER NOT NULL,
    latest_root BLOB NOT NULL,
    latest_note TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,          -- the submitted checkpoint, with every signature it carried
    body TEXT NOT NULL,          -- the whole add-checkpoint request
    UNIQUE (origin, reason, note)
);
"""


@dataclass(frozen=True)
class LogState:
    """The latest checkpoint cosigned for one log."""

    size: int
    root: bytes
    note: str
    cosigned_at: int


@dataclass(frozen=True)
class Evidence:
    """A validly signed checkpoint the witness refused because it contradicts what it cosigned."""

    origin: str
    reason: str
    received_at: int
    latest_size: int
    latest_root: bytes
    latest_note: str
    size: int
    root: bytes
    note: str
    body: str


class WitnessState:
    """One SQLite file; safe to share between threads (a lock serialises the connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self.db.execute("PRAGMA synchronous=FULL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ConfigError(
                    "%s is witness state of version %d; this crev knows version %d" % (path, version, SCHEMA_VERSION)
                )
            self.db.executescript(_SCHEMA)
            self.db.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
        except sqlite3.Error as err:
            raise ConfigError("cannot open the witness state %s: %s; check [witness] state" % (path, err)) from err
        if str(mode).lower() != "wal":
            raise ConfigError("%s cannot be put in WAL mode; keep [witness] state on a local disk" % path)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic, durable step: BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on an error)."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def latest(self, origin: str) -> LogState | None:
        with self._lock:
            row = self.db.execute(
                "SELECT size, root, note, cosigned_at FROM latest WHERE origin = ?", (origin,)
            ).fetchone()
        return None if row is None else LogState(int(row[0]), bytes(row[1]), str(row[2]), int(row[3]))

    def set_latest(self, origin: str, state: LogState) -> None:
        with self._lock:
            self.db.execute(
                "INSERT INTO latest (origin, size, root, note, cosigned_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, "
                "note = excluded.note, cosigned_at = excluded.cosigned_at",
                (origin, state.size, state.root, state.note, state.cosigned_at),
            )

    def keep_evidence(self, evidence: Evidence) -> bool:
        """Store ``evidence``; False when the same checkpoint was already kept for the same reason."""
        with self._lock:
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO evidence (origin, reason, received_at, latest_size, latest_root, latest_note, "
                "size, root, note, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    evidence.origin,
                    evidence.reason,
                    evidence.received_at,
                    evidence.latest_size,
                    evidence.latest_root,
                    evidence.latest_note,
                    evidence.size,
                    evidence.root,
                    evidence.note,
                    evidence.body,
                ),
            )
            return cursor.rowcount == 1

    def evidence(self, origin: str | None = None) -> list[Evidence]:
        """The kept evidence, oldest first."""
        query = (
            "SELECT origin, reason, received_at, latest_size, latest_root, latest_note, size, root, note, body "
            "FROM evidence"
        )
        with self._lock:
            if origin is None:
                rows = self.db.execute(query + " ORDER BY id").fetchall()
            else:
                rows = self.db.execute(query + " WHERE origin = ? ORDER BY id", (origin,)).fetchall()
        return [
            Evidence(
                origin=str(r[0]),
                reason=str(r[1]),
                received_at=int(r[2]),
                latest_size=int(r[3]),
                latest_root=bytes(r[4]),
                latest_note=str(r[5]),
                size=int(r[6]),
                root=bytes(r[7]),
                note=str(r[8]),
                body=str(r[9]),
            )
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self.db.close()
