"""The dashboard's vendored uPlot (from npm, copied by `make vendor`): served when present, SVG charts when not."""

import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, browser_check, require_chromium, served
from dashboard_support import AUTH, TOKEN, build
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support import ROOT

import crev_ingest.dashboard.app as dashboard

UPLOT = ROOT / "node_modules" / "uplot"
PACKAGED = dashboard.STATIC / "vendor"
CHECK = ROOT / "tests" / "browser" / "dashboard_check.mjs"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    ingest, built = build(tmp_path_factory.mktemp("assets"))
    yield built
    ingest.store.close()


def _static(directory: Path, vendored: bool) -> Path:
    """A copy of the page's files, with or without uPlot, for the app to serve instead of its own."""
    static = directory / "static"
    shutil.copytree(dashboard.STATIC, static, ignore=shutil.ignore_patterns("vendor"))
    if vendored:
        (static / "vendor").mkdir()
        shutil.copy(UPLOT / "dist" / "uPlot.iife.min.js", static / "vendor")
        shutil.copy(UPLOT / "dist" / "uPlot.min.css", static / "vendor")
    return static


def test_uplot_is_pinned_from_npm_and_its_copy_is_git_ignored() -> None:
    package = json.loads((ROOT / "package.json").read_text())
    assert package["dependencies"]["uplot"].startswith("1.6."), "pinned exactly, from npm"
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/uplot"]["version"] == package["dependencies"]["uplot"]
    ignored = subprocess.run(["git", "check-ignore", "-q", str(PACKAGED / "uPlot.iife.min.js")], cwd=ROOT)
    assert ignored.returncode == 0, "the vendored copy must be git-ignored"


def test_the_packaged_copy_is_the_one_npm_installed() -> None:
    if not (PACKAGED / "uPlot.iife.min.js").exists():
        pytest.skip("no vendored copy in this tree (run `make vendor`)")
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        assert (PACKAGED / name).read_bytes() == (UPLOT / "dist" / name).read_bytes(), "stale: run `make vendor`"


def test_the_vendored_files_are_served_with_their_content_types(
    app: FastAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "STATIC", _static(tmp_path, vendored=True))
    client = TestClient(app)
    script = client.get("/static/vendor/uPlot.iife.min.js", headers=AUTH)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.content == (UPLOT / "dist" / "uPlot.iife.min.js").read_bytes()
    style = client.get("/static/vendor/uPlot.min.css", headers=AUTH)
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    unsigned = client.get("/static/vendor/uPlot.iife.min.js", follow_redirects=False)
    assert unsigned.status_code == 303, "needs the token"
    for other in ("uPlot.LICENSE", "..%2Fapp.py", "uPlot.esm.js"):
        assert client.get("/static/vendor/" + other, headers=AUTH).status_code == 404
    page = client.get("/", headers=AUTH).text
    assert page.index("/static/vendor/uPlot.iife.min.js") < page.index("/static/app.js")


def test_without_the_vendored_files_the_page_still_loads_and_the_server_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dashboard, "STATIC", _static(tmp_path, vendored=False))
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    ingest, app = build(ledger, readings=2)  # a new app: its warn-once is its own
    client = TestClient(app)
    with caplog.at_level(logging.WARNING, logger=dashboard.__name__):
        for _ in range(3):
            assert client.get("/static/vendor/uPlot.iife.min.js", headers=AUTH).status_code == 404
    assert len([r for r in caplog.records if "make vendor" in r.getMessage()]) == 1
    assert client.get("/", headers=AUTH).status_code == 200
    assert client.get("/static/app.js", headers=AUTH).status_code == 200
    ingest.store.close()


@pytest.mark.slow
def test_without_uplot_the_browser_draws_the_svg_charts(
    app: FastAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_chromium()
    monkeypatch.setattr(dashboard, "STATIC", _static(tmp_path, vendored=False))
    with served(app) as url:
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "dashboard-site-fallback.png"
        seen = browser_check(CHECK, url, TOKEN, "fallback", "tokyo", str(screenshot))
    assert seen["renderers"] == ["svg", "svg"]
    assert seen["uplot_canvases"] == 0
    assert all(n >= 1 for n in seen["svg_slots"]), seen
    assert seen["svg_points"][0] == 3 * seen["svg_slots"][0], "each slot of each power series has its point"
    assert len([w for w in seen["warnings"] if "uPlot is not installed" in w]) == 1, seen["warnings"]
    assert screenshot.stat().st_size > 10_000
