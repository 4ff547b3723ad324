"""The market's matching engine (SPEC §9): orders in their order of arrival go in, trades come out.

Like h11's state machine, the engine is a pure function of the ledger's order
of arrival. It reads no clock, opens no database and does no I/O. Each event
brings its arrival number, which is the ledger leaf index it will get, and
its time. Feeding the same events to a new engine, against the same
holdings, gives the same trades and the same book.

Units:

- grams: whole grams of CO2 (SPEC §8);
- prices: integers in 1/100 yen per kg-CO2, as ``--price`` takes them;
- ``Trade.amount_due``: grams × price, kept exact as an integer in
  **1/100,000 yen**, since 1/100 yen per kg is 1/100,000 yen per gram. The
  daily statement sums these and rounds once, to whole yen.

Holdings. The engine keeps no holdings. Each order event reads the
seller's lots through a ``Holdings`` object, which is read-only to the
engine and returns ``lots(account, place, type)`` oldest slot first, each
lot with the site it was issued at (a sell with a site takes only those). During
the event the engine subtracts what its own trades have already taken, and
every ``Trade`` carries the lots and grams it took (oldest slot first) so
that settlement can move them. **The caller applies each event's trades to
its holdings before the next event** (``MemoryHoldings.settle`` does this
for the in-memory holdings). So a sell order never offers more than its
seller holds at the moment of a trade. A sell rests even while its seller
holds nothing of its place and type, and it trades again once lots arrive.

Matching (SPEC §9), for an incoming order against the resting orders of the
other side:

(1) A resting order is **eligible** when the buy's conditions hold for the
    sell's seller, place and type, the prices cross (sell minimum ≤ buy
    maximum), and the accounts differ. A seller condition never matches an
    undisclosed seller. A place or type condition matches its path and every
    path below it, compared whole segment by whole segment.
(2) Eligible orders are taken best price first (the lowest sell, the highest
    buy), then the earliest arrival.
(3) Each trade is at the **resting** order's price. Its grams are the
    smallest of the two remaining quantities and the seller's grams held in
    the buy's slot window. The incoming order then goes on to the next
    eligible order, and rests with whatever remains.
(4) A crossed but ineligible pair, or a sell whose seller holds nothing in
    the buy's window, stays resting on both sides.

Slot window. A buy may name ``slot_from_s`` and ``slot_to_s``, and either
may be left open. A lot of slot (S, S+1800] is inside the window when
``slot_from_s <= S`` and ``S + 1800 <= slot_to_s``.

Time and expiry. An order with ``expires_s`` is live while the event time is
before ``expires_s``. At each event, before anything else, the engine drops
the resting orders that have expired; the result lists them in ``expired``.
An order that comes in already expired is refused. The engine's time never
goes back: an event time earlier than the last one counts as the last one.

Indexing, so that an incoming order looks only at the orders that could
match it:

- Resting sells sit in one price-time heap per ``(seller, disclosed, place,
  type)``, and in one heap of all sells. Each sell key is indexed by its seller
  and by every prefix of its place and of its type. A buy with conditions
  finds its candidate keys through the smallest of these indices, and then
  merges those keys' heaps, or walks the heap of all sells if the candidates
  are too many to merge. A buy without conditions walks the heap of all sells.
  The candidate keys of each set of conditions are kept until a sell key
  appears or goes.
- Resting buys sit in buckets ``seller → place → type`` under each
  combination of their conditions, where "any" is the empty seller and the
  empty path. An incoming sell looks up its own seller and "any", then every
  prefix of its place and of its type. It merges the heaps it finds, and
  nothing else. Finding a buy there already proves that its conditions hold,
  unless it has too many combinations and sits under a wider bucket.
- Orders that are filled, cancelled or expired are marked dead and popped
  lazily. When dead entries outnumber the live orders, the heaps are rebuilt.

Errors::

    crev_market.MarketError
     +-- MatchingError
          +-- OrderRefused    a participant's order or cancel is refused, and the engine is
          |                   unchanged. ``reason``: BAD_ORDER, EXPIRED, NOT_RESTING,
          |                   NOT_OWNER. It is also a ``crev_market.Refused``: one line, exit 2.
          +-- EngineMisuse    the caller broke the engine's contract. ``reason``: ARRIVAL
                              (arrival numbers not strictly increasing), TIME (not an unsigned
                              integer), HOLDINGS (malformed lots, or lots not oldest slot first),
                              BROKEN (an earlier event failed half-way, so rebuild the engine
                              by replaying the ledger).

Trades are never errors: every event that is accepted returns its trades in
a result.
"""

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from typing import Protocol

from crev.reading import valid_device_id as _valid_id
from crev.registry_format import MAX_GRAMS, SLOT_S
from crev.registry_format import path_problem as _path_problem
from crev_market import MarketError, Refused

