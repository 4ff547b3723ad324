"""The registry holds a slot flagged SMART_METER_MISMATCH until it is released (SPEC §13).

Readings signed like a gateway's (one a minute, key 12 carrying the smart
meter's latest fixed-time values, as tests/test_ingest_reconciliation.py
builds them) go through ingest's real path into a real store (SQLite and
PostgreSQL). With a 0.5 % drift every slot is issued; with 3 % the checked
slots are held, with an alarm; `crev registry release` lets one be issued on
the next pass, and `crev audit ledger` replays holds and releases. An
issuance of a held slot without a release is named by the audit.
"""

from pathlib import Path
from typing import Any

import pytest
import reconcile_support as support
from ingest_support import LEDGER_KEY, NOW, LocalIngest
from reconcile_support import S0
from registry_support import FACTOR_LABEL, FACTOR_MG, OWNER, OWNER_KEY, add_site, open_owner, seal, write_ingest_config

from crev import reconcile
from crev.keys import SigningKey
from crev.registry_format import LEAF_SITE, Release
from crev_cli.main import main
from crev_ingest import LedgerError
from crev_ingest.registry_audit import replay_registry
from crev_market import Refused
from crev_market.registry import Registry, _signed_map, sign_retirement

KEY = SigningKey(bytes([17]) * 32)
DEV = "dgc-held-0001"
SITE = "site-held-01"
PARAMS = reconcile.Params(step_mwh=1000, digits=8)  # a smart meter with 1 Wh steps
SLOT_1, SLOT_2 = S0 + 1800, S0 + 3600  # the slots with both fixed-time values


def signed_readings(drift_permille: int, minutes: int = 95, lag_min: int = 1) -> list[bytes]:
    return support.signed_readings(KEY, DEV, drift_permille, minutes, lag_min)


def feed(ingest: LocalIngest, readings: list[bytes], batch: int = 7) -> None:
    """ingest's real path (check, integrate in batches, reconcile), then seal what is left."""
    support.feed(ingest, DEV, readings, batch)
    seal(ingest)


@pytest.fixture
def ingest(tmp_path: Path, store_url: str | None) -> Any:
    local = LocalIngest(tmp_path, store_url)
    local.config.reconciliation = PARAMS
    local._key_event(1, DEV, KEY.public_key, NOW - 86400)
    yield local
    local.store.close()


def registry_of(ingest: LocalIngest, params: reconcile.Params = PARAMS, wait_s: int = 900) -> Registry:
    return Registry(ingest.store, ingest.ledger, FACTOR_MG, FACTOR_LABEL, params, wait_s)


def with_site(ingest: LocalIngest) -> Registry:
    registry = registry_of(ingest)
    open_owner(registry)
    add_site(registry, SITE, [DEV])
    return registry


def issued_slots(ingest: LocalIngest) -> dict[int, int]:
    """slot -> grams issued, over all its issuances."""
    rows = ingest.store.db.execute(
        "SELECT i.slot, sum(l.grams) FROM issuances i JOIN lots l ON l.issuance_leaf = i.leaf_idx "
        "WHERE i.dev = ? GROUP BY i.slot",
        (DEV,),
    ).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def alarm_slots(ingest: LocalIngest) -> list[str]:
    rows = ingest.store.db.execute("SELECT kind, detail FROM alarms ORDER BY id").fetchall()
    return ["%s %s" % (r[0], str(r[1]).split(":")[0]) for r in rows]


def audit(ingest: LocalIngest) -> dict[str, int]:
    counts: dict[str, int] = replay_registry(ingest.store, LEDGER_KEY.public_key, PARAMS)
    return counts


def config_for(ingest: LocalIngest, tmp_path: Path, store_url: str | None) -> Path:
    config = write_ingest_config(tmp_path, store_url=store_url)
    config.write_text(config.read_text() + "\n[reconciliation]\nstep_mwh = 1000\ndigits = 8\n")
    return config


