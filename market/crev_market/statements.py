"""The daily statement of one account (SPEC §9): its trades of a day, summed exactly, rounded once.

A pure function over the trades table's rows, ``(leaf, buy, sell, grams,
price, amount, buyer, seller, time)``: no clock, no database, no I/O.

Units, as in the trade leaves:

- grams: whole grams of CO2;
- price: an integer in 1/100 yen per kg-CO2;
- amount: grams × price, exact, an integer in **1/100,000 yen**.

Every sum is an integer sum of those exact amounts. Nothing is rounded per
trade. The one rounding comes at the end, on the net amount, to whole yen:
**round half up** on its magnitude (0.50000 yen and more goes up to the next
yen, less goes down), and then the sign says payable or receivable. Because
the magnitude is rounded, and not the signed value, two accounts that traded
only with each other on a day get the same yen, one to pay and one to receive.

The day is a calendar day at the ingest config's day offset
(``IngestConfig.local_day``, Japan +9 by default), applied to each trade's
time; the caller passes that function in.
"""

import datetime
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

UNITS_PER_YEN = 100_000  # amounts are in 1/100,000 yen
TradeRow = tuple[int, int, int, int, int, int, str, str, int]
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")

BOUGHT = "bought"
SOLD = "sold"
PAYABLE = "payable"
RECEIVABLE = "receivable"
SETTLED = "nothing due"


def parse_day(text: str) -> str:
    """``YYYY-MM-DD``, checked to be a real calendar day; ValueError otherwise."""
    if not _DAY.match(text):
        raise ValueError("--day %r must be a calendar day as YYYY-MM-DD, such as 2026-04-01" % text)
    try:
        datetime.date.fromisoformat(text)
    except ValueError as err:
        raise ValueError("--day %s is not a calendar day" % text) from err
    return text


def format_amount(units: int) -> str:
    """An exact amount in 1/100,000 yen as yen with 5 decimals: 123456 -> ``1.23456``, -5 -> ``-0.00005``."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNITS_PER_YEN)
    return "%s%d.%05d" % (sign, whole, frac)


def format_price(hundredths: int) -> str:
    """A price in 1/100 yen per kg as yen per kg with 2 decimals."""
    return "%d.%02d" % (hundredths // 100, hundredths % 100)


def format_grams(grams: int) -> str:
    """Grams as kg with 3 decimals."""
    return "%d.%03d" % (grams // 1000, grams % 1000)


def round_yen(units: int) -> int:
    """Whole yen of an exact amount: half up on the magnitude, the sign kept (-1.5 yen -> -2)."""
    magnitude = (abs(units) + UNITS_PER_YEN // 2) // UNITS_PER_YEN
    return -magnitude if units < 0 else magnitude


@dataclass(frozen=True)
class Line:
    """One trade, as the account sees it."""

    trade: int  # the trade's id: its leaf index
    time_s: int
    side: str  # BOUGHT or SOLD
    counterparty: str  # the other account's id
    order: int  # the account's own order
    grams: int
    price: int  # 1/100 yen per kg
    amount: int  # 1/100,000 yen, exact

    def to_json(self) -> dict[str, Any]:
        return {
            "trade": self.trade,
            "time": self.time_s,
            "side": self.side,
            "counterparty": self.counterparty,
            "order": self.order,
            "grams": self.grams,
            "kg": format_grams(self.grams),
            "price_yen_per_kg": format_price(self.price),
            "amount_yen": format_amount(self.amount),
        }


@dataclass(frozen=True)
class Statement:
    account: str
    day: str
    lines: list[Line]

    @property
    def bought_grams(self) -> int:
        return sum(line.grams for line in self.lines if line.side == BOUGHT)

    @property
    def sold_grams(self) -> int:
        return sum(line.grams for line in self.lines if line.side == SOLD)

    @property
    def bought_amount(self) -> int:
        """What the account owes for its purchases, exact (1/100,000 yen)."""
        return sum(line.amount for line in self.lines if line.side == BOUGHT)

    @property
    def sold_amount(self) -> int:
        """What the account is owed for its sales, exact (1/100,000 yen)."""
        return sum(line.amount for line in self.lines if line.side == SOLD)

    @property
    def net_amount(self) -> int:
        """Sold minus bought, exact: positive is receivable, negative payable."""
        return self.sold_amount - self.bought_amount

    @property
    def net_yen(self) -> int:
        """The net amount rounded once, to whole yen (``round_yen``)."""
        return round_yen(self.net_amount)

    @property
    def direction(self) -> str:
        """PAYABLE, RECEIVABLE, or SETTLED when the rounded net is zero yen."""
        if self.net_yen > 0:
            return RECEIVABLE
        if self.net_yen < 0:
            return PAYABLE
        return SETTLED

    def totals(self) -> dict[str, Any]:
        return {
            "trades": len(self.lines),
            "bought_grams": self.bought_grams,
            "bought_amount_yen": format_amount(self.bought_amount),
            "sold_grams": self.sold_grams,
            "sold_amount_yen": format_amount(self.sold_amount),
            "net_amount_yen": format_amount(self.net_amount),
            "net_yen": self.net_yen,
            "settlement": self.direction,
            "settlement_yen": abs(self.net_yen),
            "rounding": "once, on the net amount, to whole yen, half up on its magnitude",
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "day": self.day,
            "trades": [line.to_json() for line in self.lines],
            "totals": self.totals(),
        }


def statement(rows: Iterable[TradeRow], account: str, day: str, local_day: Callable[[int], str]) -> Statement:
    """The statement of ``account`` for ``day`` (``YYYY-MM-DD`` of ``local_day(trade time)``), in trade order."""
    lines: list[Line] = []
    for leaf, buy, sell, grams, price, amount, buyer, seller, time_s in rows:
        if account not in (buyer, seller) or local_day(time_s) != day:
            continue
        if amount != grams * price:
            raise ValueError("trade %d: amount %d is not grams × price (%d × %d)" % (leaf, amount, grams, price))
        if buyer == account:
            lines.append(Line(leaf, time_s, BOUGHT, seller, buy, grams, price, amount))
        if seller == account:
            lines.append(Line(leaf, time_s, SOLD, buyer, sell, grams, price, amount))
    lines.sort(key=lambda line: (line.trade, line.side))
    return Statement(account, day, lines)


CSV_HEADER = ["trade", "time", "side", "counterparty", "order", "kg", "price_yen_per_kg", "amount_yen"]


def csv_rows(s: Statement) -> list[list[str]]:
    """The header, one row per trade, then the total rows (their ``trade`` column names the total)."""
    rows = [CSV_HEADER]
    for line in s.lines:
        j = line.to_json()
        fields = [str(line.trade), str(line.time_s), line.side, line.counterparty, str(line.order)]
        rows.append([*fields, j["kg"], j["price_yen_per_kg"], j["amount_yen"]])
    rows.append(["total bought", "", "", "", "", format_grams(s.bought_grams), "", format_amount(s.bought_amount)])
    rows.append(["total sold", "", "", "", "", format_grams(s.sold_grams), "", format_amount(s.sold_amount)])
    rows.append(["net", "", "", "", "", "", "", format_amount(s.net_amount)])
    rows.append(["settlement", "", s.direction, "", "", "", "", "%d" % abs(s.net_yen)])
    return rows
