"""The matching engine (SPEC §9) against a brute-force reference, and one hand-made case per rule.

The reference engine below is written to be obviously right rather than
fast. For each incoming order it scans every resting order, keeps the
eligible ones whose seller still holds grams in the buy's window, takes the
best by (price, arrival), trades, and repeats. It keeps its own holdings,
as a plain map of (account, lot) to grams. Hypothesis then feeds both
engines the same arrival sequences: issuances, buys, sells, cancels (some by
the wrong account), conditions, windows, expiries, undisclosed sellers,
self-trades and short holdings. The two must agree on every refusal, every
trade, every book and every holding.
"""

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crev.registry_format import MAX_GRAMS, SLOT_S, path_matches
from crev_market import Refused, matching
from crev_market.matching import (
    Buy,
    Cancel,
    Cancelled,
    EngineMisuse,
    MatchingEngine,
    MemoryHoldings,
    OrderRefused,
    Placed,
    Sell,
    Trade,
    path_under,
)

BASE = 1_700_000_000 // SLOT_S * SLOT_S
ACCOUNTS = ["acct-a", "acct-b", "acct-c", "acct-d"]
UNDISCLOSED = {"acct-d"}
SELL_PLACES = ["Japan/Tokyo", "Japan/Tokyo/Nerima", "Japan/Tokyo2", "Japan/Osaka"]
COND_PLACES = ["Japan", "Japan/Tokyo", "Japan/Tokyo2", "Japan/Tokyo/Nerima", "Korea"]
SELL_TYPES = ["solar", "solar/roof", "wind", "wind/small"]
COND_TYPES = ["solar", "solar/roof", "wind", "wind/small", "hydro"]


# ------------------------------------------------------------------ the reference


@dataclass
class RefOrder:
    order: int
    spec: Buy | Sell
    left: int


@dataclass
class RefLot:
    lot_id: str
    place: str
    type: str
    slot: int
    seq: int
    site: str


