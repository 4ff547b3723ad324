"""The market (SPEC §9, §10): refusals that record nothing, the matching rules, a book rebuilt from the ledger
after SIGKILL, forged trades caught by `crev audit ledger`, and bought C-REV traced to its retirement.

Orders go through the service (``Market.place``) or the real CLI (`crev
market order`); what was recorded is checked against an independent replay
of the ledger's leaves (``market_support.replay_market``) and against the
audit's own replay (``crev_ingest.audit.verify_ledger``).
"""

import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import crev_command, run_crev
from ingest_support import LEDGER_KEY, NOW
from market_support import (
    BUYER,
    BUYER_KEY,
    SELLER,
    SELLER_KEY,
    STRANGER_KEY,
    TYPE,
    MarketLedger,
    buy_order,
    cancel_order,
    make_market,
    payload,
    replay_market,
    sell_order,
    signed_with_kid,
    with_payload,
    write_account_key,
)
from registry_support import write_ingest_config
from trace_support import ORIGIN, PLACE, first, pack, parts

from crev import cbor, trace
from crev.cose import sign1
from crev.market_format import SIDE_BUY, SIDE_SELL, Order
from crev.market_format import Trade as TradeLeaf
from crev.registry_format import LEAF_ORDER, LEAF_TRADE, parse_lot_id
from crev_cli.main import main
from crev_cli.trace_verify import build_trace_report, verify_trace
from crev_ingest import LedgerError
from crev_ingest.audit import verify_ledger
from crev_ingest.ledger import Ledger
from crev_ingest.store import Store
from crev_market import Refused
from crev_market.market import Market, MatchingMismatch, new_nonce, sign_order
from crev_market.registry import Registry, sign_retirement
from crev_market.trace_export import export_trace


@pytest.fixture
def mkt(tmp_path: Path) -> MarketLedger:
    return make_market(tmp_path)


def _audit(mkt: MarketLedger) -> dict[str, int]:
    counts, _state = verify_ledger(mkt.traced.ingest.store, LEDGER_KEY.public_key, ORIGIN)
    return counts


def _refused(mkt: MarketLedger, signed: bytes, *words: str) -> str:
    """Place ``signed``: it must be refused, naming ``words``, and record nothing."""
    before = mkt.counts()
    book = mkt.market.book()
    with pytest.raises(Refused) as caught:
        mkt.place(signed)
    message = str(caught.value)
    assert "\n" not in message and message, message
    for word in words:
        assert word in message, "%r does not say %r" % (message, word)
    assert mkt.counts() == before, "a refused order recorded something"
    assert mkt.market.book() == book
    return message


# ------------------------------------------------------------------ refusals (service level)


def test_an_order_re_signed_by_a_key_that_is_not_the_accounts_is_refused(mkt: MarketLedger) -> None:
    fields = Order.to_map(SIDE_SELL, SELLER, NOW, new_nonce(), 100, 1500, PLACE, TYPE)
    # Signed by a stranger, naming the stranger's key.
    _refused(mkt, sign_order(fields, STRANGER_KEY), "not signed by the key of account %s" % SELLER)
    # Naming the account's key, but signed by the stranger.
    _refused(mkt, signed_with_kid(fields, SELLER_KEY.kid, STRANGER_KEY), "not signed by the key", SELLER)
    # The account's own signature, one byte of it flipped.
    honest = sign_order(fields, SELLER_KEY)
    flipped = honest[:-1] + bytes([honest[-1] ^ 0x01])
    _refused(mkt, flipped, "not signed by the key", SELLER)
    # The honest order itself is accepted: the refusals were about the signatures.
    assert mkt.place(honest).grams_left == 100


def test_an_order_signed_by_another_accounts_key_is_refused(mkt: MarketLedger) -> None:
    # buyer-1's key is a real account key, but not owner-1's.
    _refused(mkt, sell_order(100, 1500, key=BUYER_KEY), "not signed by the key of account %s" % SELLER)
    _refused(mkt, buy_order(100, 1500, account=SELLER, key=BUYER_KEY), SELLER)


def test_a_sell_beyond_the_sellers_holdings_is_refused(mkt: MarketLedger) -> None:
    held = mkt.held(SELLER)
    assert held == 2258
    _refused(mkt, sell_order(held + 1, 1500), SELLER, "holds 2.258 kg", "2.259 kg")
    _refused(mkt, sell_order(10, 1500, place="Japan/Osaka"), "holds 0.000 kg", "Japan/Osaka")
    _refused(mkt, sell_order(10, 1500, type_path="wind"), "holds 0.000 kg", "wind")
    # The buyer holds nothing: it cannot sell.
    _refused(mkt, sell_order(1, 1500, account=BUYER, key=BUYER_KEY), BUYER, "holds 0.000 kg")
    assert mkt.sell(held, 1500).grams_left == held  # exactly what is held is fine


@pytest.mark.parametrize(
    ("grams", "price", "word"),
    [(0, 1500, "grams"), (-1, 1500, "grams"), (100, 0, "price"), (100, -5, "price")],
)
def test_zero_and_negative_quantities_and_prices_are_refused(
    mkt: MarketLedger, grams: int, price: int, word: str
) -> None:
    _refused(mkt, sell_order(grams, price), word)
    _refused(mkt, buy_order(grams, price), word)


