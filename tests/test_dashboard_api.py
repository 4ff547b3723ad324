"""The dashboard's JSON API over a real SQLite ledger: views, token, export and schema."""

import dataclasses
import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from dashboard_support import AUTH, SITES, TOKEN, build
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from ingest_support import LEDGER_KEY, LocalIngest
from schemathesis.core.result import Err

from crev.keys import SigningKey
from crev.reading import Reading
from crev_cli.bundle_verify import verify_bundle
from crev_ingest.dashboard.app import create_app
from crev_market.registry import Registry, sign_retirement


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalIngest, FastAPI, Path]]:
    directory = tmp_path_factory.mktemp("dash")
    ingest, app = build(directory)
    yield ingest, app, directory
    ingest.store.close()


@pytest.fixture(scope="module")
def client(built: tuple[LocalIngest, FastAPI, Path]) -> TestClient:
    return TestClient(built[1])


def _rows(directory: Path, sql: str, *args: object) -> list[Any]:
    with sqlite3.connect(directory / "crev.sqlite") as db:
        return db.execute(sql, args).fetchall()


def test_every_api_route_refuses_requests_without_the_token(client: TestClient) -> None:
    schema = client.get("/api/v1/openapi.json", headers=AUTH).json()
    assert len(schema["paths"]) >= 7
    for path in schema["paths"]:
        concrete = path.replace("{site}", "tokyo")
        assert client.get(concrete).status_code == 401, path
        assert client.get(concrete, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert client.get("/api/v1/openapi.json").status_code == 401
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"


def test_login_sets_a_cookie_that_the_page_and_api_accept(built: tuple[LocalIngest, FastAPI, Path]) -> None:
    browser = TestClient(built[1])
    assert browser.post("/login", data={"token": "nope"}).status_code == 401
    signed_in = browser.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert signed_in.status_code == 303
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert browser.get("/").status_code == 200 and "app.js" in browser.get("/").text
    assert browser.get("/api/v1/fleet").status_code == 200


def test_the_fleet_view_pages_sorts_and_filters(client: TestClient, built: tuple[LocalIngest, FastAPI, Path]) -> None:
    directory = built[2]
    fleet = client.get("/api/v1/fleet", headers=AUTH).json()
    assert fleet["total"] == 3 and [d["dev"] for d in fleet["items"]] == sorted(d["dev"] for d in fleet["items"])
    summary = fleet["summary"]
    assert (summary["devices"], summary["online"], summary["offline"], summary["quarantined"]) == (3, 1, 1, 2)
    day = built[0].config.local_day(int(time.time()))
    expected = _rows(directory, "SELECT coalesce(sum(self_mwh), 0) FROM daily WHERE day = ?", day)[0][0]
    assert summary["today_self_kwh"] == pytest.approx(expected / 1e6)
    page = client.get("/api/v1/fleet?page=2&page_size=2&sort=site&order=desc", headers=AUTH).json()
    assert page["total"] == 3 and len(page["items"]) == 1 and page["items"][0]["site"] == "osaka"
    only = client.get("/api/v1/fleet?q=osaka", headers=AUTH).json()
    assert [d["dev"] for d in only["items"]] == ["dgc-dash-0003"] and only["items"][0]["quarantined"] == 2
    offline = client.get("/api/v1/fleet?status=offline", headers=AUTH).json()
    assert [d["dev"] for d in offline["items"]] == ["dgc-dash-0003"]
    assert client.get("/api/v1/fleet?q=%25", headers=AUTH).json()["total"] == 0, "LIKE wildcards are literal"


def test_site_views_match_the_time_series(client: TestClient, built: tuple[LocalIngest, FastAPI, Path]) -> None:
    directory = built[2]
    site = client.get("/api/v1/sites/tokyo", headers=AUTH).json()
    g, s, d = _rows(directory, "SELECT sum(gen_mwh), sum(self_mwh), sum(demand_mwh) FROM series WHERE site='tokyo'")[0]
    assert site["last_24h"]["self_kwh"] == pytest.approx(s / 1e6) and site["last_24h"]["gen_kwh"] == pytest.approx(
        g / 1e6
    )
    assert site["renewable_ratio"] == pytest.approx(s / d) and site["factor_g_per_kwh"] == 423
    assert site["co2_avoided_kg"] == pytest.approx(s * 423 / 1e9)
    assert [x["dev"] for x in site["devices"]] == ["dgc-dash-0001", "dgc-dash-0002"]
    assert "NO_BASELINE" in site["flags_today"], "each device's first reading has no baseline"
    slots = client.get("/api/v1/sites/tokyo/series?slot_s=600", headers=AUTH).json()
    assert sum(x["self_kwh"] for x in slots) == pytest.approx(s / 1e6)
    assert all(x["t"] % 600 == 0 for x in slots)
    assert client.get("/api/v1/sites/nowhere", headers=AUTH).status_code == 404
    assert client.get("/api/v1/sites/osaka", headers=AUTH).json()["factor_g_per_kwh"] == 450


def test_the_consumer_view_speaks_japanese_and_english(client: TestClient) -> None:
    en = client.get("/api/v1/sites/tokyo/consumer?lang=en", headers=AUTH).json()
    ja = client.get("/api/v1/sites/tokyo/consumer?lang=ja", headers=AUTH).json()
    assert 0 < en["renewable_share"] <= 1 and en["renewable_share"] == ja["renewable_share"]
    assert "renewable" in en["summary"] and "再生可能エネルギー" in ja["summary"]
    assert en["average_factor_g_per_kwh"] < en["grid_factor_g_per_kwh"], "self-consumption lowers the average"


OWNER_KEY = SigningKey(b"\x05" * 32)


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalIngest, TestClient, Path, int]]:
    """A ledger whose tokyo devices are in two registry sites (other ids), with C-REV issued and some retired.

    70 one-minute readings per device: at least one whole 30-minute slot is
    closed (a later reading is sealed) and issued. osaka is in no registry site.
    """
    directory = tmp_path_factory.mktemp("dash-crev")
    ingest, app = build(directory, readings=70)
    now_ms = int(time.time()) * 1000
    registry = Registry(ingest.store, ingest.ledger, 423000, "label")
    registry.add_account("owner-1", "Owner", OWNER_KEY.public_key, True, now_ms)
    registry.add_site("reg-tokyo-a", "owner-1", "Japan/Tokyo", ["dgc-dash-0001"], {}, None, None, None, now_ms)
    registry.add_site(
        "reg-tokyo-b", "owner-1", "Japan/Tokyo/Nerima", ["dgc-dash-0002"], {}, 500000, "other", None, now_ms
    )
    summary = registry.issue(now_ms)
    assert summary.issuances >= 2 and summary.grams > 0, summary
    retire = summary.grams // 3 + 1
    with ingest.store.transaction():
        ingest.ledger.sync()
        retirement = registry.prepare_retirement("owner-1", retire, "Beneficiary", "purpose", 2026, now_ms)
        registry.retire(sign_retirement(retirement, OWNER_KEY), now_ms)
    yield ingest, TestClient(app), directory, summary.grams
    ingest.store.close()


