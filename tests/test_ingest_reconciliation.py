"""ingest reconciles each slot with the smart meter as readings arrive (SPEC §13).

Readings signed like a gateway's (one a minute, key 12 carrying the smart
meter's latest fixed-time values) go through ingest's real path (check,
integrate in batches, commit) into a real store, SQLite and PostgreSQL.
With a 0.5 % drift the slots pass; with 3 % they are SMART_METER_MISMATCH,
with an alarm each."""

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import reconcile_support as support
from ingest_support import NOW, LocalIngest
from reconcile_support import S0

from crev import reconcile
from crev.keys import SigningKey
from crev.reading import ChainHead
from crev_ingest import ConfigError
from crev_ingest.config import parse
from crev_ingest.integrate import Item, integrate
from crev_ingest.store import SCHEMA_VERSION, Store

KEY = SigningKey(bytes([7]) * 32)
DEV = "dgc-smart-0001"


def signed_readings(drift_permille: int, minutes: int = 95) -> list[bytes]:
    return support.signed_readings(KEY, DEV, drift_permille, minutes)


def feed(ingest: LocalIngest, readings: list[bytes], batch: int = 7) -> None:
    support.feed(ingest, DEV, readings, batch)


@pytest.fixture
def ingest(tmp_path: Path, store_url: str | None) -> Any:
    local = LocalIngest(tmp_path, store_url)
    local.config.reconciliation = reconcile.Params(step_mwh=1000, digits=8)
    local._key_event(1, DEV, KEY.public_key, NOW - 86400)
    yield local
    local.store.close()


def verdicts(ingest: LocalIngest) -> dict[int, tuple[Any, ...]]:
    return {row[1]: row for row in ingest.store.reconciliations(DEV)}


def alarms(ingest: LocalIngest) -> list[tuple[str, str, str]]:
    rows = ingest.store.db.execute("SELECT kind, dev, detail FROM alarms ORDER BY id").fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def test_half_a_percent_passes(ingest: LocalIngest) -> None:
    feed(ingest, signed_readings(5))
    found = verdicts(ingest)
    # Slot 0's first reading has no baseline (no energies), so it cannot be reconciled; the
    # next two are complete; slot 3 has no value at its end yet.
    assert {slot: row[2] for slot, row in found.items()} == {
        S0: reconcile.UNCHECKED,
        S0 + 1800: reconcile.OK,
        S0 + 3600: reconcile.OK,
    }
    row = found[S0 + 1800]
    assert row[3] == "SM-0042"
    assert (row[4], row[5]) == (600_000, 75_000)
    assert abs(row[6] - 603_000) <= 1000 and abs(row[7] - 75_375) <= 1000
    assert (row[8], row[9]) == (6000, 2000)
    assert "no energies" in found[S0][10]
    assert alarms(ingest) == []


def test_three_percent_is_flagged_with_an_alarm(ingest: LocalIngest) -> None:
    feed(ingest, signed_readings(30))
    found = verdicts(ingest)
    assert found[S0 + 1800][2] == reconcile.SMART_METER_MISMATCH
    assert found[S0 + 3600][2] == reconcile.SMART_METER_MISMATCH
    assert abs(found[S0 + 1800][6] - 618_000) <= 1000
    raised = alarms(ingest)
    assert [a[0] for a in raised] == ["SMART_METER_MISMATCH"] * 2
    assert raised[0][1] == DEV
    assert raised[0][2].startswith("slot %d: import: grid meter 600000 mWh" % (S0 + 1800))
    # Feeding the same readings again (duplicates) changes nothing and raises nothing new.
    feed_again = signed_readings(30)
    ingest.ingestor.refresh_keys()
    topic = "crev/v1/%s/reading" % DEV
    items: list[Item] = [(NOW * 1000, topic, raw, ingest.ingestor.check_message(topic, raw)) for raw in feed_again]
    assert {o.status for o in integrate(ingest.store, ingest.ledger, ingest.ingestor, items)} == {"duplicate"}
    assert len(alarms(ingest)) == 2


def test_a_late_reading_completes_an_unchecked_slot(ingest: LocalIngest) -> None:
    readings = signed_readings(30)
    late = readings[40]  # a reading of slot S0+1800
    feed(ingest, readings[:40] + readings[41:])
    row = verdicts(ingest)[S0 + 1800]
    assert row[2] == reconcile.UNCHECKED and "no reading covers" in row[10]
    assert [a[2].split(":")[0] for a in alarms(ingest)] == ["slot %d" % (S0 + 3600)], "only the complete slot"
    feed(ingest, [late])
    assert verdicts(ingest)[S0 + 1800][2] == reconcile.SMART_METER_MISMATCH
    assert [a[0] for a in alarms(ingest)] == ["SMART_METER_MISMATCH"] * 2


def test_readings_without_key_12_are_not_reconciled(ingest: LocalIngest) -> None:
    head = ChainHead()
    readings = []
    for minute in range(1, 70):
        t1 = S0 + 60 * minute
        channels = [(0, "PV-1", 1, 30_000 * minute), (1, "G-1", 0, 20_000 * minute), (2, "G-1", 0, 0)]
        reading = head.next_reading(DEV, t1, 1, channels, "crev-test/1", t0=t1 - 60)
        cose = reading.sign(KEY)
        head = head.advance(reading, cose)
        readings.append(cose)
    feed(ingest, readings)
    assert verdicts(ingest) == {}


def test_the_schema_version_and_an_upgrade(tmp_path: Path) -> None:
    assert SCHEMA_VERSION == 7
    path = tmp_path / "old.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE reconciliation")
    db.execute("UPDATE schema_version SET version = 5")
    db.commit()
    db.close()
    upgraded = Store(path)
    try:
        assert upgraded.db.has_table("reconciliation")
        assert int(upgraded.db.execute("SELECT version FROM schema_version").fetchone()[0]) == 7
    finally:
        upgraded.close()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"tolerance_percent": "1"}, "tolerance_percent must be a number"),
        ({"tolerance_percent": 1.005}, "at most 2 decimals"),
        ({"steps": -1}, "steps must be a whole number"),
        ({"step_mwh": 0}, "step_mwh must be a whole number"),
        ({"digits": 9}, "digits must be a whole number"),
        ({"tolerance": 1}, "is not a setting"),
    ],
)
def test_reconciliation_config(tmp_path: Path, table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"reconciliation": table}, tmp_path / "ingest.toml")


def test_reconciliation_config_values(tmp_path: Path) -> None:
    params = parse(
        {"reconciliation": {"tolerance_percent": 0.25, "steps": 3, "step_mwh": 1000, "digits": 0}},
        tmp_path / "ingest.toml",
    ).reconciliation
    assert (params.basis_points, params.steps, params.step_mwh, params.digits) == (25, 3, 1000, None)
    default = parse({}, tmp_path / "ingest.toml").reconciliation
    assert (default.basis_points, default.steps, default.step_mwh, default.digits) == (100, 2, 100_000, 6)