def crev(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_half_a_percent_is_issued(ingest: LocalIngest) -> None:
    registry = with_site(ingest)
    feed(ingest, signed_readings(5))
    summary = registry.issue(NOW * 1000)
    assert summary.mismatched == [] and summary.waiting == []
    # S0 is UNCHECKED (its first reading has no baseline) and past the wait; SLOT_1 and SLOT_2 are OK.
    assert sorted(issued_slots(ingest)) == [S0, SLOT_1, SLOT_2]
    assert all(grams > 0 for grams in issued_slots(ingest).values())
    assert alarm_slots(ingest) == []
    assert audit(ingest)["issuances"] == 3


def test_three_percent_is_held_and_a_release_issues_it(
    ingest: LocalIngest, tmp_path: Path, store_url: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = with_site(ingest)
    feed(ingest, signed_readings(30))
    summary = registry.issue(NOW * 1000)
    assert [(dev, slot) for dev, slot, _detail in summary.mismatched] == [(DEV, SLOT_1), (DEV, SLOT_2)]
    assert summary.mismatched[0][2].startswith("import: grid meter 600000 mWh, smart meter 618000 mWh")
    assert sorted(issued_slots(ingest)) == [S0], "the flagged slots have no lot"
    assert alarm_slots(ingest) == ["SMART_METER_MISMATCH slot %d" % SLOT_1, "SMART_METER_MISMATCH slot %d" % SLOT_2]
    # Another pass still holds them.
    assert registry.issue(NOW * 1000).issuances == 0
    audit(ingest)

    config = config_for(ingest, tmp_path, store_url)
    base = ["registry", "release", "--config", str(config), "--site", SITE]
    code, out, err = crev([*base, "--slot", str(SLOT_1), "--reason", "smart meter SM-0042 replaced on site"], capsys)
    assert (code, err) == (0, ""), err
    assert "released %s slot %d" % (DEV, SLOT_1) in out
    release_row = ingest.store.releases()
    assert [(r[1], r[2], r[3], r[4]) for r in release_row] == [
        (SITE, DEV, SLOT_1, "smart meter SM-0042 replaced on site")
    ]

    code, out, err = crev(["registry", "issue", "--config", str(config)], capsys)
    assert code == 0 and out.startswith("issued 1 slots from 30 readings"), out
    assert "held: %s slot %d" % (DEV, SLOT_2) in out and "crev registry release" in out
    assert sorted(issued_slots(ingest)) == [S0, SLOT_1]
    assert audit(ingest)["releases"] == 1
    code, out, err = crev(["audit", "ledger", "--config", str(config)], capsys)
    assert code == 0, out + err

    # The released slot's grams are ordinary C-REV: they can be retired like any other.
    retirement = registry.prepare_retirement(OWNER, 1, "Beneficiary", "a test", 2026, NOW * 1000)
    with ingest.store.transaction():
        ingest.ledger.sync()
        registry.retire(sign_retirement(retirement, OWNER_KEY), NOW * 1000)
    audit(ingest)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slot", str(SLOT_1), "--reason", "again"], "was released already"),
        (["--slot", str(S0), "--reason", "not held"], "is not held"),
        (["--slot", str(SLOT_1 + 60), "--reason", "x"], "is not the start of a 30-minute slot"),
        (["--slot", "yesterday", "--reason", "x"], "is not a time"),
        (["--slot", str(SLOT_2), "--reason", "   "], "--reason must be 1 to 200 printable characters"),
        (["--slot", str(SLOT_2), "--reason", "x" * 201], "--reason must be 1 to 200 printable characters"),
    ],
)
def test_release_mistakes_are_one_line(
    ingest: LocalIngest,
    tmp_path: Path,
    store_url: str | None,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    registry = with_site(ingest)
    feed(ingest, signed_readings(30))
    registry.issue(NOW * 1000)
    registry.release(SITE, SLOT_1, "first release", NOW * 1000)
    size = ingest.ledger.size
    config = config_for(ingest, tmp_path, store_url)
    code, out, err = crev(["registry", "release", "--config", str(config), "--site", SITE, *args], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("crev: ") and message in err, err
    ingest.ledger.sync()
    assert ingest.ledger.size == size, "a refused release records nothing"


def test_an_unknown_site_is_refused(ingest: LocalIngest) -> None:
    registry = with_site(ingest)
    with pytest.raises(Refused, match="unknown site site-nope-01; register it"):
        registry.release("site-nope-01", SLOT_1, "reason", NOW * 1000)


def test_the_registry_waits_for_the_end_value(ingest: LocalIngest) -> None:
    """The race: slot SLOT_1 closes with the reading ending at SLOT_1+1860, but the smart meter's
    value at SLOT_1+1800 only comes two readings later. The registry waits for it."""
    registry = with_site(ingest)
    readings = signed_readings(5, lag_min=3)
    feed(ingest, readings[:62])  # up to t1 = S0 + 3720: SLOT_1 closed, its end value not yet read
    summary = registry.issue(NOW * 1000)
    assert (DEV, SLOT_1) in summary.waiting
    assert SLOT_1 not in issued_slots(ingest)
    feed(ingest, readings[62:64])
    summary = registry.issue(NOW * 1000)
    assert SLOT_1 in issued_slots(ingest) and summary.waiting == []
    audit(ingest)


def test_a_mismatch_found_late_is_held_all_the_same(ingest: LocalIngest) -> None:
    """With 3 %, the same race: had the registry issued SLOT_1 when it closed, it would have issued a
    flagged slot; it waits, and holds it once the value shows the mismatch."""
    registry = with_site(ingest)
    readings = signed_readings(30, lag_min=3)
    feed(ingest, readings[:62])
    assert (DEV, SLOT_1) in registry.issue(NOW * 1000).waiting
    feed(ingest, readings[62:64])
    summary = registry.issue(NOW * 1000)
    assert [(dev, slot) for dev, slot, _detail in summary.mismatched] == [(DEV, SLOT_1)]
    assert SLOT_1 not in issued_slots(ingest)
    audit(ingest)


def test_the_wait_is_bounded(ingest: LocalIngest) -> None:
    """A smart meter that stops answering: its last value stays in key 12. Each slot is issued
    UNCHECKED once the device's readings are wait_s past its end."""
    registry = with_site(ingest)
    feed(ingest, signed_readings(30, lag_min=40))
    summary = registry.issue(NOW * 1000)
    # Each value comes 40 minutes late: the one at SLOT_2 (SLOT_1's end) from minute 100, never in
    # 95 minutes. Latest t1 is S0 + 5700 > SLOT_1 + 1800 + 900: SLOT_1 is issued UNCHECKED, while
    # SLOT_2 (ending at S0 + 5400) still waits.
    assert SLOT_1 in issued_slots(ingest)
    assert (DEV, SLOT_2) in summary.waiting and SLOT_2 not in issued_slots(ingest)
    audit(ingest)
    later = registry_of(ingest, wait_s=0)  # wait_s 0: issue as soon as the slot closes
    later.issue(NOW * 1000)
    assert SLOT_2 in issued_slots(ingest)


def test_an_issuance_of_a_held_slot_without_release_is_caught(ingest: LocalIngest) -> None:
    with_site(ingest)
    feed(ingest, signed_readings(30))
    # A registry run with a tolerance of 100 % finds nothing wrong and issues every slot: its rows
    # and leaves are consistent, and only the smart-meter rule of the replay tells it was held.
    lax = registry_of(ingest, reconcile.Params(basis_points=10000, step_mwh=1000, digits=8))
    assert lax.issue(NOW * 1000).issuances == 3
    with pytest.raises(LedgerError, match="slot %d of %s is held by SMART_METER_MISMATCH" % (SLOT_1, DEV)):
        audit(ingest)
    # Without the reconciliation parameters (a mirror's audit), holds are not checked.
    replay_registry(ingest.store, LEDGER_KEY.public_key)


def test_a_release_of_a_slot_not_held_is_caught(ingest: LocalIngest) -> None:
    with_site(ingest)
    feed(ingest, signed_readings(5))
    release = Release(SITE, DEV, SLOT_1, "forged", NOW)
    with ingest.store.transaction():
        ingest.ledger.sync()
        leaf = ingest.ledger.append(LEAF_SITE, NOW * 1000, _signed_map(release.to_map(), ingest.ledger.key))
        ingest.store.add_release(leaf, SITE, DEV, SLOT_1, "forged", NOW)
        ingest.ledger.seal(NOW * 1000)
    with pytest.raises(LedgerError, match="is not held by a smart-meter mismatch"):
        audit(ingest)


def test_a_release_row_that_differs_is_caught(ingest: LocalIngest) -> None:
    registry = with_site(ingest)
    feed(ingest, signed_readings(30))
    registry.issue(NOW * 1000)
    registry.release(SITE, SLOT_1, "checked", NOW * 1000)
    audit(ingest)
    if ingest.store.db.dialect == "sqlite":
        ingest.store.db.execute("UPDATE releases SET reason = 'edited'")
        with pytest.raises(LedgerError, match="releases row leaf"):
            audit(ingest)
