"""The dashboard's witnesses view: GET /api/v1/witnesses and its page, over rows the real witnessing code wrote.

A ledger of the origin that a real `crev witness run` witnesses (signed with test_witness's log key, the
one test_witness_service's RunningWitness trusts), and ingest's own witnessing thread
(crev_ingest.witnessing, as `crev ingest run` starts it) sending its blocks to that witness and to two
that nothing answers for. The API runs on SQLite and on PostgreSQL; the page in headless Chromium.
"""

import hashlib
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, browser_check, require_chromium, served
from dashboard_support import AUTH, TOKEN
from fastapi.testclient import TestClient
from harness import free_port, wait_for
from store_support import rows
from support import ROOT
from test_witness import LOG_KEY, ORIGIN
from test_witness_service import RunningWitness

from crev import note
from crev.keys import SigningKey
from crev_ingest.config import IngestConfig, parse
from crev_ingest.dashboard.app import create_app
from crev_ingest.ledger import Ledger
from crev_ingest.metrics import IngestMetrics
from crev_ingest.store import Store
from crev_ingest.witnessing import WitnessConfig, Witnessing

CHECK = ROOT / "tests" / "browser" / "witnesses_check.mjs"


def unreachable(name: str, seed: int) -> WitnessConfig:
    """A witness on a loopback port nothing listens on."""
    key = note.VerifierKey(name, note.SIG_COSIGNATURE_V1, SigningKey(bytes([seed]) * 32).public_key)
    return WitnessConfig("http://127.0.0.1:%d" % free_port(), key)


def grow(store: Store, ledger: Ledger, size: int) -> None:
    """Leaves of the reserved type 3 up to ``size``, and a block over them."""
    with store.transaction():
        ledger.sync()
        while ledger.size < size:
            ledger.append(3, int(time.time() * 1000), b"leaf %d" % ledger.size)
        ledger.seal(int(time.time() * 1000))


@dataclass
class Witnessed:
    config: IngestConfig
    location: Path | str
    witness: RunningWitness
    started_ms: int


@pytest.fixture
def running_witness(tmp_path: Path) -> Iterator[RunningWitness]:
    directory = tmp_path / "witness"
    directory.mkdir()
    running = RunningWitness(directory)
    running.start()
    try:
        yield running
    finally:
        running.service.stop()


def witnessed(directory: Path, store_url: str | None, running: RunningWitness) -> Witnessed:
    """Blocks of 5 and 9 leaves sent to the witnesses by ingest's witnessing thread, then a block of 12 unsent.

    The dashboard's config lists the real witness, an unreachable one ("witness.down") and one added
    since ("witness.new"); the store also holds rows of one the config no longer lists ("witness.gone").
    """
    location: Path | str = store_url or directory / "crev.sqlite"
    store = Store(location)
    ledger = Ledger(store, LOG_KEY, ORIGIN, 3600, 10**9)
    real = WitnessConfig("http://127.0.0.1:%d" % running.port, running.vkey)
    down, gone, new = unreachable("witness.down", 71), unreachable("witness.gone", 72), unreachable("witness.new", 73)
    started_ms = int(time.time() * 1000)
    grow(store, ledger, 5)
    witnessing = Witnessing(location, [real, down, gone], IngestMetrics())
    witnessing.start()
    try:
        state = "SELECT witness, size, error FROM witness_state ORDER BY witness"

        def answered(size: int) -> bool:
            found = {r[0]: r[1:] for r in rows(location, state)}
            return found.get("witness.test") == (size, None) and all(
                str(found.get(name, (0, ""))[1]).startswith("cannot reach") for name in ("witness.down", "witness.gone")
            )

        wait_for(lambda: answered(5), 30, "the witnessing thread to reach the witnesses")
        grow(store, ledger, 9)
        wait_for(lambda: answered(9), 30, "the witness to cosign the second block")
    finally:
        witnessing.stop()
    grow(store, ledger, 12)  # sealed while ingest's witnessing is stopped: nobody has cosigned it
    store.close()
    storage = {"url": store_url} if store_url else {"path": "crev.sqlite"}
    config = parse(
        {
            "storage": storage,
            "ledger": {"origin": ORIGIN, "key": "ledger.key"},
            "witness": [{"url": w.url, "vkey": w.vkey.vkey()} for w in (real, down, new)],
        },
        directory / "ingest.toml",
    )
    return Witnessed(config, location, running, started_ms)