def test_a_seller_condition_naming_an_unknown_account_is_refused(mkt: MarketLedger) -> None:
    mkt.sell(500, 1500)
    _refused(mkt, buy_order(100, 2000, sellers=["nobody"]), "nobody", "not an account")
    _refused(mkt, buy_order(100, 2000, sellers=[SELLER, "nobody"]), "nobody")


def test_a_malformed_path_is_refused(mkt: MarketLedger) -> None:
    for bad in ("Japan//Tokyo", "/Japan", "Japan/", ""):
        _refused(mkt, buy_order(100, 2000, places=[bad]), "order")
    _refused(mkt, sell_order(100, 1500, place="Japan//Tokyo"), "place")


def test_a_replayed_order_is_refused_and_not_executed_again(mkt: MarketLedger) -> None:
    mkt.sell(1000, 1500)
    signed = buy_order(300, 2000)
    placed = mkt.place(signed)
    assert [e.grams for _leaf, e in placed.trades] == [300]
    trades = mkt.traced.ingest.store.trades()
    held = mkt.held(BUYER)
    _refused(mkt, signed, "placed already", "never executed twice")
    assert mkt.traced.ingest.store.trades() == trades and mkt.held(BUYER) == held == 300
    assert [row[3] for row in mkt.market.book()] == [700]
    # A cancel replayed is refused the same way, even though its target is gone.
    rest = mkt.sell(200, 1800).order
    cancel = cancel_order(rest)
    mkt.place(cancel)
    _refused(mkt, cancel, "placed already")


def test_cancel_of_another_accounts_order_is_refused(mkt: MarketLedger) -> None:
    order = mkt.sell(500, 1500).order
    _refused(mkt, cancel_order(order, BUYER, BUYER_KEY), "order %d belongs to %s" % (order, SELLER))
    assert mkt.market.book() == [(order, "sell", SELLER, 500, 1500)]
    mkt.place(cancel_order(order))  # its own account may
    assert mkt.market.book() == []


def test_cancel_of_an_order_that_is_not_resting_is_refused(mkt: MarketLedger) -> None:
    filled = mkt.sell(200, 1500).order
    mkt.buy(200, 1500)
    _refused(mkt, cancel_order(filled), "order %d is not resting" % filled)
    cancelled = mkt.sell(100, 1600).order
    mkt.place(cancel_order(cancelled))
    _refused(mkt, cancel_order(cancelled), "order %d is not resting" % cancelled)
    _refused(mkt, cancel_order(99_999), "order 99999 is not resting")
    # A leaf that is not an order at all (the first issuance).
    issuance = mkt.traced.ingest.store.holdings(SELLER)[0][0]
    _refused(mkt, cancel_order(issuance), "order %d is not resting" % issuance)


# ------------------------------------------------------------------ refusals (the CLI)


