"""The market's participants' page (``/`` of the market API) in headless Chromium, over a real ledger.

The page signs in the browser: its deterministic CBOR and COSE_Sign1
(static/cose.js) must give, byte for byte, what ``crev.cbor`` and
``crev.cose`` give (Ed25519 signatures are deterministic). Then a live
market API (uvicorn) over a ledger made here, a seller's resting sell placed
through the Python Market, and Debian's Chromium driven by playwright-core
(tests/browser/market_check.mjs): a participant imports the key
`crev registry keygen` wrote, buys with a place condition, sees the fill,
retires part and opens the receipt. No request the page makes carries the
key. The screenshots are kept in test-artifacts/market-page.png and
market-receipt.png.
"""

import base64
import hashlib
import json
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from harness import free_port, wait_for
from market_support import BUYER, BUYER_KEY, SELLER, TYPE, MarketLedger, make_market
from support import ROOT
from trace_support import PLACE

from crev import cbor
from crev.cose import Sign1, sign1
from crev.keys import SigningKey
from crev_market.api import STATIC, create_app
from crev_market.auth import authorization

CHECK = ROOT / "tests" / "browser" / "market_check.mjs"
COSE_JS = STATIC / "cose.js"
ARTIFACTS = ROOT / "test-artifacts"
PARTICIPANT = "participant-1"
SEED = hashlib.sha256(b"crev market browser test participant").digest()
PARTICIPANT_KEY = SigningKey(SEED)

# Runs static/cose.js in Node (WebCrypto as in the browser): the encodings of
# argv[1] (JSON; {"$b": hex} a byte string, {"$m": [[k, v]...]} a map,
# {"$t": [tag, v]} a tag) and the COSE_Sign1 of a map signed with the seed argv[2].
NODE_COSE = r"""
const fs = require("fs");
const vm = require("vm");
vm.runInThisContext(fs.readFileSync(process.argv[1], "utf8"));
const C = globalThis.crevCose;
const revive = (v) => {
  if (Array.isArray(v)) return v.map(revive);
  if (v && typeof v === "object") {
    if ("$b" in v) return C.hexToBytes(v.$b);
    if ("$m" in v) return new Map(v.$m.map(([k, x]) => [k, revive(x)]));
    if ("$t" in v) return new C.CrevTag(v.$t[0], revive(v.$t[1]));
  }
  return v;
};
(async () => {
  const values = JSON.parse(process.argv[2]).map(revive);
  const encoded = values.map((v) => C.bytesToHex(C.encode(v)));
  const signer = await C.importSeed(process.argv[3]);
  const fields = { 0: 1, 1: 2, 2: "buyer-1", 3: 800, 4: 2500, 8: ["Japan"], 13: 1767225600,
                   14: C.hexToBytes("00".repeat(16)) };
  const signed = C.bytesToHex(await C.signMap(fields, signer));
  const refused = [];
  for (const bad of [1.5, 2 ** 53, { 24: 1 }, { "-1": 1 }, null, true]) {
    try { C.encode(bad); refused.push(false); } catch (e) { refused.push(true); }
  }
  const publicKey = C.bytesToHex(signer.publicKey), kid = C.bytesToHex(signer.kid);
  console.log(JSON.stringify({ encoded, signed, publicKey, kid, refused }));
})().catch((e) => { console.log(JSON.stringify({ error: String(e) })); });
"""

SAMPLES: list[Any] = [
    0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53 - 1,
    -1, -24, -25, -256, -257, -(2**32), -(2**53) + 1,
    b"", bytes(range(30)), "", "Japan/Tokyo", "東京", "x" * 300,
    [], [1, [2, [3]]], list(range(30)), {}, {0: 1, 5: "a", 23: [b"\x01"]},
    cbor.Tag(18, [b"\xa1", {}, b"", b"\x00" * 64]),
]  # fmt: skip