MAX_PRICE = 1 << 40  # 1/100 yen per kg: far beyond any price
# A trade's amount is at most one of its orders' grams × price. Each order keeps that within
# the 64-bit unsigned integers of the ledger's CBOR (SPEC §3 profile).
MAX_AMOUNT = (1 << 64) - 1
MAX_CONDITIONS = 64  # members of one condition set
KEY_MERGE_LIMIT = 64  # a conditional buy with more candidate sell keys walks the heap of all sells
ANCHOR_LIMIT = 16  # buckets one resting buy sits in, at most
CANDIDATE_CACHE = 4096  # conditions whose candidate sell keys are remembered
COMPACT_MIN = 1024  # dead heap entries tolerated before a rebuild is considered

BUY = "buy"
SELL = "sell"

Lot = tuple[str, int, int, str]
"""``(lot id "ISSUANCE.INDEX", slot start S in unix seconds, grams held, site)``."""

_Segments = tuple[str, ...]
_SellKey = tuple[str, bool, str, str, str]  # seller, disclosed, place, type, site ("" any)
_Window = tuple[int | None, int | None]
_Anchor = tuple[str, _Segments, _Segments]
_Conditions = tuple[frozenset[str], tuple[_Segments, ...], tuple[_Segments, ...]]
_ANY_SELLER = ""  # never an account id (SPEC §3 ids have 3..63 characters)
_ANY_PATH: _Segments = ()


# ------------------------------------------------------------------ errors


class MatchingError(MarketError):
    """Base class of the matching engine's errors."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class OrderRefused(MatchingError, Refused):
    """A participant's order or cancel is refused, and the engine is left exactly as it was."""


class EngineMisuse(MatchingError):
    """The caller broke the engine's contract. This is a bug in the caller, never a participant's mistake."""


# ------------------------------------------------------------------ orders and results


def _frozen(value: object) -> object:
    return frozenset(value) if isinstance(value, set | list | tuple) else value


@dataclass(frozen=True, slots=True)
class Sell:
    """A sell order: up to ``grams`` of the seller's lots of one place and one type (exact paths).

    ``disclosed`` is the seller account's disclosure (SPEC §8). The caller
    copies it from the account when the order arrives. ``site``, when set,
    restricts the sell to lots issued at that site.
    """

    account: str
    place: str
    type: str
    grams: int
    min_price: int  # 1/100 yen per kg
    expires_s: int | None = None
    disclosed: bool = True
    site: str = ""  # only lots of this site (a controller's sell, SPEC §9); "" takes any of the seller's


@dataclass(frozen=True, slots=True)
class Buy:
    """A buy order: up to ``grams`` at ``max_price`` or less, from lots that meet every condition.

    Each condition is a set in which any one matching member is enough, and
    an empty set means "any". ``places`` and ``types`` match their paths and
    every path below them. The slot window takes only lots whose whole slot
    lies inside it, and either end may be left open.
    """

    account: str
    grams: int
    max_price: int  # 1/100 yen per kg
    sellers: frozenset[str] = frozenset()
    places: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    slot_from_s: int | None = None
    slot_to_s: int | None = None
    expires_s: int | None = None

    def __post_init__(self) -> None:
        for name in ("sellers", "places", "types"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))


@dataclass(frozen=True, slots=True)
class Cancel:
    """A cancel of resting order ``order`` (its arrival number), by the account that placed it."""

    account: str
    order: int


Order = Buy | Sell
Event = Buy | Sell | Cancel


@dataclass(frozen=True, slots=True)
class Trade:
    """One execution (SPEC §9 settlement): the two orders, grams, price, the lots taken, and the amount due.

    ``lots`` holds ``(lot id, grams)`` in the order they were taken, oldest slot
    first. The seller gives them and the buyer receives them.
    ``amount_due`` = grams × price, in 1/100,000 yen.
    """

    buy: int
    sell: int
    buyer: str
    seller: str
    place: str
    type: str
    grams: int
    price: int
    lots: tuple[tuple[str, int], ...]
    amount_due: int


@dataclass(frozen=True, slots=True)
class Placed:
    """An accepted order. ``grams_left`` is what now rests on the book, and 0 when the order was filled."""

    order: int
    trades: tuple[Trade, ...]
    grams_left: int
    expired: tuple[int, ...] = ()  # resting orders that expired at this event's time, dropped first

    @property
    def grams_filled(self) -> int:
        return sum(trade.grams for trade in self.trades)


@dataclass(frozen=True, slots=True)
class Cancelled:
    """An accepted cancel of ``order``, which had ``grams_left`` still resting."""

    cancel: int
    order: int
    grams_left: int
    expired: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BookEntry:
    """A resting order. ``spec`` is the order as it was placed."""

    order: int
    side: str
    account: str
    grams_left: int
    price: int
    spec: Order


