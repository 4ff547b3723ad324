"""The dashboard's questions to the store, over a read-only connection per thread.

Fleet-wide numbers come from the ``devices`` and ``daily`` tables that
ingest keeps up to date with every reading, so the fleet view stays fast
with 10,000 devices and millions of readings; a site's charts read the
``series`` table through its (site, t1) index.

C-REV (SPEC §8, §10) comes from the registry's rows in the same store. A
dashboard site is the devices the ingest config's ``[sites]`` puts in it,
and a registry site may use other ids or group devices otherwise, so a
dashboard site's C-REV is that of its devices' issuances: their lots' grams
issued, and the grams of those lots that retirements took out (``lot_moves``
to no account). Both go through the issuances' (dev, slot) index.
"""

import threading
import time
from pathlib import Path
from typing import Any

from crev import dgcc, reconcile
from crev_ingest.database import Database, connect

DAY_S = 86400

SORTS = {
    "dev": "d.dev",
    "site": "d.site",
    "status": "d.status",
    "last_reading": "d.last_t1",
    "today_self": "today_self_mwh",
    "quarantined": "d.quarantined",
}


class Queries:
    def __init__(self, location: Path | str) -> None:
        self.location = location
        self.local = threading.local()

    def db(self) -> Database:
        connection: Database | None = getattr(self.local, "db", None)
        if connection is None:
            connection = connect(self.location, read_only=True)
            self.local.db = connection
        return connection

    def fleet(
        self,
        day: str,
        day_start: int,
        page: int,
        page_size: int,
        sort: str,
        descending: bool,
        search: str,
        status: str | None,
    ) -> dict[str, Any]:
        where = ["(d.dev LIKE ? ESCAPE '!' OR d.site LIKE ? ESCAPE '!')"]
        pattern = "%" + search.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
        params: list[Any] = [pattern, pattern]
        if status:
            where.append("d.status = ?")
            params.append(status)
        clause = " AND ".join(where)
        db = self.db()
        total = db.execute("SELECT count(*) FROM devices d WHERE " + clause, params).fetchone()[0]
        order = "%s %s, d.dev" % (SORTS[sort], "DESC" if descending else "ASC")
        rows = db.execute(
            "SELECT d.dev, d.site, d.status, d.status_ms, d.last_t1, d.quarantined, "
            "coalesce(y.self_mwh, 0) AS today_self_mwh, coalesce(y.co2_g, 0) "
            "FROM devices d LEFT JOIN daily y ON y.dev = d.dev AND y.day = ? WHERE "
            + clause
            + " ORDER BY "
            + order
            + " LIMIT ? OFFSET ?",
            [day, *params, page_size, (page - 1) * page_size],
        ).fetchall()
        issued = self.issued_today([str(r[0]) for r in rows], day_start)
        now = time.time()
        items = [
            {
                "dev": r[0],
                "site": r[1],
                "status": r[2],
                "last_reading_age_s": None if r[4] is None else max(0, int(now - r[4])),
                "today_self_kwh": r[6] / 1e6,
                "today_co2_kg": r[7] / 1000,
                "crev_issued_today_g": issued.get(r[0], 0),
                "quarantined": r[5],
            }
            for r in rows
        ]
        summary = db.execute(
            "SELECT count(*), sum(CASE WHEN status = 'online' THEN 1 ELSE 0 END), "
            "sum(CASE WHEN status = 'offline' THEN 1 ELSE 0 END), sum(quarantined) FROM devices"
        ).fetchone()
        today = db.execute(
            "SELECT coalesce(sum(self_mwh), 0), coalesce(sum(co2_g), 0) FROM daily WHERE day = ?", (day,)
        )
        self_mwh, co2_g = today.fetchone()
        return {
            "total": total,
            "page": page,
            "page_size": page_size,
            "items": items,
            "summary": {
                "devices": summary[0],
                "online": summary[1] or 0,
                "offline": summary[2] or 0,
                "quarantined": summary[3] or 0,
                "today_self_kwh": self_mwh / 1e6,
                "today_co2_kg": co2_g / 1000,
            },
        }

    def issued_today(self, devs: list[str], day_start: int) -> dict[str, int]:
        """Grams of C-REV issued per device for the slots that start on the day from ``day_start``."""
        if not devs:
            return {}
        rows = self.db().execute(
            "SELECT i.dev, sum(l.grams) FROM issuances i JOIN lots l ON l.issuance_leaf = i.leaf_idx "
            "WHERE i.dev IN (%s) AND i.slot >= ? AND i.slot < ? GROUP BY i.dev" % ",".join("?" * len(devs)),
            [*devs, day_start, day_start + DAY_S],
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def crev(self, site: str, day_start: int) -> dict[str, int]:
        """The site's C-REV in grams: issued for the day from ``day_start``, issued and retired in all.

        The site's devices come from the ``devices`` table (its site index);
        one statement is one snapshot, so the retired grams never include a
        lot that the issued grams do not. CROSS JOIN keeps SQLite from
        starting at ``lot_moves_to``: every retirement's moves have no
        account, so that index would read the whole registry's retirements.
        """
        db = self.db()
        devs = "SELECT dev FROM devices WHERE site = ?"
        join = "CROSS JOIN" if db.dialect == "sqlite" else "JOIN"  # PostgreSQL's CROSS JOIN takes no ON
        today, total, retired = db.execute(
            "SELECT "
            "(SELECT coalesce(sum(l.grams), 0) FROM issuances i JOIN lots l ON l.issuance_leaf = i.leaf_idx "
            "WHERE i.dev IN (%s) AND i.slot >= ? AND i.slot < ?), "
            "(SELECT coalesce(sum(l.grams), 0) FROM issuances i JOIN lots l ON l.issuance_leaf = i.leaf_idx "
            "WHERE i.dev IN (%s)), "
            "(SELECT coalesce(sum(m.grams), 0) FROM issuances i %s lot_moves m "
            "ON m.issuance_leaf = i.leaf_idx WHERE i.dev IN (%s) AND m.to_account IS NULL)" % (devs, devs, join, devs),
            (site, day_start, day_start + DAY_S, site, site),
        ).fetchone()
        return {
            "crev_issued_today_g": int(today),
            "crev_issued_total_g": int(total),
            "crev_retired_total_g": int(retired),
        }

    def site(self, site: str, day: str, day_start: int, since: int) -> dict[str, Any] | None:
        db = self.db()
        devices = db.execute(
            "SELECT dev, status, last_t1, quarantined FROM devices WHERE site = ? ORDER BY dev", (site,)
        ).fetchall()
        if not devices:
            return None
        g, i, e, s, d = db.execute(
            "SELECT coalesce(sum(gen_mwh), 0), coalesce(sum(import_mwh), 0), coalesce(sum(export_mwh), 0), "
            "coalesce(sum(self_mwh), 0), coalesce(sum(demand_mwh), 0) FROM series WHERE site = ? AND t1 > ?",
            (site, since),
        ).fetchone()
        names = [row[0] for row in devices]
        marks = ",".join("?" * len(names))
        gaps = db.execute(
            "SELECT dev, first_seq, last_seq, opened_ms FROM gaps WHERE closed_ms IS NULL AND dev IN (%s) "
            "ORDER BY dev, first_seq" % marks,
            names,
        ).fetchall()
        flags = 0
        for (value,) in db.execute(
            "SELECT flags FROM daily WHERE day = ? AND dev IN (%s)" % marks, [day, *names]
        ).fetchall():
            flags |= int(value)
        now = time.time()
        return {
            **self.crev(site, day_start),
            "site": site,
            "flags_today": dgcc.flag_names(flags),
            "devices": [
                {
                    "dev": r[0],
                    "status": r[1],
                    "last_reading_age_s": None if r[2] is None else max(0, int(now - r[2])),
                    "quarantined": r[3],
                }
                for r in devices
            ],
            "last_24h": {
                "gen_kwh": g / 1e6,
                "import_kwh": i / 1e6,
                "export_kwh": e / 1e6,
                "self_kwh": s / 1e6,
                "demand_kwh": d / 1e6,
            },
            "self_mwh": s,
            "demand_mwh": d,
            "import_mwh": i,
            "gaps": [{"dev": r[0], "first_seq": r[1], "last_seq": r[2], "opened_ms": r[3]} for r in gaps],
        }

    def series(self, site: str, since: int, slot_s: int) -> list[dict[str, Any]]:
        rows = (
            self.db()
            .execute(
                "SELECT t1 / ? * ? AS slot, sum(gen_mwh), sum(import_mwh), sum(export_mwh), sum(self_mwh), "
                "sum(demand_mwh) FROM series WHERE site = ? AND t1 > ? GROUP BY slot ORDER BY slot",
                (slot_s, slot_s, site, since),
            )
            .fetchall()
        )
        # mWh over a slot of slot_s seconds is an average power of mWh * 3.6 / slot_s watts.
        return [
            {
                "t": r[0],
                "gen_kwh": r[1] / 1e6,
                "import_kwh": r[2] / 1e6,
                "export_kwh": r[3] / 1e6,
                "self_kwh": r[4] / 1e6,
                "demand_kwh": r[5] / 1e6,
                "gen_w": r[1] * 3.6 / slot_s,
                "self_w": r[4] * 3.6 / slot_s,
                "demand_w": r[5] * 3.6 / slot_s,
            }
            for r in rows
        ]

    def reconciliation(self, site: str, limit: int) -> dict[str, Any] | None:
        """The smart-meter verdicts (SPEC §13) of the site's devices: each one's ``limit`` newest slots and its
        counts per verdict in all; None for a site with no device.

        Only devices with a verdict are listed (a device without a smart meter has none), so a site whose
        devices have no smart meter gets an empty list. Reads the ``reconciliation`` table that ingest
        writes (newest slots first, through its (dev, slot_t0) key) and the registry's ``releases`` (one
        per device and slot at most) for whether a held slot was released, and why.
        """
        db = self.db()
        names = [str(r[0]) for r in db.execute("SELECT dev FROM devices WHERE site = ? ORDER BY dev", (site,))]
        if not names:
            return None
        marks = ",".join("?" * len(names))
        counts: dict[str, dict[str, int]] = {}
        for dev, verdict, n in db.execute(
            "SELECT dev, verdict, count(*) FROM reconciliation WHERE dev IN (%s) GROUP BY dev, verdict" % marks,
            names,
        ):
            counts.setdefault(str(dev), {})[str(verdict)] = int(n)
        held = {
            str(r[0]): int(r[1])
            for r in db.execute(
                "SELECT c.dev, count(*) FROM reconciliation c LEFT JOIN releases r ON r.dev = c.dev "
                "AND r.slot = c.slot_t0 WHERE c.dev IN (%s) AND c.verdict = ? AND r.leaf_idx IS NULL GROUP BY c.dev"
                % marks,
                [*names, reconcile.SMART_METER_MISMATCH],
            )
        }
        devices = []
        for dev in names:
            if dev not in counts:
                continue
            rows = db.execute(
                "SELECT c.slot_t0, c.verdict, c.meter_id, c.grid_import, c.grid_export, c.sm_import, c.sm_export, "
                "c.tolerance_import, c.tolerance_export, c.detail, r.leaf_idx, r.reason "
                "FROM reconciliation c LEFT JOIN releases r ON r.dev = c.dev AND r.slot = c.slot_t0 "
                "WHERE c.dev = ? ORDER BY c.slot_t0 DESC LIMIT ?",
                (dev, limit),
            ).fetchall()
            devices.append(
                {
                    "dev": dev,
                    "counts": {verdict: counts[dev].get(verdict, 0) for verdict in reconcile.VERDICTS},
                    "held": held.get(dev, 0),
                    "slots": [
                        {
                            "slot_t0": int(r[0]),
                            "verdict": str(r[1]),
                            "meter_id": r[2],
                            "grid_import_mwh": r[3],
                            "grid_export_mwh": r[4],
                            "sm_import_mwh": r[5],
                            "sm_export_mwh": r[6],
                            "tolerance_import_mwh": r[7],
                            "tolerance_export_mwh": r[8],
                            "detail": str(r[9]),
                            "released": r[10] is not None,
                            "release_leaf": None if r[10] is None else int(r[10]),
                            "release_reason": r[11],
                        }
                        for r in rows
                    ],
                }
            )
        totals = {verdict: sum(found.get(verdict, 0) for found in counts.values()) for verdict in reconcile.VERDICTS}
        return {
            "site": site,
            "limit": limit,
            "counts": totals,
            "held": sum(held.values()),
            "devices": devices,
        }

    def quarantine(self) -> dict[str, int]:
        rows = self.db().execute("SELECT reason, count(*) FROM quarantine GROUP BY reason ORDER BY reason")
        return {str(r[0]): int(r[1]) for r in rows}

    def witnesses(self, configured: list[tuple[str, str, str]]) -> dict[str, Any]:
        """The ledger's newest block and, per witness, what it last cosigned and how ingest's last exchange went.

        ``configured``: (name, url, vkey) of each ``[[witness]]`` in ingest.toml. Witnesses the store
        still has rows of but the config no longer names are listed too, without a URL. Reads only the
        ``witness_state`` and ``cosignatures`` tables that ingest's witnessing thread writes.
        """
        db = self.db()
        newest = db.execute("SELECT height, tree_size FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        ledger_size = int(newest[1]) if newest is not None else 0
        states = {
            str(r[0]): (int(r[1]), int(r[2]), r[3])
            for r in db.execute("SELECT witness, size, checked_ms, error FROM witness_state")
        }
        named = {name for name, _url, _vkey in configured}
        listed: list[tuple[str, str | None, str | None]] = [
            *configured,
            *((name, None, None) for name in sorted(states) if name not in named),
        ]
        items = []
        for name, url, vkey in listed:
            # The newest block this witness cosigned: a backward walk of the (height, witness) key that
            # stops at its first row, a few rows back while the witness keeps up.
            cosigned = db.execute(
                "SELECT height, size, timestamp FROM cosignatures WHERE witness = ? ORDER BY height DESC LIMIT 1",
                (name,),
            ).fetchone()
            state = states.get(name)
            size = int(cosigned[1]) if cosigned is not None else 0
            items.append(
                {
                    "witness": name,
                    "url": url,
                    "vkey": vkey,
                    "configured": url is not None,
                    "status": "not contacted" if state is None else "up" if state[2] is None else "retrying",
                    "error": None if state is None else state[2],
                    "checked_ms": None if state is None else state[1],
                    "cosigned_size": size,
                    "cosigned_height": int(cosigned[0]) if cosigned is not None else None,
                    "cosigned_at": int(cosigned[2]) if cosigned is not None else None,
                    "behind": max(0, ledger_size - size),
                }
            )
        return {
            "ledger_size": ledger_size,
            "ledger_height": int(newest[0]) if newest is not None else None,
            "witnesses": items,
        }

    def version(self) -> tuple[int, int, int]:
        """Changes when anything the views show changes: leaves, statuses, quarantine."""
        db = self.db()
        leaves = db.execute("SELECT coalesce(max(idx), -1) FROM leaves").fetchone()[0]
        status = db.execute("SELECT coalesce(max(status_ms), 0) FROM devices").fetchone()[0]
        quarantined = db.execute("SELECT coalesce(max(id), 0) FROM quarantine").fetchone()[0]
        return int(leaves), int(status), int(quarantined)
