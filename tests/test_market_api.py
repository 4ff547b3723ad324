"""The market's JSON API (SPEC §7, §9, §10) over a real SQLite ledger: signed orders, views, tokens, schema.

Orders, cancels and retirements go in as the COSE_Sign1 bytes their account
signed; the API never sees a key. The holdings view needs a view token
signed by the account's key (``crev_market.auth``).
"""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from harness import free_port, wait_for
from hypothesis import HealthCheck, given, settings
from market_support import (
    BUYER,
    BUYER_KEY,
    SELLER,
    SELLER_KEY,
    TYPE,
    MarketLedger,
    buy_order,
    cancel_order,
    make_market,
    sell_order,
)
from registry_support import write_ledger_key
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import positive_data_acceptance
from trace_support import ORIGIN, PLACE, SITE, make_traced

from crev.keys import SigningKey
from crev.registry_format import Retirement
from crev_market import Refused
from crev_market.api import create_app, refusal_status
from crev_market.auth import authorization, verify_view_token
from crev_market.market import Market
from crev_market.registry import sign_retirement

COSE = {"content-type": "application/cose"}
# schemathesis sends application/cose bodies (the schema's binary strings) as raw bytes.
schemathesis.serializer.alias("application/cose", "application/octet-stream")
HIDDEN = "hidden-1"
HIDDEN_KEY = SigningKey(bytes([44]) * 32)


@pytest.fixture
def ml(tmp_path: Path) -> MarketLedger:
    market = make_market(tmp_path)
    traced = market.traced
    traced.registry.add_account(HIDDEN, "Hidden Buyer", HIDDEN_KEY.public_key, False, traced.ms)
    return market


@pytest.fixture
def client(ml: MarketLedger) -> TestClient:
    return TestClient(create_app(ml.traced.registry))


def _post_order(client: TestClient, signed: bytes, as_json: bool = False) -> Any:
    if as_json:
        return client.post("/api/v1/orders", json={"signed": base64.b64encode(signed).decode()})
    return client.post("/api/v1/orders", content=signed, headers=COSE)


def _trade_count(ml: MarketLedger) -> int:
    return int(ml.db.execute("SELECT count(*) FROM trades").fetchone()[0])


def _view(account: str, key: SigningKey, at: int | None = None) -> dict[str, str]:
    return {"Authorization": authorization(account, key, at)}


# ------------------------------------------------------------------ orders, trades and the book