@pytest.fixture(scope="module")
def cli_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger with owner-1 holding Japan/Tokyo solar and buyer-1; ingest.toml and both account key files."""
    directory = tmp_path_factory.mktemp("market-cli")
    made = make_market(directory)
    made.traced.ingest.store.close()
    write_ingest_config(directory)
    write_account_key(directory / "owner.key", SELLER_KEY)
    write_account_key(directory / "buyer.key", BUYER_KEY)
    return directory


@pytest.fixture
def cli_ledger(cli_template: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "ledger"
    shutil.copytree(cli_template, directory)
    return directory


def _db_counts(directory: Path) -> dict[str, int]:
    db = sqlite3.connect(str(directory / "crev.sqlite"))
    try:
        tables = ("leaves", "tiles", "blocks", "orders", "trades", "lot_moves")
        return {t: int(db.execute("SELECT count(*) FROM %s" % t).fetchone()[0]) for t in tables}
    finally:
        db.close()


def _crev(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _order_argv(d: Path, *args: str, account: str = BUYER, key: str = "buyer.key") -> list[str]:
    base = ["market", "order", "--config", str(d / "ingest.toml"), "--account", account, "--key", str(d / key)]
    return [*base, *args]


def _sell_argv(d: Path, kg: str = "0.100", price: str = "15.00") -> list[str]:
    sell = ("--sell", "--place", PLACE, "--type", TYPE, "--kg", kg, "--price", price)
    return _order_argv(d, *sell, account=SELLER, key="owner.key")


CLI_MISTAKES: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "--kg 0": (lambda d: _sell_argv(d, kg="0"), ("--kg",)),
    "--kg -1": (lambda d: _sell_argv(d, kg="-1"), ("--kg",)),
    "--kg 0.000 (a buy)": (lambda d: _order_argv(d, "--buy", "--kg", "0.000", "--price", "15"), ("--kg",)),
    "--price 0": (lambda d: _sell_argv(d, price="0"), ("--price",)),
    "--price 1.234": (lambda d: _sell_argv(d, price="1.234"), ("--price", "2 decimals")),
    "--price -3": (lambda d: _order_argv(d, "--buy", "--kg", "1", "--price", "-3"), ("--price",)),
    "--seller nobody": (
        lambda d: _order_argv(d, "--buy", "--seller", "nobody", "--kg", "0.1", "--price", "20"),
        ("nobody",),
    ),
    "--place Japan//Tokyo": (
        lambda d: _order_argv(d, "--buy", "--place", "Japan//Tokyo", "--kg", "0.1", "--price", "20"),
        ("--place",),
    ),
    "a sell beyond the holdings": (lambda d: _sell_argv(d, kg="2.259"), ("holds 2.258 kg",)),
    "another account's key": (
        lambda d: _order_argv(
            d,
            "--sell",
            "--place",
            PLACE,
            "--type",
            TYPE,
            "--kg",
            "0.1",
            "--price",
            "15",
            account=SELLER,
            key="buyer.key",
        ),
        (SELLER, "buyer.key"),
    ),
    "cancel of another account's order": (
        lambda d: [
            "market",
            "cancel",
            "--config",
            str(d / "ingest.toml"),
            "--account",
            BUYER,
            "--key",
            str(d / "buyer.key"),
            "--order",
            str(_first_order(d)),
        ],
        ("belongs to %s" % SELLER,),
    ),
    "cancel of an order that is not resting": (
        lambda d: [
            "market",
            "cancel",
            "--config",
            str(d / "ingest.toml"),
            "--account",
            SELLER,
            "--key",
            str(d / "owner.key"),
            "--order",
            "99999",
        ],
        ("99999", "not resting"),
    ),
}


def _first_order(directory: Path) -> int:
    db = sqlite3.connect(str(directory / "crev.sqlite"))
    try:
        return int(db.execute("SELECT min(leaf_idx) FROM orders WHERE side = 1").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize("mistake", list(CLI_MISTAKES))
def test_a_cli_mistake_gets_one_line_exit_2_and_records_nothing(
    cli_ledger: Path, mistake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _crev(_sell_argv(cli_ledger, kg="0.500"), capsys)[0] == 0  # a resting sell of owner-1
    argv, words = CLI_MISTAKES[mistake]
    command = argv(cli_ledger)
    before = _db_counts(cli_ledger)
    code, out, err = _crev(command, capsys)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and err.startswith("crev: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, "%r does not say %r" % (err, word)
    assert out == ""
    assert _db_counts(cli_ledger) == before, "a refused command recorded something"


def test_cli_order_book_trades_and_cancel(cli_ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ["--config", str(cli_ledger / "ingest.toml")]
    code, out, _err = _crev([*_sell_argv(cli_ledger, kg="1.000", price="15.00"), "--json"], capsys)
    assert code == 0
    sell = json.loads(out)
    assert sell["fills"] == [] and sell["grams_left"] == 1000
    code, out, _err = _crev(
        [*_order_argv(cli_ledger, "--buy", "--place", "Japan", "--kg", "0.600", "--price", "20"), "--json"], capsys
    )
    assert code == 0
    buy = json.loads(out)
    assert buy["grams_left"] == 0 and len(buy["fills"]) == 1
    fill = buy["fills"][0]
    assert (fill["buy"], fill["sell"], fill["grams"], fill["price_yen_per_kg"]) == (
        buy["order"],
        sell["order"],
        600,
        "15.00",
    )
    code, out, _err = _crev(["market", "book", *config, "--json"], capsys)
    assert code == 0
    assert json.loads(out) == [
        {"order": sell["order"], "side": "sell", "account": SELLER, "grams_left": 400, "price_yen_per_kg": "15.00"}
    ]
    code, out, _err = _crev(["market", "trades", *config, "--json"], capsys)
    assert code == 0
    (trade,) = json.loads(out)
    assert trade["trade"] == fill["trade"] and trade["amount_yen"] == "9.00000"
    assert (trade["buyer"], trade["seller"], trade["grams"]) == (BUYER, SELLER, 600)
    cancel = ["market", "cancel", *config, "--account", SELLER, "--key", str(cli_ledger / "owner.key")]
    code, out, _err = _crev([*cancel, "--order", str(sell["order"])], capsys)
    assert code == 0 and "cancelled order %d" % sell["order"] in out
    code, out, _err = _crev(["market", "book", *config, "--json"], capsys)
    assert json.loads(out) == []


def test_a_cli_mistake_in_the_real_process_is_one_line_too(cli_ledger: Path) -> None:
    before = _db_counts(cli_ledger)
    done = run_crev(cli_ledger, *_sell_argv(cli_ledger, price="1.234"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "--price" in done.stderr, done.stderr
    assert done.stdout == "" and _db_counts(cli_ledger) == before


# ------------------------------------------------------------------ matching rules


def test_a_trade_is_at_the_resting_orders_price(mkt: MarketLedger) -> None:
    sell = mkt.sell(1000, 1500)
    buy = mkt.buy(600, 2000, places=["Japan"])
    ((leaf, execution),) = buy.trades
    assert (execution.buy, execution.sell, execution.grams, execution.price) == (buy.order, sell.order, 600, 1500)
    assert execution.amount_due == 600 * 1500
    signed = mkt.trade(leaf)
    assert (signed.buy, signed.sell, signed.grams, signed.price, signed.amount) == (
        buy.order,
        sell.order,
        600,
        1500,
        900_000,
    )
    assert (signed.buyer, signed.seller) == (BUYER, SELLER)
    # The 400 g left of the sell still trade at its price, whatever the incoming buy bids.
    again = mkt.buy(300, 9999)
    assert [(e.sell, e.grams, e.price, e.amount_due) for _l, e in again.trades] == [(sell.order, 300, 1500, 450_000)]
    _audit(mkt)


def test_the_resting_buys_price_is_the_trades_price(mkt: MarketLedger) -> None:
    resting = mkt.buy(300, 2000)
    assert resting.trades == [] and resting.grams_left == 300
    incoming = mkt.sell(500, 1400)
    ((_leaf, execution),) = incoming.trades
    assert (execution.buy, execution.sell, execution.grams, execution.price) == (
        resting.order,
        incoming.order,
        300,
        2000,
    )
    assert incoming.grams_left == 200
    assert mkt.market.book() == [(incoming.order, "sell", SELLER, 200, 1400)]
    _audit(mkt)


def test_a_partial_fill_leaves_the_rest_resting(mkt: MarketLedger) -> None:
    sell = mkt.sell(1000, 1500)
    mkt.buy(600, 2000)
    assert mkt.market.book() == [(sell.order, "sell", SELLER, 400, 1500)]
    big = mkt.buy(1500, 1600)
    assert [e.grams for _l, e in big.trades] == [400] and big.grams_left == 1100
    assert mkt.market.book() == [(big.order, "buy", BUYER, 1100, 1600)]
    counts = _audit(mkt)
    assert counts["trades"] == 2 and counts["orders"] == 3


def test_best_price_first_then_the_earliest(mkt: MarketLedger) -> None:
    dear = mkt.sell(100, 1600).order
    cheap_early = mkt.sell(100, 1500).order
    cheap_late = mkt.sell(100, 1500).order
    buy = mkt.buy(250, 1700)
    assert [(e.sell, e.grams, e.price) for _l, e in buy.trades] == [
        (cheap_early, 100, 1500),
        (cheap_late, 100, 1500),
        (dear, 50, 1600),
    ]
    assert [leaf for leaf, _e in buy.trades] == [buy.order + 1, buy.order + 2, buy.order + 3]
    assert mkt.market.book() == [(dear, "sell", SELLER, 50, 1600)]


def test_no_trade_between_an_account_and_itself(mkt: MarketLedger) -> None:
    sell = mkt.sell(500, 1500)
    own = mkt.buy(300, 2000, account=SELLER, key=SELLER_KEY)
    assert own.trades == [] and own.grams_left == 300
    assert mkt.market.book() == [(sell.order, "sell", SELLER, 500, 1500), (own.order, "buy", SELLER, 300, 2000)]
    assert mkt.traced.ingest.store.trades() == []
    # Another account takes the sell, past the owner's own better-priced buy.
    other = mkt.buy(100, 1500)
    assert [(e.sell, e.grams) for _l, e in other.trades] == [(sell.order, 100)]


def test_a_crossed_but_ineligible_pair_both_rest(mkt: MarketLedger) -> None:
    sell = mkt.sell(500, 1500)
    conditions: list[dict[str, Any]] = [
        {"places": ["Japan/Tokyo2"]},
        {"places": ["Japan/Tok"]},  # a path matches whole segments, not prefixes of them
        {"places": ["Japan/Tokyo/Shibuya"]},  # below the sell's place, not above it
        {"types": ["wind"]},
        {"sellers": [BUYER]},
    ]
    rows = [(sell.order, "sell", SELLER, 500, 1500)]
    for condition in conditions:
        placed = mkt.buy(100, 2000, **condition)
        assert placed.trades == [] and placed.grams_left == 100, condition
        rows.append((placed.order, "buy", BUYER, 100, 2000))
    assert mkt.market.book() == rows
    assert mkt.traced.ingest.store.trades() == []
    eligible = mkt.buy(100, 2000, places=["Japan/Tokyo"], types=["solar"], sellers=[SELLER])
    assert [(e.sell, e.grams, e.price) for _l, e in eligible.trades] == [(sell.order, 100, 1500)]


def test_holdings_move_from_seller_to_buyer_by_exactly_the_traded_grams(mkt: MarketLedger) -> None:
    seller_before, buyer_before = mkt.lots(SELLER), mkt.lots(BUYER)
    assert buyer_before == {} and sum(seller_before.values()) == 2258
    mkt.sell(1000, 1500)
    placed = mkt.buy(600, 2000)
    ((leaf, execution),) = placed.trades
    seller_after, buyer_after = mkt.lots(SELLER), mkt.lots(BUYER)
    assert sum(seller_after.values()) == 2258 - 600 and sum(buyer_after.values()) == 600
    # Oldest slot first: the store lists lots by slot, and the trade takes them in that order.
    oldest = list(seller_before.items())
    assert list(execution.lots) == [(oldest[0][0], oldest[0][1]), (oldest[1][0], 600 - oldest[0][1])]
    assert buyer_after == dict(execution.lots)
    for lot, grams in seller_before.items():
        assert seller_after.get(lot, 0) == grams - buyer_after.get(lot, 0)
    signed = mkt.trade(leaf)
    assert [("%d.%d" % (a, b), g) for a, b, g in signed.lots] == list(execution.lots)
    # A second trade takes on from where the first stopped.
    more = mkt.buy(300, 2000)
    ((_leaf, second),) = more.trades
    assert second.lots[0] == (oldest[1][0], oldest[0][1] + oldest[1][1] - 600)
    assert sum(mkt.lots(BUYER).values()) == 900 and sum(mkt.lots(SELLER).values()) == 2258 - 900
    counts = _audit(mkt)
    assert counts["trades"] == 2


# ------------------------------------------------------------------ the book, rebuilt from the ledger


def _fresh_book(db_path: Path) -> list[tuple[int, str, str, int, int]]:
    store = Store(db_path)
    try:
        ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 8)
        return Market(Registry(store, ledger, 423000, "default")).book()
    finally:
        store.close()


def _check_market_file(db_path: Path) -> None:
    """The market's rows and book against an independent replay of the file's leaves."""
    replay = replay_market(db_path)
    assert _fresh_book(db_path) == replay.book, "the book differs from the one its committed orders give"
    assert replay.sealed == replay.size, "a committed leaf is not sealed with its order"
    produced = [(b, s, g, p, tuple(lots)) for b, s, g, p, lots in replay.trades]
    recorded = [
        (t.buy, t.sell, t.grams, t.price, tuple(("%d.%d" % (a, b), g) for a, b, g in t.lots))
        for _leaf, t in sorted(replay.trade_leaves.items())
    ]
    assert recorded == produced, "the trade leaves are not what replaying the order leaves gives"
    store = Store(db_path)
    try:
        rows = store.trades()
        order_rows = store.db.execute("SELECT leaf_idx, side, account, grams, price FROM orders").fetchall()
    finally:
        store.close()
    assert rows == [
        (leaf, t.buy, t.sell, t.grams, t.price, t.amount, t.buyer, t.seller, t.time_s)
        for leaf, t in sorted(replay.trade_leaves.items())
    ], "trade rows differ from trade leaves"
    assert sorted(tuple(r) for r in order_rows) == [
        (leaf, o.side, o.account, o.grams if o.side != 3 else 0, o.price if o.side != 3 else 0)
        for leaf, o in sorted(replay.orders.items())
    ]
    pairs = [(t.buy, t.sell) for t in replay.trade_leaves.values()]
    assert len(pairs) == len(set(pairs)), "a trade is duplicated"
    filled: dict[int, int] = {}
    for leaf, t in replay.trade_leaves.items():
        assert replay.orders[t.buy].side == SIDE_BUY and replay.orders[t.sell].side == SIDE_SELL
        assert max(t.buy, t.sell) < leaf
        filled[t.buy] = filled.get(t.buy, 0) + t.grams
        filled[t.sell] = filled.get(t.sell, 0) + t.grams
    for order, grams in filled.items():
        assert grams <= replay.orders[order].grams, "order %d traded %d g of its %d" % (
            order,
            grams,
            replay.orders[order].grams,
        )
    # Every trade follows its incoming order, or another trade of it, directly.
    for leaf in replay.trade_leaves:
        assert replay.leaf_types[leaf - 1] in (LEAF_ORDER, LEAF_TRADE)


def test_the_book_after_orders_is_the_book_of_a_new_market_on_the_same_file(tmp_path: Path) -> None:
    mkt = make_market(tmp_path)
    mkt.sell(500, 1500)
    mkt.sell(400, 1700)
    mkt.buy(300, 1600, places=["Japan"])
    mkt.buy(200, 1400)
    gone = mkt.buy(100, 1300).order
    mkt.place(cancel_order(gone, BUYER, BUYER_KEY))
    mkt.buy(50, 2000, places=["Japan/Tokyo2"])
    book = mkt.market.book()
    assert gone not in [row[0] for row in book]
    assert [(side, grams, price) for _o, side, _a, grams, price in book] == [
        ("sell", 200, 1500),
        ("sell", 400, 1700),
        ("buy", 200, 1400),
        ("buy", 50, 2000),
    ]
    db_path = Path(mkt.traced.ingest.store.path)
    mkt.traced.ingest.store.close()
    assert _fresh_book(db_path) == book
    _check_market_file(db_path)


def _random_order(rng: random.Random, directory: Path) -> list[str]:
    kg = "%.3f" % (rng.randrange(20, 150) / 1000)
    price = "%d.%02d" % (rng.randrange(12, 19), rng.randrange(0, 100))
    if rng.random() < 0.5:
        return _sell_argv(directory, kg=kg, price=price)
    extra = rng.choice([[], ["--place", "Japan"], ["--place", "Japan/Tokyo2"], ["--seller", SELLER]])
    return _order_argv(directory, "--buy", *extra, "--kg", kg, "--price", price)


def _prefill(db_path: Path, orders: int) -> None:
    """Resting orders that never cross (sells at 50.00, buys at 5.00): the book a placement rebuilds is long."""
    store = Store(db_path)
    try:
        ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 1 << 30)
        market = Market(Registry(store, ledger, 423000, "default"))
        for n in range(orders):
            market.place(sell_order(1, 5000) if n % 2 else buy_order(1, 500), NOW * 1000)
    finally:
        store.close()


@pytest.mark.slow
def test_sigkill_of_crev_market_order_at_random_moments(cli_ledger: Path) -> None:
    """Kill a real `crev market order` at random moments, concentrated around its commit.

    The first rounds spread the kills over the whole run; the others pick a
    moment between the latest kill that left nothing and the earliest that
    left the order, so most land in start-up's end, the transaction and the
    commit. After every kill: the order whole or not at all, the book a new
    Market rebuilds equal to the one its committed order leaves give, the
    trade rows equal to the trade leaves, no trade twice.
    """
    db_path = cli_ledger / "crev.sqlite"
    rng = random.Random(os.getpid())
    _prefill(db_path, 300)
    for _ in range(4):  # some trades, so that the kills land on a ledger with a book and trades
        done = run_crev(cli_ledger, *_random_order(rng, cli_ledger))
        assert done.returncode == 0, done.stderr
    started = time.monotonic()
    done = run_crev(cli_ledger, *_random_order(rng, cli_ledger))
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    _check_market_file(db_path)
    rounds, spread = 20, 5
    low, high = 0.0, duration * 1.2
    outcomes = []
    for k in range(rounds):
        before = replay_market(db_path)
        spread_delay = duration * 1.2 * (k + rng.random()) / spread
        delay = spread_delay if k < spread else low + (high - low) * rng.random()
        child = subprocess.Popen(
            crev_command(*_random_order(rng, cli_ledger)),
            cwd=cli_ledger,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        _out, err = child.communicate(timeout=60)
        assert child.returncode in (0, -signal.SIGKILL), err.decode()
        after = replay_market(db_path)
        added = sorted(set(after.orders) - set(before.orders))
        assert len(added) <= 1, "one `crev market order` placed %d orders" % len(added)
        assert set(before.orders) <= set(after.orders) and set(before.trade_leaves) <= set(after.trade_leaves)
        assert {leaf: t.to_map() for leaf, t in before.trade_leaves.items()} == {
            leaf: after.trade_leaves[leaf].to_map() for leaf in before.trade_leaves
        }
        _check_market_file(db_path)
        if added:
            high = min(high, delay)
        else:
            low = max(low, delay)
        outcomes.append("%.3fs:%s" % (delay, "placed" if added else "nothing"))
    # After the kills, the market goes on: one more order, a book, trades and the audit.
    done = run_crev(cli_ledger, *_random_order(rng, cli_ledger))
    assert done.returncode == 0, done.stderr
    _check_market_file(db_path)
    book = run_crev(cli_ledger, "market", "book", "--config", "ingest.toml", "--json")
    assert book.returncode == 0, book.stderr
    assert [tuple(r.values()) for r in json.loads(book.stdout)] == [
        (o, side, account, grams, "%d.%02d" % (price // 100, price % 100))
        for o, side, account, grams, price in replay_market(db_path).book
    ]
    trades = run_crev(cli_ledger, "market", "trades", "--config", "ingest.toml", "--json")
    assert trades.returncode == 0, trades.stderr
    assert [r["trade"] for r in json.loads(trades.stdout)] == sorted(replay_market(db_path).trade_leaves)
    audit = run_crev(cli_ledger, "audit", "ledger", "--config", "ingest.toml")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    print("order %.3fs; kills: %s" % (duration, ", ".join(outcomes)))
    assert any(o.endswith("nothing") for o in outcomes) and any(o.endswith("placed") for o in outcomes), outcomes


# ------------------------------------------------------------------ forged trades and `crev audit ledger`


def _forge(
    mkt: MarketLedger, buy: int, sell: int, grams: int, price: int, lots: list[list[int]] | None = None
) -> TradeLeaf:
    if lots is None:
        lots, left = [], grams
        for lot in mkt.traced.ingest.store.holdings(SELLER):
            take = min(left, lot[7])
            if take:
                lots.append([lot[0], lot[1], take])
            left -= take
    return TradeLeaf(buy, sell, grams, price, grams * price, lots, BUYER, SELLER, NOW)


def _audit_fails(mkt: MarketLedger, leaf: int, *words: str) -> str:
    with pytest.raises(LedgerError) as caught:
        _audit(mkt)
    message = str(caught.value)
    assert "leaf %d (trade)" % leaf in message, message
    for word in words:
        assert word in message, "%r does not say %r" % (message, word)
    return message


def test_the_audit_passes_an_honest_market(mkt: MarketLedger) -> None:
    mkt.sell(1000, 1500)
    mkt.buy(600, 2000)
    mkt.buy(100, 1000)
    counts = _audit(mkt)
    assert counts["orders"] == 3 and counts["trades"] == 1


def test_the_audit_fails_a_trade_not_backed_by_a_buy_and_a_sell(mkt: MarketLedger) -> None:
    first_sell = mkt.sell(500, 1500).order
    second_sell = mkt.sell(500, 1500).order
    _audit(mkt)
    forged = mkt.record_trade(_forge(mkt, second_sell, first_sell, 100, 1500))  # its "buy" is a sell
    _audit_fails(mkt, forged, "not backed by a buy order %d and a sell order %d" % (second_sell, first_sell))


def test_the_audit_fails_a_trade_naming_a_leaf_that_is_no_order(mkt: MarketLedger) -> None:
    sell = mkt.sell(500, 1500).order
    issuance = mkt.traced.ingest.store.holdings(SELLER)[0][0]
    forged = mkt.record_trade(_forge(mkt, issuance, sell, 100, 1500))
    _audit_fails(mkt, forged, "not backed")


def test_the_audit_fails_a_gram_moved_twice(mkt: MarketLedger) -> None:
    sell = mkt.sell(1000, 1500).order
    honest = mkt.buy(400, 2000)
    ((_leaf, execution),) = honest.trades
    moved_lot, moved = execution.lots[0]  # the whole first lot went to the buyer
    issuance, index = parse_lot_id(moved_lot)
    # A buy the market recorded without matching, and a trade that moves the first lot's grams again.
    buy = mkt.record_order_unmatched(buy_order(500, 2000))
    _audit(mkt)
    forged = mkt.record_trade(_forge(mkt, buy, sell, moved, 1500, lots=[[issuance, index, moved]]))
    _audit_fails(mkt, forged, "moves %d g of lot %s" % (moved, moved_lot), "%s holds 0 g" % SELLER)


def test_the_audit_fails_a_trade_moving_more_than_the_seller_holds(mkt: MarketLedger) -> None:
    sell = mkt.sell(2000, 1500).order
    buy = mkt.record_order_unmatched(buy_order(2000, 2000))
    lot = mkt.traced.ingest.store.holdings(SELLER)[0]
    forged = mkt.record_trade(_forge(mkt, buy, sell, lot[7] + 1, 1500, lots=[[lot[0], lot[1], lot[7] + 1]]))
    _audit_fails(mkt, forged, "holds %d g" % lot[7])


def test_the_audit_fails_a_trade_not_at_the_resting_orders_price(tmp_path: Path) -> None:
    for price, honest in ((1500, True), (2000, False), (1499, False)):
        mkt = make_market(tmp_path / str(price))
        sell = mkt.sell(1000, 1500).order  # resting, at 15.00
        buy = mkt.record_order_unmatched(buy_order(600, 2000))  # incoming, up to 20.00
        leaf = mkt.record_trade(_forge(mkt, buy, sell, 600, price))
        if honest:
            counts = _audit(mkt)  # the same construction at the resting price holds
            assert counts["trades"] == 1
        else:
            _audit_fails(mkt, leaf, "its price %d is not the resting order's" % price)
        mkt.traced.ingest.store.close()


def test_the_audit_fails_a_trade_signed_by_another_key(mkt: MarketLedger) -> None:
    sell = mkt.sell(1000, 1500).order
    buy = mkt.record_order_unmatched(buy_order(600, 2000))
    forged = mkt.record_trade(_forge(mkt, buy, sell, 600, 1500), key=STRANGER_KEY)
    _audit_fails(mkt, forged)


# ------------------------------------------------------------------ a trace of bought C-REV


def _retire_bought(mkt: MarketLedger, grams: int) -> int:
    store, registry = mkt.traced.ingest.store, mkt.traced.registry
    with store.transaction():
        mkt.traced.ingest.ledger.sync()
        prepared = registry.prepare_retirement(BUYER, grams, "Bene", "FY report", 2026, mkt.ms)
        return registry.retire(sign_retirement(prepared, BUYER_KEY), mkt.ms)


def _export(mkt: MarketLedger, retirement: int, out: Path) -> bytes:
    export_trace(mkt.traced.ingest.store, retirement, out, ORIGIN, LEDGER_KEY.public_key, mkt.ms)
    return out.read_bytes()


@pytest.fixture(scope="module")
def bought(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int, int, int]:
    """(trace bundle, retirement, trade leaf, sell order) of buyer-1 retiring 500 g of the 600 g it bought."""
    mkt = make_market(tmp_path_factory.mktemp("bought"))
    sell = mkt.sell(1000, 1500)
    buy = mkt.buy(600, 2000, places=["Japan"])
    ((trade, _execution),) = buy.trades
    retirement = _retire_bought(mkt, 500)
    data = _export(mkt, retirement, tmp_path_factory.mktemp("out") / "bought.trace")
    mkt.traced.ingest.store.close()
    return data, retirement, trade, sell.order


def _verify(data: bytes) -> Any:
    return verify_trace(io.BytesIO(data), LEDGER_KEY.public_key)


def test_a_trace_of_bought_c_rev_verifies_and_lists_the_trade(bought: tuple[bytes, int, int, int]) -> None:
    data, retirement, trade, sell = bought
    result = _verify(data)
    assert result.failure_count == 0, [f.describe() for f in result.failures]
    report = build_trace_report(result)
    assert report["ok"]
    traced = report["trace"]
    assert traced["retirement"] == retirement and traced["account"] == BUYER and traced["grams"] == 500
    assert traced["places"] == [PLACE] and traced["types"] == [TYPE]
    assert traced["trades"] == [
        {"trade": trade, "seller": SELLER, "buyer": BUYER, "grams": 600, "price": 1500, "amount": 900_000}
    ]
    entries = parts(data)[4]
    by_leaf = {entry[0]: entry[1] for entry in entries}
    assert by_leaf[trade] == LEAF_TRADE
    assert by_leaf[sell] == LEAF_ORDER and by_leaf[trade - 1] == LEAF_ORDER  # both orders behind the trade


def _tamper_trade(data: bytes, change: Callable[[bytes], bytes]) -> tuple[bytes, int, int]:
    value = parts(data)
    position = next(i for i, entry in enumerate(value[4]) if entry[1] == LEAF_TRADE)
    entry = value[4][position]
    entry[3] = change(entry[3])
    return pack(value), position, entry[0]


def _changed(field: int, delta: int) -> Callable[[dict[int, Any]], dict[int, Any]]:
    def change(fields: dict[int, Any]) -> dict[int, Any]:
        fields = dict(fields)
        fields[field] += delta
        if field == 3:  # grams: keep the lots and the amount consistent, so only the values lie
            fields[6] = [list(lot) for lot in fields[6]]
            fields[6][-1][2] += delta
        fields[5] = fields[3] * fields[4]
        return fields

    return change


TAMPERS: dict[str, Callable[[bytes], bytes]] = {
    "price, not re-signed": lambda s: with_payload(s, _changed(4, 100)(payload(s))),
    "grams, not re-signed": lambda s: with_payload(s, _changed(3, -1)(payload(s))),
    "price, re-signed by another key": lambda s: sign1(cbor.dumps(_changed(4, 100)(payload(s))), STRANGER_KEY),
    "grams, re-signed by another key": lambda s: sign1(cbor.dumps(_changed(3, 1)(payload(s))), STRANGER_KEY),
    "price, re-signed by the ledger key": lambda s: sign1(cbor.dumps(_changed(4, -1)(payload(s))), LEDGER_KEY),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_a_changed_trade_in_the_bundle_fails_naming_its_entry(bought: tuple[bytes, int, int, int], tamper: str) -> None:
    data, _retirement, trade, _sell = bought
    tampered, position, leaf = _tamper_trade(data, TAMPERS[tamper])
    assert leaf == trade and tampered != data
    result = _verify(tampered)
    assert first(result) == (trace.INCLUSION, "entry", position), result.failures[0].describe()
    assert result.failures[0].leaf == trade
    assert "entry #%d (leaf %d)" % (position, trade) in result.failures[0].describe()


def test_a_validly_signed_trade_at_the_wrong_price_fails_the_trace_at_its_entry(tmp_path: Path) -> None:
    mkt = make_market(tmp_path)
    sell = mkt.sell(1000, 1500).order
    buy = mkt.record_order_unmatched(buy_order(600, 2000))
    forged = mkt.record_trade(_forge(mkt, buy, sell, 600, 2000))  # the incoming order's price
    retirement = _retire_bought(mkt, 500)
    data = _export(mkt, retirement, tmp_path / "forged.trace")
    result = _verify(data)
    position = next(i for i, entry in enumerate(parts(data)[4]) if entry[0] == forged)
    assert first(result) == (trace.GRAMS, "entry", position), result.failures[0].describe()
    assert result.failures[0].leaf == forged and "not the resting order's" in result.failures[0].detail


def test_the_audit_replays_the_matching_rules_not_only_each_trade(mkt: MarketLedger, tmp_path: Path) -> None:
    """A trade that each rule alone allows, but that price priority forbids, fails `crev audit ledger`."""
    mkt.sell(100, 1500)
    dear = mkt.sell(100, 1600).order
    mkt.sell(100, 1500)
    buy = mkt.record_order_unmatched(buy_order(100, 2000))
    oldest = next(iter(mkt.lots(SELLER).items()))
    issuance, index = parse_lot_id(oldest[0])
    forged = mkt.record_trade(TradeLeaf(buy, dear, 100, 1600, 160000, [[issuance, index, 100]], BUYER, SELLER, NOW))
    # Every trade on its own is backed by its orders, so the registry replay passes ...
    verify_ledger(mkt.traced.ingest.store, LEDGER_KEY.public_key, ORIGIN)
    # ... but replaying the orders through the engine gives another trade, and the CLI's audit says so.
    config = write_ingest_config(tmp_path)  # its storage.path is the ledger's crev.sqlite there
    done = subprocess.run(
        crev_command("audit", "ledger", "--config", str(config)), capture_output=True, text=True, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL: market: leaf %d: the matching rules give" % forged in done.stdout, done.stdout
    with pytest.raises(MatchingMismatch, match="leaf %d" % forged):
        mkt.market.book()  # the market will not run on such a ledger either