# ------------------------------------------------------------------ paths


def segments(path: str) -> _Segments:
    return tuple(path.split("/"))


def path_under(condition: str, path: str) -> bool:
    """SPEC §8: ``condition`` matches ``path`` and every path below it, whole segment by segment.

    ``path_under("Japan/Tokyo", "Japan/Tokyo/Nerima")`` is True.
    ``path_under("Japan/Tokyo", "Japan/Tokyo2")`` is False.
    """
    cond = segments(condition)
    return segments(path)[: len(cond)] == cond


def _under_any(conditions: tuple[_Segments, ...], path: _Segments) -> bool:
    return any(path[: len(cond)] == cond for cond in conditions)


# ------------------------------------------------------------------ holdings


class Holdings(Protocol):
    """What the engine needs to know of holdings. It only reads them and never changes them."""

    def lots(self, account: str, place: str, type_path: str) -> Sequence[Lot]:
        """The account's lots of exactly this place and type with grams > 0, oldest slot first."""
        ...


class MemoryHoldings:
    """Holdings kept in memory, for replays, tests and benchmarks.

    ``add`` issues a lot to an account, and ``settle`` applies trades. Among
    lots of the same slot, the one added first comes first.
    """

    def __init__(self) -> None:
        self._meta: dict[str, tuple[str, str, int, int, str]] = {}  # lot id: place, type, slot, sequence, site
        self._held: dict[tuple[str, str, str], dict[str, int]] = {}
        self._sorted: dict[tuple[str, str, str], list[Lot]] = {}

    def add(
        self, account: str, lot_id: str, place: str, type_path: str, slot_s: int, grams: int, site: str = ""
    ) -> None:
        meta = self._meta.get(lot_id)
        if meta is None:
            meta = self._meta[lot_id] = (place, type_path, slot_s, len(self._meta), site)
        elif (meta[0], meta[1], meta[2], meta[4]) != (place, type_path, slot_s, site):
            raise ValueError("lot %s was added before with another place, type, slot or site" % lot_id)
        self._move(account, lot_id, grams)

    def _move(self, account: str, lot_id: str, grams: int) -> None:
        place, type_path = self._meta[lot_id][:2]
        key = (account, place, type_path)
        held = self._held.setdefault(key, {})
        now = held.get(lot_id, 0) + grams
        if now < 0:
            raise ValueError("account %s holds %d g of lot %s, less than %d" % (account, now - grams, lot_id, -grams))
        if now:
            held[lot_id] = now
        else:
            held.pop(lot_id, None)
        self._sorted.pop(key, None)

    def lots(self, account: str, place: str, type_path: str) -> list[Lot]:
        key = (account, place, type_path)
        cached = self._sorted.get(key)
        if cached is None:
            held = self._held.get(key, {})
            order = sorted(held, key=lambda lot_id: (self._meta[lot_id][2], self._meta[lot_id][3]))
            meta = self._meta
            cached = self._sorted[key] = [(lot_id, meta[lot_id][2], held[lot_id], meta[lot_id][4]) for lot_id in order]
        return cached

    def settle(self, trades: Iterable[Trade]) -> None:
        """Move each trade's lots from its seller to its buyer."""
        for trade in trades:
            for lot_id, grams in trade.lots:
                self._move(trade.seller, lot_id, -grams)
                self._move(trade.buyer, lot_id, grams)

    def total(self, account: str) -> int:
        return sum(sum(held.values()) for key, held in self._held.items() if key[0] == account)

    def snapshot(self) -> dict[tuple[str, str], int]:
        """``{(account, lot id): grams}`` for every grams > 0."""
        return {(key[0], lot_id): grams for key, held in self._held.items() for lot_id, grams in held.items()}


