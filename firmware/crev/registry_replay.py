"""Replay of the registry's leaves (SPEC §8, §10) in ledger order, without I/O.

``crev audit ledger`` feeds it every leaf of the ledger; ``crev audit
verify`` feeds it the leaves of a trace bundle (``partial``). It raises
ReplayError at the first leaf that breaks a rule, naming the leaf:

- an account event or site event that does not follow from the state;
- an issuance whose site, owner, place or factor is not the site's in force,
  that covers a reading of another device or slot, an unsealed reading, a
  reading already issued, or a slot not yet closed; whose lots (self per
  type, carry in, grams, carry out) do not follow from its readings; of a
  slot held by a smart-meter mismatch (SPEC §13) that no release precedes;
- a release (a site event with action 3) of a slot that is not held, or
  released twice;
- a retirement not signed by its account's key, replayed, or taking more
  grams from a lot than the account holds;
- an order not signed by its account's key, or a controller's sell not
  signed by an enrolled device of its site under the site's rules; a trade
  not backed by its two orders, or moving lots the seller does not hold.

Key events (``on_key_event``) tell it which device keys exist, for the
controllers' sells.

Smart-meter holds are checked when the replay is given the reconciliation
parameters (``crev.reconcile.Params``, the ingest config's [reconciliation])
and ``slot_readings(dev, slot, before_leaf)``, which returns the device's
readings (crev.reading.Reading) of ``crev.reconcile.window(slot)`` whose
leaves precede ``before_leaf``: the slot's verdict is then the one the
registry reached when it issued, by the same function. Without them (a
mirror, a bundle) a release is checked for its form and signature only.

In a partial replay the state before the bundle is unknown, so the carry
chain, the supplement count and the slot's closure are taken as stated;
everything else is checked the same way. The caller looks readings up:
``reading(leaf)`` returns ``(dev, t1, generation entries)`` or None.
"""

import hashlib

from crev import cbor
from crev.cose import Sign1
from crev.errors import CrevError
from crev.keys import key_id
from crev.ledger_format import ACTION_ENROL, LEAF_KEY_EVENT, LEAF_READING, LedgerFormatError, parse_key_event
from crev.market_format import SIDE_BUY, SIDE_CANCEL, SIDE_SELL, Order, Trade, controller_problem
from crev.reading import K_DEV, K_SM, K_T1
from crev.reconcile import hold_problem, release_problem
from crev.registry_format import (
    ACCOUNT_CLOSE,
    ACCOUNT_KEY_CHANGE,
    ACCOUNT_OPEN,
    LEAF_ACCOUNT,
    LEAF_ISSUANCE,
    LEAF_ORDER,
    LEAF_RETIREMENT,
    LEAF_SITE,
    LEAF_TRADE,
    NANOGRAMS_PER_GRAM,
    REGISTRY_LEAVES,
    SITE_REGISTER,
    AccountEvent,
    Issuance,
    RegistryFormatError,
    Release,
    Retirement,
    SiteEvent,
    compute_lots,
    parse_site_leaf,
    path_matches,
    slot_of,
    type_sums,
)

# What a broken rule is about, so a trace report can number its check.
STATE = "state"  # accounts, sites and holdings
COVERAGE = "coverage"  # which readings an issuance covers
ISSUANCE = "issuance"  # an issuance's site, factor and lots
SIGNATURE = "signature"
SCHEMA = "schema"


class ReplayError(Exception):
    def __init__(self, leaf: int, kind: str, detail: str, category: str = STATE) -> None:
        super().__init__("leaf %d (%s): %s" % (leaf, kind, detail))
        self.leaf = leaf
        self.kind = kind
        self.detail = detail
        self.category = category


KIND_NAMES = {LEAF_ACCOUNT: "account event", LEAF_SITE: "site event", LEAF_ISSUANCE: "issuance",
              LEAF_ORDER: "order", LEAF_TRADE: "trade", LEAF_RETIREMENT: "retirement"}  # fmt: skip