@dataclass
class Reference:
    """SPEC §9 by brute force."""

    resting: list[RefOrder] = field(default_factory=list)
    lots: list[RefLot] = field(default_factory=list)
    held: dict[tuple[str, str], int] = field(default_factory=dict)
    now: int | None = None

    def issue(self, account: str, lot_id: str, place: str, type_path: str, slot: int, grams: int, site: str) -> None:
        self.lots.append(RefLot(lot_id, place, type_path, slot, len(self.lots), site))
        self.held[account, lot_id] = grams

    def window_lots(self, sell: Sell, buy: Buy) -> list[RefLot]:
        """The sell's lots (its seller's, of its place, type and site) inside the buy's window, oldest slot first."""
        chosen = []
        for lot in sorted(self.lots, key=lambda lot: (lot.slot, lot.seq)):
            if lot.place != sell.place or lot.type != sell.type or self.held.get((sell.account, lot.lot_id), 0) == 0:
                continue
            if sell.site and lot.site != sell.site:
                continue
            if buy.slot_from_s is not None and lot.slot < buy.slot_from_s:
                continue
            if buy.slot_to_s is not None and lot.slot + SLOT_S > buy.slot_to_s:
                continue
            chosen.append(lot)
        return chosen

    def available(self, sell: Sell, buy: Buy) -> int:
        return sum(self.held[sell.account, lot.lot_id] for lot in self.window_lots(sell, buy))

    @staticmethod
    def eligible(buy: Buy, sell: Sell) -> bool:
        if buy.account == sell.account or sell.min_price > buy.max_price:
            return False
        if buy.sellers and (not sell.disclosed or sell.account not in buy.sellers):
            return False
        if buy.places and not any(path_matches(p, sell.place) for p in buy.places):
            return False
        return not buy.types or any(path_matches(t, sell.type) for t in buy.types)

    def alive(self, spec: Buy | Sell, now: int) -> bool:
        return spec.expires_s is None or spec.expires_s > now

    def sweep(self, now: int) -> tuple[int, ...]:
        expired = tuple(r.order for r in self.resting if not self.alive(r.spec, now))
        self.resting = [r for r in self.resting if self.alive(r.spec, now)]
        return expired

    def apply(self, arrival: int, now_s: int, event: Buy | Sell | Cancel) -> tuple[object, ...]:
        now = now_s if self.now is None else max(self.now, now_s)
        if isinstance(event, Cancel):
            targets = [r for r in self.resting if r.order == event.order and self.alive(r.spec, now)]
            if not targets:
                return ("refused", "NOT_RESTING")
            if targets[0].spec.account != event.account:
                return ("refused", "NOT_OWNER")
            self.now = now
            expired = self.sweep(now)
            self.resting.remove(targets[0])
            return ("cancelled", arrival, event.order, targets[0].left, expired)
        if not self.alive(event, now):
            return ("refused", "EXPIRED")
        self.now = now
        expired = self.sweep(now)
        incoming = RefOrder(arrival, event, event.grams)
        trades = []
        while incoming.left:
            best: tuple[tuple[int, int], RefOrder, int] | None = None
            for r in self.resting:
                if isinstance(r.spec, Buy) == isinstance(event, Buy):
                    continue
                buy, sell = (event, r.spec) if isinstance(event, Buy) else (r.spec, event)
                assert isinstance(buy, Buy) and isinstance(sell, Sell)
                if not self.eligible(buy, sell):
                    continue
                room = self.available(sell, buy)
                if not room:
                    continue
                rank = (r.spec.min_price if isinstance(r.spec, Sell) else -r.spec.max_price, r.order)
                if best is None or rank < best[0]:
                    best = (rank, r, room)
            if best is None:
                break
            _rank, other, room = best
            grams = min(incoming.left, other.left, room)
            buy_order, sell_order = (incoming, other) if isinstance(event, Buy) else (other, incoming)
            buy, sell = buy_order.spec, sell_order.spec
            assert isinstance(buy, Buy) and isinstance(sell, Sell)
            price = other.spec.min_price if isinstance(other.spec, Sell) else other.spec.max_price
            taken, want = [], grams
            for lot in self.window_lots(sell, buy):
                part = min(want, self.held[sell.account, lot.lot_id])
                self.held[sell.account, lot.lot_id] -= part
                self.held[buy.account, lot.lot_id] = self.held.get((buy.account, lot.lot_id), 0) + part
                taken.append((lot.lot_id, part))
                want -= part
                if not want:
                    break
            trades.append(
                (
                    buy_order.order,
                    sell_order.order,
                    buy.account,
                    sell.account,
                    grams,
                    price,
                    tuple(taken),
                    grams * price,
                )
            )
            incoming.left -= grams
            other.left -= grams
            if not other.left:
                self.resting.remove(other)
        if incoming.left:
            self.resting.append(incoming)
        return ("placed", arrival, tuple(trades), incoming.left, expired)

    def book(self) -> list[tuple[int, int]]:
        return sorted((r.order, r.left) for r in self.resting)

    def holdings(self) -> dict[tuple[str, str], int]:
        return {key: grams for key, grams in self.held.items() if grams}


def trade_row(trade: Trade) -> tuple[object, ...]:
    return (trade.buy, trade.sell, trade.buyer, trade.seller, trade.grams, trade.price, trade.lots, trade.amount_due)


def outcome(result: Placed | Cancelled) -> tuple[object, ...]:
    if isinstance(result, Cancelled):
        return ("cancelled", result.cancel, result.order, result.grams_left, result.expired)
    return ("placed", result.order, tuple(trade_row(t) for t in result.trades), result.grams_left, result.expired)


def run_engine(
    engine: MatchingEngine, holdings: MemoryHoldings, arrival: int, now_s: int, event: Buy | Sell | Cancel
) -> tuple[object, ...]:
    try:
        result = engine.apply(arrival, now_s, event, holdings)
    except OrderRefused as err:
        return ("refused", err.reason)
    if isinstance(result, Placed):
        holdings.settle(result.trades)
    return outcome(result)


# ------------------------------------------------------------------ generated arrival sequences


@dataclass(frozen=True)
class Issue:
    account: str
    place: str
    type: str
    slot: int
    grams: int
    site: str


SITES = ["site-one", "site-two"]
SELL_SITES = ["", "", "site-one", "site-two"]


