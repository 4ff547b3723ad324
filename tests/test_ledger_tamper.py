"""Changing any byte of any stored ledger row makes `audit ledger` fail, naming it."""

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest

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


@pytest.fixture(scope="module")
def ledger_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("ledger")
    ingest = LocalIngest(directory)
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
    yield directory / "crev.sqlite"


def _copy(source: Path, target: Path) -> Store:
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return Store(target)


def test_the_untouched_ledger_verifies(ledger_file: Path, tmp_path: Path) -> None:
    store = _copy(ledger_file, tmp_path / "copy.sqlite")
    counts, _state = verify_ledger(store, LEDGER_KEY.public_key, "crev.test/ledger")
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
        ("DELETE FROM readings WHERE rowid = (SELECT max(rowid) FROM readings)", "readings"),
        ("UPDATE readings SET t1 = t1 + 1 WHERE rowid = 3", "readings"),
        ("UPDATE series SET self_mwh = self_mwh + 1 WHERE rowid = 2", "series"),
        ("UPDATE blocks SET checkpoint = replace(checkpoint, 'crev.test', 'crev.evil') WHERE height = 1", "blocks"),
        ("DELETE FROM leaves WHERE idx = (SELECT max(idx) FROM leaves)", "blocks"),
        ("UPDATE key_events SET time = time + 1", "key_events"),
    ],
)
def test_other_edits_are_caught(ledger_file: Path, tmp_path: Path, statement: str, named: str) -> None:
    store = _copy(ledger_file, tmp_path / "edit.sqlite")
    store.db.execute(statement)
    with pytest.raises(LedgerError) as caught:
        verify_ledger(store, LEDGER_KEY.public_key, "crev.test/ledger")
    assert str(caught.value).startswith(named), str(caught.value)


def test_proofs_from_the_store_verify_against_signed_blocks(ledger_file: Path, tmp_path: Path) -> None:
    from crev import merkle
    from crev_ingest.ledger import parse_block_header

    store = _copy(ledger_file, tmp_path / "proofs.sqlite")
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