def test_a_sell_and_a_buy_trade_through_the_api(ml: MarketLedger, client: TestClient) -> None:
    held = ml.held(SELLER)
    assert held > 2000, "the seller holds issued C-REV"
    sell = _post_order(client, sell_order(2000, 12000))
    assert sell.status_code == 200, sell.text
    sell_id = sell.json()["order"]
    assert sell.json() == {"order": sell_id, "fills": [], "grams_left": 2000, "cancels": None}
    book = client.get("/api/v1/book").json()
    assert [(b["order"], b["side"], b["account"], b["grams_left"], b["price_yen_per_kg"]) for b in book] == [
        (sell_id, "sell", SELLER, 2000, "120.00")
    ]
    assert (book[0]["place"], book[0]["type"], book[0]["conditions"]) == (PLACE, TYPE, None)

    buy = _post_order(client, buy_order(1500, 13050, places=["Japan"], types=["solar"]), as_json=True)
    assert buy.status_code == 200, buy.text
    placed = buy.json()
    buy_id = placed["order"]
    assert placed["grams_left"] == 0 and len(placed["fills"]) == 1
    fill = placed["fills"][0]
    assert (fill["buy"], fill["sell"], fill["grams"], fill["price_yen_per_kg"]) == (buy_id, sell_id, 1500, "120.00")

    trades = client.get("/api/v1/trades").json()
    assert len(trades) == 1
    trade = trades[0]
    assert (trade["trade"], trade["buy"], trade["sell"], trade["grams"]) == (fill["trade"], buy_id, sell_id, 1500)
    assert trade["price_yen_per_kg"] == "120.00" and trade["amount_yen"] == "180.00000", "1.5 kg at 120 yen/kg"
    assert isinstance(trade["time"], int) and abs(trade["time"] - time.time()) < 60

    book = client.get("/api/v1/book").json()
    assert [(b["order"], b["grams_left"]) for b in book] == [(sell_id, 500)]
    assert [(o, g) for o, _side, _account, g, _price in Market(ml.traced.registry).book()] == [(sell_id, 500)]
    assert ml.held(BUYER) == 1500 and ml.held(SELLER) == held - 1500

    resting = client.get("/api/v1/orders/%d" % sell_id).json()
    assert (resting["status"], resting["grams_filled"], resting["grams_left"]) == ("resting", 1500, 500)
    assert resting["trades"] == [fill["trade"]] and resting["place"] == PLACE
    filled = client.get("/api/v1/orders/%d" % buy_id).json()
    assert (filled["status"], filled["side"], filled["grams_filled"], filled["grams_left"]) == (
        "filled",
        "buy",
        1500,
        0,
    )
    assert filled["conditions"] == {
        "sellers": [],
        "places": ["Japan"],
        "types": ["solar"],
        "slot_from": None,
        "slot_to": None,
    }
    assert filled["price_yen_per_kg"] == "130.50"

    cancel = _post_order(client, cancel_order(sell_id))
    assert cancel.status_code == 200, cancel.text
    assert cancel.json()["cancels"] == sell_id and cancel.json()["fills"] == []
    assert client.get("/api/v1/book").json() == []
    assert client.get("/api/v1/orders/%d" % sell_id).json()["status"] == "cancelled"
    recorded = client.get("/api/v1/orders/%d" % cancel.json()["order"]).json()
    assert (recorded["side"], recorded["status"], recorded["cancels"]) == ("cancel", "recorded", sell_id)
    assert client.get("/api/v1/orders/%d" % fill["trade"]).status_code == 404, "a trade is not an order"
    assert client.get("/api/v1/orders/999999").status_code == 404


def test_the_book_shows_an_undisclosed_seller_as_undisclosed(ml: MarketLedger, client: TestClient) -> None:
    # The undisclosed account buys, then offers what it bought.
    assert _post_order(client, sell_order(1000, 10000)).status_code == 200
    bought = _post_order(client, buy_order(1000, 10000, account=HIDDEN, key=HIDDEN_KEY))
    assert bought.json()["fills"][0]["grams"] == 1000
    offer = _post_order(client, sell_order(600, 20000, account=HIDDEN, key=HIDDEN_KEY))
    assert offer.status_code == 200, offer.text
    book = client.get("/api/v1/book").json()
    assert [(b["order"], b["account"]) for b in book] == [(offer.json()["order"], "undisclosed")]
    view = client.get("/api/v1/orders/%d" % offer.json()["order"]).json()
    assert view["account"] == "undisclosed"
    assert HIDDEN not in json.dumps(client.get("/api/v1/trades").json())


def test_the_api_refuses_a_wrong_key_a_replay_and_a_strangers_cancel(ml: MarketLedger, client: TestClient) -> None:
    forged = _post_order(client, sell_order(1000, 10000, key=BUYER_KEY))
    assert forged.status_code == 403, forged.text
    assert "not signed by the key of account %s" % SELLER in forged.json()["detail"]

    signed = sell_order(1000, 10000)
    assert _post_order(client, signed).status_code == 200
    assert _post_order(client, buy_order(400, 10000)).json()["fills"][0]["grams"] == 400
    trades_before, counts_before = client.get("/api/v1/trades").json(), ml.counts()
    again = _post_order(client, signed)
    assert again.status_code == 409, again.text
    assert "never executed twice" in again.json()["detail"]
    replayed_as_json = _post_order(client, signed, as_json=True)
    assert replayed_as_json.status_code == 409
    assert client.get("/api/v1/trades").json() == trades_before and ml.counts() == counts_before

    resting = client.get("/api/v1/book").json()[0]["order"]
    strangers = _post_order(client, cancel_order(resting, account=BUYER, key=BUYER_KEY))
    assert strangers.status_code == 400, strangers.text
    assert "only its own account may cancel it" in strangers.json()["detail"]
    assert [b["order"] for b in client.get("/api/v1/book").json()] == [resting] and ml.counts() == counts_before