class Code:
    """Reads choices out of one drawn integer, so that a whole event is a single draw that shrinks to zero."""

    def __init__(self, value: int) -> None:
        self.value = value

    def pick(self, choices: int) -> int:
        self.value, choice = divmod(self.value, choices)
        return choice

    def among(self, options: list[str], at_most: int) -> frozenset[str]:
        bits = self.pick(1 << len(options))
        return frozenset([o for i, o in enumerate(options) if bits >> i & 1][:at_most])


STEPS = [0, 0, 1, 2, 5, -3]  # seconds between events; time goes back sometimes, and the engine keeps its own
KINDS = ["issue", "sell", "buy", "issue", "sell", "buy", "issue", "buy", "sell", "cancel"]
EXPIRIES = [None, None, None, None, None, None, None, 0, 5, 30]  # seconds after the event's time


def decode(value: int, now: int, arrivals: list[int], issued: list[Issue]) -> Issue | Buy | Sell | Cancel:
    """An issuance, sell, buy or cancel (by its owner, by a stranger, of a filled order or of none).

    Most sells offer the place and type of a lot issued to their seller, so
    that sells meet holdings often, and half the issuances add a lot of
    another slot to a seller's place and type, so that windows choose among
    lots.
    """
    code = Code(value)
    kind = KINDS[code.pick(len(KINDS))]
    account = ACCOUNTS[code.pick(len(ACCOUNTS))]
    quantity = 1 + code.pick(40)
    price = 1 + code.pick(6)
    expiry = EXPIRIES[code.pick(len(EXPIRIES))]
    expires_s = None if expiry is None else now + expiry
    if kind in ("issue", "sell"):
        place = SELL_PLACES[code.pick(len(SELL_PLACES))]
        type_path = SELL_TYPES[code.pick(len(SELL_TYPES))]
        if code.pick(4 if kind == "sell" else 2) and issued:
            lot = issued[code.pick(len(issued))]
            account, place, type_path = lot.account, lot.place, lot.type
        if kind == "issue":
            return Issue(account, place, type_path, BASE + code.pick(6) * SLOT_S, quantity, SITES[code.pick(2)])
        site = SELL_SITES[code.pick(len(SELL_SITES))]
        return Sell(account, place, type_path, quantity, price, expires_s, account not in UNDISCLOSED, site)
    if kind == "buy":
        sellers = code.among(ACCOUNTS, 2) if code.pick(4) == 0 else frozenset()
        places = code.among(COND_PLACES, 3) if code.pick(3) == 0 else frozenset()
        types = code.among(COND_TYPES, 2) if code.pick(3) == 0 else frozenset()
        window = ["none", "from", "to", "both", "none", "none", "none", "none"][code.pick(8)]
        low = BASE + code.pick(6) * SLOT_S + [0, 1, -1][code.pick(3)]
        high = low + (1 + code.pick(4)) * SLOT_S + [0, 1][code.pick(2)]
        return Buy(
            account,
            quantity,
            price,
            sellers,
            places,
            types,
            low if window in ("from", "both") else None,
            high if window in ("to", "both") else None,
            expires_s,
        )
    target = code.pick(80)
    # Mostly an order that was placed (it may be filled by now); sometimes a number that never was.
    return Cancel(account, arrivals[target % len(arrivals)] if arrivals and target < 70 else 10_000 + target)


sequences = st.lists(st.integers(0, (1 << 62) - 1), min_size=1, max_size=60)


