"""The daily statement (SPEC §9): an account's trades of a day, summed exactly, rounded once to whole yen.

The pure function is checked against figures worked by hand, including a day
whose yen differ when each trade is rounded on its own; the command runs over
a real ledger with real trades, in text, CSV and JSON.
"""

import csv
import io
import json
import time
from pathlib import Path

import pytest
from ingest_support import NOW
from registry_support import write_ingest_config
from trace_support import ACCOUNT, ACCOUNT_KEY, make_traced

from crev.keys import SigningKey
from crev.market_format import SIDE_BUY, SIDE_SELL, Order
from crev_cli.main import main
from crev_ingest.config import parse
from crev_market.market import Market, sign_order
from crev_market.market import new_nonce as nonce
from crev_market.statements import (
    BOUGHT,
    PAYABLE,
    RECEIVABLE,
    SETTLED,
    SOLD,
    TradeRow,
    csv_rows,
    format_amount,
    parse_day,
    round_yen,
    statement,
)

BUYER = "buyer-1"
BUYER_KEY = SigningKey(bytes([6]) * 32)
DAY = "2026-04-01"
# 2026-04-01 00:00 in Japan (+9) is 2026-03-31 15:00 UTC.
DAY_START = 1774969200
assert time.strftime("%Y-%m-%dT%H:%M", time.gmtime(DAY_START)) == "2026-03-31T15:00"


def japan(t: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t + 9 * 3600))


def row(leaf: int, grams: int, price: int, buyer: str, seller: str, t: int = DAY_START + 3600) -> TradeRow:
    return (leaf, leaf - 2, leaf - 1, grams, price, grams * price, buyer, seller, t)


def units(text: str) -> int:
    """An amount string with 5 decimals as integer 1/100,000 yen, with no float on the way."""
    whole, _, frac = text.lstrip("-").partition(".")
    assert len(frac) == 5, text
    value = int(whole) * 100_000 + int(frac)
    return -value if text.startswith("-") else value


# ------------------------------------------------------------------ the pure function


def test_one_rounding_at_the_end_not_one_per_trade() -> None:
    """Worked by hand; each trade rounded on its own would give 5 yen, the statement gives 6.

    sold   1234 g at 3.57 yen/kg = 1234 × 357 = 440,538 → 4.40538 yen (alone: 4)
    sold   2500 g at 2.10 yen/kg = 2500 × 210 = 525,000 → 5.25000 yen (alone: 5)
    bought  777 g at 4.99 yen/kg =  777 × 499 = 387,723 → 3.87723 yen (alone: 4)
    net = 4.40538 + 5.25000 − 3.87723 = 5.77815 yen receivable → 6 yen (per trade: 4 + 5 − 4 = 5)
    """
    rows = [
        row(10, 1234, 357, "other-1", "acct-1"),
        row(13, 2500, 210, "other-2", "acct-1"),
        row(16, 777, 499, "acct-1", "other-1"),
        row(19, 5000, 1000, "other-1", "other-2"),  # not the account's
    ]
    s = statement(rows, "acct-1", DAY, japan)
    assert [(x.trade, x.side, x.counterparty, x.amount) for x in s.lines] == [
        (10, SOLD, "other-1", 440_538),
        (13, SOLD, "other-2", 525_000),
        (16, BOUGHT, "other-1", 387_723),
    ]
    assert (s.sold_grams, s.sold_amount) == (3734, 965_538)
    assert (s.bought_grams, s.bought_amount) == (777, 387_723)
    assert s.net_amount == 577_815
    assert format_amount(s.net_amount) == "5.77815"
    assert (s.net_yen, s.direction) == (6, RECEIVABLE)
    per_trade = round_yen(440_538) + round_yen(525_000) - round_yen(387_723)
    assert per_trade == 5 and s.net_yen - per_trade == 1

    # The counterparty's view of trade 16: it sold, and is owed what acct-1 owes.
    other = statement(rows, "other-1", DAY, japan)
    assert [(x.trade, x.side, x.counterparty) for x in other.lines] == [
        (10, BOUGHT, "acct-1"),
        (16, SOLD, "acct-1"),
        (19, BOUGHT, "other-2"),
    ]
    assert other.net_amount == 387_723 - 440_538 - 5_000_000


def test_small_trades_add_up_before_rounding() -> None:
    """Three sales of 0.40000 yen (200 g at 2.00 yen/kg): 0 yen each when rounded alone, 1 yen together."""
    rows = [row(leaf, 200, 200, "other-1", "acct-1") for leaf in (10, 13, 16)]
    s = statement(rows, "acct-1", DAY, japan)
    assert s.sold_amount == 120_000 and format_amount(s.sold_amount) == "1.20000"
    assert sum(round_yen(x.amount) for x in s.lines) == 0
    assert (s.net_yen, s.direction) == (1, RECEIVABLE)