def test_malformed_bodies_are_refused_and_record_nothing(ml: MarketLedger, client: TestClient) -> None:
    before = ml.counts()
    assert _post_order(client, b"\xa0not cose").status_code == 400
    assert client.post("/api/v1/orders", json={"signed": "***"}).status_code == 400
    assert client.post("/api/v1/orders", json=["signed"]).status_code == 400
    assert client.post("/api/v1/orders", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/api/v1/orders", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/api/v1/orders", content=b"\0" * 70000, headers=COSE).status_code == 413
    assert client.post("/api/v1/retirements", content=b"\x80", headers=COSE).status_code == 400
    assert ml.counts() == before


def test_refusal_statuses() -> None:
    assert refusal_status(Refused("the order is not signed by the key of account a-1", "NOT_SIGNED")) == 403
    assert refusal_status(Refused("this signed order was placed already", "REPLAY")) == 409
    assert refusal_status(Refused("order 5 belongs to x; only its own account may cancel it")) == 400


# ------------------------------------------------------------------ holdings and the view token


def test_holdings_need_the_accounts_signed_view_token(ml: MarketLedger, client: TestClient) -> None:
    url = "/api/v1/accounts/%s/holdings" % SELLER
    now = int(time.time())
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer whatever"}).status_code == 401
    assert client.get(url, headers={"Authorization": "CREV !!!"}).status_code == 401
    assert client.get(url, headers=_view(BUYER, BUYER_KEY)).status_code == 401, "another account's token"
    assert client.get(url, headers=_view(SELLER, BUYER_KEY)).status_code == 401, "signed by another key"
    assert client.get(url, headers=_view(SELLER, SELLER_KEY, now - 301)).status_code == 401, "too old"
    # Well past the window, so that the seconds this test takes on a slow machine cannot bring it back in.
    assert client.get(url, headers=_view(SELLER, SELLER_KEY, now + 360)).status_code == 401, "from the future"
    unknown = client.get("/api/v1/accounts/nobody-1/holdings", headers=_view("nobody-1", SELLER_KEY))
    assert unknown.status_code == 401 and unknown.headers["www-authenticate"] == "CREV"

    ok = client.get(url, headers=_view(SELLER, SELLER_KEY, now - 250))
    assert ok.status_code == 200, ok.text
    view = ok.json()
    store_lots = ml.traced.ingest.store.holdings(SELLER)
    assert view["account"] == SELLER and view["grams"] == ml.held(SELLER) > 0
    assert [lot["lot"] for lot in view["lots"]] == ["%d.%d" % (lot[0], lot[1]) for lot in store_lots]
    slots = [lot["slot"] for lot in view["lots"]]
    assert slots == sorted(slots), "oldest slot first"
    assert all(lot["site"] == SITE and lot["place"] == PLACE and lot["type"] == TYPE for lot in view["lots"])
    # The buyer sees its own (empty) holdings with its own token.
    assert client.get("/api/v1/accounts/%s/holdings" % BUYER, headers=_view(BUYER, BUYER_KEY)).json()["lots"] == []


def test_the_view_token_helpers_agree() -> None:
    header = authorization(SELLER, SELLER_KEY, 1_000_000)
    verify_view_token(header, SELLER, SELLER_KEY.public_key, 1_000_300)
    verify_view_token(header.replace("+", "-").replace("/", "_").rstrip("="), SELLER, SELLER_KEY.public_key, 1_000_000)
    for now in (1_000_301, 999_699):
        with pytest.raises(Exception, match="300 s"):
            verify_view_token(header, SELLER, SELLER_KEY.public_key, now)


# ------------------------------------------------------------------ retirement


