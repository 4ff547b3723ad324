"""The market's JSON API (SPEC §7, §9, §10): the book, trades, orders and retirements, over HTTP.

Everything that changes the ledger arrives as a message its account signed:
the COSE_Sign1 bytes of an order, a cancel or a retirement, exactly as
``crev market order`` and ``crev registry retire`` make them. The server
checks it, sequences it and matches it; it never holds or sees a private
key. A signed message is carried out once: sending the same bytes again is
refused (409) and changes nothing.

The views of the book, the trades, an order and a retirement receipt are
public, and show an undisclosed account as "undisclosed". An account's
holdings are its own: they need a view token signed by its key
(``crev_market.auth``).

At ``/`` it also serves the participants' page (``static/``): the book in
words, the trades and receipts; and, with a key imported into the browser's
memory, holdings, orders, cancels and retirements signed in the page, which
sends only the signed bytes.

One SQLite connection serves the API and the issuance loop of
``crev market run``; ``lock`` serialises them.
"""

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from crev import cbor
from crev.market_format import SIDE_BUY, SIDE_CANCEL, SIDE_SELL, Order
from crev.registry_format import LEAF_ORDER, Issuance, RegistryFormatError, Retirement, lot_id
from crev_market import Refused
from crev_market.auth import Unauthorized, verify_view_token
from crev_market.market import Market
from crev_market.registry import Registry

ID_PATTERN = "^[a-z0-9][a-z0-9-]{2,62}$"
UNDISCLOSED = "undisclosed"
MAX_BODY = 64 * 1024
MAX_ID = 1 << 53
COSE_TYPE = "application/cose"

YEN = Field(pattern=r"^[0-9]+\.[0-9]{2}$", description="Yen per kg-CO2, exactly, with 2 decimals", examples=["120.00"])
ACCOUNT = Field(description='The account id, or "undisclosed" for an account whose name is not disclosed')

T = TypeVar("T")

