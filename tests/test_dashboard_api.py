"""The dashboard's JSON API over a real SQLite ledger: views, token, export and schema."""

import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from dashboard_support import AUTH, TOKEN, build
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from ingest_support import LEDGER_KEY, LocalIngest
from schemathesis.core.result import Err

from crev.reading import Reading
from crev_cli.bundle_verify import verify_bundle


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