def test_a_retirement_through_the_api_and_its_receipt(ml: MarketLedger, client: TestClient) -> None:
    lots = client.get("/api/v1/accounts/%s/holdings" % SELLER, headers=_view(SELLER, SELLER_KEY)).json()["lots"]
    first = lots[0]
    second = lots[1]
    grams = first["grams"] + 1
    taken = [[int(p) for p in first["lot"].split(".")] + [first["grams"]]]
    taken.append([int(p) for p in second["lot"].split(".")] + [1])
    held = ml.held(SELLER)
    retirement = Retirement(SELLER, grams, taken, "Bene K.K.", "FY2026 Scope 2", 2026, int(time.time()), os.urandom(16))
    assert retirement.problem() is None

    forged = client.post("/api/v1/retirements", content=sign_retirement(retirement, BUYER_KEY), headers=COSE)
    assert forged.status_code == 403, forged.text

    signed = sign_retirement(retirement, SELLER_KEY)
    done = client.post("/api/v1/retirements", json={"signed": base64.b64encode(signed).decode()})
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["grams"] == grams and result["account"] == SELLER
    assert result["lots"] == [{"lot": first["lot"], "grams": first["grams"]}, {"lot": second["lot"], "grams": 1}]
    assert ml.held(SELLER) == held - grams

    counts = ml.counts()
    again = client.post("/api/v1/retirements", content=signed, headers=COSE)
    assert again.status_code == 409, again.text
    assert ml.counts() == counts and ml.held(SELLER) == held - grams

    receipt = client.get("/api/v1/retirements/%d" % result["retirement"]).json()
    assert {k: receipt[k] for k in ("retirement", "account", "grams", "beneficiary", "purpose", "year")} == {
        "retirement": result["retirement"],
        "account": SELLER,
        "grams": grams,
        "beneficiary": "Bene K.K.",
        "purpose": "FY2026 Scope 2",
        "year": 2026,
    }
    assert receipt["time"] == retirement.time_s
    assert [(lot["lot"], lot["grams"]) for lot in receipt["lots"]] == [
        (first["lot"], first["grams"]),
        (second["lot"], 1),
    ]
    for lot, held_lot in zip(receipt["lots"], (first, second), strict=True):
        assert (lot["site"], lot["type"], lot["place"], lot["slot"]) == (SITE, TYPE, PLACE, held_lot["slot"])
    assert client.get("/api/v1/retirements/%d" % (result["retirement"] - 1)).status_code == 404

    too_much = Retirement(SELLER, 10**9, [[*taken[1][:2], 10**9]], "B", "P", 2026, int(time.time()), os.urandom(16))
    refused = client.post("/api/v1/retirements", content=sign_retirement(too_much, SELLER_KEY), headers=COSE)
    assert refused.status_code == 400 and "less than" in refused.json()["detail"]


# ------------------------------------------------------------------ the OpenAPI document


def test_every_response_has_a_model_in_the_openapi_document(client: TestClient) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) == {
        "/api/v1/book",
        "/api/v1/trades",
        "/api/v1/orders",
        "/api/v1/orders/{order_id}",
        "/api/v1/retirements",
        "/api/v1/retirements/{retirement_id}",
        "/api/v1/accounts/{account}/holdings",
    }
    for path, operations in paths.items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("2", "4")):
                    assert "application/json" in response["content"], (path, method, status)
                    assert response["content"]["application/json"]["schema"], (path, method, status)
    body = paths["/api/v1/orders"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/cose", "application/json"}


def _conforms(operation: Any, excluded: list[Any]) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def conforms(case: Any) -> None:
        case.call_and_validate(excluded_checks=excluded)

    conforms()


@pytest.mark.slow
def test_the_api_conforms_to_its_openapi_schema(ml: MarketLedger) -> None:
    """schemathesis generates requests for every operation and checks every response against the schema.

    Generated ids and signatures rarely hit anything real, so each operation is
    also called with real ids, a real view token and real signed messages,
    and those responses are validated the same way.
    """
    app = create_app(ml.traced.registry)
    client = TestClient(app)
    # Something on the book, a trade and a retirement, so the views have content to get right.
    placed = [
        client.post("/api/v1/orders", content=signed, headers=COSE).json()["order"]
        for signed in (sell_order(2000, 12000), buy_order(500, 12000), buy_order(300, 9000, places=["Japan"]))
    ]
    retirement = ml.traced.retire(700)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    operations = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail("the OpenAPI description has an invalid operation: %s" % result.err())
        operation = result.ok()
        operations[(operation.method.upper(), operation.path)] = operation
        # A well-formed body may carry a signed message the market refuses (400): that is its answer, not a
        # schema violation, so the POSTs skip only the "valid data must be accepted" check.
        _conforms(operation, [positive_data_acceptance] if operation.method.upper() == "POST" else [])
    assert len(operations) == 7

    real: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/api/v1/book", {}),
        ("GET", "/api/v1/trades", {}),
        *[("GET", "/api/v1/orders/{order_id}", {"path_parameters": {"order_id": order}}) for order in placed],
        ("GET", "/api/v1/retirements/{retirement_id}", {"path_parameters": {"retirement_id": retirement}}),
        (
            "GET",
            "/api/v1/accounts/{account}/holdings",
            {"path_parameters": {"account": SELLER}, "headers": _view(SELLER, SELLER_KEY)},
        ),
        ("POST", "/api/v1/orders", {"body": sell_order(100, 15000), "media_type": "application/cose"}),
        (
            "POST",
            "/api/v1/orders",
            {"body": {"signed": _b64(cancel_order(placed[0]))}, "media_type": "application/json"},
        ),
        ("POST", "/api/v1/orders", {"body": buy_order(100, 20000), "media_type": "application/cose"}),
        ("POST", "/api/v1/retirements", {"body": _retirement(ml, 5), "media_type": "application/cose"}),
    ]
    for method, path, fields in real:
        response = operations[(method, path)].Case(**fields).call_and_validate()
        assert response.status_code == 200, (method, path, response.text)
    assert [o["status"] for o in (client.get("/api/v1/orders/%d" % i).json() for i in placed)] == [
        "cancelled",
        "filled",
        "resting",
    ]