# The participants' page (static/): read-only files, served as they are. It
# signs in the browser and sends only the signed bytes. uPlot, from npm:
# `make vendor` copies it into static/vendor (git-ignored); without it the
# page shows its price and volume as a table.
STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {"app.js": "text/javascript", "cose.js": "text/javascript", "style.css": "text/css"}
VENDOR_FILES = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
PAGE_HEADERS = {
    # The page holds an account's key in memory: it runs only its own scripts and talks only to this API.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


# ------------------------------------------------------------------ response models


class Problem(BaseModel):
    detail: str


class BuyConditions(BaseModel):
    sellers: list[str] = Field(description="Only from these accounts; empty: any")
    places: list[str] = Field(description="Only lots of these places or below them; empty: any")
    types: list[str] = Field(description="Only lots of these types or below them; empty: any")
    slot_from: int | None = Field(description="Only lots of slots starting at or after this Unix second")
    slot_to: int | None = Field(description="Only lots of slots ending by this Unix second")


class BookEntry(BaseModel):
    order: int = Field(description="The order's id: its ledger leaf index")
    side: Literal["sell", "buy"]
    account: str = ACCOUNT
    grams_left: int = Field(description="Grams of CO2 still resting")
    price_yen_per_kg: str = YEN
    place: str | None = Field(description="A sell's place (its lots' exact path); null for a buy")
    type: str | None = Field(description="A sell's generator type (exact path); null for a buy")
    conditions: BuyConditions | None = Field(description="A buy's conditions; null for a sell")
    expires: int | None = Field(description="The Unix second the order lapses at, if it does")
    time: int = Field(description="The Unix second the account signed the order")


class TradeView(BaseModel):
    trade: int = Field(description="The trade's id: its ledger leaf index")
    buy: int = Field(description="The buy order's id")
    sell: int = Field(description="The sell order's id")
    grams: int
    price_yen_per_kg: str = YEN
    amount_yen: str = Field(pattern=r"^[0-9]+\.[0-9]{5}$", description="grams × price, exactly, in yen with 5 decimals")
    time: int = Field(description="The Unix second of the trade")


class OrderView(BaseModel):
    order: int = Field(description="The order's id: its ledger leaf index")
    side: Literal["sell", "buy", "cancel"]
    account: str = ACCOUNT
    status: Literal["resting", "filled", "cancelled", "ended", "recorded"] = Field(
        description="resting on the book; filled; cancelled; ended (expired, or its seller no longer holds the "
        "grams); recorded (a cancel, which only ever acts once)"
    )
    grams: int = Field(description="Grams ordered (0 for a cancel)")
    grams_filled: int
    grams_left: int = Field(description="Grams still resting (0 unless resting)")
    price_yen_per_kg: str | None = Field(description="The order's limit price; null for a cancel")
    place: str | None
    type: str | None
    conditions: BuyConditions | None
    expires: int | None
    cancels: int | None = Field(description="For a cancel: the order it cancelled")
    trades: list[int] = Field(description="The ids of the trades that filled it, in execution order")
    time: int = Field(description="The Unix second the account signed it")


class RetiredLot(BaseModel):
    lot: str = Field(description='The lot id "ISSUANCE.INDEX"')
    site: str
    dev: str
    type: str
    place: str
    slot: int = Field(description="The Unix second its 30-minute slot starts at")
    grams: int


class Receipt(BaseModel):
    retirement: int = Field(description="The retirement's id: its ledger leaf index")
    account: str = ACCOUNT
    grams: int
    beneficiary: str
    purpose: str
    year: int
    time: int = Field(description="The Unix second the account signed it")
    lots: list[RetiredLot] = Field(description="The lots its grams came from, oldest slot first")


class HeldLot(BaseModel):
    lot: str = Field(description='The lot id "ISSUANCE.INDEX" that a retirement names')
    site: str
    dev: str
    type: str
    place: str
    slot: int
    grams: int


class Holdings(BaseModel):
    account: str
    grams: int
    lots: list[HeldLot] = Field(description="Oldest slot first")


class Fill(BaseModel):
    trade: int
    buy: int
    sell: int
    grams: int
    price_yen_per_kg: str = YEN


class Placed(BaseModel):
    order: int = Field(description="The id of the order (or cancel) just placed")
    fills: list[Fill] = Field(description="The trades it made at once, in execution order")
    grams_left: int = Field(description="Grams left resting on the book")
    cancels: int | None = Field(description="For a cancel: the order it cancelled")


class TakenLot(BaseModel):
    lot: str
    grams: int


class Retired(BaseModel):
    retirement: int = Field(description="The retirement's id; its receipt is at /api/v1/retirements/{id}")
    account: str
    grams: int
    lots: list[TakenLot]


class SignedMessage(BaseModel):
    signed: str = Field(description="The COSE_Sign1 bytes, base64")


# ------------------------------------------------------------------ helpers


def _yen(hundredths: int) -> str:
    return "%d.%02d" % (hundredths // 100, hundredths % 100)


def _amount(hundred_thousandths: int) -> str:
    return "%d.%05d" % (hundred_thousandths // 100000, hundred_thousandths % 100000)


def _leaf_data(leaf: bytes) -> bytes:
    decoded = cbor.loads(leaf)
    assert isinstance(decoded, list) and isinstance(decoded[2], bytes)
    return decoded[2]


def refusal_status(refusal: Refused) -> int:
    """The HTTP status of a refusal: 403 a wrong key, 409 a replay, else 400."""
    return {"NOT_SIGNED": 403, "NOT_ALLOWED": 403, "REPLAY": 409}.get(refusal.reason, 400)


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "refused: the message is malformed or cannot be carried out; nothing was recorded",
        401: "no valid view token for this account",
        403: "the message is not signed by the account's key",
        404: "no such id",
        409: "this signed message was carried out already; it is never carried out twice",
        413: "the body is larger than 64 KiB",
        415: "the body is neither application/cose nor JSON",
    }
    return {code: {"model": Problem, "description": described[code]} for code in codes}


SIGNED_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            COSE_TYPE: {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": SignedMessage.model_json_schema()},
        },
    }
}