def test_the_witnesses_route_shows_what_each_witness_cosigned_and_whether_ingest_reaches_it(
    tmp_path: Path, store_url: str | None, running_witness: RunningWitness
) -> None:
    setup = witnessed(tmp_path, store_url, running_witness)
    client = TestClient(create_app(setup.config, TOKEN))
    assert client.get("/api/v1/witnesses").status_code == 401
    assert client.get("/api/v1/witnesses", headers={"Authorization": "Bearer not-the-token"}).status_code == 401
    answer = client.get("/api/v1/witnesses", headers=AUTH)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    newest_height = rows(setup.location, "SELECT max(height) FROM blocks")[0][0]
    assert (data["ledger_size"], data["ledger_height"]) == (12, newest_height)
    by_name = {w["witness"]: w for w in data["witnesses"]}
    assert list(by_name) == ["witness.test", "witness.down", "witness.new", "witness.gone"]  # config order first

    # The witness's own view of what it cosigned last: its monitoring endpoint.
    origin_hash = hashlib.sha256(ORIGIN.encode()).hexdigest()
    with urllib.request.urlopen("http://127.0.0.1:%d/%s/checkpoint" % (running_witness.port, origin_hash)) as got:
        latest = got.read().decode()
    checkpoint, signed = note.open_checkpoint(latest, [note.VerifierKey(ORIGIN, 1, LOG_KEY.public_key)])
    cosignature = next(s for s in signed.signatures if s.name == "witness.test")
    cosigned_height = rows(setup.location, "SELECT height FROM blocks WHERE tree_size = 9")[0][0]
    up = by_name["witness.test"]
    assert checkpoint.size == up["cosigned_size"] == 9
    assert up["cosigned_at"] == note.cosignature_timestamp(cosignature)
    assert (up["status"], up["error"], up["behind"], up["cosigned_height"]) == ("up", None, 3, cosigned_height)
    assert (up["url"], up["vkey"], up["configured"]) == (
        "http://127.0.0.1:%d" % running_witness.port,
        running_witness.vkey.vkey(),
        True,
    )
    assert setup.started_ms <= up["checked_ms"] <= time.time() * 1000

    down = by_name["witness.down"]
    assert (down["status"], down["cosigned_size"], down["behind"], down["cosigned_at"]) == ("retrying", 0, 12, None)
    assert down["error"].startswith("cannot reach %s/add-checkpoint" % down["url"]), down["error"]
    new = by_name["witness.new"]
    assert (new["status"], new["error"], new["checked_ms"], new["configured"]) == ("not contacted", None, None, True)
    gone = by_name["witness.gone"]
    assert (gone["status"], gone["url"], gone["vkey"], gone["configured"]) == ("retrying", None, None, False)


@pytest.mark.slow
def test_the_page_lists_the_witnesses_with_their_status_in_words(
    tmp_path: Path, running_witness: RunningWitness
) -> None:
    require_chromium()
    setup = witnessed(tmp_path, None, running_witness)
    with served(create_app(setup.config, TOKEN)) as url:
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "dashboard-witnesses.png"
        seen = browser_check(CHECK, url, TOKEN, str(screenshot), timeout=120)
    assert seen["heading"] == "Witnesses" and "newest cosignature" in seen["caption"]
    assert seen["column_headers"] == [
        "Witness", "URL", "Cosigned size", "Behind (leaves)", "Cosigned at", "Last exchange", "Status",
    ]  # fmt: skip
    by_name = {r["witness"]: r for r in seen["rows"]}
    assert [r["witness"] for r in seen["rows"]] == ["witness.test", "witness.down", "witness.new", "witness.gone"]
    assert by_name["witness.test"]["cells"][2:4] == ["9", "3"] and by_name["witness.test"]["cells"][6] == "up"
    assert by_name["witness.down"]["cells"][6].startswith("retrying: cannot reach http://127.0.0.1:")
    assert by_name["witness.new"]["cells"][6] == "not contacted" and by_name["witness.new"]["cells"][4] == "—"
    assert by_name["witness.gone"]["cells"][1] == "not configured"
    assert screenshot.stat().st_size > 10_000
