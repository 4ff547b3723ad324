"""The durable outbox (SPEC §4): every reading is committed before it is sent.

SQLite in WAL mode with ``synchronous=FULL``: a reading whose commit returned
survives a power cut. A reading leaves the outbox only when the broker
acknowledged it (PUBACK). The chain head (seq and prev) is rebuilt from the
last committed reading, which is kept in ``chain`` even after it is
acknowledged, so a crash can never reuse a seq or break the prev chain.

The controller's sell orders (SPEC §9) and its acknowledgements of commands
(SPEC §12) live here too, under the same rules.
``slot_self`` sums each slot's self-consumption per source in the same
transaction that commits a reading, so a crash neither loses nor doubles a
reading's share. Closing a slot is one transaction: its orders, their
(slot, type) in ``order_signed``, the slot as ``last_closed_slot``, and the
removal of its sums commit together or not at all, so a slot is never
skipped and no (slot, type) is ever signed twice.
"""

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from crev.reading import ChainHead
from crev.registry_format import slot_of
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
CREATE TABLE IF NOT EXISTS slot_self (
    slot INTEGER NOT NULL,
    source INTEGER NOT NULL,
    self_mwh INTEGER NOT NULL,
    PRIMARY KEY (slot, source)
);
CREATE TABLE IF NOT EXISTS market_state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    last_closed_slot INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS order_signed (
    slot INTEGER NOT NULL,
    type_path TEXT NOT NULL,
    time_s INTEGER NOT NULL,
    PRIMARY KEY (slot, type_path)
);
-- AUTOINCREMENT: an id is never reused after its order was acknowledged,
-- so "everything after the last id handed to MQTT" never skips a new order.
CREATE TABLE IF NOT EXISTS order_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slot INTEGER NOT NULL,
    type_path TEXT NOT NULL,
    committed_at REAL NOT NULL,
    cose BLOB NOT NULL
);
-- Site control (SPEC §12): the highest seq accepted from each operator, the
-- lasting commands in force (resumed after a restart if they have not
-- expired), and the signed acknowledgements not yet acknowledged by the broker.
CREATE TABLE IF NOT EXISTS control_seq (
    operator TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS control_active (
    digest BLOB PRIMARY KEY,
    cose BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ack_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    committed_at REAL NOT NULL,
    cose BLOB NOT NULL
);
"""

# Signs a closing slot's orders from its self-consumption per source; returns [(type path, time_s, cose)].
OrderSigner = Callable[[int, dict[int, int]], list[tuple[str, int, bytes]]]


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

    def commit(self, seq: int, t1: int, cose: bytes, self_by_source: dict[int, int] | None = None) -> None:
        """Durably store a signed reading and make it the chain head, atomically.

        With ``self_by_source`` (the reading's self-consumption per generation
        source, in mWh), also add it to the sums of the reading's slot.
        """
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
            if self_by_source is not None:
                self.db.executemany(
                    "INSERT INTO slot_self (slot, source, self_mwh) VALUES (?, ?, ?) "
                    "ON CONFLICT (slot, source) DO UPDATE SET self_mwh = self_mwh + excluded.self_mwh",
                    [(slot_of(t1), source, mwh) for source, mwh in sorted(self_by_source.items())],
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

    # ------------------------------------------------------------ orders

    def last_closed_slot(self) -> int | None:
        row = self.db.execute("SELECT last_closed_slot FROM market_state").fetchone()
        return None if row is None else int(row[0])

    def slots_before(self, open_slot: int) -> list[int]:
        """Slots with readings that start before ``open_slot``: closed, but not yet handled."""
        rows = self.db.execute("SELECT DISTINCT slot FROM slot_self WHERE slot < ? ORDER BY slot", (open_slot,))
        return [int(r[0]) for r in rows]

    def close_slot(self, slot: int, sign: OrderSigner) -> list[tuple[int, str, int, bytes]]:
        """Close one slot: sign its orders and commit them with the slot's closure, atomically.

        Returns ``[(order id, type path, time_s, cose)]``. A slot at or before
        the last closed one only has its stale sums dropped: it was handled.
        """
        committed: list[tuple[int, str, int, bytes]] = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            last = self.last_closed_slot()
            if last is None or slot > last:
                rows = self.db.execute("SELECT source, self_mwh FROM slot_self WHERE slot = ?", (slot,))
                sums = {int(r[0]): int(r[1]) for r in rows}
                for type_path, time_s, cose in sign(slot, sums):
                    # The primary key refuses a second (slot, type), whatever the caller does.
                    self.db.execute(
                        "INSERT INTO order_signed (slot, type_path, time_s) VALUES (?, ?, ?)", (slot, type_path, time_s)
                    )
                    cursor = self.db.execute(
                        "INSERT INTO order_pending (slot, type_path, committed_at, cose) VALUES (?, ?, ?, ?)",
                        (slot, type_path, time.time(), cose),
                    )
                    assert cursor.lastrowid is not None
                    committed.append((cursor.lastrowid, type_path, time_s, cose))
                self.db.execute(
                    "INSERT INTO market_state (id, last_closed_slot) VALUES (0, ?) "
                    "ON CONFLICT (id) DO UPDATE SET last_closed_slot = excluded.last_closed_slot",
                    (slot,),
                )
            self.db.execute("DELETE FROM slot_self WHERE slot = ?", (slot,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return committed

    def forget_slot_sums(self) -> None:
        """Selling was switched off: sums gathered before must not become orders if it is switched on again."""
        self.db.execute("DELETE FROM slot_self")

    def orders_after(self, order_id: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self.db.execute("SELECT id, cose FROM order_pending WHERE id > ? ORDER BY id LIMIT ?", (order_id, limit))
        return [(r[0], bytes(r[1])) for r in rows]

    def acknowledge_orders(self, ids: list[int]) -> None:
        """The broker has these orders: they may leave the outbox (their (slot, type) stays recorded)."""
        if ids:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM order_pending WHERE id = ?", [(i,) for i in ids])
            self.db.execute("COMMIT")

    def order_depth(self) -> int:
        row = self.db.execute("SELECT count(*) FROM order_pending").fetchone()
        return int(row[0])

    # ------------------------------------------------------------ site control

    def control_seqs(self) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in self.db.execute("SELECT operator, seq FROM control_seq")}

    def control_active(self) -> list[bytes]:
        return [bytes(r[0]) for r in self.db.execute("SELECT cose FROM control_active ORDER BY rowid")]

    def commit_control(
        self,
        seq: tuple[str, int] | None = None,
        active: list[tuple[bytes, bytes]] | None = None,
        acks: list[bytes] | None = None,
    ) -> None:
        """In one transaction: an operator's new last seq, the whole set of (digest, cose) in force, new acks.

        A seq never goes down, whatever the caller passes.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if seq is not None:
                self.db.execute(
                    "INSERT INTO control_seq (operator, seq) VALUES (?, ?) "
                    "ON CONFLICT (operator) DO UPDATE SET seq = max(seq, excluded.seq)",
                    seq,
                )
            if active is not None:
                self.db.execute("DELETE FROM control_active")
                self.db.executemany("INSERT INTO control_active (digest, cose) VALUES (?, ?)", active)
            for cose in acks or ():
                self.db.execute("INSERT INTO ack_pending (committed_at, cose) VALUES (?, ?)", (time.time(), cose))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def acks_after(self, ack_id: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self.db.execute("SELECT id, cose FROM ack_pending WHERE id > ? ORDER BY id LIMIT ?", (ack_id, limit))
        return [(r[0], bytes(r[1])) for r in rows]

    def acknowledge_acks(self, ids: list[int]) -> None:
        if ids:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM ack_pending WHERE id = ?", [(i,) for i in ids])
            self.db.execute("COMMIT")

    def ack_depth(self) -> int:
        row = self.db.execute("SELECT count(*) FROM ack_pending").fetchone()
        return int(row[0])

    def close(self) -> None:
        self.db.close()