def check_against_reference(sequence: list[int]) -> None:
    engine, holdings, reference = MatchingEngine(), MemoryHoldings(), Reference()
    log: list[tuple[int, int, Issue | Buy | Sell | Cancel]] = []  # every accepted event, to replay
    arrival, now = 1, 1_000
    arrivals: list[int] = []
    issued: list[Issue] = []
    for value in sequence:
        now = max(0, now + STEPS[value % len(STEPS)])
        event = decode(value // len(STEPS), now, arrivals, issued)
        if isinstance(event, Issue):
            issued.append(event)
            lot_id = "%d.0" % arrival
            holdings.add(event.account, lot_id, event.place, event.type, event.slot, event.grams, event.site)
            reference.issue(event.account, lot_id, event.place, event.type, event.slot, event.grams, event.site)
            log.append((arrival, now, event))
            arrival += 1
            continue
        expected = reference.apply(arrival, now, event)
        got = run_engine(engine, holdings, arrival, now, event)
        assert got == expected, (arrival, event)
        if expected[0] != "refused":
            log.append((arrival, now, event))
            arrivals.append(arrival)
            arrival += 1 + (arrival % 3 == 0)  # other leaves come in between sometimes
        assert [(entry.order, entry.grams_left) for entry in engine.book()] == reference.book()
    assert holdings.snapshot() == reference.holdings()
    # The same accepted events, replayed into a new engine, give the same results and book.
    replayed, replay_holdings = MatchingEngine(), MemoryHoldings()
    first = list(replay(replayed, replay_holdings, log))
    assert first == list(replay(MatchingEngine(), MemoryHoldings(), log))
    assert all(result[0] != "refused" for result in first)
    assert replayed.book() == engine.book()
    assert replay_holdings.snapshot() == holdings.snapshot()


def replay(
    engine: MatchingEngine, holdings: MemoryHoldings, log: list[tuple[int, int, Issue | Buy | Sell | Cancel]]
) -> Iterator[tuple[object, ...]]:
    for arrival, now, event in log:
        if isinstance(event, Issue):
            holdings.add(event.account, "%d.0" % arrival, event.place, event.type, event.slot, event.grams, event.site)
            continue
        yield run_engine(engine, holdings, arrival, now, event)


@contextmanager
def tiny_indices() -> Iterator[None]:
    """Every fallback path: the walk over all sells, widened buy buckets, and a rebuild after each removal."""
    with (
        mock.patch.object(matching, "KEY_MERGE_LIMIT", 1),
        mock.patch.object(matching, "ANCHOR_LIMIT", 1),
        mock.patch.object(matching, "COMPACT_MIN", 0),
    ):
        yield


relaxed = functools.partial(settings, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@relaxed(max_examples=4000)
@given(sequences)
def test_engine_agrees_with_reference(sequence: list[int]) -> None:
    check_against_reference(sequence)


@relaxed(max_examples=2000)
@given(sequences)
def test_engine_agrees_with_reference_through_fallback_indices(sequence: list[int]) -> None:
    with tiny_indices():
        check_against_reference(sequence)


# ------------------------------------------------------------------ one rule at a time

SLOT0 = BASE
SLOT1 = BASE + SLOT_S
SLOT2 = BASE + 2 * SLOT_S


class Market:
    """An engine and its in-memory holdings, with arrivals and times handed out in order."""

    def __init__(self) -> None:
        self.engine = MatchingEngine()
        self.holdings = MemoryHoldings()
        self.arrival = 0
        self.now = 1_000

    def issue(self, account: str, place: str, type_path: str, slot: int, grams: int, site: str = "") -> str:
        self.arrival += 1
        lot_id = "%d.0" % self.arrival
        self.holdings.add(account, lot_id, place, type_path, slot, grams, site)
        return lot_id

    def place(self, order: Buy | Sell, at: int | None = None) -> Placed:
        self.arrival += 1
        result = self.engine.order(self.arrival, self.now if at is None else at, order, self.holdings)
        self.holdings.settle(result.trades)
        return result

    def cancel(self, account: str, order: int) -> Cancelled:
        self.arrival += 1
        return self.engine.cancel(self.arrival, self.now, Cancel(account, order))

    def book(self) -> list[tuple[int, str, int]]:
        return [(entry.order, entry.side, entry.grams_left) for entry in self.engine.book()]


def sell(account: str = "seller-a", grams: int = 100, price: int = 300, **kw: object) -> Sell:
    return Sell(
        account,
        str(kw.get("place", "Japan/Tokyo/Nerima")),
        str(kw.get("type", "solar")),
        grams,
        price,
        kw.get("expires_s"),  # type: ignore[arg-type]
        bool(kw.get("disclosed", True)),
        str(kw.get("site", "")),
    )


def pairs(result: Placed) -> list[tuple[int, int, int, int]]:
    return [(t.buy, t.sell, t.grams, t.price) for t in result.trades]


def stocked(*sellers: str, grams: int = 1000, place: str = "Japan/Tokyo/Nerima", type_path: str = "solar") -> Market:
    market = Market()
    for account in sellers:
        market.issue(account, place, type_path, SLOT0, grams)
    return market


def test_eligibility_comes_before_price() -> None:
    """(1) The cheaper sell of a seller the buyer did not name is passed over for a dearer eligible one."""
    market = stocked("seller-a", "seller-b")
    cheap = market.place(sell("seller-a", price=100)).order
    dear = market.place(sell("seller-b", price=300)).order
    buy = market.place(Buy("buyer-x", 50, 400, sellers=frozenset({"seller-b"})))
    assert pairs(buy) == [(buy.order, dear, 50, 300)]
    assert (cheap, "sell", 100) in market.book()


def test_best_price_then_earliest() -> None:
    """(2) The lowest sell first, and between equal prices the earliest."""
    market = stocked("seller-a", "seller-b", "seller-c")
    first = market.place(sell("seller-a", grams=10, price=200)).order
    second = market.place(sell("seller-b", grams=10, price=200)).order
    late_cheap = market.place(sell("seller-c", grams=10, price=150)).order
    buy = market.place(Buy("buyer-x", 30, 500))
    assert pairs(buy) == [(buy.order, late_cheap, 10, 150), (buy.order, first, 10, 200), (buy.order, second, 10, 200)]
    # The other side: the highest buy first, then the earliest.
    market.issue("seller-d", "Japan/Tokyo/Nerima", "solar", SLOT0, 100)
    low = market.place(Buy("buyer-x", 10, 300)).order
    high_first = market.place(Buy("buyer-y", 10, 400)).order
    high_second = market.place(Buy("buyer-z", 10, 400)).order
    incoming = market.place(sell("seller-d", grams=30, price=250))
    assert pairs(incoming) == [
        (high_first, incoming.order, 10, 400),
        (high_second, incoming.order, 10, 400),
        (low, incoming.order, 10, 300),
    ]


def test_trade_at_the_resting_price_and_exact_amount() -> None:
    """(3) The resting order's price; the amount is grams × price in 1/100,000 yen, never rounded."""
    market = stocked("seller-a")
    resting_sell = market.place(sell(grams=7, price=333)).order
    buy = market.place(Buy("buyer-x", 7, 999))
    assert pairs(buy) == [(buy.order, resting_sell, 7, 333)]
    assert buy.trades[0].amount_due == 7 * 333  # 7 g at 3.33 yen/kg = 0.02331 yen
    resting_buy = market.place(Buy("buyer-x", 5, 800)).order
    incoming = market.place(sell(grams=5, price=100))
    assert pairs(incoming) == [(resting_buy, incoming.order, 5, 800)]


def test_partial_fill_then_rest() -> None:
    """(3) An incoming order takes what it can, then rests with the remainder; a partly filled order keeps its place."""
    market = stocked("seller-a", "seller-b")
    small = market.place(sell("seller-a", grams=30, price=300)).order
    buy = market.place(Buy("buyer-x", 100, 300))
    assert pairs(buy) == [(buy.order, small, 30, 300)]
    assert buy.grams_left == 70 and buy.grams_filled == 30
    assert market.book() == [(buy.order, "buy", 70)]
    later = market.place(Buy("buyer-y", 50, 300)).order
    incoming = market.place(sell("seller-b", grams=80, price=300))
    assert pairs(incoming) == [(buy.order, incoming.order, 70, 300), (later, incoming.order, 10, 300)]
    assert market.book() == [(later, "buy", 40)]


def test_no_self_trade() -> None:
    """(1) The accounts differ: an account's own sell is passed over, and both orders rest."""
    market = stocked("trader-a", "seller-b")
    own = market.place(sell("trader-a", price=100)).order
    other = market.place(sell("seller-b", grams=10, price=200)).order
    buy = market.place(Buy("trader-a", 50, 500))
    assert pairs(buy) == [(buy.order, other, 10, 200)]
    assert market.book() == [(own, "sell", 100), (buy.order, "buy", 40)]


def test_crossed_but_ineligible_pair_both_rest() -> None:
    """(4) A buy for wind and a solar sell below its price: both rest, whichever arrives first."""
    market = stocked("seller-a")
    buy = market.place(Buy("buyer-x", 50, 500, types=frozenset({"wind"}))).order
    offer = market.place(sell(price=100))
    assert offer.trades == ()
    later = market.place(Buy("buyer-y", 10, 500, types=frozenset({"wind"})))
    assert later.trades == ()
    assert market.book() == [(buy, "buy", 50), (offer.order, "sell", 100), (later.order, "buy", 10)]


def test_places_and_types_match_whole_segments() -> None:
    """SPEC §8: ``Japan/Tokyo`` matches ``Japan/Tokyo/Nerima`` and ``Japan/Tokyo``, never ``Japan/Tokyo2``."""
    assert path_under("Japan/Tokyo", "Japan/Tokyo/Nerima")
    assert path_under("Japan/Tokyo", "Japan/Tokyo")
    assert not path_under("Japan/Tokyo", "Japan/Tokyo2")
    assert not path_under("Japan/Tokyo/Nerima", "Japan/Tokyo")
    market = Market()
    for place in ("Japan/Tokyo2", "Japan/Tokyo2/Chuo", "Japan/Tokyo/Nerima"):
        market.issue("seller-a", place, "solar", SLOT0, 10)
    market.issue("seller-a", "Japan/Tokyo", "solar/roof", SLOT0, 10)
    market.issue("seller-a", "Japan/Tokyo", "solarium", SLOT0, 10)
    tokyo2 = market.place(sell(grams=10, price=100, place="Japan/Tokyo2")).order
    chuo = market.place(sell(grams=10, price=100, place="Japan/Tokyo2/Chuo")).order
    nerima = market.place(sell(grams=10, price=200, place="Japan/Tokyo/Nerima")).order
    roof = market.place(sell(grams=10, price=200, place="Japan/Tokyo", type="solar/roof")).order
    solarium = market.place(sell(grams=10, price=100, place="Japan/Tokyo", type="solarium")).order
    buy = market.place(Buy("buyer-x", 100, 500, places=frozenset({"Japan/Tokyo"}), types=frozenset({"solar"})))
    assert pairs(buy) == [(buy.order, nerima, 10, 200), (buy.order, roof, 10, 200)]
    assert [o for o, side, _ in market.book() if side == "sell"] == [tokyo2, chuo, solarium]
    # And from the sell's side, into a resting buy.
    market.issue("seller-b", "Japan/Tokyo2", "solar", SLOT0, 10)
    market.issue("seller-b", "Japan/Tokyo/Nerima", "solar", SLOT0, 10)
    assert market.place(sell("seller-b", grams=10, price=100, place="Japan/Tokyo2")).trades == ()
    into = market.place(sell("seller-b", grams=10, price=100, place="Japan/Tokyo/Nerima"))
    assert pairs(into) == [(buy.order, into.order, 10, 500)]


def test_seller_condition_never_matches_an_undisclosed_seller() -> None:
    """SPEC §8: naming the seller does not reach an undisclosed one; a buy without a seller condition does."""
    market = stocked("hidden-a")
    hidden = market.place(sell("hidden-a", grams=20, price=100, disclosed=False)).order
    named = market.place(Buy("buyer-x", 10, 500, sellers=frozenset({"hidden-a"})))
    assert named.trades == ()
    anyone = market.place(Buy("buyer-y", 10, 500, places=frozenset({"Japan"})))
    assert pairs(anyone) == [(anyone.order, hidden, 10, 100)]
    # The resting named buy stays unmatched by the undisclosed seller's next sell as well.
    market.issue("hidden-a", "Japan/Tokyo/Nerima", "wind", SLOT0, 10)
    assert market.place(sell("hidden-a", grams=10, price=100, type="wind", disclosed=False)).trades == ()
    assert (named.order, "buy", 10) in market.book()


def test_a_sell_never_offers_more_than_its_seller_holds() -> None:
    """SPEC §9: a 100 g sell of a seller holding 40 g trades 40 g, rests, and trades again once more is issued."""
    market = Market()
    market.issue("seller-a", "Japan/Tokyo/Nerima", "solar", SLOT0, 40)
    offer = market.place(sell(grams=100, price=100)).order
    buy = market.place(Buy("buyer-x", 100, 200))
    assert pairs(buy) == [(buy.order, offer, 40, 100)]
    assert market.book() == [(offer, "sell", 60), (buy.order, "buy", 60)]
    # Two sells of the same seller share its holdings; nothing is held now, so a new buy rests.
    second = market.place(sell(grams=50, price=90)).order
    assert market.place(Buy("buyer-y", 10, 200)).trades == ()
    lot = market.issue("seller-a", "Japan/Tokyo/Nerima", "solar", SLOT1, 25)
    incoming = market.place(Buy("buyer-z", 100, 200))
    assert pairs(incoming) == [(incoming.order, second, 25, 90)]
    assert incoming.trades[0].lots == ((lot, 25),)
    assert market.holdings.total("seller-a") == 0


def test_a_sell_with_a_site_takes_only_that_sites_lots() -> None:
    """SPEC §9, the controller as bidder: a site's sell never takes the owner's lots of another site."""
    market = Market()
    other = market.issue("owner-a", "Japan/Tokyo/Nerima", "solar", SLOT0, 70, "roof-west")
    own = market.issue("owner-a", "Japan/Tokyo/Nerima", "solar", SLOT1, 30, "roof-east")
    controller = market.place(sell("owner-a", grams=100, price=100, site="roof-east")).order
    buy = market.place(Buy("buyer-x", 30, 200))
    assert pairs(buy) == [(buy.order, controller, 30, 100)]
    assert buy.trades[0].lots == ((own, 30),)
    # The cheaper controller's sell still rests, but its site holds nothing now: the owner's
    # own sell (no site) gives the other site's lots.
    owner = market.place(sell("owner-a", grams=100, price=150)).order
    incoming = market.place(Buy("buyer-y", 200, 200))
    assert pairs(incoming) == [(incoming.order, owner, 70, 150)]
    assert incoming.trades[0].lots == ((other, 70),)
    assert market.holdings.total("owner-a") == 0
    assert (controller, "sell", 70) in market.book()


def test_sells_with_and_without_a_site_share_the_sellers_lots_in_one_event() -> None:
    market = Market()
    market.issue("owner-a", "Japan/Tokyo/Nerima", "solar", SLOT0, 40, "roof-east")
    by_site = market.place(sell("owner-a", grams=40, price=100, site="roof-east")).order
    by_owner = market.place(sell("owner-a", grams=40, price=110)).order
    incoming = market.place(Buy("buyer-x", 80, 200))
    assert pairs(incoming) == [(incoming.order, by_site, 40, 100)]
    assert market.book() == [(by_owner, "sell", 40), (incoming.order, "buy", 40)]


def test_slot_window_takes_only_lots_inside_it_oldest_first() -> None:
    """A window (from, to) takes the lots whose whole slot (S, S+1800] lies inside it, oldest slot first."""
    market = Market()
    early = market.issue("seller-a", "Japan/Tokyo/Nerima", "solar", SLOT0, 10)
    middle = market.issue("seller-a", "Japan/Tokyo/Nerima", "solar", SLOT1, 10)
    late = market.issue("seller-a", "Japan/Tokyo/Nerima", "solar", SLOT2, 10)
    offer = market.place(sell(grams=30, price=100)).order
    # Ends at SLOT2 + 1799: the last slot is not wholly inside.
    windowed = market.place(Buy("buyer-x", 30, 100, slot_from_s=SLOT1, slot_to_s=SLOT2 + SLOT_S - 1))
    assert pairs(windowed) == [(windowed.order, offer, 10, 100)]
    assert windowed.trades[0].lots == ((middle, 10),)
    open_end = market.place(Buy("buyer-y", 5, 100, slot_from_s=SLOT1))
    assert open_end.trades[0].lots == ((late, 5),)
    anything = market.place(Buy("buyer-z", 15, 100))
    assert anything.trades[0].lots == ((early, 10), (late, 5))
    # A resting windowed buy, met by a sell of lots outside its window, stays resting.
    market.issue("seller-b", "Japan/Osaka", "wind", SLOT0, 10)
    assert market.place(sell("seller-b", grams=10, price=50, place="Japan/Osaka", type="wind")).trades == ()
    assert (windowed.order, "buy", 20) in market.book()
    with pytest.raises(OrderRefused) as refused:
        market.place(Buy("buyer-x", 1, 100, slot_from_s=SLOT1, slot_to_s=SLOT1 + 60))
    assert refused.value.reason == "BAD_ORDER"


def test_cancel_only_by_the_orders_own_account() -> None:
    market = stocked("seller-a")
    offer = market.place(sell(grams=10, price=100)).order
    before = market.book()
    with pytest.raises(OrderRefused) as refused:
        market.cancel("intruder-z", offer)
    assert refused.value.reason == "NOT_OWNER"
    assert isinstance(refused.value, Refused)
    assert "only by the account that placed it" in str(refused.value)
    assert market.book() == before
    done = market.cancel("seller-a", offer)
    assert (done.order, done.grams_left) == (offer, 10)
    assert market.book() == []
    with pytest.raises(OrderRefused) as again:
        market.cancel("seller-a", offer)
    assert again.value.reason == "NOT_RESTING"


def test_expiry() -> None:
    """An expired order neither matches nor rests; it is dropped at the first event at or after its expiry."""
    market = stocked("seller-a", "seller-b")
    market.now = 1_000
    short = market.place(sell("seller-a", grams=10, price=100, expires_s=1_060)).order
    lasting = market.place(sell("seller-b", grams=10, price=200)).order
    market.now = 1_060
    buy = market.place(Buy("buyer-x", 20, 500))
    assert buy.expired == (short,)
    assert pairs(buy) == [(buy.order, lasting, 10, 200)]
    with pytest.raises(OrderRefused) as refused:
        market.place(Buy("buyer-x", 5, 500, expires_s=1_060))
    assert refused.value.reason == "EXPIRED"
    with pytest.raises(OrderRefused) as gone:
        market.cancel("seller-a", short)
    assert gone.value.reason == "NOT_RESTING"
    # Expiry without an order: expire() drops them and uses up no arrival number.
    timed = market.place(Buy("buyer-y", 5, 1, expires_s=2_000)).order
    assert market.engine.expire(1_999) == ()
    assert market.engine.expire(2_000) == (timed,)
    assert (timed, "buy", 5) not in market.book()


def test_engine_misuse_is_not_a_refusal() -> None:
    market = stocked("seller-a")
    market.place(sell(grams=10, price=100))
    with pytest.raises(EngineMisuse) as out_of_order:
        market.engine.order(market.arrival, 2_000, Buy("buyer-x", 1, 100), market.holdings)
    assert out_of_order.value.reason == "ARRIVAL"
    assert not isinstance(out_of_order.value, Refused)

    class Shuffled:
        def lots(self, account: str, place: str, type_path: str) -> list[tuple[str, int, int, str]]:
            return [("9.0", SLOT1, 5, ""), ("8.0", SLOT0, 5, "")]

    with pytest.raises(EngineMisuse) as bad:
        market.engine.order(market.arrival + 1, 2_000, Buy("buyer-x", 1, 100), Shuffled())
    assert bad.value.reason == "HOLDINGS"
    with pytest.raises(EngineMisuse) as broken:
        market.engine.order(market.arrival + 2, 2_000, Buy("buyer-x", 1, 100), market.holdings)
    assert broken.value.reason == "BROKEN"


def test_malformed_orders_are_refused_and_change_nothing() -> None:
    market = stocked("seller-a")
    market.place(sell(grams=10, price=100))
    before = market.book()
    for bad in (
        Buy("buyer-x", 0, 100),
        Buy("buyer-x", 5, 0),
        Buy("buyer-x", 5, 100, places=frozenset({"Japan/"})),
        Buy("buyer-x", 5, 100, sellers=frozenset({"X"})),
        Sell("seller-a", "Japan//Tokyo", "solar", 5, 100),
        Sell("seller-a", "Japan", "solar", 5, 100, expires_s=-1),
        Buy("buyer-x", MAX_GRAMS, 1 << 20),  # an amount beyond the trade leaf's 64 bits
    ):
        with pytest.raises(OrderRefused) as refused:
            market.engine.order(market.arrival + 1, market.now, bad, market.holdings)
        assert refused.value.reason == "BAD_ORDER"
    assert market.book() == before
    # The refused events used no arrival: the next one takes the same number.
    assert market.place(Buy("buyer-x", 5, 100)).order == market.arrival