@pytest.mark.parametrize(
    ("net", "yen"),
    [(0, 0), (49_999, 0), (50_000, 1), (149_999, 1), (150_000, 2), (-49_999, 0), (-50_000, -1), (-150_000, -2)],
)
def test_round_half_up_on_the_magnitude(net: int, yen: int) -> None:
    assert round_yen(net) == yen


def test_a_payable_half_yen_rounds_up_like_a_receivable_one() -> None:
    """Bought 500 g at 1.01 yen/kg = 0.50500 yen, sold 1 g at 5.00 yen/kg = 0.00500 yen: net −0.50000 → pay 1 yen."""
    rows = [row(10, 500, 101, "acct-1", "other-1"), row(13, 1, 500, "other-1", "acct-1")]
    s = statement(rows, "acct-1", DAY, japan)
    assert s.net_amount == -50_000 and format_amount(s.net_amount) == "-0.50000"
    assert (s.net_yen, s.direction) == (-1, PAYABLE)
    assert statement(rows, "other-1", DAY, japan).net_yen == 1  # the other side receives the same yen


def test_the_day_is_the_japanese_calendar_day(tmp_path: Path) -> None:
    """With the config's own local_day (+9): 14:59:59 UTC is still the day, 15:00:00 UTC is the next."""
    config = parse({"ledger": {"origin": "crev.test/ledger"}}, tmp_path / "ingest.toml")
    rows = [
        row(10, 100, 100, "acct-1", "other-1", DAY_START - 1),
        row(13, 200, 100, "acct-1", "other-1", DAY_START),
        row(16, 300, 100, "acct-1", "other-1", DAY_START + 86400 - 1),
        row(19, 400, 100, "acct-1", "other-1", DAY_START + 86400),
    ]
    s = statement(rows, "acct-1", DAY, config.local_day)
    assert [x.trade for x in s.lines] == [13, 16]
    assert [x.trade for x in statement(rows, "acct-1", "2026-03-31", config.local_day).lines] == [10]
    assert [x.trade for x in statement(rows, "acct-1", "2026-04-02", config.local_day).lines] == [19]


def test_no_trades_is_an_empty_statement_with_zero_totals() -> None:
    s = statement([row(10, 100, 100, "other-1", "other-2")], "acct-1", DAY, japan)
    assert s.lines == []
    totals = s.totals()
    assert totals["trades"] == 0 and totals["net_yen"] == 0 and totals["settlement"] == SETTLED
    assert totals["bought_amount_yen"] == totals["sold_amount_yen"] == totals["net_amount_yen"] == "0.00000"
    assert csv_rows(s)[1:] == [
        ["total bought", "", "", "", "", "0.000", "", "0.00000"],
        ["total sold", "", "", "", "", "0.000", "", "0.00000"],
        ["net", "", "", "", "", "", "", "0.00000"],
        ["settlement", "", SETTLED, "", "", "", "", "0"],
    ]


def test_an_amount_that_is_not_grams_times_price_is_refused() -> None:
    bad = (10, 8, 9, 100, 100, 10_001, "acct-1", "other-1", DAY_START)
    with pytest.raises(ValueError, match="not grams × price"):
        statement([bad], "acct-1", DAY, japan)


@pytest.mark.parametrize("text", ["2026-4-1", "2026-02-30", "20260401", "yesterday", "2026-04-01T00:00"])
def test_a_day_must_be_a_calendar_day(text: str) -> None:
    with pytest.raises(ValueError):
        parse_day(text)


