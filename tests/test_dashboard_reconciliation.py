"""The dashboard's smart-meter reconciliation per site (SPEC §13): GET /api/v1/sites/{site}/reconciliation.

Readings signed like a gateway's with a smart meter beside the grid meter (key 12, as
tests/reconcile_support.py builds them) go through ingest's real path (check, integrate in
batches, reconcile) into a real store, SQLite and PostgreSQL: one site's device drifts 3 %
(its checked slots are SMART_METER_MISMATCH, and the registry's `release` releases one of
them), another's 0.5 % (OK), and a third site's device has no smart meter at all. The
dashboard reads that store read-only, as `crev ingest run` serves it.
"""

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import reconcile_support as support
from dashboard_support import AUTH, TOKEN
from fastapi.testclient import TestClient
from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest
from reconcile_support import S0
from registry_support import FACTOR_LABEL, FACTOR_MG, add_site, open_owner, seal
from store_support import rows, storage_toml

from crev import reconcile
from crev.keys import SigningKey
from crev_ingest.config import parse
from crev_ingest.dashboard.app import create_app
from crev_market.registry import Registry

DRIFT, STEADY, PLAIN = "dgc-drift-0001", "dgc-steady-0001", "dgc-plain-0001"
KEYS = {DRIFT: SigningKey(bytes([81]) * 32), STEADY: SigningKey(bytes([82]) * 32), PLAIN: SigningKey(bytes([83]) * 32)}
SLOT_1, SLOT_2 = S0 + 1800, S0 + 3600  # the slots with the smart meter's values at both ends
REASON = "smart meter SM-0042 replaced on site"


def ingest_toml(store_url: str | None) -> str:
    return (
        "[storage]\n" + storage_toml(store_url) + '\n[ledger]\nkey = "ledger.key"\norigin = "crev.test/ledger"\n'
        'block_max_leaves = 8\n[dashboard]\nlisten = "127.0.0.1:18080"\ntoken_file = "dashboard.token"\n'
        # A smart meter with 1 Wh steps and 8 digits, as reconcile_support's readings count.
        "[reconciliation]\nstep_mwh = 1000\ndigits = 8\n"
        '[sites]\n"%s" = "drifting"\n"%s" = "steady"\n"%s" = "plain"\n' % (DRIFT, STEADY, PLAIN)
    )


@pytest.fixture
def client(tmp_path: Path, store_url: str | None) -> Iterator[TestClient]:
    (tmp_path / "ingest.toml").write_text(ingest_toml(store_url))
    (tmp_path / "dashboard.token").write_text(TOKEN + "\n")
    key = tmp_path / "ledger.key"
    key.write_text(LEDGER_KEY.seed_bytes().hex() + "\n")
    key.chmod(0o600)
    ingest = LocalIngest(tmp_path, store_url)
    try:
        ingest.config = parse(tomllib.loads(ingest_toml(store_url)), tmp_path / "ingest.toml")
        ingest.ingestor.config = ingest.config
        assert ingest.config.reconciliation.step_mwh == 1000
        for dev, signing in KEYS.items():
            ingest._key_event(1, dev, signing.public_key, NOW - 86400)
        support.feed(ingest, DRIFT, support.signed_readings(KEYS[DRIFT], DRIFT, 30))
        support.feed(ingest, STEADY, support.signed_readings(KEYS[STEADY], STEADY, 5))
        plain = Device(PLAIN, KEYS[PLAIN], t1=S0)
        support.feed(ingest, PLAIN, [plain.next() for _ in range(70)])
        seal(ingest)
        # The registry holds the drifting device's flagged slots; the operator releases one of them.
        registry = Registry(ingest.store, ingest.ledger, FACTOR_MG, FACTOR_LABEL, ingest.config.reconciliation)
        open_owner(registry)
        add_site(registry, "site-drift-01", [DRIFT])
        assert registry.release("site-drift-01", SLOT_1, REASON, NOW * 1000) == [(DRIFT, ingest.ledger.size - 1)]
        yield TestClient(create_app(ingest.config, TOKEN))
    finally:
        ingest.store.close()