class _Taking:
    """One event's view of holdings: the holdings minus the grams this event's trades have taken."""

    __slots__ = ("_holdings", "_lots")

    def __init__(self, holdings: Holdings) -> None:
        self._holdings = holdings
        # One list per (seller, place, type), shared by sells with and without a site, so
        # that what one of them takes in this event is gone for the other.
        self._lots: dict[tuple[str, str, str], tuple[list[str], list[int], list[int], list[str]]] = {}

    def _get(self, key: _SellKey) -> tuple[list[str], list[int], list[int], list[str]]:
        base = (key[0], key[2], key[3])
        found = self._lots.get(base)
        if found is None:
            ids: list[str] = []
            slots: list[int] = []
            grams: list[int] = []
            sites: list[str] = []
            last = -1
            for lot in self._holdings.lots(*base):
                if type(lot) is not tuple or len(lot) != 4:
                    raise EngineMisuse("HOLDINGS", "a lot is (lot id, slot, grams, site), not %r" % (lot,))
                lot_id, slot, held, site = lot
                # type() is: a bool is not a slot or a quantity.
                if type(lot_id) is not str or type(slot) is not int or type(held) is not int or type(site) is not str:
                    raise EngineMisuse("HOLDINGS", "a lot is (lot id, slot, grams, site), not %r" % (lot,))
                if held <= 0 or slot < last:
                    raise EngineMisuse("HOLDINGS", "lots come oldest slot first with grams > 0, not %r" % (lot,))
                last = slot
                ids.append(lot_id)
                slots.append(slot)
                grams.append(held)
                sites.append(site)
            found = self._lots[base] = (ids, slots, grams, sites)
        return found

    def available(self, key: _SellKey, window: _Window | None) -> int:
        _ids, slots, grams, sites = self._get(key)
        site = key[4]
        if window is None and not site:
            return sum(grams)
        low, high = window if window is not None else (None, None)
        total = 0
        for i, slot in enumerate(slots):
            if high is not None and slot + SLOT_S > high:
                break  # oldest first: every later lot is later still
            if (low is None or slot >= low) and (not site or sites[i] == site):
                total += grams[i]
        return total

    def take(self, key: _SellKey, window: _Window | None, wanted: int) -> tuple[tuple[str, int], ...]:
        """Take ``wanted`` grams, oldest slot first, from lots inside ``window``; the caller checked they are there."""
        ids, slots, grams, sites = self._get(key)
        site = key[4]
        taken = []
        for i, slot in enumerate(slots):
            if not wanted:
                break
            if not grams[i] or (window is not None and not _in_window(slot, window)) or (site and sites[i] != site):
                continue
            part = min(wanted, grams[i])
            grams[i] -= part
            wanted -= part
            taken.append((ids[i], part))
        return tuple(taken)


def _in_window(slot: int, window: _Window) -> bool:
    low, high = window
    return (low is None or slot >= low) and (high is None or slot + SLOT_S <= high)


# ------------------------------------------------------------------ resting orders and heaps


class _Resting:
    __slots__ = (
        "account",
        "anchors",
        "conds",
        "exact",
        "expires_s",
        "is_buy",
        "key",
        "left",
        "live",
        "order_id",
        "price",
        "spec",
        "window",
    )

    def __init__(self, order_id: int, spec: Order, left: int) -> None:
        self.order_id = order_id
        self.spec = spec
        self.account = spec.account
        self.is_buy = isinstance(spec, Buy)
        self.price = spec.max_price if isinstance(spec, Buy) else spec.min_price
        self.expires_s = spec.expires_s
        self.left = left
        self.live = True
        self.key: _SellKey = ("", True, "", "", "")
        self.conds: _Conditions = (frozenset(), (), ())
        self.window: _Window | None = None
        self.anchors: list[_Anchor] = []
        self.exact = True  # a buy's buckets are its conditions, not widened: being in one is being eligible


# (sort key, arrival, order). For sells the sort key is the price, for buys minus the price.
# Arrival numbers are unique, so a comparison never reaches the order itself.
_Entry = tuple[int, int, _Resting]


class _Walk:
    """Pops the entries of several heaps in one sorted order, and puts back the ones kept when closed."""

    __slots__ = ("aside", "dropped", "front", "heaps")

    def __init__(self, heaps: list[list[_Entry]], bound: int) -> None:
        self.heaps = heaps
        # A heap whose head sorts after the bound holds nothing that crosses.
        self.front = [(h[0][0], h[0][1], i) for i, h in enumerate(heaps) if h and h[0][0] <= bound]
        heapify(self.front)
        self.aside: list[tuple[int, _Entry]] = []
        self.dropped: set[int] = set()

    def next(self) -> tuple[int, _Entry] | None:
        front = self.front
        while front:
            i = heappop(front)[2]
            if i in self.dropped:
                continue
            heap = self.heaps[i]
            entry = heappop(heap)
            if heap:
                heappush(front, (heap[0][0], heap[0][1], i))
            return i, entry
        return None

    def keep(self, i: int, entry: _Entry) -> None:
        self.aside.append((i, entry))

    def drop(self, i: int) -> None:
        """Stop walking heap ``i``: its remaining entries are all ineligible."""
        self.dropped.add(i)

    def close(self) -> None:
        for i, entry in self.aside:
            heappush(self.heaps[i], entry)
        self.aside = []


# ------------------------------------------------------------------ validation


# Accounts and paths recur in order after order, so each distinct text is checked once.
_valid_text_id = functools.lru_cache(maxsize=8192)(_valid_id)
_text_path_problem = functools.lru_cache(maxsize=8192)(_path_problem)


def valid_device_id(value: object) -> bool:
    return isinstance(value, str) and _valid_text_id(value)


def path_problem(value: object) -> str | None:
    return _text_path_problem(value) if isinstance(value, str) else _path_problem(value)