def _js(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": value.hex()}
    if isinstance(value, dict):
        return {"$m": [[k, _js(v)] for k, v in value.items()]}
    if isinstance(value, cbor.Tag):
        return {"$t": [value.tag, _js(value.value)]}
    if isinstance(value, list):
        return [_js(v) for v in value]
    return value


def test_the_pages_cbor_and_cose_sign1_are_byte_for_byte_crevs() -> None:
    done = subprocess.run(
        ["node", "-e", NODE_COSE, str(COSE_JS), json.dumps([_js(v) for v in SAMPLES]), SEED.hex()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in result, result["error"]
    assert result["encoded"] == [cbor.dumps(v).hex() for v in SAMPLES]
    assert result["refused"] == [True] * 6, "floats, unsafe integers, keys outside 0..23, null and booleans"
    assert result["publicKey"] == PARTICIPANT_KEY.public_key.hex()
    assert result["kid"] == PARTICIPANT_KEY.kid.hex()
    fields = {0: 1, 1: 2, 2: "buyer-1", 3: 800, 4: 2500, 8: ["Japan"], 13: 1767225600, 14: bytes(16)}
    signed = bytes.fromhex(result["signed"])
    assert signed == sign1(cbor.dumps(fields), PARTICIPANT_KEY)
    Sign1.from_bytes(signed).verify(PARTICIPANT_KEY.public_key)


def test_the_market_api_serves_the_page_read_only(tmp_path: Path) -> None:
    client = TestClient(create_app(make_market(tmp_path).traced.registry))
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name, media in (("app.js", "text/javascript"), ("cose.js", "text/javascript"), ("style.css", "text/css")):
        response = client.get("/static/" + name)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media)
        assert response.content == (STATIC / name).read_bytes()
    for name in ("index.html", "..%2Fapi.py", "vendor", "nothing.js"):
        assert client.get("/static/" + name).status_code == 404
    assert client.get("/static/vendor/uPlot.LICENSE").status_code == 404
    assert client.post("/static/app.js").status_code == 405
    assert "/" not in client.get("/api/v1/openapi.json").json()["paths"]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, MarketLedger]]:
    if shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian's chromium is not installed; .ci/run installs it (apt-get install chromium)")
    if not (STATIC / "vendor" / "uPlot.iife.min.js").exists():
        pytest.fail("uPlot is not in market/crev_market/static/vendor: run `make vendor`")
    ml = make_market(tmp_path)
    registry = ml.traced.registry
    registry.add_account(PARTICIPANT, "Participant One", PARTICIPANT_KEY.public_key, True, ml.ms)
    assert ml.sell(1500, 2000).grams_left == 1500  # owner-1: 1.500 kg of Japan/Tokyo solar at 20.00 yen/kg or more
    # A crossed but ineligible buy (only Japan/Osaka): it rests beside the sell.
    assert ml.buy(400, 2200, places=["Japan/Osaka"]).grams_left == 400
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(registry), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="market-api")
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 20, "the market API to listen")
        assert server.started
        yield "http://127.0.0.1:%d" % port, ml
    finally:
        server.should_exit = True
        thread.join(15)


