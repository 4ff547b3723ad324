"""The durable outbox (SPEC §4): every reading is committed before it is sent.

SQLite in WAL mode with ``synchronous=FULL``: a reading whose commit returned
survives a power cut. A reading leaves the outbox only when the broker
acknowledged it (PUBACK). The chain head (seq and prev) is rebuilt from the
last committed reading, which is kept in ``chain`` even after it is
acknowledged, so a crash can never reuse a seq or break the prev chain.
"""

import sqlite3
import time
from pathlib import Path

from crev.reading import ChainHead
from crev_gateway import OutboxError

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY,
    t1 INTEGER NOT NULL,
    committed_at REAL NOT NULL,
    cose BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chain (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    device TEXT NOT NULL,
    kid BLOB NOT NULL,
    last_cose BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS owner (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    device TEXT NOT NULL,
    kid BLOB NOT NULL
);
"""


class Outbox:
    def __init__(self, path: Path, device_id: str, kid: bytes) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise OutboxError("outbox %s cannot be opened: %s" % (path, err)) from err
        owner = self.db.execute("SELECT device, kid FROM owner").fetchone()
        if owner is None:
            self.db.execute("INSERT INTO owner (id, device, kid) VALUES (0, ?, ?)", (device_id, kid))
        elif owner[0] != device_id or bytes(owner[1]) != kid:
            raise OutboxError(
                "outbox %s belongs to device %s with key %s, not %s with key %s; "
                "restore the original key or move the outbox away"
                % (path, owner[0], bytes(owner[1]).hex(), device_id, kid.hex())
            )
        self.device_id = device_id
        self.kid = kid

    def head(self) -> ChainHead:
        row = self.db.execute("SELECT last_cose FROM chain").fetchone()
        return ChainHead() if row is None else ChainHead.after(bytes(row[0]))

    def commit(self, seq: int, t1: int, cose: bytes) -> None:
        """Durably store a signed reading and make it the chain head, atomically."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "INSERT INTO pending (seq, t1, committed_at, cose) VALUES (?, ?, ?, ?)", (seq, t1, time.time(), cose)
            )
            self.db.execute(
                "INSERT INTO chain (id, device, kid, last_cose) VALUES (0, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET last_cose = excluded.last_cose",
                (self.device_id, self.kid, cose),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def acknowledge(self, seqs: list[int]) -> None:
        """The broker has these readings: they may leave the outbox."""
        if seqs:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM pending WHERE seq = ?", [(s,) for s in seqs])
            self.db.execute("COMMIT")

    def pending_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self.db.execute("SELECT seq, cose FROM pending WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [(r[0], bytes(r[1])) for r in rows]

    def depth(self) -> int:
        row = self.db.execute("SELECT count(*) FROM pending").fetchone()
        return int(row[0])

    def oldest_committed_at(self) -> float | None:
        row = self.db.execute("SELECT min(committed_at) FROM pending").fetchone()
        return None if row[0] is None else float(row[0])

    def close(self) -> None:
        self.db.close()
