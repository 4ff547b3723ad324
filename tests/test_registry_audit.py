"""`crev audit ledger` replays the registry: a misbehaving registry is caught even when every signature holds.

On both stores: the retired ledger is made once per store and each test takes a copy of it. On
PostgreSQL an edited row is forced through as the owner, the append-only triggers skipped.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import LEDGER_KEY, LocalIngest
from store_support import STORES, Location, copy, discard, tamper
from trace_support import ACCOUNT, BENEFICIARY, FACTOR_MG, PURPOSE, YEAR, Traced, make_retired

from crev.keys import SigningKey
from crev.registry_format import Retirement
from crev_ingest import LedgerError
from crev_ingest.audit import verify_ledger
from crev_market.registry import Registry, sign_retirement


def audit(ledger: Traced) -> dict[str, int]:
    counts, _state = verify_ledger(ledger.ingest.store, LEDGER_KEY.public_key, "crev.test/ledger")
    return counts


@pytest.fixture(scope="module", params=STORES)
def retired(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Location:
    """The honest story (readings, issuance, one retirement), audited, in a store no connection holds."""
    directory = tmp_path_factory.mktemp("retired")
    url = request.getfixturevalue("postgres").create_database() if request.param == "postgresql" else None
    made = make_retired(directory, location=url)
    counts = audit(made)
    assert counts["retirements"] == 1 and counts["issuances"] == 6
    made.ingest.store.close()
    return url or directory / "crev.sqlite"


@pytest.fixture
def ledger(retired: Location, tmp_path: Path) -> Iterator[Traced]:
    """A copy of the retired ledger, opened as the registry would open it."""
    where = copy(retired, tmp_path / "crev.sqlite")
    ingest = LocalIngest(tmp_path, where if isinstance(where, str) else None)
    yield Traced(ingest, Registry(ingest.store, ingest.ledger, FACTOR_MG, "default"), [])
    ingest.store.close()
    discard(where)


def _held(ledger: Traced) -> list[list[int]]:
    return [[lot[0], lot[1], lot[7]] for lot in ledger.ingest.store.holdings(ACCOUNT)]


def test_grams_retired_beyond_the_holding_fail_at_that_leaf(ledger: Traced) -> None:
    lot = _held(ledger)[0]
    greedy = Retirement(ACCOUNT, lot[2] + 1, [[lot[0], lot[1], lot[2] + 1]], BENEFICIARY, PURPOSE, YEAR, 1, bytes(16))
    leaf = ledger.record_retirement_unchecked(sign_retirement(greedy, SigningKey(bytes([5]) * 32)))
    with pytest.raises(LedgerError, match=r"leaf %d \(retirement\).*but %s holds %d g" % (leaf, ACCOUNT, lot[2])):
        audit(ledger)


def test_a_retirement_not_signed_by_its_account_fails_at_that_leaf(ledger: Traced) -> None:
    lot = _held(ledger)[0]
    forged = Retirement(ACCOUNT, 1, [[lot[0], lot[1], 1]], BENEFICIARY, PURPOSE, YEAR, 1, bytes(16))
    leaf = ledger.record_retirement_unchecked(sign_retirement(forged, SigningKey(bytes([66]) * 32)))
    with pytest.raises(LedgerError, match=r"leaf %d \(retirement\).*not signed by the key of account" % leaf):
        audit(ledger)


def test_the_store_refuses_the_same_signed_retirement_twice(ledger: Traced) -> None:
    lot = _held(ledger)[0]
    once = sign_retirement(
        Retirement(ACCOUNT, 1, [[lot[0], lot[1], 1]], BENEFICIARY, PURPOSE, YEAR, 1, bytes(16)),
        SigningKey(bytes([5]) * 32),
    )
    ledger.record_retirement_unchecked(once)
    audit(ledger)
    with pytest.raises(ledger.ingest.store.db.integrity_errors):  # even past the registry's own check, a UNIQUE column
        ledger.record_retirement_unchecked(once)


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        # In SQL both stores speak: rows by their keys, not by SQLite's rowid.
        (
            "UPDATE lots SET grams = grams + 1 WHERE issuance_leaf = (SELECT min(issuance_leaf) FROM lots "
            "WHERE grams > 0) AND lot_index = 0",
            "lots row",
        ),
        (
            "UPDATE issuances SET owner = 'someone-else' WHERE leaf_idx = (SELECT min(leaf_idx) FROM issuances)",
            "issuances row",
        ),
        ("UPDATE lot_moves SET grams = grams + 1 WHERE to_account IS NULL", "lot_moves row"),
        ("UPDATE retirements SET beneficiary = 'Somebody Else'", "retirements row"),
        ("DELETE FROM retirements", "retirements"),
        ("UPDATE site_devices SET site = 'site-2'", "site_devices row"),
        (
            "UPDATE readings SET gs = '[[\"PV-dgc-a-0000\", 1, 99]]' WHERE leaf_idx = (SELECT leaf_idx FROM readings "
            "ORDER BY leaf_idx LIMIT 1 OFFSET 4)",
            "readings row",
        ),
    ],
)
def test_an_edited_registry_row_is_caught(ledger: Traced, sql: str, where: str) -> None:
    assert tamper(ledger.ingest.store.path, sql) >= 1
    with pytest.raises(LedgerError, match=where):
        audit(ledger)