def _get(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
        return json.loads(response.read())


def _leaks(requests: list[dict[str, Any]]) -> list[str]:
    """Where a request carried the seed, in hex, base64 (either alphabet) or as raw bytes."""
    forms = {SEED.hex(), SEED.hex().upper(), base64.b64encode(SEED).decode(), base64.urlsafe_b64encode(SEED).decode()}
    forms |= {form.rstrip("=") for form in forms}
    found = []
    for request in requests:
        body = base64.b64decode(request["body"]) if request["body"] else b""
        texts = [request["url"], json.dumps(request["headers"]), body.decode("latin-1")]
        if any(form in t for form in forms for t in texts) or SEED in body:
            found.append("%s %s" % (request["method"], request["url"]))
    return found


@pytest.mark.slow
def test_a_participant_buys_with_a_place_condition_retires_and_opens_the_receipt(
    live: tuple[str, MarketLedger],
) -> None:
    url, _ml = live
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot, receipt_shot = ARTIFACTS / "market-page.png", ARTIFACTS / "market-receipt.png"
    done = subprocess.run(
        ["node", str(CHECK), url, PARTICIPANT, SEED.hex(), str(screenshot), str(receipt_shot)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in seen, (seen["error"], seen["console"])
    assert not [m for m in seen["console"] if m.startswith("pageerror")], seen["console"]

    # The public book, in words.
    words = {row["side"]: row["words"] for row in seen["book_before"]}
    assert words["sell"] == "sells up to 1.500 kg of %s from %s at 20.00 yen/kg or more" % (TYPE, PLACE)
    assert words["buy"] == "buys up to 0.400 kg at up to 22.00 yen/kg, only from places under Japan/Osaka"
    assert seen["chart_before"] == "none" and seen["uplot_loaded"] is True

    # The key: imported, and gone from the form.
    assert seen["who"] == PARTICIPANT and seen["held_before"] == 0
    assert seen["seed_field_after_import"] == [], "the key's field is gone once the key is imported"

    # The buy filled at once against the sell, at the sell's price.
    assert seen["error_after_buy"] == []
    placed = seen["placed"]
    assert placed["filled"] == 800 and placed["left"] == 0, placed
    assert "filled 0.800 kg in 1 trade" in placed["text"]
    assert seen["fills"] and "0.800 kg at 20.00 yen/kg" in seen["fills"][0]
    assert seen["held_after_buy"] == 800
    assert len(seen["trades"]) == 1
    rows = {row["order"]: row for row in seen["book_after"]}
    assert placed["order"] not in rows, "filled: not on the book"
    sell = next(row for row in seen["book_after"] if row["side"] == "sell")
    assert sell["words"].startswith("sells up to 0.700 kg") and sell["cancel"] is False

    # One trade: a single point, visible, on uPlot's chart.
    chart = seen["chart"]
    assert chart["renderer"] == "uplot" and chart["trades"] == chart["data_length"] == 1, chart
    assert chart["legend"] == ["Time", "Price", "Volume"]
    assert chart["canvas"][0] > 300 and chart["canvas"][1] > 150, chart
    for point in chart["points"]:
        assert point["points_shown"] and point["hits"] >= 3, chart["points"]
    assert chart["x_span_s"] == 2 * 3600, "one trade: an hour either side of it, not years: %r" % chart

    # The retirement: 0.500 kg of the 0.800 kg bought, and its receipt.
    retirement = seen["retirement"]
    assert seen["held_after_retire"] == 300
    receipt = seen["receipt"]
    assert receipt["retirement"] == retirement and receipt["kg"] == "0.500 kg-CO2"
    assert receipt["beneficiary"] == "Koriyama City Library"
    assert sum(round(float(lot[-1]) * 1000) for lot in receipt["lots"]) == 500
    assert all(lot[4] == PLACE and lot[3] == TYPE for lot in receipt["lots"])

    # Without uPlot: the trade as a table row.
    assert len(seen["fallback_rows"]) == 1 and seen["fallback_rows"][0][1:] == ["20.00", "0.800"]

    # The server saw signed messages only: never the key, in any form, in any request.
    assert {r["method"] for r in seen["requests"]} == {"GET", "POST"}
    posts = [r for r in seen["requests"] if r["method"] == "POST"]
    assert [r["url"].removeprefix(url) for r in posts] == ["/api/v1/orders", "/api/v1/retirements"]
    for post in posts:
        Sign1.from_bytes(base64.b64decode(post["body"])).verify(PARTICIPANT_KEY.public_key)
    assert _leaks(seen["requests"]) == []
    planted = base64.b64encode(b"x" + SEED).decode()  # the detector finds a planted key in each form
    fake: dict[str, Any]
    for fake in ({"url": url + "/?k=" + SEED.hex(), "headers": {}, "body": None},
                 {"url": url, "headers": {"x": base64.b64encode(SEED).decode()}, "body": None},
                 {"url": url, "headers": {}, "body": planted}):  # fmt: skip
        assert _leaks([{"method": "POST", **fake}]) != []
    assert len(seen["requests"]) > 10

    # From Python: the receipt, and what is left to the participant.
    shown = _get("%s/api/v1/retirements/%d" % (url, retirement))
    assert shown["account"] == PARTICIPANT and shown["grams"] == 500
    assert shown["beneficiary"] == "Koriyama City Library" and shown["purpose"] == "FY2026 Scope 2 report"
    assert sum(lot["grams"] for lot in shown["lots"]) == 500
    slots = [lot["slot"] for lot in shown["lots"]]
    assert slots == sorted(slots), "oldest slot first"
    held = _get("%s/api/v1/accounts/%s/holdings" % (url, PARTICIPANT), {"Authorization": authorization(
        PARTICIPANT, PARTICIPANT_KEY)})  # fmt: skip
    assert held["grams"] == 300
    assert (
        _get("%s/api/v1/accounts/%s/holdings" % (url, BUYER), {"Authorization": authorization(BUYER, BUYER_KEY)})[
            "grams"
        ]
        == 0
    )
    assert SELLER in {row["account"] for row in _get(url + "/api/v1/book")}
    assert screenshot.stat().st_size > 20_000 and receipt_shot.stat().st_size > 10_000