def _crev_by_site(ingest: LocalIngest, directory: Path) -> dict[str, dict[str, int]]:
    """Each dashboard site's C-REV in grams, from the lots and lot_moves rows and the config's [sites]."""
    today = ingest.config.local_day(int(time.time()))
    slots = dict(_rows(directory, "SELECT leaf_idx, slot FROM issuances"))
    found = {site: {"today": 0, "issued": 0, "retired": 0} for site in SITES.values()}
    for leaf, dev, grams in _rows(directory, "SELECT issuance_leaf, dev, grams FROM lots"):
        found[SITES[dev]]["issued"] += grams
        if ingest.config.local_day(slots[leaf]) == today:
            found[SITES[dev]]["today"] += grams
    for dev, grams in _rows(
        directory,
        "SELECT l.dev, m.grams FROM lot_moves m JOIN lots l "
        "ON l.issuance_leaf = m.issuance_leaf AND l.lot_index = m.lot_index WHERE m.to_account IS NULL",
    ):
        found[SITES[dev]]["retired"] += grams
    return found


def _kg(grams: int) -> str:
    return "%d.%03d" % divmod(grams, 1000)


def test_the_site_view_counts_the_crev_of_its_devices(issued: tuple[LocalIngest, TestClient, Path, int]) -> None:
    ingest, client, directory, issued_g = issued
    expected = _crev_by_site(ingest, directory)
    tokyo, osaka = expected["tokyo"], expected["osaka"]
    assert tokyo["issued"] == issued_g, "every lot is of a tokyo device"
    assert tokyo["retired"] == _rows(directory, "SELECT sum(grams) FROM retirements")[0][0] == issued_g // 3 + 1
    assert osaka == {"today": 0, "issued": 0, "retired": 0}, "osaka is in no registry site"
    for name, want in expected.items():
        site = client.get("/api/v1/sites/" + name, headers=AUTH).json()
        got = (site["crev_issued_today_g"], site["crev_issued_total_g"], site["crev_retired_total_g"])
        assert got == (want["today"], want["issued"], want["retired"]), name
    # Both registry sites' devices count for the one dashboard site.
    per_registry_site = dict(
        _rows(
            directory,
            "SELECT i.site, sum(l.grams) FROM issuances i JOIN lots l ON l.issuance_leaf = i.leaf_idx GROUP BY i.site",
        )
    )
    assert set(per_registry_site) == {"reg-tokyo-a", "reg-tokyo-b"} and all(per_registry_site.values())
    assert sum(per_registry_site.values()) == tokyo["issued"]


