"""The market (SPEC §9): signed orders in, trades out, all on the one ledger.

The ledger is the sequencer: an order's arrival is the leaf index it gets
inside the store's write transaction, whoever sent it. The matching engine
(``crev_market.matching``) holds no state of its own that the ledger does
not: it is rebuilt by replaying the issuances, orders, cancels, trades and
retirements in ledger order, so after a restart or a SIGKILL the book is
the same as before. Each accepted order, its trades (signed by the ledger
key, with the lots they move) and a sealed block commit together.
"""

import hashlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from crev import cbor
from crev.cose import sign1
from crev.keys import SigningKey, key_id
from crev.ledger_format import ACTION_ENROL
from crev.market_format import SIDE_BUY, SIDE_CANCEL, SIDE_SELL, Order, controller_problem
from crev.market_format import Trade as TradeLeaf
from crev.registry_format import (
    LEAF_ISSUANCE,
    LEAF_ORDER,
    LEAF_RETIREMENT,
    LEAF_TRADE,
    Issuance,
    RegistryFormatError,
    Retirement,
    format_kg,
    lot_id,
    parse_lot_id,
)
from crev_market import MarketError, Refused
from crev_market.matching import Buy, Cancel, MatchingEngine, MemoryHoldings, Sell
from crev_market.matching import Trade as Execution
from crev_market.registry import Registry


@dataclass
class Placed:
    order: int  # its id: the order's leaf index
    trades: list[tuple[int, Execution]]  # (trade leaf, execution), in execution order
    grams_left: int


class MatchingMismatch(MarketError):
    """The ledger's trades are not the ones its orders give under the matching rules."""


def _text(execution: Execution) -> str:
    return "%d g between buy %d and sell %d at %d" % (execution.grams, execution.buy, execution.sell, execution.price)


def _match_trade_leaf(idx: int, leaf: TradeLeaf, expected: "deque[Execution]") -> None:
    if not expected:
        raise MatchingMismatch("leaf %d: a trade that no order's matching gives" % idx)
    execution = expected.popleft()
    lots = [[*parse_lot_id(lot), grams] for lot, grams in execution.lots]
    given = (leaf.buy, leaf.sell, leaf.grams, leaf.price, leaf.lots)
    if given != (execution.buy, execution.sell, execution.grams, execution.price, lots):
        raise MatchingMismatch("leaf %d: the matching rules give %s here, not this trade" % (idx, _text(execution)))


def _data(leaf: bytes) -> bytes:
    decoded = cbor.loads(leaf)
    assert isinstance(decoded, list) and isinstance(decoded[2], bytes)
    return decoded[2]


def sign_order(fields: dict[int, object], key: SigningKey) -> bytes:
    return sign1(cbor.dumps(fields), key)


def new_nonce() -> bytes:
    return os.urandom(16)