def test_a_three_percent_drift_lists_its_mismatches_with_their_values(client: TestClient) -> None:
    answer = client.get("/api/v1/sites/drifting/reconciliation", headers=AUTH)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["site"] == "drifting" and data["limit"] == 48
    assert data["counts"] == {"OK": 0, "SMART_METER_MISMATCH": 2, "UNCHECKED": 1}
    assert data["held"] == 1, "SLOT_1 is released, SLOT_2 still held"
    [device] = data["devices"]
    assert device["dev"] == DRIFT and device["counts"] == data["counts"] and device["held"] == 1
    slots = device["slots"]
    assert [(s["slot_t0"], s["verdict"]) for s in slots] == [
        (SLOT_2, reconcile.SMART_METER_MISMATCH),
        (SLOT_1, reconcile.SMART_METER_MISMATCH),
        (S0, reconcile.UNCHECKED),
    ], "newest first"
    first = slots[1]
    assert first["meter_id"] == "SM-0042"
    # 30 minutes of 20 Wh import and 15 minutes of 5 Wh export a minute, on the certified grid meter...
    assert (first["grid_import_mwh"], first["grid_export_mwh"]) == (600_000, 75_000)
    # ... and 3 % more on the smart meter (to its 1 Wh steps); the tolerance is 1 %.
    assert abs(first["sm_import_mwh"] - 618_000) <= 1000 and abs(first["sm_export_mwh"] - 77_250) <= 1000
    assert (first["tolerance_import_mwh"], first["tolerance_export_mwh"]) == (6000, 2000)
    assert first["detail"].startswith("import: grid meter 600000 mWh, smart meter")
    assert (first["released"], first["release_reason"]) == (True, REASON)
    assert isinstance(first["release_leaf"], int)
    assert (slots[0]["released"], slots[0]["release_leaf"], slots[0]["release_reason"]) == (False, None, None)
    assert slots[2]["grid_import_mwh"] is None and "no energies" in slots[2]["detail"]
    newest = client.get("/api/v1/sites/drifting/reconciliation?limit=1", headers=AUTH).json()
    assert [s["slot_t0"] for s in newest["devices"][0]["slots"]] == [SLOT_2]
    assert newest["counts"] == data["counts"], "the counts are of all slots, not only those listed"


def test_half_a_percent_lists_ok_slots(client: TestClient) -> None:
    data = client.get("/api/v1/sites/steady/reconciliation", headers=AUTH).json()
    assert data["counts"] == {"OK": 2, "SMART_METER_MISMATCH": 0, "UNCHECKED": 1} and data["held"] == 0
    [device] = data["devices"]
    assert device["dev"] == STEADY
    assert [(s["slot_t0"], s["verdict"]) for s in device["slots"]] == [
        (SLOT_2, reconcile.OK),
        (SLOT_1, reconcile.OK),
        (S0, reconcile.UNCHECKED),
    ]
    ok = device["slots"][1]
    assert ok["grid_import_mwh"] == 600_000 and abs(ok["sm_import_mwh"] - 603_000) <= 1000
    assert not ok["released"]


def test_a_site_without_a_smart_meter_has_no_devices_listed(client: TestClient) -> None:
    assert client.get("/api/v1/sites/plain", headers=AUTH).status_code == 200, "the site exists"
    data = client.get("/api/v1/sites/plain/reconciliation", headers=AUTH).json()
    assert data == {
        "site": "plain",
        "limit": 48,
        "counts": {"OK": 0, "SMART_METER_MISMATCH": 0, "UNCHECKED": 0},
        "held": 0,
        "devices": [],
    }


def test_unknown_sites_tokens_and_bounds(client: TestClient) -> None:
    assert client.get("/api/v1/sites/nowhere/reconciliation", headers=AUTH).status_code == 404
    assert client.get("/api/v1/sites/drifting/reconciliation").status_code == 401
    wrong = {"Authorization": "Bearer not-the-operator-token"}
    assert client.get("/api/v1/sites/drifting/reconciliation", headers=wrong).status_code == 401
    for limit in ("0", "501", "many"):
        got = client.get("/api/v1/sites/drifting/reconciliation?limit=" + limit, headers=AUTH)
        assert got.status_code == 422, limit
    schema = client.get("/api/v1/openapi.json", headers=AUTH).json()
    route = schema["paths"]["/api/v1/sites/{site}/reconciliation"]["get"]
    assert route["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SiteReconciliation"
    }
    assert "404" in route["responses"]


def test_the_dashboard_reads_what_ingest_wrote(client: TestClient, tmp_path: Path, store_url: str | None) -> None:
    where = store_url or tmp_path / "crev.sqlite"
    stored = rows(
        where,
        "SELECT slot_t0, verdict, sm_import FROM reconciliation WHERE dev = ? ORDER BY slot_t0 DESC",
        (DRIFT,),
    )
    listed = client.get("/api/v1/sites/drifting/reconciliation", headers=AUTH).json()["devices"][0]["slots"]
    assert [(s["slot_t0"], s["verdict"], s["sm_import_mwh"]) for s in listed] == stored
    assert rows(where, "SELECT count(*) FROM reconciliation WHERE dev = ?", (PLAIN,)) == [(0,)], "no smart meter"
