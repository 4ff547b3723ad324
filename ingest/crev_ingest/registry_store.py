"""The registry's rows (SPEC §8 and §10) in the ledger store.

Every row mirrors a ledger leaf and is only ever inserted, as the reading
rows are; ``crev audit ledger`` checks each against its leaf. Grams move
through ``lot_moves`` alone: an issuance gives a lot's grams to its owner
(from NULL), a retirement takes them out (to NULL), and the market's trades
will move them between accounts, so a holding is a sum of moves and nothing
is ever updated in place. ``issue_cursors`` and ``issued_ahead`` are
bookkeeping: per device, the leaf below which every reading has been
considered for issuance, and the readings past it already issued (late
readings of closed slots, stored after a reading of the slot still open).
"""

from typing import TYPE_CHECKING, Any

from crev.ledger_format import leaf_data

if TYPE_CHECKING:
    from crev_ingest.database import Database

REGISTRY_SCHEMA = """
CREATE TABLE IF NOT EXISTS account_events (
    leaf_idx INTEGER PRIMARY KEY,
    action INTEGER NOT NULL,
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    pubkey BLOB NOT NULL,
    kid BLOB NOT NULL,
    disclosed INTEGER NOT NULL,
    role INTEGER NOT NULL,
    time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS account_events_account ON account_events (account, leaf_idx);
CREATE TABLE IF NOT EXISTS site_events (
    leaf_idx INTEGER PRIMARY KEY,
    action INTEGER NOT NULL,
    site TEXT NOT NULL,
    owner TEXT NOT NULL,
    place TEXT NOT NULL,
    devices TEXT NOT NULL,
    types TEXT NOT NULL,
    factor_mg INTEGER NOT NULL,
    factor_label TEXT NOT NULL,
    floor INTEGER,
    time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS site_events_site ON site_events (site, leaf_idx);
CREATE TABLE IF NOT EXISTS site_devices (
    dev TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    leaf_idx INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS issuances (
    leaf_idx INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    dev TEXT NOT NULL,
    slot INTEGER NOT NULL,
    supplement INTEGER NOT NULL,
    owner TEXT NOT NULL,
    place TEXT NOT NULL,
    factor_mg INTEGER NOT NULL,
    factor_label TEXT NOT NULL,
    readings INTEGER NOT NULL,
    time INTEGER NOT NULL,
    UNIQUE (dev, slot, supplement)
);
CREATE INDEX IF NOT EXISTS issuances_site ON issuances (site, slot);
CREATE TABLE IF NOT EXISTS lots (
    issuance_leaf INTEGER NOT NULL,
    lot_index INTEGER NOT NULL,
    type TEXT NOT NULL,
    self_mwh INTEGER NOT NULL,
    carry_in INTEGER NOT NULL,
    grams INTEGER NOT NULL,
    carry_out INTEGER NOT NULL,
    dev TEXT NOT NULL,
    PRIMARY KEY (issuance_leaf, lot_index)
);
CREATE INDEX IF NOT EXISTS lots_carry ON lots (dev, type, issuance_leaf);
CREATE TABLE IF NOT EXISTS lot_moves (
    leaf_idx INTEGER NOT NULL,
    issuance_leaf INTEGER NOT NULL,
    lot_index INTEGER NOT NULL,
    from_account TEXT,
    to_account TEXT,
    grams INTEGER NOT NULL CHECK (grams > 0),
    PRIMARY KEY (leaf_idx, issuance_leaf, lot_index)
);
CREATE INDEX IF NOT EXISTS lot_moves_to ON lot_moves (to_account);
CREATE INDEX IF NOT EXISTS lot_moves_from ON lot_moves (from_account);
CREATE INDEX IF NOT EXISTS lot_moves_lot ON lot_moves (issuance_leaf, lot_index);
CREATE TABLE IF NOT EXISTS retirements (
    leaf_idx INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    grams INTEGER NOT NULL,
    beneficiary TEXT NOT NULL,
    purpose TEXT NOT NULL,
    year INTEGER NOT NULL,
    time INTEGER NOT NULL,
    statement_hash BLOB NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS retirements_account ON retirements (account);
CREATE TABLE IF NOT EXISTS orders (
    leaf_idx INTEGER PRIMARY KEY,
    side INTEGER NOT NULL,
    account TEXT NOT NULL,
    grams INTEGER NOT NULL,
    price INTEGER NOT NULL,
    cancels INTEGER,
    time INTEGER NOT NULL,
    statement_hash BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS trades (
    leaf_idx INTEGER PRIMARY KEY,
    buy INTEGER NOT NULL,
    sell INTEGER NOT NULL,
    grams INTEGER NOT NULL,
    price INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    buyer TEXT NOT NULL,
    seller TEXT NOT NULL,
    time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS trades_buyer ON trades (buyer);
CREATE INDEX IF NOT EXISTS trades_seller ON trades (seller);
CREATE TABLE IF NOT EXISTS issue_cursors (
    dev TEXT PRIMARY KEY,
    next_leaf INTEGER NOT NULL
);
-- Controllers' sell orders (SPEC §9) as ingest received them over MQTT, verified as
-- the device's, waiting for the market's sequencer: it places them in this order,
-- once their slot is issued, and records here what became of each.
CREATE TABLE IF NOT EXISTS order_inbox (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    dev TEXT NOT NULL,
    data BLOB NOT NULL,
    statement_hash BLOB NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'waiting' CHECK (state IN ('waiting', 'placed', 'refused')),
    order_leaf INTEGER,
    reason TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS order_inbox_waiting ON order_inbox (state, id);
CREATE TABLE IF NOT EXISTS issued_ahead (
    dev TEXT NOT NULL,
    reading_leaf INTEGER NOT NULL,
    PRIMARY KEY (dev, reading_leaf)
);
-- Releases of slots held by a smart-meter mismatch (SPEC §13): type 5 leaves with action 3.
CREATE TABLE IF NOT EXISTS releases (
    leaf_idx INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    dev TEXT NOT NULL,
    slot INTEGER NOT NULL,
    reason TEXT NOT NULL,
    time INTEGER NOT NULL,
    UNIQUE (dev, slot)
);
"""

