"""Market test helpers: a traced ledger with a buyer, signed orders, hand-recorded leaves and an independent replay.

``make_market`` gives the trace recipe's ledger (owner-1 holding Japan/Tokyo
solar, site-1) issued, with account buyer-1 opened. ``replay_market`` reads
the ``leaves`` table alone (never the market's rows or queries) and replays
its order leaves through a fresh matching engine, so a test can hold what
the market recorded against what its orders alone imply.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest_support import LEDGER_KEY, NOW
from trace_support import ACCOUNT, ACCOUNT_KEY, PLACE, Traced, make_traced

from crev import cbor
from crev.cose import sig_structure, sign1
from crev.keys import SigningKey
from crev.market_format import SIDE_BUY, SIDE_CANCEL, SIDE_SELL, Order
from crev.market_format import Trade as TradeLeaf
from crev.registry_format import (
    LEAF_ACCOUNT,
    LEAF_ISSUANCE,
    LEAF_ORDER,
    LEAF_RETIREMENT,
    LEAF_TRADE,
    AccountEvent,
    Issuance,
    Retirement,
    lot_id,
)
from crev_ingest.database import Database, connect
from crev_market.market import Market, Placed, new_nonce, sign_order
from crev_market.matching import Buy, Cancel, MatchingEngine, MemoryHoldings, Sell

BUYER = "buyer-1"
BUYER_KEY = SigningKey(bytes([6]) * 32)
SELLER = ACCOUNT
SELLER_KEY = ACCOUNT_KEY
STRANGER_KEY = SigningKey(bytes([77]) * 32)
TYPE = "solar"
TABLES = ("leaves", "tiles", "blocks", "orders", "trades", "lot_moves", "retirements")

BookRow = tuple[int, str, str, int, int]


@dataclass
class MarketLedger:
    traced: Traced
    market: Market

    @property
    def ms(self) -> int:
        return self.traced.ms

    @property
    def db(self) -> Database:
        return self.traced.ingest.store.db

    def place(self, signed: bytes) -> Placed:
        return self.market.place(signed, self.ms)

    def sell(self, grams: int, price: int, place: str = PLACE, type_path: str = TYPE, **kw: Any) -> Placed:
        return self.place(sell_order(grams, price, place, type_path, **kw))

    def buy(self, grams: int, price: int, account: str = BUYER, key: SigningKey = BUYER_KEY, **kw: Any) -> Placed:
        return self.place(buy_order(grams, price, account, key, **kw))

    def held(self, account: str) -> int:
        return sum(lot[7] for lot in self.traced.ingest.store.holdings(account))

    def lots(self, account: str) -> dict[str, int]:
        return {lot_id(lot[0], lot[1]): lot[7] for lot in self.traced.ingest.store.holdings(account)}

    def trade(self, leaf: int) -> TradeLeaf:
        """The trade leaf at ``leaf``, its ledger signature verified."""
        return TradeLeaf.parse(_leaf(self.traced.ingest.store.leaf(leaf))[2], LEDGER_KEY.public_key)

    def counts(self) -> dict[str, int]:
        return {t: int(self.db.execute("SELECT count(*) FROM %s" % t).fetchone()[0]) for t in TABLES}

    def record_order_unmatched(self, signed: bytes) -> int:
        """Record a signed order the way a misbehaving market would: a leaf and its row, no matching."""
        order = Order.parse(signed, None)
        store, ledger = self.traced.ingest.store, self.traced.ingest.ledger
        with store.transaction():
            ledger.sync()
            leaf = ledger.append(LEAF_ORDER, self.ms, signed)
            store.add_order(
                leaf,
                order.side,
                order.account,
                order.grams,
                order.price,
                order.cancels if order.side == SIDE_CANCEL else None,
                order.time_s,
                hashlib.sha256(signed).digest(),
            )
            ledger.seal(self.ms)
        return leaf

    def record_trade(self, trade: TradeLeaf, key: SigningKey = LEDGER_KEY) -> int:
        """Append a trade leaf signed by ``key`` (validly, by the ledger key by default) with its rows; seal."""
        store, ledger = self.traced.ingest.store, self.traced.ingest.ledger
        with store.transaction():
            ledger.sync()
            leaf = ledger.append(LEAF_TRADE, self.ms, sign1(cbor.dumps(trade.to_map()), key))
            store.add_trade(
                leaf,
                trade.buy,
                trade.sell,
                trade.grams,
                trade.price,
                trade.amount,
                trade.buyer,
                trade.seller,
                trade.time_s,
                [list(lot) for lot in trade.lots],
            )
            ledger.seal(self.ms)
        return leaf


def make_market(directory: Path, location: str | None = None) -> MarketLedger:
    traced = make_traced(directory, location=location)
    traced.registry.issue(traced.ms)
    traced.registry.add_account(BUYER, "Buyer One", BUYER_KEY.public_key, True, traced.ms)
    return MarketLedger(traced, Market(traced.registry))


def sell_order(
    grams: int,
    price: int,
    place: str = PLACE,
    type_path: str = TYPE,
    account: str = SELLER,
    key: SigningKey = SELLER_KEY,
    expires: int | None = None,
) -> bytes:
    fields = Order.to_map(SIDE_SELL, account, NOW, new_nonce(), grams, price, place, type_path, expires=expires)
    return sign_order(fields, key)


def buy_order(
    grams: int,
    price: int,
    account: str = BUYER,
    key: SigningKey = BUYER_KEY,
    sellers: list[str] | None = None,
    places: list[str] | None = None,
    types: list[str] | None = None,
) -> bytes:
    fields = Order.to_map(
        SIDE_BUY, account, NOW, new_nonce(), grams, price, sellers=sellers, places=places, types=types
    )
    return sign_order(fields, key)


def cancel_order(order: int, account: str = SELLER, key: SigningKey = SELLER_KEY) -> bytes:
    return sign_order(Order.to_map(SIDE_CANCEL, account, NOW, new_nonce(), cancels=order), key)


def signed_with_kid(fields: dict[int, object], kid: bytes, signer: SigningKey) -> bytes:
    """A COSE_Sign1 that names ``kid`` in its header but is signed by ``signer``."""
    protected = cbor.dumps({1: -8, 4: kid})
    body = cbor.dumps(fields)
    return cbor.dumps(cbor.Tag(18, [protected, {}, body, signer.sign(sig_structure(protected, body))]))


def payload(signed: bytes) -> dict[int, Any]:
    tag = cbor.loads(signed)
    assert isinstance(tag, cbor.Tag) and isinstance(tag.value, list)
    fields = cbor.loads(tag.value[2])
    assert isinstance(fields, dict)
    return fields


def with_payload(signed: bytes, fields: dict[int, Any]) -> bytes:
    """The same COSE_Sign1 (header and signature kept) over another payload: not re-signed."""
    tag = cbor.loads(signed)
    assert isinstance(tag, cbor.Tag) and isinstance(tag.value, list)
    protected, unprotected, _body, signature = tag.value
    return cbor.dumps(cbor.Tag(18, [protected, unprotected, cbor.dumps(fields), signature]))


def write_account_key(path: Path, key: SigningKey) -> Path:
    path.write_text(key.seed_bytes().hex() + "\n")
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------ an independent replay of the leaves


@dataclass
class MarketReplay:
    book: list[BookRow]  # what the committed orders leave resting, in order of arrival
    trades: list[tuple[int, int, int, int, tuple[tuple[str, int], ...]]]  # (buy, sell, grams, price, lots)
    orders: dict[int, Order]  # order leaf -> its order (cancels included)
    trade_leaves: dict[int, TradeLeaf]  # trade leaf -> the signed trade
    leaf_types: dict[int, int]
    sealed: int  # the tree size of the latest block
    size: int  # leaves in the table


def _leaf(data: bytes) -> tuple[int, int, bytes]:
    decoded = cbor.loads(data)
    assert isinstance(decoded, list) and len(decoded) == 3
    return int(decoded[0]), int(decoded[1]), bytes(decoded[2])


def replay_market(location: Path | str, ledger_public_key: bytes = LEDGER_KEY.public_key) -> MarketReplay:
    """Replay the order leaves of the ledger (an SQLite file or a PostgreSQL URL) alone, through a fresh engine."""
    db = connect(location, read_only=True)
    try:
        rows = [(int(r[0]), bytes(r[1])) for r in db.execute("SELECT idx, data FROM leaves ORDER BY idx")]
        last = db.execute("SELECT max(tree_size) FROM blocks").fetchone()[0]
        disclosed: dict[str, bool] = {}
        for (data,) in db.execute("SELECT data FROM leaves WHERE type = ? ORDER BY idx", (LEAF_ACCOUNT,)):
            event = AccountEvent.parse(_leaf(bytes(data))[2], ledger_public_key)
            disclosed[event.account] = bool(event.disclosed)
    finally:
        db.close()
    engine = MatchingEngine()
    holdings = MemoryHoldings()
    issuances: dict[int, Issuance] = {}
    orders: dict[int, Order] = {}
    trade_leaves: dict[int, TradeLeaf] = {}
    leaf_types: dict[int, int] = {}
    produced: list[tuple[int, int, int, int, tuple[tuple[str, int], ...]]] = []
    for idx, raw in rows:
        leaf_type, received_ms, data = _leaf(raw)
        leaf_types[idx] = leaf_type
        if leaf_type == LEAF_ISSUANCE:
            issuance = Issuance.parse(data, ledger_public_key)
            issuances[idx] = issuance
            for index, lot in enumerate(issuance.lots):
                if lot[3]:
                    holdings.add(
                        issuance.owner, lot_id(idx, index), issuance.place, lot[0], issuance.slot, lot[3], issuance.site
                    )
        elif leaf_type == LEAF_RETIREMENT:
            retirement = Retirement.parse(data, None)
            for issuance_leaf, index, grams in retirement.lots:
                source = issuances[issuance_leaf]
                holdings.add(
                    retirement.account,
                    lot_id(issuance_leaf, index),
                    source.place,
                    source.lots[index][0],
                    source.slot,
                    -grams,
                    source.site,
                )
        elif leaf_type == LEAF_TRADE:
            trade_leaves[idx] = TradeLeaf.parse(data, ledger_public_key)
        elif leaf_type == LEAF_ORDER:
            order = Order.parse(data, None)
            orders[idx] = order
            now_s = received_ms // 1000
            if order.by_controller:  # SPEC §9: what the owner holds of the site's lots of its slot, now
                held = holdings.lots(order.account, order.place, order.type)
                order.grams = sum(lot[2] for lot in held if lot[3] == order.site and lot[1] == order.slot)
            if order.side == SIDE_CANCEL:
                engine.cancel(idx, now_s, Cancel(order.account, order.cancels))
                continue
            spec: Buy | Sell
            if order.side == SIDE_SELL:
                spec = Sell(
                    order.account,
                    order.place,
                    order.type,
                    order.grams,
                    order.price,
                    order.expires,
                    disclosed[order.account],
                    order.site,
                )
            else:
                spec = Buy(
                    order.account,
                    order.grams,
                    order.price,
                    frozenset(order.sellers),
                    frozenset(order.places),
                    frozenset(order.types),
                    order.slot_from,
                    order.slot_to,
                    order.expires,
                )
            placed = engine.order(idx, now_s, spec, holdings)
            holdings.settle(placed.trades)
            produced.extend((t.buy, t.sell, t.grams, t.price, tuple(t.lots)) for t in placed.trades)
    book = [(e.order, e.side, e.account, e.grams_left, e.price) for e in engine.book()]
    return MarketReplay(book, produced, orders, trade_leaves, leaf_types, int(last or 0), len(rows))