def test_the_fleet_view_counts_each_devices_crev_today(issued: tuple[LocalIngest, TestClient, Path, int]) -> None:
    ingest, client, directory, _ = issued
    today = ingest.config.local_day(int(time.time()))
    want = dict.fromkeys(SITES, 0)
    for dev, slot, grams in _rows(
        directory, "SELECT i.dev, i.slot, l.grams FROM issuances i JOIN lots l ON l.issuance_leaf = i.leaf_idx"
    ):
        if ingest.config.local_day(slot) == today:
            want[dev] += grams
    fleet = client.get("/api/v1/fleet", headers=AUTH).json()
    assert {d["dev"]: d["crev_issued_today_g"] for d in fleet["items"]} == want


def test_crev_today_is_the_dashboards_local_day(issued: tuple[LocalIngest, TestClient, Path, int]) -> None:
    """With day_offset_h putting local midnight at the latest issued slot's start, only that slot is today's."""
    ingest, _, directory, issued_g = issued
    slots = sorted({slot for (slot,) in _rows(directory, "SELECT slot FROM issuances")})
    assert len(slots) >= 2, "the readings span more than one issued slot"
    midnight = slots[-1]
    offset_s = -midnight % 86400  # whole half-hours, so exact in hours
    offset_s -= 86400 if offset_s > 14 * 3600 else 0
    config = dataclasses.replace(ingest.config, day_offset_h=offset_s / 3600)
    assert config.local_day(midnight) != config.local_day(midnight - 1) == config.local_day(slots[-2])
    client = TestClient(create_app(config, TOKEN))
    latest = {
        dev: grams
        for dev, grams in _rows(
            directory,
            "SELECT i.dev, sum(l.grams) FROM issuances i JOIN lots l ON l.issuance_leaf = i.leaf_idx "
            "WHERE i.slot = ? GROUP BY i.dev",
            midnight,
        )
    }
    site = client.get("/api/v1/sites/tokyo", headers=AUTH).json()
    assert 0 < site["crev_issued_today_g"] == sum(latest.values()) < site["crev_issued_total_g"] == issued_g
    fleet = client.get("/api/v1/fleet", headers=AUTH).json()
    assert {d["dev"]: d["crev_issued_today_g"] for d in fleet["items"]} == {**dict.fromkeys(SITES, 0), **latest}


