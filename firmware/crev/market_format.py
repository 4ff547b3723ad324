"""The market's ledger leaves (SPEC §9): orders and cancels (type 7), trades (type 8).

    type 7  order    {0: 1, 1: side (1 sell, 2 buy), 2: account, 3: grams,
                      4: price, 13: time, 14: nonce, and for a sell 5: place,
                      6: type; for a buy, each optional, 7: [seller...],
                      8: [place...], 9: [type...], 10: slot_from, 11: slot_to;
                      12: expires (optional); for a sell, optional,
                      16: site}                                 the account's key
            controller sell  {0: 1, 1: 1, 2: the site's owner, 4: price,
                      5: place, 6: type, 13: time, 14: nonce, 16: site,
                      17: slot, 12: expires (optional)}         the device's key
            cancel   {0: 1, 1: 3, 2: account, 13: time, 14: nonce,
                      15: the order's id (its leaf index)}      the account's key
    type 8  trade    {0: 1, 1: buy order, 2: sell order, 3: grams, 4: price,
                      5: amount, 6: [[issuance leaf, lot index, grams]...],
                      7: buyer, 8: seller, 9: time}             ledger key

Prices are integers in 1/100 yen per kg-CO2 (``--price`` with up to two
decimals); a trade's amount is grams × price, exact, in 1/100,000 yen. An
order's id is its leaf index, so the ledger's order is the order of arrival.

A sell with a site (key 16) takes only lots issued at that site. A
controller's sell (SPEC §9, the controller as bidder) is signed by a device
of the site, with the owner's account in key 2. It names no grams: it offers
what the owner holds, at the moment it reaches the ledger, of the site's
lots of its slot (key 17), its place and its type; a replay computes that
the same way. ``controller_problem`` holds its rules.
"""

from crev.reading import valid_device_id
from crev.registry_format import (
    FORMAT_VERSION,
    MAX_GRAMS,
    RegistryFormatError,
    SiteEvent,
    _need,
    _uint,
    path_problem,
    signed_map,
)

SIDE_SELL = 1
SIDE_BUY = 2
SIDE_CANCEL = 3
MAX_PRICE = 1 << 40
MAX_CONDITIONS = 64


def _ids(value: object) -> bool:
    return isinstance(value, list) and len(value) <= MAX_CONDITIONS and all(valid_device_id(v) for v in value)


def _paths(value: object) -> bool:
    return isinstance(value, list) and len(value) <= MAX_CONDITIONS and all(path_problem(v) is None for v in value)


class Order:
    """A signed sell, buy or cancel; ``kid`` names the key that signed it."""

    def __init__(self, fields: dict, kid: bytes) -> None:
        self._fields = fields
        self.side = fields[1]
        self.account = fields[2]
        self.time_s = fields[13]
        self.nonce = fields[14]
        self.grams = fields.get(3, 0)
        self.price = fields.get(4, 0)
        self.place = fields.get(5, "")  # type: str
        self.type = fields.get(6, "")  # type: str
        self.sellers = fields.get(7, [])
        self.places = fields.get(8, [])
        self.types = fields.get(9, [])
        self.slot_from = fields.get(10)
        self.slot_to = fields.get(11)
        self.expires = fields.get(12)
        self.cancels = fields.get(15, -1)  # type: int
        self.site = fields.get(16, "")  # type: str
        self.slot = fields.get(17)  # type: int | None  # a controller's sell: the slot whose lots it sells
        self.kid = kid

    @property
    def by_controller(self) -> bool:
        return self.slot is not None

    @classmethod
    def to_map(
        cls,
        side: int,
        account: str,
        time_s: int,
        nonce: bytes,
        grams: int = 0,
        price: int = 0,
        place: "str | None" = None,
        type_path: "str | None" = None,
        sellers: "list | None" = None,
        places: "list | None" = None,
        types: "list | None" = None,
        slot_from: "int | None" = None,
        slot_to: "int | None" = None,
        expires: "int | None" = None,
        cancels: "int | None" = None,
        site: "str | None" = None,
        slot: "int | None" = None,
    ) -> dict:
        """The map an account (or, with ``slot``, a controller) signs; absent options are left out."""
        fields = {0: FORMAT_VERSION, 1: side, 2: account, 13: time_s, 14: nonce}  # type: dict[int, object]
        if side == SIDE_CANCEL:
            fields[15] = cancels
            return fields
        if slot is None:
            fields[3] = grams
        fields[4] = price
        if side == SIDE_SELL:
            fields[5] = place
            fields[6] = type_path
            if site is not None:
                fields[16] = site
            if slot is not None:
                fields[17] = slot
        else:
            for key, values in ((7, sellers), (8, places), (9, types)):
                if values:
                    fields[key] = sorted(set(values))
            if slot_from is not None:
                fields[10] = slot_from
            if slot_to is not None:
                fields[11] = slot_to
        if expires is not None:
            fields[12] = expires
        return fields

    @classmethod
    def parse(cls, signed: bytes, account_key: "bytes | None") -> "Order":
        """Parse an order or cancel; with ``account_key``, also verify its signature."""
        fields, kid = signed_map(signed, account_key, "order")
        side = fields.get(1)
        if side == SIDE_CANCEL:
            _need(fields, (0, 1, 2, 13, 14, 15), (), "cancel")
        elif side == SIDE_SELL and 17 in fields:
            _need(fields, (0, 1, 2, 4, 5, 6, 13, 14, 16, 17), (12,), "controller's sell order")
        elif side == SIDE_SELL:
            _need(fields, (0, 1, 2, 3, 4, 5, 6, 13, 14), (12, 16), "sell order")
        elif side == SIDE_BUY:
            _need(fields, (0, 1, 2, 3, 4, 13, 14), (7, 8, 9, 10, 11, 12), "buy order")
            for key in (7, 8, 9):
                if fields.get(key) == []:
                    raise RegistryFormatError("buy order: an empty condition is left out, not written as []")
        else:
            raise RegistryFormatError("order side must be 1 (sell), 2 (buy) or 3 (cancel)")
        order = cls(fields, kid)
        problem = order.problem()
        if problem:
            raise RegistryFormatError("order: " + problem)
        return order

    def problem(self) -> "str | None":
        if not valid_device_id(self.account):
            return "account must be a valid id"
        if not _uint(self.time_s) or not isinstance(self.nonce, bytes) or len(self.nonce) != 16:
            return "time is an unsigned integer and nonce 16 bytes"
        if self.side == SIDE_CANCEL:
            return None if _uint(self.cancels) else "a cancel names the order's id"
        if self.by_controller:
            slot = self.slot
            if not isinstance(slot, int) or not _uint(slot) or slot % 1800:
                return "a controller's sell names the start of a 30-minute slot"
        elif not _uint(self.grams) or not 0 < self.grams <= MAX_GRAMS:
            return "grams must be a positive whole number"
        if not _uint(self.price) or not 0 < self.price <= MAX_PRICE:
            return "the price must be positive (in 1/100 yen per kg)"
        if self.expires is not None and not _uint(self.expires):
            return "expires must be an unsigned integer"
        if self.side == SIDE_SELL:
            if 16 in self._fields and not valid_device_id(self.site):
                return "site must be a site id"
            problem = path_problem(self.place) or path_problem(self.type)
            return None if problem is None else "place and type: " + problem
        if not _ids(self.sellers) or not _paths(self.places) or not _paths(self.types):
            return "conditions are lists of account ids and paths"
        for key, values in (("sellers", self.sellers), ("places", self.places), ("types", self.types)):
            if values != sorted(set(values)):
                return "the %s condition must be sorted and unique" % key
        for bound in (self.slot_from, self.slot_to):
            if bound is not None and not _uint(bound):
                return "a slot window bound is an unsigned integer"
        if self.slot_from is not None and self.slot_to is not None and self.slot_to <= self.slot_from:
            return "the slot window ends before it starts"
        return None