def _uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _quantity_problem(grams: object, price: object) -> str | None:
    if not _uint(grams) or not 0 < grams <= MAX_GRAMS:  # type: ignore[operator]
        return "grams must be a whole number from 1 to %d" % MAX_GRAMS
    if not _uint(price) or not 0 < price <= MAX_PRICE:  # type: ignore[operator]
        return "the price must be a positive whole number of 1/100 yen per kg"
    if grams * price > MAX_AMOUNT:  # type: ignore[operator]
        return "grams × price is beyond the 64 bits a trade's amount is recorded in"
    return None


def _common_problem(order: Order) -> str | None:
    if not valid_device_id(order.account):
        return "account %r is not an id (3-63 of a-z, 0-9 and '-')" % (order.account,)
    if order.expires_s is not None and not _uint(order.expires_s):
        return "expires must be unix seconds"
    return None


def _sell_problem(sell: Sell) -> str | None:
    problem = _common_problem(sell) or _quantity_problem(sell.grams, sell.min_price)
    if problem:
        return problem
    for what, path in (("place", sell.place), ("type", sell.type)):
        problem = path_problem(path)
        if problem:
            return "%s: %s" % (what, problem)
    if sell.disclosed is not True and sell.disclosed is not False:
        return "disclosed must be true or false"
    if sell.site != "" and not valid_device_id(sell.site):
        return "site must be a site id or empty"
    return None


def _buy_problem(buy: Buy) -> str | None:
    problem = _common_problem(buy) or _quantity_problem(buy.grams, buy.max_price)
    if problem:
        return problem
    for what in ("sellers", "places", "types"):
        members = getattr(buy, what)
        if not isinstance(members, frozenset):
            return "%s must be a set" % what
        if len(members) > MAX_CONDITIONS:
            return "%s names at most %d members" % (what, MAX_CONDITIONS)
        for member in members:
            if what == "sellers":
                if not valid_device_id(member):
                    return "seller %r is not an account id" % (member,)
                continue
            problem = path_problem(member)
            if problem:
                return "%s: %s" % (what, problem)
    low, high = buy.slot_from_s, buy.slot_to_s
    if (low is not None and not _uint(low)) or (high is not None and not _uint(high)):
        return "the slot window's ends must be unix seconds"
    if low is not None and high is not None and high - low < SLOT_S:
        return "the slot window (%d, %d) holds no whole 30-minute slot" % (low, high)
    return None


# ------------------------------------------------------------------ the engine