def test_the_consumer_view_names_the_crev_issued_and_retired(issued: tuple[LocalIngest, TestClient, Path, int]) -> None:
    ingest, client, directory, _ = issued
    expected = _crev_by_site(ingest, directory)
    for name, want in expected.items():
        issued_kg, retired_kg = _kg(want["issued"]), _kg(want["retired"])
        en = client.get("/api/v1/sites/%s/consumer?lang=en" % name, headers=AUTH).json()
        ja = client.get("/api/v1/sites/%s/consumer?lang=ja" % name, headers=AUTH).json()
        for view in (en, ja):
            assert (view["crev_issued_total_g"], view["crev_retired_total_g"]) == (want["issued"], want["retired"])
        assert "C-REV issued" in en["summary"] and "%s kg-CO2" % issued_kg in en["summary"], en["summary"]
        assert "%s kg-CO2 has been retired" % retired_kg in en["summary"], en["summary"]
        assert "発行された C-REV は%s kg-CO2" % issued_kg in ja["summary"], ja["summary"]
        assert "償却済みは%s kg-CO2" % retired_kg in ja["summary"], ja["summary"]
        assert "再生可能エネルギー" in ja["summary"], "the rest of the view is still there"
    assert expected["tokyo"]["retired"] > 0 and expected["tokyo"]["issued"] > expected["tokyo"]["retired"]


def test_the_openapi_description_documents_the_crev_fields(client: TestClient) -> None:
    schemas = client.get("/api/v1/openapi.json", headers=AUTH).json()["components"]["schemas"]
    for model, fields in {
        "Site": ("crev_issued_today_g", "crev_issued_total_g", "crev_retired_total_g"),
        "Consumer": ("crev_issued_total_g", "crev_retired_total_g"),
        "FleetItem": ("crev_issued_today_g",),
    }.items():
        for name in fields:
            field = schemas[model]["properties"][name]
            assert field["type"] == "integer" and "C-REV" in field["description"], (model, name)
            assert name in schemas[model]["required"], (model, name)


def test_quarantine_counts_match_what_was_injected(client: TestClient) -> None:
    quarantine = client.get("/api/v1/quarantine", headers=AUTH).json()
    assert quarantine == {"total": 2, "counts": {"MALFORMED": 2}}


def test_the_export_gives_a_bundle_that_verifies(client: TestClient) -> None:
    now = int(time.time())
    response = client.get("/api/v1/export?device=dgc-dash-0001&from=%d&to=%d" % (now - 86400, now + 60), headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"] == "application/cbor"
    result = verify_bundle(io.BytesIO(response.content), LEDGER_KEY.public_key)
    assert result.failure_count == 0 and result.readings >= 12


@pytest.mark.parametrize(
    "device",
    ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "dgc-dash-0001/../../x", "/etc/passwd", "DGC", "a" * 63 + "/"],
)
def test_the_export_refuses_path_traversal(
    client: TestClient, built: tuple[LocalIngest, FastAPI, Path], device: str
) -> None:
    response = client.get("/api/v1/export", params={"device": device, "from": 0, "to": 10}, headers=AUTH)
    assert response.status_code in (400, 422), response.text
    assert not (built[2].parent / "etc").exists()


@pytest.mark.slow
def test_the_api_conforms_to_its_openapi_schema(built: tuple[LocalIngest, FastAPI, Path]) -> None:
    """schemathesis generates requests for every operation and checks every response against the schema."""
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", built[1], headers=AUTH)
    checked = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail("the OpenAPI description has an invalid operation: %s" % result.err())
        operation = result.ok()
        if operation.path == "/api/v1/events":
            continue  # an endless stream by design: the browser test reads it
        checked.append(operation.path)

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def conforms(case: Any) -> None:
            case.call_and_validate(headers=AUTH)

        conforms()
    assert len(checked) >= 6


def test_the_grafana_dashboard_reads_what_ingest_writes_to_influxdb() -> None:
    import json
    import re

    from ingest_support import Device

    from crev.keys import SigningKey
    from crev_ingest.influx import MEASUREMENT, reading_point

    device = Device("dgc-grafana-0001", SigningKey(bytes([3]) * 32))
    device.next()
    point = reading_point(Reading.from_cose(device.next()), "tokyo", 423)
    assert point is not None
    line = str(point.to_line_protocol())  # type: ignore[no-untyped-call]
    dashboard = json.loads(
        (Path(__file__).resolve().parent.parent / "docs" / "grafana" / "crev-influxdb.json").read_text()
    )
    queries = [t["query"] for p in dashboard["panels"] for t in p["targets"]]
    fields = set(re.findall(r'r\._field == "(\w+)"', "\n".join(queries)))
    assert fields and all(f + "=" in line for f in fields), (fields, line)
    assert all('r._measurement == "%s"' % MEASUREMENT in q for q in queries)
    assert all(tag + "=" in line for tag in ("site", "dev"))