class RegistryReplay:
    def __init__(
        self,
        ledger_key: bytes,
        partial: bool = False,
        reconciliation: "object | None" = None,
        slot_readings: "object | None" = None,
    ) -> None:
        self.ledger_key = ledger_key
        self.partial = partial
        self.reconciliation = reconciliation  # crev.reconcile.Params, or None: holds are not checked
        self.slot_readings = slot_readings
        self.smart_devices = set()  # type: set[str]
        # (dev, slot) -> release leaf
        self.releases = {}  # type: dict[tuple, int]
        self.release_events = {}  # type: dict[int, Release]
        self.accounts = {}  # type: dict[str, AccountEvent]
        self.sites = {}  # type: dict[str, SiteEvent]
        self.device_site = {}  # type: dict[str, str]
        self.carries = {}  # type: dict[tuple, int]
        self.supplements = {}  # type: dict[tuple, int]
        self.issued = bytearray()  # one bit per leaf: a reading already issued
        self.issuances = {}  # type: dict[int, Issuance]
        self.by_site_slot = {}  # type: dict[tuple, list]
        # (issuance leaf, lot index, account) -> grams held
        self.balances = {}  # type: dict[tuple, int]
        # (issuance leaf, lot index) -> grams retired
        self.retired = {}  # type: dict[tuple, int]
        self.retirements = {}  # type: dict[int, Retirement]
        self.orders = {}  # type: dict[int, Order]
        # order leaf -> grams still open; 0 once filled or cancelled
        self.order_left = {}  # type: dict[int, int]
        self.trades = {}  # type: dict[int, Trade]
        self.cancels = {}  # type: dict[int, Order]
        self.statement_hashes = set()  # type: set[bytes]
        self.sealed_size = 0
        # dev -> [(leaf, t1)] of readings not yet sealed
        self._pending = {}  # type: dict[str, list]
        self._sealed_t1 = {}  # type: dict[str, int]
        self.issued_grams = 0
        # kid -> (dev, public key, revoked at unix s or None), from the ledger's key events
        self.device_keys = {}  # type: dict[bytes, list]
        self.registry_leaves = 0

    # ------------------------------------------------------------ readings and blocks

    def on_reading(self, leaf: int, dev: str, t1: int) -> None:
        self._pending.setdefault(dev, []).append((leaf, t1))

    def on_sealed(self, size: int) -> None:
        self.sealed_size = size
        for dev in list(self._pending):
            waiting = self._pending[dev]
            keep = []
            for leaf, t1 in waiting:
                if leaf < size:
                    if t1 > self._sealed_t1.get(dev, -1):
                        self._sealed_t1[dev] = t1
                else:
                    keep.append((leaf, t1))
            if keep:
                self._pending[dev] = keep
            else:
                del self._pending[dev]

    def on_key_event(self, leaf: int, data: bytes) -> None:
        """A key event leaf (type 2): enrolment or revocation of a device key."""
        try:
            action, dev, pubkey, when = parse_key_event(data, self.ledger_key)
        except LedgerFormatError as err:
            raise ReplayError(leaf, "key event", str(err), SIGNATURE)
        kid = key_id(pubkey)
        if action == ACTION_ENROL:
            self.device_keys[kid] = [dev, pubkey, None]
        elif kid in self.device_keys:
            self.device_keys[kid][2] = when

    def _was_issued(self, leaf: int) -> bool:
        byte = leaf >> 3
        return byte < len(self.issued) and bool(self.issued[byte] >> (leaf & 7) & 1)

    def _mark_issued(self, leaf: int) -> None:
        byte = leaf >> 3
        if byte >= len(self.issued):
            self.issued.extend(bytes(byte + 1 - len(self.issued) + 4096))
        self.issued[byte] |= 1 << (leaf & 7)

    # ------------------------------------------------------------ leaves

    def on_leaf(self, leaf: int, leaf_type: int, data: bytes, reading: "object | None" = None) -> None:
        """Any ledger leaf, in ledger order; ``data`` is its third element. Raises ReplayError.

        Readings and key events are noted (the state issuances and controllers'
        orders are checked against); registry leaves are replayed.
        """
        if leaf_type == LEAF_READING:
            try:
                fields = cbor.loads(Sign1.from_bytes(data).payload)
                if not isinstance(fields, dict):
                    raise TypeError("the payload is not a map")
                dev, t1 = fields[K_DEV], fields[K_T1]
            except (CrevError, KeyError, TypeError) as err:
                raise ReplayError(leaf, "reading", "does not parse: %s" % err, SCHEMA)
            if not isinstance(dev, str) or not isinstance(t1, int):
                raise ReplayError(leaf, "reading", "has no device id or t1", SCHEMA)
            self.on_reading(leaf, dev, t1)
            if K_SM in fields:
                self.smart_devices.add(dev)
        elif leaf_type == LEAF_KEY_EVENT:
            self.on_key_event(leaf, data)
        elif leaf_type in REGISTRY_LEAVES:
            self.apply(leaf, leaf_type, data, reading)
            self.registry_leaves += 1

    def counts(self) -> dict:
        """What the replay went through, for the audit's report."""
        return {
            "registry_leaves": self.registry_leaves,
            "issuances": len(self.issuances),
            "retirements": len(self.retirements),
            "orders": len(self.orders) + len(self.cancels),
            "trades": len(self.trades),
            "releases": len(self.release_events),
            "issued_grams": self.issued_grams,
        }

    def apply(self, leaf: int, leaf_type: int, data: bytes, reading: "object | None" = None) -> None:
        """Replay one registry leaf; raises ReplayError."""
        kind = KIND_NAMES.get(leaf_type, "leaf type %d" % leaf_type)
        try:
            if leaf_type == LEAF_ACCOUNT:
                self._account(AccountEvent.parse(data, self.ledger_key))
            elif leaf_type == LEAF_SITE:
                event = parse_site_leaf(data, self.ledger_key)
                if isinstance(event, Release):
                    self._release(leaf, event)
                else:
                    self._site(event)
            elif leaf_type == LEAF_ISSUANCE:
                self._issuance(leaf, Issuance.parse(data, self.ledger_key), reading)
            elif leaf_type == LEAF_RETIREMENT:
                self._retirement(leaf, data)
            elif leaf_type == LEAF_ORDER:
                self._order(leaf, data)
            elif leaf_type == LEAF_TRADE:
                self._trade(leaf, Trade.parse(data, self.ledger_key))
            else:
                raise ReplayError(leaf, kind, "this crev does not replay leaves of type %d" % leaf_type, SCHEMA)
        except RegistryFormatError as err:
            raise ReplayError(leaf, kind, err.detail, SIGNATURE if "BAD_SIGNATURE" in err.detail else SCHEMA)
        except _Broken as err:
            raise ReplayError(leaf, kind, str(err), err.category)

    def _account(self, event: AccountEvent) -> None:
        known = self.accounts.get(event.account)
        if event.action == ACCOUNT_OPEN and known is not None and not self.partial:
            raise _Broken("account %s is opened twice" % event.account)
        if event.action in (ACCOUNT_KEY_CHANGE, ACCOUNT_CLOSE) and known is None and not self.partial:
            raise _Broken("account %s is changed before it is opened" % event.account)
        self.accounts[event.account] = event

    def _open_account(self, account: str) -> AccountEvent:
        event = self.accounts.get(account)
        if event is None:
            raise _Broken("account %s is not open" % account)
        if event.action == ACCOUNT_CLOSE:
            raise _Broken("account %s is closed" % account)
        return event

    def _site(self, event: SiteEvent) -> None:
        known = self.sites.get(event.site)
        if event.action == SITE_REGISTER and known is not None:
            raise _Broken("site %s is registered twice" % event.site)
        if event.action != SITE_REGISTER and known is None and not self.partial:
            raise _Broken("site %s is changed before it is registered" % event.site)
        self._open_account(event.owner)
        for dev in event.devices:
            other = self.device_site.get(dev)
            if other is not None and other != event.site:
                raise _Broken("device %s already belongs to site %s" % (dev, other))
        for dev in event.devices:
            self.device_site[dev] = event.site
        self.sites[event.site] = event

    def _checks_holds(self, dev: str) -> bool:
        return (
            not self.partial
            and self.reconciliation is not None
            and callable(self.slot_readings)
            and dev in self.smart_devices
        )

    def _readings(self, dev: str, slot: int, before_leaf: int) -> list:
        assert callable(self.slot_readings)
        found = self.slot_readings(dev, slot, before_leaf)  # type: list
        return found

    def _release(self, leaf: int, release: Release) -> None:
        site = self.sites.get(release.site)
        if site is None:
            if self.partial:
                return
            raise _Broken("it releases a slot of site %s, which is not registered" % release.site)
        if release.dev not in site.devices:
            raise _Broken("device %s is not a device of site %s" % (release.dev, release.site))
        key = (release.dev, release.slot)
        if key in self.releases:
            raise _Broken(
                "slot %d of %s was released already, at leaf %d" % (release.slot, release.dev, self.releases[key])
            )
        if not self.partial and self.reconciliation is not None and callable(self.slot_readings):
            readings = self._readings(release.dev, release.slot, leaf) if self._checks_holds(release.dev) else []
            problem = release_problem(readings, release.slot, release.dev, self.reconciliation)
            if problem:
                raise _Broken(problem)
        self.releases[key] = leaf
        self.release_events[leaf] = release

    def _issuance(self, leaf: int, issuance: Issuance, reading: "object | None") -> None:
        site = self.sites.get(issuance.site)
        if site is None:
            raise _Broken("site %s is not registered" % issuance.site, ISSUANCE)
        stated = (issuance.owner, issuance.place, issuance.factor_mg, issuance.factor_label)
        if stated != (site.owner, site.place, site.factor_mg, site.factor_label):
            raise _Broken("owner, place or factor differ from site %s's in force" % site.site, ISSUANCE)
        if issuance.dev not in site.devices:
            raise _Broken("device %s is not a device of site %s" % (issuance.dev, site.site), ISSUANCE)
        key = (issuance.dev, issuance.slot)
        if not self.partial:
            expected = self.supplements.get(key, 0)
            if issuance.supplement != expected:
                raise _Broken(
                    "supplement %d where the slot has had %d issuances" % (issuance.supplement, expected), ISSUANCE
                )
            if self._sealed_t1.get(issuance.dev, -1) <= issuance.slot + 1800:
                raise _Broken("slot %d of %s is not closed yet" % (issuance.slot, issuance.dev), ISSUANCE)
            if self._checks_holds(issuance.dev) and key not in self.releases:
                readings = self._readings(issuance.dev, issuance.slot, leaf)
                problem = hold_problem(readings, issuance.slot, issuance.dev, self.reconciliation)  # type: ignore[arg-type]
                if problem:
                    raise _Broken(problem, ISSUANCE)
        sums = []  # type: list[dict]
        for reading_leaf in issuance.readings:
            if reading_leaf >= leaf or (not self.partial and reading_leaf >= self.sealed_size):
                raise _Broken("reading leaf %d is not sealed before the issuance" % reading_leaf, COVERAGE)
            if self._was_issued(reading_leaf):
                raise _Broken("reading leaf %d is issued twice" % reading_leaf, COVERAGE)
            found = reading(reading_leaf) if callable(reading) else None
            if found is None:
                raise _Broken("leaf %d is not a reading" % reading_leaf, COVERAGE)
            dev, t1, entries = found
            if dev != issuance.dev or slot_of(t1) != issuance.slot:
                raise _Broken(
                    "reading leaf %d is of %s slot %d, not this issuance's" % (reading_leaf, dev, slot_of(t1)), COVERAGE
                )
            sums.append(type_sums(entries, site))
        carries = {}
        if self.partial:
            for lot in issuance.lots:
                carries[lot[0]] = lot[2]
        else:
            for lot in issuance.lots:
                carries[lot[0]] = self.carries.get((issuance.dev, lot[0]), 0)
        lots = compute_lots(sums, carries, issuance.factor_mg)
        if lots != issuance.lots:
            raise _Broken(
                "its lots %s do not follow from its %d readings and factor %d mg/kWh, which give %s"
                % (_lots_text(issuance.lots), len(issuance.readings), issuance.factor_mg, _lots_text(lots)),
                ISSUANCE,
            )
        if not any(lot[1] for lot in lots):
            raise _Broken("an issuance of nothing self-consumed", ISSUANCE)
        for reading_leaf in issuance.readings:
            self._mark_issued(reading_leaf)
        for index, lot in enumerate(lots):
            self.carries[(issuance.dev, lot[0])] = lot[4]
            if lot[3]:
                self.balances[(leaf, index, issuance.owner)] = lot[3]
            self.issued_grams += lot[3]
        self.supplements[key] = issuance.supplement + 1
        self.issuances[leaf] = issuance
        self.by_site_slot.setdefault((issuance.site, issuance.slot), []).append(leaf)

    def _retirement(self, leaf: int, data: bytes) -> None:
        unsigned = Retirement.parse(data, None)
        account = self._signed_by_account(unsigned.account, unsigned.kid, "the retirement")
        retirement = Retirement.parse(data, account.pubkey)
        digest = hashlib.sha256(data).digest()
        if digest in self.statement_hashes:
            raise _Broken("the same signed retirement is recorded twice")
        self.statement_hashes.add(digest)
        for issuance_leaf, index, grams in retirement.lots:
            key = (issuance_leaf, index, retirement.account)
            if issuance_leaf not in self.issuances:
                if self.partial:
                    continue  # a lot outside the bundle: not this trace's grams
                raise _Broken("lot %d.%d was never issued" % (issuance_leaf, index))
            held = self.balances.get(key, 0)
            if held < grams:
                raise _Broken(
                    "retires %d g of lot %d.%d, but %s holds %d g of it"
                    % (grams, issuance_leaf, index, retirement.account, held)
                )
            self.balances[key] = held - grams
            self.retired[(issuance_leaf, index)] = self.retired.get((issuance_leaf, index), 0) + grams
        self.retirements[leaf] = retirement

    def _signed_by_account(self, account: str, kid: bytes, what: str) -> AccountEvent:
        event = self._open_account(account)
        if kid != key_id(event.pubkey):
            raise _Broken("%s is not signed by the key of account %s" % (what, account), SIGNATURE)
        return event

    def _order(self, leaf: int, data: bytes) -> None:
        unsigned = Order.parse(data, None)
        if unsigned.by_controller:
            order = self._controller_order(data, unsigned)
        else:
            event = self._signed_by_account(unsigned.account, unsigned.kid, "the order")
            order = Order.parse(data, event.pubkey)
            if order.site:
                site = self.sites.get(order.site)
                if site is None and not self.partial:
                    raise _Broken("it sells lots of site %s, which is not registered" % order.site)
                if site is not None and site.owner != order.account:
                    raise _Broken("it sells lots of site %s, which %s does not own" % (order.site, order.account))
        digest = hashlib.sha256(data).digest()
        if digest in self.statement_hashes:
            raise _Broken("the same signed order is recorded twice")
        self.statement_hashes.add(digest)
        if order.side == SIDE_CANCEL:
            self.cancels[leaf] = order
            target = self.orders.get(order.cancels)
            if target is None:
                if self.partial:
                    return
                raise _Broken("it cancels %d, which is not an order" % order.cancels)
            if target.account != order.account:
                raise _Broken("account %s cancels an order of %s" % (order.account, target.account))
            self.order_left[order.cancels] = 0
            return
        self.orders[leaf] = order
        self.order_left[leaf] = order.grams

    def _controller_order(self, data: bytes, unsigned: Order) -> Order:
        """A device's sell: its key, its site's rules, and its grams, computed as the market does."""
        known = self.device_keys.get(unsigned.kid)
        if known is None:
            raise _Broken("a controller's sell signed by key %s, which no device has" % unsigned.kid.hex(), SIGNATURE)
        dev, pubkey, revoked = known
        order = Order.parse(data, pubkey)
        if revoked is not None and order.time_s >= revoked:
            raise _Broken("a controller's sell signed by %s's key after it was revoked" % dev, SIGNATURE)
        site = self.sites.get(order.site)
        if site is None and self.partial:
            order.grams = 0  # the site is outside the bundle; the trades say what it sold
            return order
        problem = controller_problem(order, site, dev)
        if problem:
            raise _Broken(problem)
        order.grams = self.controller_grams(order)
        if not order.grams and not self.partial:
            raise _Broken(
                "it sells slot %s of site %s, of which %s holds nothing" % (order.slot, order.site, order.account)
            )
        return order

    def controller_grams(self, order: Order) -> int:
        """SPEC §9: a controller's sell offers what the owner holds of its site's lots of its slot, place and type."""
        total = 0
        for leaf in self.by_site_slot.get((order.site, order.slot), ()):
            issuance = self.issuances[leaf]
            if issuance.place != order.place:
                continue
            for index, lot in enumerate(issuance.lots):
                if lot[0] == order.type:
                    total += self.balances.get((leaf, index, order.account), 0)
        return total

    def _trade(self, leaf: int, trade: Trade) -> None:
        buy, sell = self.orders.get(trade.buy), self.orders.get(trade.sell)
        if buy is None or sell is None or buy.side != SIDE_BUY or sell.side != SIDE_SELL:
            raise _Broken("it is not backed by a buy order %d and a sell order %d" % (trade.buy, trade.sell))
        if (trade.buyer, trade.seller) != (buy.account, sell.account) or buy.account == sell.account:
            raise _Broken("its buyer and seller are not its orders' two different accounts")
        for order_leaf, order in ((trade.buy, buy), (trade.sell, sell)):
            if self.partial and order.by_controller and not order.grams:
                continue  # its grams came from holdings outside the bundle
            if self.order_left[order_leaf] < trade.grams:
                raise _Broken("order %d has %d g open, not %d" % (order_leaf, self.order_left[order_leaf], trade.grams))
            if order.expires is not None and trade.time_s >= order.expires:
                raise _Broken("order %d had expired" % order_leaf)
        resting = buy if trade.buy < trade.sell else sell
        if not sell.price <= buy.price or trade.price != resting.price:
            raise _Broken("its price %d is not the resting order's, or the prices do not cross" % trade.price)
        seller = self.accounts.get(sell.account)
        if buy.sellers and (sell.account not in buy.sellers or seller is None or not seller.disclosed):
            raise _Broken("the buy order's seller condition does not hold")
        if buy.places and not any(path_matches(c, sell.place) for c in buy.places):
            raise _Broken("the buy order's place condition does not hold")
        if buy.types and not any(path_matches(c, sell.type) for c in buy.types):
            raise _Broken("the buy order's type condition does not hold")
        for issuance_leaf, index, grams in trade.lots:
            issuance = self.issuances.get(issuance_leaf)
            if issuance is None or index >= len(issuance.lots):
                if self.partial:
                    continue
                raise _Broken("lot %d.%d was never issued" % (issuance_leaf, index))
            lot_type = issuance.lots[index][0]
            if issuance.place != sell.place or lot_type != sell.type:
                raise _Broken("lot %d.%d is not of the sell order's place and type" % (issuance_leaf, index))
            if sell.site and issuance.site != sell.site:
                raise _Broken(
                    "lot %d.%d is not of site %s, the only site the sell order offers"
                    % (issuance_leaf, index, sell.site)
                )
            if (buy.slot_from is not None and issuance.slot < buy.slot_from) or (
                buy.slot_to is not None and issuance.slot + 1800 > buy.slot_to
            ):
                raise _Broken("lot %d.%d is outside the buy order's slot window" % (issuance_leaf, index))
            key = (issuance_leaf, index, sell.account)
            held = self.balances.get(key, 0)
            if held < grams:
                raise _Broken(
                    "moves %d g of lot %d.%d, but %s holds %d g" % (grams, issuance_leaf, index, sell.account, held)
                )
            self.balances[key] = held - grams
            to = (issuance_leaf, index, buy.account)
            self.balances[to] = self.balances.get(to, 0) + grams
        self.order_left[trade.buy] -= trade.grams
        self.order_left[trade.sell] -= trade.grams
        self.trades[leaf] = trade

    def lot_conserved(self) -> "str | None":
        """SPEC §8: for every lot, Σ held + Σ retired = issued grams."""
        held = {}  # type: dict[tuple, int]
        for (issuance_leaf, index, _account), grams in self.balances.items():
            held[(issuance_leaf, index)] = held.get((issuance_leaf, index), 0) + grams
        for issuance_leaf, issuance in self.issuances.items():
            for index, lot in enumerate(issuance.lots):
                total = held.get((issuance_leaf, index), 0) + self.retired.get((issuance_leaf, index), 0)
                if total != lot[3]:
                    return "lot %d.%d: %d g held and retired of %d issued" % (issuance_leaf, index, total, lot[3])
        return None


def counts_text(counts: dict) -> str:
    """The audit report's words for RegistryReplay.counts(), local ledger or mirror."""
    return "%d leaves, %d issuances (%d g), %d retirements, %d orders, %d trades" % (
        counts["registry_leaves"],
        counts["issuances"],
        counts["issued_grams"],
        counts["retirements"],
        counts["orders"],
        counts["trades"],
    )


class _Broken(Exception):
    def __init__(self, detail: str, category: str = STATE) -> None:
        Exception.__init__(self, detail)
        self.category = category


def _lots_text(lots: list) -> str:
    return (
        ", ".join("%s %d mWh -> %d g (carry %d/%d)" % (lot[0], lot[1], lot[3], lot[2], lot[4]) for lot in lots)
        or "none"
    )


__all__ = ["NANOGRAMS_PER_GRAM", "RegistryReplay", "ReplayError", "counts_text"]