class MatchingEngine:
    """The continuous double auction of SPEC §9, over the events of the ledger in their order of arrival."""

    def __init__(self) -> None:
        self._orders: dict[int, _Resting] = {}
        self._last_arrival = -1
        self._now: int | None = None
        self._broken = False
        self._stale = 0
        self._expiries: list[tuple[int, int, _Resting]] = []
        # Sells: every sell, and one heap per (seller, disclosed, place, type), with that key's indices.
        self._sells: list[_Entry] = []
        self._sell_heaps: dict[_SellKey, list[_Entry]] = {}
        self._sell_live: dict[_SellKey, int] = {}
        self._sell_segments: dict[_SellKey, tuple[_Segments, _Segments]] = {}
        self._keys_by_seller: dict[str, set[_SellKey]] = {}
        self._keys_by_place: dict[_Segments, set[_SellKey]] = {}
        self._keys_by_type: dict[_Segments, set[_SellKey]] = {}
        # A conditional buy's candidate sell keys, kept until a sell key appears or goes.
        self._candidates: dict[_Conditions, tuple[list[_SellKey], set[_SellKey]]] = {}
        # Buys: seller (or any) → place prefix (or any) → type prefix (or any) → heap.
        self._buckets: dict[str, dict[_Segments, dict[_Segments, list[_Entry]]]] = {}
        self._bucket_live: dict[_Anchor, int] = {}

    # ------------------------------------------------------------ events

    def apply(self, arrival: int, now_s: int, event: Event, holdings: Holdings) -> Placed | Cancelled:
        """One event of the ledger: an order or a cancel."""
        if isinstance(event, Cancel):
            return self.cancel(arrival, now_s, event)
        return self.order(arrival, now_s, event, holdings)

    def order(self, arrival: int, now_s: int, order: Order, holdings: Holdings) -> Placed:
        """Match an incoming order, then let what remains rest (SPEC §9).

        Raises OrderRefused, and the engine is then unchanged, when the order
        is malformed or already expired.
        """
        now = self._admit(arrival, now_s)
        if isinstance(order, Sell):
            problem = _sell_problem(order)
        elif isinstance(order, Buy):
            problem = _buy_problem(order)
        else:
            raise OrderRefused("BAD_ORDER", "an order is a Buy or a Sell, not %r" % (order,))
        if problem:
            raise OrderRefused("BAD_ORDER", "order %d: %s" % (arrival, problem))
        if order.expires_s is not None and order.expires_s <= now:
            raise OrderRefused(
                "EXPIRED", "order %d expired at %d, before it arrived at %d" % (arrival, order.expires_s, now)
            )
        self._last_arrival, self._now = arrival, now
        expired = self._sweep(now)
        self._broken = True  # until this event is complete: a failing Holdings would leave it half done
        taking = _Taking(holdings)
        incoming = _Resting(arrival, order, order.grams)
        if isinstance(order, Buy):
            self._prepare_buy(incoming, order)
            trades = self._match_buy(incoming, taking)
        else:
            incoming.key = (order.account, order.disclosed, order.place, order.type, order.site)
            trades = self._match_sell(incoming, order, taking)
        if incoming.left:
            self._rest(incoming)
        self._broken = False
        if self._stale > COMPACT_MIN and self._stale > len(self._orders):
            self._compact()
        return Placed(arrival, tuple(trades), incoming.left, expired)

    def cancel(self, arrival: int, now_s: int, cancel: Cancel) -> Cancelled:
        """Cancel a resting order, and only at the request of the account that placed it."""
        now = self._admit(arrival, now_s)
        if not isinstance(cancel, Cancel) or not valid_device_id(cancel.account) or not _uint(cancel.order):
            raise OrderRefused("BAD_ORDER", "cancel %d: an account id and an order number are needed" % arrival)
        target = self._orders.get(cancel.order)
        if target is None or (target.expires_s is not None and target.expires_s <= now):
            raise OrderRefused(
                "NOT_RESTING", "order %d is not resting: filled, cancelled, expired or never placed" % cancel.order
            )
        if target.account != cancel.account:
            raise OrderRefused(
                "NOT_OWNER",
                "order %d is not an order of account %s: an order is cancelled only by the account that placed it"
                % (cancel.order, cancel.account),
            )
        self._last_arrival, self._now = arrival, now
        expired = self._sweep(now)
        left = target.left
        self._remove(target)
        return Cancelled(arrival, cancel.order, left, expired)

    def expire(self, now_s: int) -> tuple[int, ...]:
        """Drop the resting orders that expired by ``now_s``, and return their numbers. No arrival is used up."""
        now = self._admit(self._last_arrival + 1, now_s)
        self._now = now
        return self._sweep(now)

    # ------------------------------------------------------------ the book

    def book(self) -> list[BookEntry]:
        """The resting orders, in order of arrival."""
        return [
            BookEntry(r.order_id, BUY if r.is_buy else SELL, r.account, r.left, r.price, r.spec)
            for _arrival, r in sorted(self._orders.items())
        ]

    def resting(self, order: int) -> BookEntry | None:
        r = self._orders.get(order)
        if r is None:
            return None
        return BookEntry(r.order_id, BUY if r.is_buy else SELL, r.account, r.left, r.price, r.spec)

    def __len__(self) -> int:
        return len(self._orders)

    # ------------------------------------------------------------ steps

    def _admit(self, arrival: int, now_s: int) -> int:
        if self._broken:
            raise EngineMisuse("BROKEN", "an earlier event failed half-way; rebuild the engine by replaying the ledger")
        if not _uint(arrival) or arrival <= self._last_arrival:
            raise EngineMisuse(
                "ARRIVAL",
                "arrival %r does not follow %d: arrivals are strictly increasing" % (arrival, self._last_arrival),
            )
        if not _uint(now_s):
            raise EngineMisuse("TIME", "the event time must be unix seconds, not %r" % (now_s,))
        return now_s if self._now is None or now_s > self._now else self._now

    def _sweep(self, now: int) -> tuple[int, ...]:
        expired = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            r = heappop(heap)[2]
            if r.live:
                expired.append(r.order_id)
                self._remove(r)
        return tuple(sorted(expired))

    def _prepare_buy(self, r: _Resting, buy: Buy) -> None:
        r.conds = (
            buy.sellers,
            tuple(sorted(segments(p) for p in buy.places)),
            tuple(sorted(segments(t) for t in buy.types)),
        )
        if buy.slot_from_s is not None or buy.slot_to_s is not None:
            r.window = (buy.slot_from_s, buy.slot_to_s)

    def _trade(self, buy: _Resting, sell: _Resting, grams: int, price: int, taking: _Taking) -> Trade:
        key = sell.key
        lots = taking.take(key, buy.window, grams)
        return Trade(
            buy.order_id, sell.order_id, buy.account, sell.account, key[2], key[3], grams, price, lots, grams * price
        )

    def _candidate_keys(self, conds: _Conditions) -> tuple[list[_SellKey], set[_SellKey]]:
        """The sell keys a conditional buy may trade with, found through its most selective condition."""
        cached = self._candidates.get(conds)
        if cached is not None:
            return cached
        sellers, places, types = conds
        pools: list[list[set[_SellKey]]] = []
        if sellers:
            pools.append([self._keys_by_seller[s] for s in sellers if s in self._keys_by_seller])
        if places:
            pools.append([self._keys_by_place[p] for p in places if p in self._keys_by_place])
        if types:
            pools.append([self._keys_by_type[t] for t in types if t in self._keys_by_type])
        smallest = min(pools, key=lambda pool: sum(len(found) for found in pool))
        keys: set[_SellKey] = set()
        for found_keys in smallest:
            keys.update(found_keys)
        chosen = {key for key in keys if _admits(conds, key[0], key[1], *self._sell_segments[key])}
        if len(self._candidates) >= CANDIDATE_CACHE:
            self._candidates.clear()
        cached = self._candidates[conds] = (sorted(chosen), chosen)
        return cached

    def _match_buy(self, buy: _Resting, taking: _Taking) -> list[Trade]:
        trades: list[Trade] = []
        sellers, places, types = buy.conds
        allowed: set[_SellKey] | None = None
        per_key = False
        if sellers or places or types:
            keys, allowed = self._candidate_keys(buy.conds)
            if len(keys) <= KEY_MERGE_LIMIT:
                heaps = [self._sell_heaps[key] for key in keys if key[0] != buy.account]
                allowed, per_key = None, True
            else:
                heaps = [self._sells]
        else:
            heaps = [self._sells]
        walk = _Walk(heaps, buy.price)
        exhausted: set[_SellKey] = set()
        try:
            while buy.left:
                step = walk.next()
                if step is None:
                    break
                i, entry = step
                sell = entry[2]
                if not sell.live:
                    continue
                if entry[0] > buy.price:  # (1) prices no longer cross, here or further on
                    walk.keep(i, entry)
                    break
                key = sell.key
                if key in exhausted or sell.account == buy.account or (allowed is not None and key not in allowed):
                    walk.keep(i, entry)  # (4) ineligible: it stays resting
                    continue
                available = taking.available(key, buy.window)
                if not available:
                    exhausted.add(key)  # the key's sells share these holdings
                    walk.keep(i, entry)
                    if per_key:
                        walk.drop(i)
                    continue
                grams = min(buy.left, sell.left, available)
                trades.append(self._trade(buy, sell, grams, sell.price, taking))  # (3) the resting price
                buy.left -= grams
                sell.left -= grams
                if sell.left:
                    walk.keep(i, entry)
                else:
                    self._remove(sell)
        finally:
            walk.close()
        return trades

    def _match_sell(self, sell: _Resting, order: Sell, taking: _Taking) -> list[Trade]:
        trades: list[Trade] = []
        key = sell.key
        total = taking.available(key, None)
        if not total:
            return trades
        place, type_path = segments(order.place), segments(order.type)
        walk = _Walk(self._buy_heaps(order.account, order.disclosed, place, type_path), -sell.price)
        seen: set[int] = set()
        try:
            while sell.left and total:
                step = walk.next()
                if step is None:
                    break
                i, entry = step
                buy = entry[2]
                if not buy.live:
                    continue
                if buy.price < sell.price:  # (1) prices no longer cross, here or further on
                    walk.keep(i, entry)
                    break
                if buy.order_id in seen:  # the same buy through another of its buckets
                    walk.keep(i, entry)
                    continue
                seen.add(buy.order_id)
                if buy.account == sell.account or (
                    not buy.exact and not _admits(buy.conds, key[0], key[1], place, type_path)
                ):
                    walk.keep(i, entry)  # (4)
                    continue
                available = total if buy.window is None else taking.available(key, buy.window)
                if not available:
                    walk.keep(i, entry)
                    continue
                grams = min(sell.left, buy.left, available)
                trades.append(self._trade(buy, sell, grams, buy.price, taking))  # (3) the resting price
                sell.left -= grams
                buy.left -= grams
                total -= grams
                if buy.left:
                    walk.keep(i, entry)
                else:
                    self._remove(buy)
        finally:
            walk.close()
        return trades

    def _buy_heaps(self, seller: str, disclosed: bool, place: _Segments, type_path: _Segments) -> list[list[_Entry]]:
        """The heaps of every bucket whose conditions a sell of this seller, place and type can meet."""
        heaps = []
        places = [place[:n] for n in range(len(place) + 1)]
        types = [type_path[:n] for n in range(len(type_path) + 1)]
        for who in (seller, _ANY_SELLER) if disclosed else (_ANY_SELLER,):
            by_place = self._buckets.get(who)
            if by_place is None:
                continue
            for p in places:
                by_type = by_place.get(p)
                if by_type is None:
                    continue
                for t in types:
                    found = by_type.get(t)
                    if found:
                        heaps.append(found)
        return heaps

    # ------------------------------------------------------------ book keeping

    def _rest(self, r: _Resting) -> None:
        self._orders[r.order_id] = r
        if r.expires_s is not None:
            heappush(self._expiries, (r.expires_s, r.order_id, r))
        if r.is_buy:
            entry = (-r.price, r.order_id, r)
            r.anchors, r.exact = _anchors(r.conds)
            for anchor in r.anchors:
                who, place, type_path = anchor
                bucket = self._buckets.setdefault(who, {}).setdefault(place, {}).setdefault(type_path, [])
                heappush(bucket, entry)
                self._bucket_live[anchor] = self._bucket_live.get(anchor, 0) + 1
            return
        entry = (r.price, r.order_id, r)
        key = r.key
        heappush(self._sells, entry)
        heap = self._sell_heaps.get(key)
        if heap is None:
            heap = self._sell_heaps[key] = []
            self._candidates.clear()
            self._sell_live[key] = 0
            place, type_path = segments(key[2]), segments(key[3])
            self._sell_segments[key] = (place, type_path)
            self._keys_by_seller.setdefault(key[0], set()).add(key)
            for n in range(1, len(place) + 1):
                self._keys_by_place.setdefault(place[:n], set()).add(key)
            for n in range(1, len(type_path) + 1):
                self._keys_by_type.setdefault(type_path[:n], set()).add(key)
        heappush(heap, entry)
        self._sell_live[key] += 1

    def _remove(self, r: _Resting) -> None:
        r.live = False
        del self._orders[r.order_id]
        self._stale += 1
        if r.is_buy:
            for anchor in r.anchors:
                live = self._bucket_live[anchor] - 1
                if live:
                    self._bucket_live[anchor] = live
                    continue
                del self._bucket_live[anchor]
                who, place, type_path = anchor
                by_place = self._buckets[who]
                by_type = by_place[place]
                del by_type[type_path]
                if not by_type:
                    del by_place[place]
                    if not by_place:
                        del self._buckets[who]
            return
        key = r.key
        live = self._sell_live[key] - 1
        if live:
            self._sell_live[key] = live
            return
        del self._sell_live[key], self._sell_heaps[key]
        self._candidates.clear()
        place, type_path = self._sell_segments.pop(key)
        _discard(self._keys_by_seller, key[0], key)
        for n in range(1, len(place) + 1):
            _discard(self._keys_by_place, place[:n], key)
        for n in range(1, len(type_path) + 1):
            _discard(self._keys_by_type, type_path[:n], key)

    def _compact(self) -> None:
        """Rebuild every heap from its live entries."""
        heaps: list[list[_Entry]] = [self._sells, *self._sell_heaps.values()]
        for by_place in self._buckets.values():
            for by_type in by_place.values():
                heaps.extend(by_type.values())
        for heap in heaps:
            heap[:] = [entry for entry in heap if entry[2].live]
            heapify(heap)
        self._expiries = [entry for entry in self._expiries if entry[2].live]
        heapify(self._expiries)
        self._stale = 0