async def _signed_body(request: Request) -> bytes:
    """The COSE_Sign1 bytes of the request: the body itself, or JSON {"signed": base64}."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPException(status_code=413, detail="the body is larger than %d bytes" % MAX_BODY)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == COSE_TYPE:
        return bytes(body)
    if media != "application/json":
        raise HTTPException(
            status_code=415, detail='send the COSE_Sign1 bytes as application/cose, or JSON {"signed": base64}'
        )
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(status_code=400, detail="the body is not JSON") from None
    if not isinstance(value, dict) or not isinstance(value.get("signed"), str):
        raise HTTPException(status_code=400, detail='the JSON body must be {"signed": "<base64 COSE_Sign1>"}')
    try:
        return base64.b64decode(value["signed"], validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status_code=400, detail="signed is not base64") from None


# ------------------------------------------------------------------ the application


def create_app(registry: Registry, lock: "threading.Lock | None" = None, market: Market | None = None) -> FastAPI:
    market = market or Market(registry)
    store = registry.store
    guard = lock or threading.Lock()
    app = FastAPI(
        title="crev market API",
        version="1",
        description="The C-REV market (SPEC §9) and retirements (§10). Orders, cancels and retirements are "
        "COSE_Sign1 messages signed by the account's key, posted as application/cose (or JSON "
        '{"signed": base64}); the server never sees a private key. An account\'s holdings need '
        '`Authorization: CREV <base64 COSE_Sign1>` over {0: 1, 1: account, 2: "view", 3: unix time}, signed '
        "by its key, within 300 s. Grams are whole grams of CO2; prices are yen per kg-CO2.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )

    def locked(action: Callable[[], T]) -> T:
        with guard:
            return action()

    def shown(account: str, cache: dict[str, str]) -> str:
        if account not in cache:
            known = store.account(account)
            cache[account] = account if known is not None and known["disclosed"] else UNDISCLOSED
        return cache[account]

    def order_leaf(order_id: int) -> tuple[Order, int] | None:
        """The order (or cancel) whose id is ``order_id``, and its arrival second."""
        row = store.db.execute(
            "SELECT l.type, l.received_ms, l.data FROM orders o JOIN leaves l ON l.idx = o.leaf_idx "
            "WHERE o.leaf_idx = ?",
            (order_id,),
        ).fetchone()
        if row is None or int(row[0]) != LEAF_ORDER:
            return None
        return Order.parse(_leaf_data(bytes(row[2])), None), int(row[1]) // 1000

    def conditions(order: Order) -> BuyConditions | None:
        if order.side != SIDE_BUY:
            return None
        return BuyConditions(
            sellers=list(order.sellers),
            places=list(order.places),
            types=list(order.types),
            slot_from=order.slot_from,
            slot_to=order.slot_to,
        )

    def live(order: Order, now_s: int) -> bool:
        return order.expires is None or now_s < order.expires

    @app.get("/api/v1/book", response_model=list[BookEntry], summary="The resting orders, in order of arrival")
    def book() -> list[BookEntry]:
        def read() -> list[BookEntry]:
            now_s = int(time.time())
            names: dict[str, str] = {}
            rows = []
            for order_id, side, account, grams_left, price in market.book():
                found = order_leaf(order_id)
                assert found is not None, "a resting order without its leaf"
                order = found[0]
                if not live(order, now_s):
                    continue  # expired: the engine drops it at its next event
                rows.append(
                    BookEntry(
                        order=order_id,
                        side="sell" if side == "sell" else "buy",
                        account=shown(account, names),
                        grams_left=grams_left,
                        price_yen_per_kg=_yen(price),
                        place=order.place if order.side == SIDE_SELL else None,
                        type=order.type if order.side == SIDE_SELL else None,
                        conditions=conditions(order),
                        expires=order.expires,
                        time=order.time_s,
                    )
                )
            return rows

        return locked(read)

    @app.get("/api/v1/trades", response_model=list[TradeView], summary="Every trade, in execution order")
    def trades() -> list[TradeView]:
        rows = locked(store.trades)
        return [
            TradeView(
                trade=leaf,
                buy=buy,
                sell=sell,
                grams=grams,
                price_yen_per_kg=_yen(price),
                amount_yen=_amount(amount),
                time=t,
            )
            for leaf, buy, sell, grams, price, amount, _buyer, _seller, t in rows
        ]

    @app.get(
        "/api/v1/orders/{order_id}",
        response_model=OrderView,
        summary="One order or cancel, and what became of it",
        responses=_problems(404),
    )
    def order_view(order_id: Annotated[int, PathParam(ge=0, le=MAX_ID)]) -> OrderView:
        def read() -> OrderView:
            found = order_leaf(order_id)
            if found is None:
                raise HTTPException(status_code=404, detail="no order %d" % order_id)
            order, _arrived = found
            names: dict[str, str] = {}
            if order.side == SIDE_CANCEL:
                return OrderView(
                    order=order_id, side="cancel", account=shown(order.account, names), status="recorded",
                    grams=0, grams_filled=0, grams_left=0, price_yen_per_kg=None, place=None, type=None,
                    conditions=None, expires=None, cancels=order.cancels, trades=[], time=order.time_s,
                )  # fmt: skip
            fills = [
                (int(r[0]), int(r[1]))
                for r in store.db.execute(
                    "SELECT leaf_idx, grams FROM trades WHERE buy = ? OR sell = ? ORDER BY leaf_idx",
                    (order_id, order_id),
                )
            ]
            filled = sum(grams for _leaf, grams in fills)
            resting = {entry[0]: entry[3] for entry in market.book()}
            cancelled = store.db.execute("SELECT 1 FROM orders WHERE cancels = ?", (order_id,)).fetchone()
            left = 0
            status: Literal["resting", "filled", "cancelled", "ended"]
            if order_id in resting and live(order, int(time.time())):
                status, left = "resting", resting[order_id]
            elif filled >= order.grams:
                status = "filled"
            elif cancelled is not None:
                status = "cancelled"
            else:
                status = "ended"
            return OrderView(
                order=order_id,
                side="sell" if order.side == SIDE_SELL else "buy",
                account=shown(order.account, names),
                status=status,
                grams=order.grams,
                grams_filled=filled,
                grams_left=left,
                price_yen_per_kg=_yen(order.price),
                place=order.place if order.side == SIDE_SELL else None,
                type=order.type if order.side == SIDE_SELL else None,
                conditions=conditions(order),
                expires=order.expires,
                cancels=None,
                trades=[leaf for leaf, _grams in fills],
                time=order.time_s,
            )

        return locked(read)

    @app.get(
        "/api/v1/retirements/{retirement_id}",
        response_model=Receipt,
        summary="A retirement's receipt: who retired how much, for whom, from which lots",
        responses=_problems(404),
    )
    def receipt(retirement_id: Annotated[int, PathParam(ge=0, le=MAX_ID)]) -> Receipt:
        def read() -> Receipt:
            found = store.retirement(retirement_id)
            if found is None:
                raise HTTPException(status_code=404, detail="no retirement %d" % retirement_id)
            retirement = Retirement.parse(_leaf_data(found[1]), None)
            lots = []
            for issuance_leaf, index, grams in retirement.lots:
                issuance = Issuance.parse(_leaf_data(store.leaf(issuance_leaf)), None)
                lots.append(
                    RetiredLot(
                        lot=lot_id(issuance_leaf, index),
                        site=issuance.site,
                        dev=issuance.dev,
                        type=issuance.lots[index][0],
                        place=issuance.place,
                        slot=issuance.slot,
                        grams=grams,
                    )
                )
            return Receipt(
                retirement=retirement_id,
                account=shown(retirement.account, {}),
                grams=retirement.grams,
                beneficiary=retirement.beneficiary,
                purpose=retirement.purpose,
                year=retirement.year,
                time=retirement.time_s,
                lots=lots,
            )

        return locked(read)

    @app.get(
        "/api/v1/accounts/{account}/holdings",
        response_model=Holdings,
        summary="The account's lots, oldest slot first (needs its view token)",
        responses=_problems(401),
    )
    def holdings(
        account: Annotated[str, PathParam(pattern=ID_PATTERN)],
        authorization: Annotated[
            str | None,
            Header(description='CREV <base64 COSE_Sign1 over {0: 1, 1: account, 2: "view", 3: unix time}>'),
        ] = None,
    ) -> Holdings:
        def read() -> Holdings:
            known = store.account(account)
            try:
                if known is None:
                    raise Unauthorized("this view needs a token signed by the account's key")
                verify_view_token(authorization, account, known["pubkey"])
            except Unauthorized as err:
                raise HTTPException(status_code=401, detail=str(err), headers={"WWW-Authenticate": "CREV"}) from err
            lots = [
                HeldLot(lot=lot_id(lot[0], lot[1]), site=lot[2], dev=lot[3], type=lot[4], place=lot[5], slot=lot[6],
                        grams=lot[7])
                for lot in store.holdings(account)
            ]  # fmt: skip
            return Holdings(account=account, grams=sum(lot.grams for lot in lots), lots=lots)

        return locked(read)

    @app.post(
        "/api/v1/orders",
        response_model=Placed,
        summary="Place a signed order or cancel; it is matched at once",
        openapi_extra=SIGNED_BODY,
        responses=_problems(400, 403, 409, 413, 415),
    )
    async def place(request: Request) -> Placed:
        signed = await _signed_body(request)

        def act() -> Placed:
            try:
                placed = market.place(signed, int(time.time() * 1000))
            except Refused as err:
                raise HTTPException(status_code=refusal_status(err), detail=str(err)) from err
            cancels = None
            try:
                order = Order.parse(signed, None)
                cancels = order.cancels if order.side == SIDE_CANCEL else None
            except RegistryFormatError:  # cannot be: the market parsed it
                pass
            return Placed(
                order=placed.order,
                fills=[
                    Fill(trade=leaf, buy=e.buy, sell=e.sell, grams=e.grams, price_yen_per_kg=_yen(e.price))
                    for leaf, e in placed.trades
                ],
                grams_left=placed.grams_left,
                cancels=cancels,
            )

        return await run_in_threadpool(locked, act)

    @app.post(
        "/api/v1/retirements",
        response_model=Retired,
        summary="Record a signed retirement; its grams leave circulation for good",
        openapi_extra=SIGNED_BODY,
        responses=_problems(400, 403, 409, 413, 415),
    )
    async def retire(request: Request) -> Retired:
        signed = await _signed_body(request)

        def act() -> Retired:
            now_ms = int(time.time() * 1000)
            try:
                with store.transaction():
                    registry.ledger.sync()
                    leaf = registry.retire(signed, now_ms)
            except Refused as err:
                raise HTTPException(status_code=refusal_status(err), detail=str(err)) from err
            retirement = Retirement.parse(signed, None)
            return Retired(
                retirement=leaf,
                account=retirement.account,
                grams=retirement.grams,
                lots=[TakenLot(lot=lot_id(a, b), grams=g) for a, b, g in retirement.lots],
            )

        return await run_in_threadpool(locked, act)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in PAGE_FILES:
            raise HTTPException(status_code=404, detail="no such file")
        return Response((STATIC / name).read_bytes(), media_type=PAGE_FILES[name], headers=PAGE_HEADERS)

    @app.get("/static/vendor/{name}", include_in_schema=False)
    def vendor(name: str) -> Response:
        if name not in VENDOR_FILES:
            raise HTTPException(status_code=404, detail="no such file")
        try:
            body = (STATIC / "vendor" / name).read_bytes()
        except FileNotFoundError:
            raise HTTPException(status_code=404, detail="%s is not installed (run `make vendor`)" % name) from None
        return Response(body, media_type=VENDOR_FILES[name], headers=PAGE_HEADERS)

    return app
