"""`crev audit ledger` replays the registry: a misbehaving registry is caught even when every signature holds."""

import sqlite3
from pathlib import Path

import pytest
from ingest_support import LEDGER_KEY
from trace_support import ACCOUNT, BENEFICIARY, PURPOSE, YEAR, Traced, make_retired

from crev.keys import SigningKey
from crev.registry_format import Retirement
from crev_ingest import LedgerError
from crev_ingest.audit import verify_ledger
from crev_market.registry import sign_retirement


def audit(ledger: Traced) -> dict[str, int]:
    counts, _state = verify_ledger(ledger.ingest.store, LEDGER_KEY.public_key, "crev.test/ledger")
    return counts


@pytest.fixture
def ledger(tmp_path: Path) -> Traced:
    retired = make_retired(tmp_path)
    counts = audit(retired)
    assert counts["retirements"] == 1 and counts["issuances"] == 6
    return retired


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
    with pytest.raises(sqlite3.IntegrityError):  # even past the registry's own check, a UNIQUE column
        ledger.record_retirement_unchecked(once)


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("UPDATE lots SET grams = grams + 1 WHERE rowid = (SELECT min(rowid) FROM lots WHERE grams > 0)", "lots row"),
        (
            "UPDATE issuances SET owner = 'someone-else' WHERE leaf_idx = (SELECT min(leaf_idx) FROM issuances)",
            "issuances row",
        ),
        ("UPDATE lot_moves SET grams = grams + 1 WHERE to_account IS NULL", "lot_moves row"),
        ("UPDATE retirements SET beneficiary = 'Somebody Else'", "retirements row"),
        ("DELETE FROM retirements", "retirements"),
        ("UPDATE site_devices SET site = 'site-2'", "site_devices row"),
        ("UPDATE readings SET gs = '[[\"PV-dgc-a-0000\", 1, 99]]' WHERE rowid = 5", "readings row"),
    ],
)
def test_an_edited_registry_row_is_caught(ledger: Traced, sql: str, where: str) -> None:
    with sqlite3.connect(ledger.ingest.store.path) as db:
        assert db.execute(sql).rowcount >= 1
    with pytest.raises(LedgerError, match=where):
        audit(ledger)