class Market:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store = registry.store
        self.ledger = registry.ledger
        # The engine as of the newest market leaf this process saw, so that a long-running
        # service does not replay the whole market for every order; any other writer's
        # issuance, order or retirement makes it rebuild.
        self._state: tuple[int, MatchingEngine, MemoryHoldings] | None = None

    def current(self) -> tuple[MatchingEngine, MemoryHoldings]:
        """The engine and holdings now (inside a transaction): cached, or rebuilt from the ledger."""
        last = self.store.last_market_leaf()
        if self._state is not None and self._state[0] == last:
            return self._state[1], self._state[2]
        self._state = None
        engine, holdings = self.rebuild()
        self._state = (last, engine, holdings)
        return engine, holdings

    # ------------------------------------------------------------ the book, from the ledger

    def rebuild(self) -> tuple[MatchingEngine, MemoryHoldings]:
        """The engine and holdings after every market leaf so far (inside a transaction).

        Raises MatchingMismatch when the ledger's trades are not exactly the
        ones the engine gives for its orders (SPEC §9: price, then time).
        """
        engine = MatchingEngine()
        holdings = MemoryHoldings()
        expected: deque[Execution] = deque()  # what the last order executed, still to be found as trade leaves
        for idx, leaf_type, received_ms, leaf in self.store.market_leaves():
            data = _data(leaf)
            if leaf_type == LEAF_TRADE:
                _match_trade_leaf(idx, TradeLeaf.parse(data, None), expected)
                continue
            if expected:
                raise MatchingMismatch(
                    "leaf %d: the order before it should also have traded %s" % (idx, _text(expected[0]))
                )
            if leaf_type == LEAF_ISSUANCE:
                issuance = Issuance.parse(data, None)
                for index, lot in enumerate(issuance.lots):
                    if lot[3]:
                        holdings.add(
                            issuance.owner,
                            lot_id(idx, index),
                            issuance.place,
                            lot[0],
                            issuance.slot,
                            lot[3],
                            issuance.site,
                        )
            elif leaf_type == LEAF_RETIREMENT:
                retirement = Retirement.parse(data, None)
                for issuance_leaf, index, grams in retirement.lots:
                    place, type_path, slot, site = self._lot_meta(issuance_leaf, index)
                    holdings.add(retirement.account, lot_id(issuance_leaf, index), place, type_path, slot, -grams, site)
            elif leaf_type == LEAF_ORDER:
                order = Order.parse(data, None)
                if order.by_controller:
                    order.grams = controller_grams(holdings, order)
                try:
                    executions = self._replay_order(engine, holdings, idx, received_ms // 1000, order)
                except Refused as err:
                    raise MatchingMismatch("leaf %d: the engine refuses this recorded order: %s" % (idx, err)) from err
                expected.extend(executions)
        if expected:
            raise MatchingMismatch("the last order should also have traded %s" % _text(expected[0]))
        return engine, holdings

    def verify_matching(self) -> int:
        """Replay every order through the engine and require the ledger's trades; return the trades checked."""
        with self.store.transaction():
            self.ledger.sync()
            self.rebuild()
        return len(self.store.trades())

    def _lot_meta(self, issuance_leaf: int, index: int) -> tuple[str, str, int, str]:
        issuance = Issuance.parse(_data(self.store.leaf(issuance_leaf)), None)
        return issuance.place, issuance.lots[index][0], issuance.slot, issuance.site

    def _spec(self, order: Order) -> Buy | Sell:
        if order.side == SIDE_SELL:
            account = self.store.account(order.account)
            disclosed = bool(account and account["disclosed"])
            return Sell(
                order.account, order.place, order.type, order.grams, order.price, order.expires, disclosed, order.site
            )
        return Buy(
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

    def _replay_order(
        self, engine: MatchingEngine, holdings: MemoryHoldings, idx: int, now_s: int, order: Order
    ) -> list[Execution]:
        if order.side == SIDE_CANCEL:
            engine.cancel(idx, now_s, Cancel(order.account, order.cancels))
            return []
        placed = engine.order(idx, now_s, self._spec(order), holdings)
        holdings.settle(placed.trades)
        return list(placed.trades)

    # ------------------------------------------------------------ placing orders

    def place(self, signed: bytes, now_ms: int, on_placed: Callable[[int], None] | None = None) -> Placed:
        """Check, sequence and match one signed order or cancel; refuse it whole, recording nothing.

        ``on_placed(order id)`` runs inside the same transaction, so that a
        caller's own record of the order commits with it, or not at all.
        """
        try:
            order = Order.parse(signed, None)
        except RegistryFormatError as err:
            raise Refused(err.detail) from err
        touched = False  # whether the engine may hold what a rollback undoes
        try:
            with self.store.transaction():
                self.ledger.sync()
                if order.by_controller:
                    self._check_controller(order, signed)
                else:
                    self.registry.signed_by_account(
                        order.account, order.kid, lambda key: Order.parse(signed, key), "order"
                    )
                if order.site and not order.by_controller:
                    found = self.registry.current_site(order.site)
                    if found is None or found[1].owner != order.account:
                        raise Refused("%s owns no site %s, so it cannot sell its lots" % (order.account, order.site))
                statement_hash = hashlib.sha256(signed).digest()
                if self.store.order_seen(statement_hash):
                    raise Refused("this signed order was placed already; it is never executed twice", "REPLAY")
                for seller in order.sellers:
                    if self.store.account(seller) is None:
                        raise Refused("the seller condition names %s, which is not an account" % seller)
                engine, holdings = self.current()
                now_s = now_ms // 1000
                if order.side == SIDE_CANCEL:
                    resting = engine.resting(order.cancels)
                    if resting is None:
                        raise Refused(
                            "order %d is not resting (filled, cancelled, expired or never placed)" % order.cancels
                        )
                    if resting.account != order.account:
                        raise Refused(
                            "order %d belongs to %s; only its own account may cancel it"
                            % (order.cancels, resting.account)
                        )
                if order.by_controller:
                    order.grams = controller_grams(holdings, order)
                    if not order.grams:
                        raise self._nothing_to_sell(order)
                elif order.side == SIDE_SELL:
                    lots = holdings.lots(order.account, order.place, order.type)
                    held = sum(lot[2] for lot in lots if not order.site or lot[3] == order.site)
                    if held < order.grams:
                        raise Refused(
                            "%s holds %s kg of %s %s, less than the %s kg offered"
                            % (order.account, format_kg(held), order.place, order.type, format_kg(order.grams))
                        )
                touched = True
                idx = self.ledger.append(LEAF_ORDER, now_ms, signed)
                executions = self._replay_order(engine, holdings, idx, now_s, order)
                self.store.add_order(
                    idx,
                    order.side,
                    order.account,
                    order.grams,
                    order.price,
                    order.cancels if order.side == SIDE_CANCEL else None,
                    order.time_s,
                    statement_hash,
                )
                trades = [(self._record_trade(execution, now_ms), execution) for execution in executions]
                if on_placed is not None:
                    on_placed(idx)
                self.ledger.seal(now_ms)
        except BaseException:
            if touched:
                self._state = None
            raise
        self._state = (self.store.last_market_leaf(), engine, holdings)
        resting_after = engine.resting(idx) if order.side != SIDE_CANCEL else None
        return Placed(idx, trades, resting_after.grams_left if resting_after is not None else 0)

    def _check_controller(self, order: Order, signed: bytes) -> None:
        """A controller's sell: an enrolled device key of the site, and the site's rules (SPEC §9)."""
        events = self.store.key_events_for_kid(order.kid)
        if not events:
            raise Refused("the order is signed by key %s, which is no device's" % order.kid.hex(), "NOT_SIGNED")
        action, dev, pubkey, when = events[-1]
        if action != ACTION_ENROL and order.time_s >= when:
            raise Refused("device %s's key was revoked before this order" % dev, "NOT_SIGNED")
        if key_id(pubkey) != order.kid:
            raise Refused("the order's key id does not match device %s's key" % dev, "NOT_SIGNED")
        try:
            Order.parse(signed, pubkey)
        except RegistryFormatError as err:
            raise Refused("the order is not signed by device %s's key" % dev, "NOT_SIGNED") from err
        found = self.registry.current_site(order.site)
        problem = controller_problem(order, None if found is None else found[1], dev)
        if problem:
            raise Refused(problem, "NOT_ALLOWED")

    def _nothing_to_sell(self, order: Order) -> Refused:
        assert order.slot is not None
        if self.store.site_slot_issued(order.site, order.slot):
            return Refused(
                "%s holds nothing of site %s's %s lots of slot %d"
                % (order.account, order.site, order.type, order.slot),
                "NOTHING_TO_SELL",
            )
        return Refused("slot %d of site %s is not issued yet" % (order.slot, order.site), "NOT_ISSUED_YET")

    def _record_trade(self, execution: Execution, now_ms: int) -> int:
        lots = [[*parse_lot_id(lot), grams] for lot, grams in execution.lots]
        leaf = TradeLeaf(
            execution.buy,
            execution.sell,
            execution.grams,
            execution.price,
            execution.amount_due,
            lots,
            execution.buyer,
            execution.seller,
            now_ms // 1000,
        )
        idx = self.ledger.append(LEAF_TRADE, now_ms, sign1(cbor.dumps(leaf.to_map()), self.ledger.key))
        self.store.add_trade(
            idx,
            leaf.buy,
            leaf.sell,
            leaf.grams,
            leaf.price,
            leaf.amount,
            leaf.buyer,
            leaf.seller,
            leaf.time_s,
            lots,
        )
        return idx

    def book(self) -> list[tuple[int, str, str, int, int]]:
        """(order, side, account, grams_left, price) of every resting order, in order of arrival."""
        with self.store.transaction():
            self.ledger.sync()
            engine, _holdings = self.current()
        return [(e.order, e.side, e.account, e.grams_left, e.price) for e in engine.book()]


def controller_grams(holdings: MemoryHoldings, order: Order) -> int:
    """SPEC §9: a controller's sell offers what the owner holds of its site's lots of its slot, place and type."""
    lots = holdings.lots(order.account, order.place, order.type)
    return sum(lot[2] for lot in lots if lot[3] == order.site and lot[1] == order.slot)


__all__ = ["SIDE_BUY", "SIDE_CANCEL", "SIDE_SELL", "Market", "Placed", "new_nonce", "sign_order"]
