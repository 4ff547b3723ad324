"""Changing any byte of any stored ledger row makes `audit ledger` fail, naming it.

The edits and the proofs run on both stores. On PostgreSQL an edit is forced
through as the owner with the append-only triggers skipped (store_support.tamper);
the random byte flips of every column are test_postgres_append_only's
test_any_changed_byte_is_caught_and_named_on_postgres there.
"""

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest
from store_support import STORES, Location, copy, tamper

from crev.keys import SigningKey
from crev_ingest import LedgerError
from crev_ingest.audit import verify_ledger
from crev_ingest.store import Store

BLOB_COLUMNS = [
    ("leaves", "idx", "data"),
    ("leaves", "idx", "leaf_hash"),
    ("tile_edge", "rowid", "data"),  # 28 leaves: the tree is one partial tile
    ("blocks", "height", "header"),
    ("blocks", "height", "block_hash"),
    ("blocks", "height", "root"),
    ("key_events", "leaf_idx", "pubkey"),
]


def _build(directory: Path, location: str | None = None) -> Location:
    """24 readings of two devices and their key events, sealed; the store closed (a template, on PostgreSQL)."""
    ingest = LocalIngest(directory, location)
    devices = [Device("dgc-tamper-%03d" % i, SigningKey(bytes([40 + i]) * 32), t1=NOW - 7200) for i in range(2)]
    for device in devices:
        ingest.enroll(device)
    for _ in range(12):
        for device in devices:
            assert ingest.send(device.next()).status == "accepted"
    ingest.store.begin()
    ingest.ledger.seal(NOW * 1000)
    ingest.store.commit()
    ingest.store.close()
    return location or directory / "crev.sqlite"


@pytest.fixture(scope="module")
def ledger_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The SQLite ledger alone, for the byte flips: one copy of the file per example is cheap."""
    built = _build(tmp_path_factory.mktemp("ledger"))
    assert isinstance(built, Path)
    yield built


@pytest.fixture(scope="module", params=STORES)
def ledger_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Location:
    """The same ledger on each store: crev.sqlite, or a PostgreSQL database each test copies."""
    directory = tmp_path_factory.mktemp("ledger")
    if request.param == "sqlite":
        return _build(directory)
    return _build(directory, request.getfixturevalue("postgres").create_database())


def _copy(source: Location, target: Path) -> Store:
    return Store(copy(source, target))


def test_the_untouched_ledger_verifies(ledger_store: Location, tmp_path: Path) -> None:
    store = _copy(ledger_store, tmp_path / "copy.sqlite")
    counts, _state = verify_ledger(store, LEDGER_KEY.public_key, "crev.test/ledger")
    store.close()
    assert counts["readings"] == 24 and counts["blocks"] >= 4


@given(st.sampled_from(BLOB_COLUMNS), st.integers(min_value=0), st.integers(min_value=0), st.integers(1, 255))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_changed_byte_is_caught_and_named(
    ledger_file: Path, tmp_path: Path, column: tuple[str, str, str], row: int, position: int, xor: int
) -> None:
    table, key, name = column
    target = tmp_path / ("t-%d-%d-%d.sqlite" % (row, position, xor))
    target.unlink(missing_ok=True)
    store = _copy(ledger_file, target)
    keys = [r[0] for r in store.db.execute("SELECT %s FROM %s ORDER BY %s" % (key, table, key))]
    chosen = keys[row % len(keys)]
    value = bytearray(store.db.execute("SELECT %s FROM %s WHERE %s = ?" % (name, table, key), (chosen,)).fetchone()[0])
    value[position % len(value)] ^= xor
    store.db.execute("UPDATE %s SET %s = ? WHERE %s = ?" % (table, name, key), (bytes(value), chosen))
    with pytest.raises(LedgerError) as caught:
        verify_ledger(store, LEDGER_KEY.public_key, "crev.test/ledger")
    store.close()
    named = "tiles" if table == "tile_edge" else table  # the audit names tiles by level and index, wherever kept
    assert str(caught.value).startswith(named), "%s.%s changed but the failure names: %s" % (table, name, caught.value)


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        # In SQL both stores speak: rows by their leaf, not by SQLite's rowid.
        ("DELETE FROM readings WHERE leaf_idx = (SELECT max(leaf_idx) FROM readings)", "readings"),
        (
            "UPDATE readings SET t1 = t1 + 1 WHERE leaf_idx = (SELECT leaf_idx FROM readings ORDER BY leaf_idx "
            "LIMIT 1 OFFSET 2)",
            "readings",
        ),
        ("UPDATE series SET self_mwh = self_mwh + 1 WHERE dev = 'dgc-tamper-001' AND seq = 1", "series"),
        ("UPDATE blocks SET checkpoint = replace(checkpoint, 'crev.test', 'crev.evil') WHERE height = 1", "blocks"),
        ("DELETE FROM leaves WHERE idx = (SELECT max(idx) FROM leaves)", "blocks"),
        ("UPDATE key_events SET time = time + 1", "key_events"),
    ],
)
def test_other_edits_are_caught(ledger_store: Location, tmp_path: Path, statement: str, named: str) -> None:
    where = copy(ledger_store, tmp_path / "edit.sqlite")
    assert tamper(where, statement) >= 1
    store = Store(where)
    try:
        with pytest.raises(LedgerError) as caught:
            verify_ledger(store, LEDGER_KEY.public_key, "crev.test/ledger")
    finally:
        store.close()
    assert str(caught.value).startswith(named), str(caught.value)


def test_proofs_from_the_store_verify_against_signed_blocks(ledger_store: Location, tmp_path: Path) -> None:
    from crev import merkle
    from crev_ingest.ledger import parse_block_header

    store = _copy(ledger_store, tmp_path / "proofs.sqlite")
    blocks = store.db.execute("SELECT header FROM blocks ORDER BY height").fetchall()
    headers = [parse_block_header(bytes(b[0]), LEDGER_KEY.public_key) for b in blocks]
    leaves = [bytes(r[0]) for r in store.db.execute("SELECT leaf_hash FROM leaves ORDER BY idx")]
    for header in headers:
        size, root = header[3], header[4]
        assert isinstance(size, int) and isinstance(root, bytes)
        for index in range(0, size, max(1, size // 7)):
            path = merkle.inclusion_path(index, size, store.node)
            assert merkle.verify_inclusion(leaves[index], index, size, path, root)
    for old, new in itertools.pairwise(headers):
        old_size, new_size = old[3], new[3]
        assert isinstance(old_size, int) and isinstance(new_size, int)
        path = merkle.consistency_path(old_size, new_size, store.node)
        assert merkle.verify_consistency(old_size, new_size, path, old[4], new[4])
    store.close()