class Trade:
    def __init__(
        self,
        buy: int,
        sell: int,
        grams: int,
        price: int,
        amount: int,
        lots: list,
        buyer: str,
        seller: str,
        time_s: int,
    ) -> None:
        self.buy = buy
        self.sell = sell
        self.grams = grams
        self.price = price
        self.amount = amount
        self.lots = lots  # [[issuance leaf, lot index, grams]], oldest slot first
        self.buyer = buyer
        self.seller = seller
        self.time_s = time_s

    def to_map(self) -> dict:
        return {
            0: FORMAT_VERSION,
            1: self.buy,
            2: self.sell,
            3: self.grams,
            4: self.price,
            5: self.amount,
            6: [list(lot) for lot in self.lots],
            7: self.buyer,
            8: self.seller,
            9: self.time_s,
        }

    @classmethod
    def parse(cls, signed: bytes, ledger_key: "bytes | None") -> "Trade":
        fields, _kid = signed_map(signed, ledger_key, "trade")
        _need(fields, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (), "trade")
        trade = cls(*[fields[k] for k in range(1, 10)])
        problem = trade.problem()
        if problem:
            raise RegistryFormatError("trade: " + problem)
        return trade

    def problem(self) -> "str | None":
        for value in (self.buy, self.sell, self.grams, self.price, self.amount, self.time_s):
            if not _uint(value):
                return "orders, grams, price, amount and time are unsigned integers"
        if self.grams == 0 or self.amount != self.grams * self.price:
            return "grams must be positive and the amount grams × price"
        if not valid_device_id(self.buyer) or not valid_device_id(self.seller):
            return "buyer and seller must be valid ids"
        if not isinstance(self.lots, list) or not self.lots:
            return "a trade names the lots it moves"
        total = 0
        for lot in self.lots:
            if not isinstance(lot, list) or len(lot) != 3 or not all(_uint(v) for v in lot) or lot[2] == 0:
                return "a lot moved is [issuance leaf, lot index, grams > 0]"
            total += lot[2]
        if total != self.grams:
            return "the lots add up to %d g, not the %d g traded" % (total, self.grams)
        return None


def controller_problem(order: Order, site: "SiteEvent | None", dev: str) -> "str | None":
    """Why device ``dev`` may not place this controller's sell under ``site``; None if it may.

    The owner allows it by setting a floor price on the site (SPEC §9); the
    device must be one of the site's, and the order must be the owner's, of
    the site's place, at or above the floor.
    """
    if order.side != SIDE_SELL or not order.by_controller:
        return "a device signs only controller's sell orders (with a slot and no grams)"
    if site is None:
        return "site %s is not registered" % order.site
    if dev not in site.devices:
        return "device %s is not a device of site %s" % (dev, order.site)
    if site.floor is None:
        return "the owner of site %s does not let its controller sell" % order.site
    if order.account != site.owner:
        return "site %s belongs to %s, not %s" % (order.site, site.owner, order.account)
    if order.place != site.place:
        return "site %s is at %s, not %s" % (order.site, site.place, order.place)
    if order.price < site.floor:
        return "the price %d is below the site's floor of %d (1/100 yen per kg)" % (order.price, site.floor)
    return None