def _b64(signed: bytes) -> str:
    return base64.b64encode(signed).decode()


def _retirement(ml: MarketLedger, grams: int) -> bytes:
    store = ml.traced.ingest.store
    with store.transaction():
        ml.traced.ingest.ledger.sync()
        prepared = ml.traced.registry.prepare_retirement(SELLER, grams, "B", "P", 2026, int(time.time() * 1000))
    return sign_retirement(prepared, SELLER_KEY)


# ------------------------------------------------------------------ `crev market run`


@pytest.mark.slow
def test_crev_market_run_issues_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    traced = make_traced(tmp_path)  # readings sealed, account and site open, nothing issued yet
    traced.ingest.store.close()
    write_ledger_key(tmp_path / "ledger.key")
    port = free_port()
    (tmp_path / "ingest.toml").write_text(
        '[storage]\npath = "crev.sqlite"\n\n'
        '[ledger]\nkey = "ledger.key"\norigin = "%s"\nblock_interval_s = 1\n\n'
        '[market]\nlisten = "127.0.0.1:%d"\n' % (ORIGIN, port)
    )
    crev = Path(sys.executable).parent / "crev"
    process = subprocess.Popen(
        [str(crev), "market", "run", "--config", str(tmp_path / "ingest.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    book_url = "http://127.0.0.1:%d/api/v1/book" % port

    def answers() -> bool:
        try:
            with urllib.request.urlopen(book_url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_for(lambda: answers() or process.poll() is not None, 30, "crev market run to serve")
        assert process.poll() is None, process.communicate()
        with urllib.request.urlopen(book_url, timeout=5) as response:
            assert json.loads(response.read()) == []
        with urllib.request.urlopen(book_url.replace("book", "openapi.json"), timeout=5) as response:
            assert "/api/v1/orders" in json.loads(response.read())["paths"]

        # A second one on the same port: one line, exit 2.
        clash = subprocess.run(
            [str(crev), "market", "run", "--config", str(tmp_path / "ingest.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert clash.returncode == 2, clash.stderr
        assert len(clash.stderr.strip().splitlines()) == 1, clash.stderr
        assert ("127.0.0.1:%d" % port) in clash.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, err
    assert "issued" in err and "kg-CO2" in err, "the service issued the closed slots as it started"
    assert "market service stopped" in err


def test_crev_market_run_refuses_a_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crev_cli.main import main

    config = tmp_path / "ingest.toml"
    for text, says in (
        ('[market]\nlisten = "nowhere"\n', "[market] listen must be host:port"),
        ('[storage]\npath = "crev.sqlite"\n[market]\nlisten = "127.0.0.1:8090"\n', "ledger.key"),
    ):
        config.write_text(text)
        assert main(["market", "run", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and says in err, err