def _discard(index: dict[_Segments, set[_SellKey]] | dict[str, set[_SellKey]], member: object, key: _SellKey) -> None:
    keys = index[member]  # type: ignore[index]
    keys.discard(key)
    if not keys:
        del index[member]  # type: ignore[arg-type]


def _admits(
    conds: _Conditions,
    seller: str,
    disclosed: bool,
    place: _Segments,
    type_path: _Segments,
) -> bool:
    """(1) The buy's conditions hold for this seller, place and type."""
    sellers, places, types = conds
    if sellers and (not disclosed or seller not in sellers):
        return False  # SPEC §8: a seller condition never matches an undisclosed seller
    if places and not _under_any(places, place):
        return False
    return not types or _under_any(types, type_path)


def _anchors(
    conds: _Conditions,
) -> tuple[list[_Anchor], bool]:
    """The buckets a resting buy sits in: each combination of its conditions, "any" for an empty one.

    A sell finds the buy in a bucket only if the sell meets one member of each
    of the buy's conditions, so the buy is eligible. Above ANCHOR_LIMIT
    combinations, the largest condition is widened to "any" in the index.
    The result then says that the buy is not exact, and its conditions are
    checked on every match.
    """
    sellers: list[str] = sorted(conds[0]) or [_ANY_SELLER]
    places: list[_Segments] = list(conds[1]) or [_ANY_PATH]
    types: list[_Segments] = list(conds[2]) or [_ANY_PATH]
    exact = True
    while len(sellers) * len(places) * len(types) > ANCHOR_LIMIT:
        # Widen the largest condition (the first of equals) to "any".
        widest = max(len(sellers), len(places), len(types))
        if len(sellers) == widest:
            sellers = [_ANY_SELLER]
        elif len(places) == widest:
            places = [_ANY_PATH]
        else:
            types = [_ANY_PATH]
        exact = False
    return [(who, place, type_path) for who in sellers for place in places for type_path in types], exact