# A held lot: (issuance_leaf, lot_index, site, dev, type, place, slot, grams held).
HeldLot = tuple[int, int, str, str, str, str, int, int]
# An issuance's rows: (leaf_idx, site, dev, slot, supplement, owner, place, factor_mg, factor_label,
# readings, time, lots as [[type, self_mwh, carry_in, grams, carry_out]]).
IssuanceRow = tuple[int, str, str, int, int, str, str, int, str, int, int, list[list[Any]]]


class RegistryRows:
    """The registry's part of the Store (mixed into ``crev_ingest.store.Store``)."""

    db: "Database"

    # ------------------------------------------------------------ accounts

    def add_account_event(
        self,
        leaf_idx: int,
        action: int,
        account: str,
        name: str,
        pubkey: bytes,
        kid: bytes,
        disclosed: bool,
        role: int,
        time_s: int,
    ) -> None:
        self.db.execute(
            "INSERT INTO account_events (leaf_idx, action, account, name, pubkey, kid, disclosed, role, time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (leaf_idx, action, account, name, pubkey, kid, int(disclosed), role, time_s),
        )

    def account(self, account: str) -> dict[str, Any] | None:
        """The account's latest event: its name, key, disclosure, role and whether it is open."""
        row = self.db.execute(
            "SELECT leaf_idx, action, name, pubkey, disclosed, role, time FROM account_events "
            "WHERE account = ? ORDER BY leaf_idx DESC LIMIT 1",
            (account,),
        ).fetchone()
        if row is None:
            return None
        return {
            "account": account,
            "leaf": int(row[0]),
            "open": int(row[1]) != 3,
            "name": str(row[2]),
            "pubkey": bytes(row[3]),
            "disclosed": bool(row[4]),
            "role": int(row[5]),
            "time": int(row[6]),
        }

    def accounts(self) -> list[str]:
        return [str(r[0]) for r in self.db.execute("SELECT DISTINCT account FROM account_events ORDER BY account")]

    # ------------------------------------------------------------ sites

    def add_site_event(
        self,
        leaf_idx: int,
        action: int,
        site: str,
        owner: str,
        place: str,
        devices_json: str,
        types_json: str,
        factor_mg: int,
        factor_label: str,
        floor: int | None,
        time_s: int,
    ) -> None:
        self.db.execute(
            "INSERT INTO site_events (leaf_idx, action, site, owner, place, devices, types, factor_mg, "
            "factor_label, floor, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (leaf_idx, action, site, owner, place, devices_json, types_json, factor_mg, factor_label, floor, time_s),
        )

    def add_site_device(self, dev: str, site: str, leaf_idx: int) -> None:
        self.db.execute("INSERT INTO site_devices (dev, site, leaf_idx) VALUES (?, ?, ?)", (dev, site, leaf_idx))

    def add_release(self, leaf_idx: int, site: str, dev: str, slot: int, reason: str, time_s: int) -> None:
        self.db.execute(
            "INSERT INTO releases (leaf_idx, site, dev, slot, reason, time) VALUES (?, ?, ?, ?, ?, ?)",
            (leaf_idx, site, dev, slot, reason, time_s),
        )

    def release_leaf(self, dev: str, slot: int) -> int | None:
        """The leaf of the release of the device's slot (SPEC §13), or None."""
        row = self.db.execute("SELECT leaf_idx FROM releases WHERE dev = ? AND slot = ?", (dev, slot)).fetchone()
        return None if row is None else int(row[0])

    def releases(self) -> list[tuple[int, str, str, int, str, int]]:
        """(leaf_idx, site, dev, slot, reason, time) of every release, in ledger order."""
        rows = self.db.execute("SELECT leaf_idx, site, dev, slot, reason, time FROM releases ORDER BY leaf_idx")
        return [(int(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]), int(r[5])) for r in rows]

    def site_event(self, site: str) -> tuple[int, bytes] | None:
        """(leaf_idx, leaf bytes) of the site's latest event."""
        row = self.db.execute(
            "SELECT s.leaf_idx, l.data FROM site_events s JOIN leaves l ON l.idx = s.leaf_idx "
            "WHERE s.site = ? ORDER BY s.leaf_idx DESC LIMIT 1",
            (site,),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def site_event_leaves(self, site: str, before_leaf: int) -> list[tuple[int, bytes]]:
        rows = self.db.execute(
            "SELECT s.leaf_idx, l.data FROM site_events s JOIN leaves l ON l.idx = s.leaf_idx "
            "WHERE s.site = ? AND s.leaf_idx < ? ORDER BY s.leaf_idx",
            (site, before_leaf),
        )
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def site_of_device(self, dev: str) -> str | None:
        row = self.db.execute("SELECT site FROM site_devices WHERE dev = ?", (dev,)).fetchone()
        return None if row is None else str(row[0])

    def site_devices(self) -> list[tuple[str, str]]:
        """(dev, site) of every device that belongs to a site."""
        return [(str(r[0]), str(r[1])) for r in self.db.execute("SELECT dev, site FROM site_devices ORDER BY dev")]

    def sites(self) -> list[str]:
        return [str(r[0]) for r in self.db.execute("SELECT DISTINCT site FROM site_events ORDER BY site")]

    # ------------------------------------------------------------ issuance

    def issue_cursor(self, dev: str) -> int:
        row = self.db.execute("SELECT next_leaf FROM issue_cursors WHERE dev = ?", (dev,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_issue_cursor(self, dev: str, next_leaf: int) -> None:
        self.db.execute(
            "INSERT INTO issue_cursors (dev, next_leaf) VALUES (?, ?) "
            "ON CONFLICT (dev) DO UPDATE SET next_leaf = excluded.next_leaf "
            "WHERE excluded.next_leaf > issue_cursors.next_leaf",
            (dev, next_leaf),
        )

    def latest_sealed_t1(self, dev: str, sealed_size: int) -> int | None:
        """The latest t1 among the device's readings sealed in a block."""
        row = self.db.execute(
            "SELECT t1 FROM readings WHERE dev = ? AND leaf_idx < ? ORDER BY t1 DESC LIMIT 1", (dev, sealed_size)
        ).fetchone()
        return None if row is None else int(row[0])

    def readings_from_leaf(
        self, dev: str, first_leaf: int, sealed_size: int
    ) -> list[tuple[int, int, str | None, bytes | None]]:
        """(leaf_idx, t1, gs, cose) of the device's sealed readings from ``first_leaf``, in leaf order.

        The COSE bytes come only for rows without a gs column (written before the registry existed).
        """
        rows = self.db.execute(
            "SELECT r.leaf_idx, r.t1, r.gs, CASE WHEN r.gs IS NULL THEN (SELECT l.data FROM leaves l "
            "WHERE l.idx = r.leaf_idx) END FROM readings r "
            "WHERE r.dev = ? AND r.leaf_idx >= ? AND r.leaf_idx < ? ORDER BY r.leaf_idx",
            (dev, first_leaf, sealed_size),
        ).fetchall()
        return [(int(i), int(t1), gs, None if leaf is None else leaf_data(bytes(leaf))) for i, t1, gs, leaf in rows]

    def issued_ahead(self, dev: str) -> set[int]:
        return {int(r[0]) for r in self.db.execute("SELECT reading_leaf FROM issued_ahead WHERE dev = ?", (dev,))}

    def set_issued_ahead(self, dev: str, cursor: int, leaves: list[int]) -> None:
        """Forget marks below the cursor (it covers them now); mark ``leaves`` past it as issued."""
        self.db.execute("DELETE FROM issued_ahead WHERE dev = ? AND reading_leaf < ?", (dev, cursor))
        self.db.executemany(
            "INSERT INTO issued_ahead (dev, reading_leaf) VALUES (?, ?)", [(dev, leaf) for leaf in leaves]
        )

    def supplements(self, dev: str, from_slot: int) -> dict[int, int]:
        """How many issuances each of the device's slots from ``from_slot`` on has had."""
        rows = self.db.execute(
            "SELECT slot, count(*) FROM issuances WHERE dev = ? AND slot >= ? GROUP BY slot", (dev, from_slot)
        )
        return {int(r[0]): int(r[1]) for r in rows}

    def carry(self, dev: str, type_path: str) -> int:
        row = self.db.execute(
            "SELECT carry_out FROM lots WHERE dev = ? AND type = ? ORDER BY issuance_leaf DESC LIMIT 1",
            (dev, type_path),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def add_issuance(
        self,
        leaf_idx: int,
        site: str,
        dev: str,
        slot: int,
        supplement: int,
        owner: str,
        place: str,
        factor_mg: int,
        factor_label: str,
        readings: int,
        time_s: int,
        lots: list[list[Any]],
    ) -> None:
        self.add_issuances(
            [(leaf_idx, site, dev, slot, supplement, owner, place, factor_mg, factor_label, readings, time_s, lots)]
        )

    def add_issuances(self, rows: list[IssuanceRow]) -> None:
        """The rows of many issuances at once (an issuance pass writes them together)."""
        self.db.executemany(
            "INSERT INTO issuances (leaf_idx, site, dev, slot, supplement, owner, place, factor_mg, factor_label, "
            "readings, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row[:11] for row in rows],
        )
        self.db.executemany(
            "INSERT INTO lots (issuance_leaf, lot_index, type, self_mwh, carry_in, grams, carry_out, dev) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (row[0], i, lot[0], lot[1], lot[2], lot[3], lot[4], row[2])
                for row in rows
                for i, lot in enumerate(row[11])
            ],
        )
        self.db.executemany(
            "INSERT INTO lot_moves (leaf_idx, issuance_leaf, lot_index, from_account, to_account, grams) "
            "VALUES (?, ?, ?, NULL, ?, ?)",
            [(row[0], row[0], i, row[5], lot[3]) for row in rows for i, lot in enumerate(row[11]) if lot[3] > 0],
        )

    def issuance_leaf(self, leaf_idx: int) -> bytes | None:
        row = self.db.execute(
            "SELECT l.data FROM issuances i JOIN leaves l ON l.idx = i.leaf_idx WHERE i.leaf_idx = ?", (leaf_idx,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def issued_grams(self, site: str | None = None, since_slot: int | None = None) -> int:
        query = "SELECT coalesce(sum(l.grams), 0) FROM lots l JOIN issuances i ON i.leaf_idx = l.issuance_leaf"
        where: list[str] = []
        args: list[object] = []
        if site is not None:
            where.append("i.site = ?")
            args.append(site)
        if since_slot is not None:
            where.append("i.slot >= ?")
            args.append(since_slot)
        if where:
            query += " WHERE " + " AND ".join(where)
        return int(self.db.execute(query, args).fetchone()[0])

    # ------------------------------------------------------------ holdings and retirement

    def holdings(self, account: str) -> list[HeldLot]:
        """The account's lots with grams held, oldest slot first."""
        rows = self.db.execute(
            "SELECT * FROM (SELECT m.issuance_leaf, m.lot_index, i.site, i.dev, l.type, i.place, i.slot, "
            "sum(CASE WHEN m.to_account = ? THEN m.grams ELSE 0 END) - "
            "sum(CASE WHEN m.from_account = ? THEN m.grams ELSE 0 END) AS held "
            "FROM lot_moves m JOIN issuances i ON i.leaf_idx = m.issuance_leaf "
            "JOIN lots l ON l.issuance_leaf = m.issuance_leaf AND l.lot_index = m.lot_index "
            "WHERE m.to_account = ? OR m.from_account = ? "
            "GROUP BY m.issuance_leaf, m.lot_index, i.site, i.dev, l.type, i.place, i.slot) AS held_lots "
            "WHERE held > 0 ORDER BY slot, issuance_leaf, lot_index",
            (account, account, account, account),
        )
        return [(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), int(r[6]), int(r[7])) for r in rows]

    def add_retirement(
        self,
        leaf_idx: int,
        account: str,
        grams: int,
        beneficiary: str,
        purpose: str,
        year: int,
        time_s: int,
        statement_hash: bytes,
        lots: list[list[int]],
    ) -> None:
        self.db.execute(
            "INSERT INTO retirements (leaf_idx, account, grams, beneficiary, purpose, year, time, statement_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (leaf_idx, account, grams, beneficiary, purpose, year, time_s, statement_hash),
        )
        self.db.executemany(
            "INSERT INTO lot_moves (leaf_idx, issuance_leaf, lot_index, from_account, to_account, grams) "
            "VALUES (?, ?, ?, ?, NULL, ?)",
            [(leaf_idx, lot[0], lot[1], account, lot[2]) for lot in lots],
        )

    def retirement_seen(self, statement_hash: bytes) -> bool:
        row = self.db.execute("SELECT 1 FROM retirements WHERE statement_hash = ?", (statement_hash,)).fetchone()
        return row is not None

    def retirement(self, leaf_idx: int) -> tuple[str, bytes] | None:
        """(account, leaf bytes) of the retirement whose id is ``leaf_idx``."""
        row = self.db.execute(
            "SELECT r.account, l.data FROM retirements r JOIN leaves l ON l.idx = r.leaf_idx WHERE r.leaf_idx = ?",
            (leaf_idx,),
        ).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    def retired_grams(self, site: str | None = None) -> int:
        if site is None:
            row = self.db.execute("SELECT coalesce(sum(grams), 0) FROM retirements").fetchone()
        else:
            row = self.db.execute(
                "SELECT coalesce(sum(m.grams), 0) FROM lot_moves m JOIN issuances i ON i.leaf_idx = m.issuance_leaf "
                "WHERE m.to_account IS NULL AND i.site = ?",
                (site,),
            ).fetchone()
        return int(row[0])

    def lot_move_leaves(self, lots: list[tuple[int, int]], before_leaf: int) -> list[int]:
        """Leaves that moved grams of these lots before ``before_leaf`` (issuances excluded)."""
        found: set[int] = set()
        for issuance_leaf, lot_index in lots:
            for row in self.db.execute(
                "SELECT leaf_idx FROM lot_moves WHERE issuance_leaf = ? AND lot_index = ? AND leaf_idx > ? "
                "AND leaf_idx < ?",
                (issuance_leaf, lot_index, issuance_leaf, before_leaf),
            ):
                found.add(int(row[0]))
        return sorted(found)

    # ------------------------------------------------------------ traces

    def leaf(self, idx: int) -> bytes:
        """The encoded leaf ``[type, received_ms, data]`` at ``idx``."""
        row = self.db.execute("SELECT data FROM leaves WHERE idx = ?", (idx,)).fetchone()
        if row is None:
            raise KeyError("no leaf %d" % idx)
        return bytes(row[0])

    def account_event_leaves(self, account: str, before_leaf: int) -> list[int]:
        rows = self.db.execute(
            "SELECT leaf_idx FROM account_events WHERE account = ? AND leaf_idx < ? ORDER BY leaf_idx",
            (account, before_leaf),
        )
        return [int(r[0]) for r in rows]

    # ------------------------------------------------------------ the market (SPEC §9)

    def add_order(
        self, leaf_idx: int, side: int, account: str, grams: int, price: int, cancels: int | None, time_s: int,
        statement_hash: bytes,
    ) -> None:  # fmt: skip
        self.db.execute(
            "INSERT INTO orders (leaf_idx, side, account, grams, price, cancels, time, statement_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (leaf_idx, side, account, grams, price, cancels, time_s, statement_hash),
        )

    def order_seen(self, statement_hash: bytes) -> bool:
        return (
            self.db.execute("SELECT 1 FROM orders WHERE statement_hash = ?", (statement_hash,)).fetchone() is not None
        )

    def add_trade(
        self, leaf_idx: int, buy: int, sell: int, grams: int, price: int, amount: int, buyer: str, seller: str,
        time_s: int, lots: list[list[int]],
    ) -> None:  # fmt: skip
        """A trade's row, and its lot moves from the seller to the buyer."""
        self.db.execute(
            "INSERT INTO trades (leaf_idx, buy, sell, grams, price, amount, buyer, seller, time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (leaf_idx, buy, sell, grams, price, amount, buyer, seller, time_s),
        )
        self.db.executemany(
            "INSERT INTO lot_moves (leaf_idx, issuance_leaf, lot_index, from_account, to_account, grams) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(leaf_idx, lot[0], lot[1], seller, buyer, lot[2]) for lot in lots],
        )

    def trades(self) -> list[tuple[int, int, int, int, int, int, str, str, int]]:
        """(leaf, buy, sell, grams, price, amount, buyer, seller, time) of every trade, in execution order."""
        rows: list[tuple[int, int, int, int, int, int, str, str, int]] = self.db.execute(
            "SELECT leaf_idx, buy, sell, grams, price, amount, buyer, seller, time FROM trades ORDER BY leaf_idx"
        ).fetchall()
        return rows

    def market_leaves(self) -> list[tuple[int, int, int, bytes]]:
        """(leaf_idx, type, received_ms, leaf) of every issuance, order, trade and retirement, in ledger order."""
        rows = self.db.execute(
            "SELECT idx, type, received_ms, data FROM leaves WHERE idx IN (SELECT leaf_idx FROM issuances "
            "UNION ALL SELECT leaf_idx FROM orders UNION ALL SELECT leaf_idx FROM trades "
            "UNION ALL SELECT leaf_idx FROM retirements) ORDER BY idx"
        )
        return [(int(r[0]), int(r[1]), int(r[2]), bytes(r[3])) for r in rows]

    def last_market_leaf(self) -> int:
        """The newest issuance, order, trade or retirement leaf (-1 if none): what the book depends on."""
        row = self.db.execute(
            "SELECT max(m) FROM (SELECT max(leaf_idx) AS m FROM issuances UNION ALL SELECT max(leaf_idx) FROM orders "
            "UNION ALL SELECT max(leaf_idx) FROM trades UNION ALL SELECT max(leaf_idx) FROM retirements) AS newest"
        ).fetchone()
        return -1 if row[0] is None else int(row[0])

    def site_slot_issued(self, site: str, slot: int) -> bool:
        row = self.db.execute("SELECT 1 FROM issuances WHERE site = ? AND slot = ? LIMIT 1", (site, slot)).fetchone()
        return row is not None

    # ------------------------------------------------------------ controllers' orders (SPEC §9)

    def add_inbox_order(self, received_ms: int, dev: str, data: bytes, statement_hash: bytes) -> bool:
        """Keep a controller's verified order for the market; False if these signed bytes are here already."""
        cursor = self.db.execute(
            "INSERT INTO order_inbox (received_ms, dev, data, statement_hash) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (statement_hash) DO NOTHING",
            (received_ms, dev, data, statement_hash),
        )
        return cursor.rowcount == 1

    def waiting_inbox_orders(self, limit: int = 1000) -> list[tuple[int, int, str, bytes]]:
        """(id, received_ms, dev, data) of the controllers' orders still waiting, in order of arrival."""
        rows = self.db.execute(
            "SELECT id, received_ms, dev, data FROM order_inbox WHERE state = 'waiting' ORDER BY id LIMIT ?", (limit,)
        )
        return [(int(r[0]), int(r[1]), str(r[2]), bytes(r[3])) for r in rows]

    def settle_inbox_order(
        self, inbox_id: int, state: str, order_leaf: int | None, reason: str | None, detail: str | None
    ) -> None:
        self.db.execute(
            "UPDATE order_inbox SET state = ?, order_leaf = ?, reason = ?, detail = ? "
            "WHERE id = ? AND state = 'waiting'",
            (state, order_leaf, reason, detail, inbox_id),
        )

    def inbox_orders(self) -> list[dict[str, Any]]:
        """Every controller's order received, with what became of it, newest first."""
        rows = self.db.execute(
            "SELECT id, received_ms, dev, state, order_leaf, reason, detail FROM order_inbox ORDER BY id DESC"
        )
        keys = ("id", "received_ms", "dev", "state", "order", "reason", "detail")
        return [dict(zip(keys, row, strict=True)) for row in rows]