# ------------------------------------------------------------------ the command, over a real ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """owner-1 sells 1000 g at 15.37 yen/kg; buyer-1 buys 600 g, then 300 g: two trades at the sell's price.

    600 × 1537 = 922,200 (9.22200 yen) and 300 × 1537 = 461,100 (4.61100 yen):
    13.83300 yen, 14 yen once rounded.
    """
    traced = make_traced(tmp_path)
    traced.registry.issue(traced.ms)
    reg = traced.registry
    reg.add_account(BUYER, "Buyer", BUYER_KEY.public_key, True, traced.ms)
    market = Market(reg)
    sell = Order.to_map(SIDE_SELL, ACCOUNT, NOW, nonce(), 1000, 1537, "Japan/Tokyo", "solar")
    market.place(sign_order(sell, ACCOUNT_KEY), traced.ms)
    for grams in (600, 300):
        buy = Order.to_map(SIDE_BUY, BUYER, NOW, nonce(), grams, 2000, places=["Japan"])
        assert len(market.place(sign_order(buy, BUYER_KEY), traced.ms).trades) == 1
    traced.ingest.store.close()
    return write_ingest_config(tmp_path)


def _crev(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _statement(config: Path, account: str, day: str, capsys: pytest.CaptureFixture[str], *fmt: str) -> str:
    argv = ["market", "statement", "--config", str(config), "--account", account, "--day", day, *fmt]
    code, out, err = _crev(argv, capsys)
    assert code == 0, (code, out, err)
    return out


def test_json_statement_totals_are_the_sums_of_its_rows(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    day = japan(NOW)
    buyer = json.loads(_statement(ledger, BUYER, day, capsys, "--json"))
    assert (buyer["account"], buyer["day"]) == (BUYER, day)
    trades = buyer["trades"]
    assert [(t["side"], t["counterparty"], t["grams"], t["price_yen_per_kg"]) for t in trades] == [
        (BOUGHT, ACCOUNT, 600, "15.37"),
        (BOUGHT, ACCOUNT, 300, "15.37"),
    ]
    assert [t["amount_yen"] for t in trades] == ["9.22200", "4.61100"]
    totals = buyer["totals"]
    assert totals["bought_grams"] == sum(t["grams"] for t in trades) == 900
    assert units(totals["bought_amount_yen"]) == sum(units(t["amount_yen"]) for t in trades) == 1_383_300
    assert (totals["sold_grams"], totals["sold_amount_yen"]) == (0, "0.00000")
    assert totals["net_amount_yen"] == "-13.83300"
    assert (totals["net_yen"], totals["settlement"], totals["settlement_yen"]) == (-14, PAYABLE, 14)

    seller = json.loads(_statement(ledger, ACCOUNT, day, capsys, "--json"))
    assert [t["trade"] for t in seller["trades"]] == [t["trade"] for t in trades]
    assert [(t["side"], t["counterparty"]) for t in seller["trades"]] == [(SOLD, BUYER), (SOLD, BUYER)]
    assert (seller["totals"]["net_amount_yen"], seller["totals"]["settlement"]) == ("13.83300", RECEIVABLE)
    assert seller["totals"]["settlement_yen"] == 14

    # The trades the statement lists are the ledger's trades.
    code, out, _err = _crev(["market", "trades", "--config", str(ledger), "--json"], capsys)
    assert code == 0
    assert [(t["trade"], t["amount_yen"]) for t in json.loads(out)] == [(t["trade"], t["amount_yen"]) for t in trades]


def test_csv_statement_parses_and_its_totals_add_up(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = list(csv.reader(io.StringIO(_statement(ledger, ACCOUNT, japan(NOW), capsys, "--csv"))))
    assert rows[0] == ["trade", "time", "side", "counterparty", "order", "kg", "price_yen_per_kg", "amount_yen"]
    trades, totals = rows[1:3], {r[0]: r for r in rows[3:]}
    assert [(r[2], r[3], r[5], r[6], r[7]) for r in trades] == [
        (SOLD, BUYER, "0.600", "15.37", "9.22200"),
        (SOLD, BUYER, "0.300", "15.37", "4.61100"),
    ]
    assert all(int(r[1]) == NOW for r in trades)
    assert list(totals) == ["total bought", "total sold", "net", "settlement"]
    assert units(totals["total sold"][7]) == sum(units(r[7]) for r in trades) == 1_383_300
    assert totals["total sold"][5] == "0.900" and totals["total bought"][7] == "0.00000"
    assert totals["net"][7] == "13.83300"
    assert totals["settlement"][2:3] + totals["settlement"][7:] == [RECEIVABLE, "14"]


def test_text_statement(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _statement(ledger, BUYER, japan(NOW), capsys)
    assert "2 trades" in out and "-13.83300 yen" in out and "payable: 14 yen" in out


def test_a_day_without_trades_is_an_empty_statement(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    next_day = japan(NOW + 86400)
    body = json.loads(_statement(ledger, BUYER, next_day, capsys, "--json"))
    assert body["trades"] == []
    totals = body["totals"]
    assert (totals["trades"], totals["bought_grams"], totals["sold_grams"], totals["net_yen"]) == (0, 0, 0, 0)
    assert totals["bought_amount_yen"] == totals["sold_amount_yen"] == totals["net_amount_yen"] == "0.00000"
    rows = list(csv.reader(io.StringIO(_statement(ledger, BUYER, next_day, capsys, "--csv"))))
    assert len(rows) == 5 and rows[-1][2] == SETTLED and rows[-1][7] == "0"


@pytest.mark.parametrize(
    ("account", "day", "says"),
    [("nobody-1", None, "unknown account nobody-1"), (BUYER, "2026-13-01", "not a calendar day")],
)
def test_a_mistake_is_one_line_and_exit_2(
    ledger: Path, account: str, day: str | None, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["market", "statement", "--config", str(ledger), "--account", account, "--day", day or japan(NOW)]
    code, out, err = _crev(argv, capsys)
    assert code == 2, (code, out, err)
    assert out == ""
    assert err.count("\n") == 1 and says in err, err
