"""The matching engine (SPEC §9): orders per second with 10,000 resting orders, a third of them with conditions.

The market has 200 accounts, a fifth of them undisclosed. There are 30 places
(``Japan/<region>/<city>``) and 5 types. Each account holds 12 half-hour lots in
each of its two (place, type) pairs, so holdings seldom run out. The book
starts with 5,000 sells (prices 1000..1999) and 5,000 buys (500..999), which
do not cross. Then a stream of incoming orders is timed: half buys
(500..1500) and half sells (700..1700), so about half of them trade. After
each order, the oldest resting order is cancelled while the book holds more
than 10,000, so the book stays at that size. The caller's work is timed too:
each event's trades are settled into the in-memory holdings.

In the run "with conditions", a third of all orders (two thirds of the buys)
carry conditions: a region, a city or two, a type under a region, three
named sellers, and in a third of these a slot window. The baseline is the
same stream, in the same run, with every condition and window removed. The
figure to compare is the ratio. Absolute rates depend on the machine.

    .venv/bin/python benchmarks/matching_bench.py [--orders N] [--rounds R]
"""

import argparse
import random
import statistics
import time
from collections import deque
from dataclasses import dataclass, replace

from crev.registry_format import SLOT_S
from crev_market.matching import Buy, Cancel, MatchingEngine, MemoryHoldings, Sell

RESTING = 10_000
ACCOUNTS = ["acct-%04d" % n for n in range(200)]
UNDISCLOSED = set(ACCOUNTS[::5])
REGIONS = ["Hokkaido", "Tohoku", "Kanto", "Chubu", "Kansai", "Kyushu"]
PLACES = ["Japan/%s/city-%d" % (region, n) for region in REGIONS for n in range(5)]
TYPES = ["solar/roof", "solar/field", "wind/small", "wind/large", "hydro"]
BASE = 1_700_000_000 // SLOT_S * SLOT_S
LOT_SLOTS = 12
LOT_GRAMS = 10_000_000


@dataclass(frozen=True)
class Market:
    """The accounts' lots: two (place, type) pairs per account."""

    pairs: dict[str, list[tuple[str, str]]]

    def holdings(self) -> MemoryHoldings:
        holdings = MemoryHoldings()
        leaf = 0
        for account in ACCOUNTS:
            for place, type_path in self.pairs[account]:
                for k in range(LOT_SLOTS):
                    leaf += 1
                    holdings.add(account, "%d.0" % leaf, place, type_path, BASE + k * SLOT_S, LOT_GRAMS)
        return holdings


def make_market(rng: random.Random) -> Market:
    return Market({account: [(rng.choice(PLACES), rng.choice(TYPES)) for _ in range(2)] for account in ACCOUNTS})


def conditioned(rng: random.Random, buy: Buy) -> Buy:
    """The same buy with one of the conditions buyers choose by, and sometimes a slot window."""
    kind = rng.randrange(4)
    if kind == 0:
        buy = replace(buy, places=frozenset({"Japan/" + rng.choice(REGIONS)}))
    elif kind == 1:
        buy = replace(buy, places=frozenset(rng.sample(PLACES, 2)))
    elif kind == 2:
        buy = replace(
            buy, places=frozenset({"Japan/" + rng.choice(REGIONS)}), types=frozenset({rng.choice(["solar", "wind"])})
        )
    else:
        buy = replace(buy, sellers=frozenset(rng.sample(ACCOUNTS, 3)))
    if rng.randrange(3) == 0:
        first = rng.randrange(LOT_SLOTS - 4)
        buy = replace(buy, slot_from_s=BASE + first * SLOT_S, slot_to_s=BASE + (first + 4) * SLOT_S)
    return buy


