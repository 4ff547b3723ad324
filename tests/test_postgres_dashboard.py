"""The dashboard on PostgreSQL answers exactly as on SQLite, for the same ledger."""

from pathlib import Path
from typing import Any

from dashboard_support import AUTH, build
from fastapi.testclient import TestClient
from ingest_support import NOW
from postgres_support import PostgresServer
from registry_support import OWNER_KEY

from crev_market.registry import Registry, sign_retirement

ROUTES = [
    "/api/v1/fleet",
    "/api/v1/fleet?page=2&page_size=2&sort=site&order=desc",
    "/api/v1/fleet?q=osaka",
    "/api/v1/fleet?status=offline",
    "/api/v1/fleet?sort=today_self&order=desc",
    "/api/v1/sites/tokyo",
    "/api/v1/sites/osaka",
    "/api/v1/sites/tokyo/series?slot_s=600",
    "/api/v1/sites/tokyo/consumer",
    "/api/v1/quarantine",
]


def _timeless(value: Any) -> Any:
    """The answer without ages, which the clock moves between the two stores' requests."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if not k.endswith("_age_s")}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _issue_and_retire(ingest: object, now_ms: int) -> None:
    store = ingest.store  # type: ignore[attr-defined]
    ledger = ingest.ledger  # type: ignore[attr-defined]
    registry = Registry(store, ledger, 423000, "label")
    registry.add_account("owner-1", "Owner", OWNER_KEY.public_key, True, now_ms)
    registry.add_site("reg-tokyo-a", "owner-1", "Japan/Tokyo", ["dgc-dash-0001"], {}, None, None, None, now_ms)
    summary = registry.issue(now_ms)
    assert summary.grams > 0
    with store.transaction():
        ledger.sync()
        retirement = registry.prepare_retirement("owner-1", summary.grams // 3 + 1, "Beneficiary", "p", 2026, now_ms)
        registry.retire(sign_retirement(retirement, OWNER_KEY), now_ms)


def test_every_view_is_the_same_on_both_stores(tmp_path: Path, postgres: PostgresServer) -> None:
    now = NOW  # LocalIngest's clock: readings must not be ahead of it, however long the session has run
    answers = []
    for name, location in (("sqlite", None), ("postgresql", postgres.create_database())):
        directory = tmp_path / name
        directory.mkdir()
        ingest, app = build(directory, readings=70, location=location, now=now)
        _issue_and_retire(ingest, now * 1000)
        client = TestClient(app)
        answers.append({route: _timeless(client.get(route, headers=AUTH).json()) for route in ROUTES})
        ingest.store.close()
    sqlite, postgresql = answers
    for route in ROUTES:
        assert postgresql[route] == sqlite[route], route
    assert sqlite["/api/v1/fleet"]["total"] == 3 and sqlite["/api/v1/quarantine"]["total"] == 2
    assert sqlite["/api/v1/sites/tokyo"]["crev_issued_total_g"] > 0