def make_orders(rng: random.Random, market: Market, count: int, resting: bool) -> list[Buy | Sell]:
    """Orders of which a third carry conditions. Resting ones do not cross. The others often do."""
    orders: list[Buy | Sell] = []
    for n in range(count):
        account = rng.choice(ACCOUNTS)
        grams = rng.randrange(1_000, 50_000)
        if n % 2:
            place, type_path = rng.choice(market.pairs[account])
            price = rng.randrange(1000, 2000) if resting else rng.randrange(700, 1700)
            orders.append(Sell(account, place, type_path, grams, price, None, account not in UNDISCLOSED))
            continue
        buy = Buy(account, grams, rng.randrange(500, 1000) if resting else rng.randrange(500, 1500))
        if n % 6 != 0:  # two buys in three: a third of all orders
            buy = conditioned(rng, buy)
        orders.append(buy)
    return orders


def plain(order: Buy | Sell) -> Buy | Sell:
    if isinstance(order, Sell):
        return order
    return Buy(order.account, order.grams, order.max_price)


@dataclass
class Run:
    seconds: float
    orders: int
    cancels: int
    trades: int
    book: int
    conditional_book: int

    @property
    def rate(self) -> float:
        return self.orders / self.seconds


def run(market: Market, book: list[Buy | Sell], stream: list[Buy | Sell]) -> Run:
    engine = MatchingEngine()
    holdings = market.holdings()
    arrival = 0
    placed: deque[tuple[int, str]] = deque()
    for order in book:
        arrival += 1
        result = engine.order(arrival, 1_000, order, holdings)
        assert not result.trades, "the starting book does not cross"
        placed.append((arrival, order.account))
    trades = cancels = 0
    start = time.perf_counter()
    for order in stream:
        arrival += 1
        result = engine.order(arrival, 2_000, order, holdings)
        holdings.settle(result.trades)
        trades += len(result.trades)
        if result.grams_left:
            placed.append((arrival, order.account))
        while len(engine) > RESTING:
            oldest, account = placed.popleft()
            if engine.resting(oldest) is not None:
                arrival += 1
                engine.cancel(arrival, 2_000, Cancel(account, oldest))
                cancels += 1
    elapsed = time.perf_counter() - start
    conditional = sum(
        1
        for entry in engine.book()
        if isinstance(entry.spec, Buy) and (entry.spec.sellers or entry.spec.places or entry.spec.types)
    )
    return Run(elapsed, len(stream), cancels, trades, len(engine), conditional)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=20_000, help="incoming orders timed per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report(args.orders, args.rounds)


def report(orders: int, rounds: int) -> None:
    rng = random.Random(20240401)
    market = make_market(rng)
    book = make_orders(rng, market, RESTING, resting=True)
    stream = make_orders(rng, market, orders, resting=False)
    plain_book, plain_stream = [plain(o) for o in book], [plain(o) for o in stream]
    with_conditions: list[Run] = []
    without: list[Run] = []
    for round_ in range(rounds):
        # Alternate which goes first, so that a drifting machine favours neither.
        if round_ % 2:
            without.append(run(market, plain_book, plain_stream))
            with_conditions.append(run(market, book, stream))
        else:
            with_conditions.append(run(market, book, stream))
            without.append(run(market, plain_book, plain_stream))
    rate = statistics.median(r.rate for r in with_conditions)
    base = statistics.median(r.rate for r in without)
    first, plain_first = with_conditions[0], without[0]
    print(
        "matching: %d resting orders (%d with conditions at the start), %d incoming orders per run, %d rounds"
        % (
            RESTING,
            sum(isinstance(o, Buy) and bool(o.sellers or o.places or o.types) for o in book),
            orders,
            rounds,
        )
    )
    print(
        "  with conditions:    %8.0f orders/s  (%d trades, %d cancels, book %d of which %d conditional)"
        % (rate, first.trades, first.cancels, first.book, first.conditional_book)
    )
    print(
        "  without conditions: %8.0f orders/s  (%d trades, %d cancels, book %d)"
        % (base, plain_first.trades, plain_first.cancels, plain_first.book)
    )
    print("  ratio with / without conditions: %.2f" % (rate / base))


if __name__ == "__main__":
    main()
