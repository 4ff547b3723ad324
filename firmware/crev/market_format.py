"""The market's ledger leaves (SPEC §9): orders and cancels (type 7), trades (type 8).

    type 7  order    {0: 1, 1: side (1 sell, 2 buy), 2: account, 3: grams,
                      4: price, 13: time, 14: nonce, and for a sell 5: place,
                      6: type; for a buy, each optional, 7: [seller...],
                      8: [place...], 9: [type...], 10: slot_from, 11: slot_to;
                      12: expires (optional)}                   the account's key
            cancel   {0: 1, 1: 3, 2: account, 13: time, 14: nonce,
                      15: the order's id (its leaf index)}      the account's key
    type 8  trade    {0: 1, 1: buy order, 2: sell order, 3: grams, 4: price,
                      5: amount, 6: [[issuance leaf, lot index, grams]...],
                      7: buyer, 8: seller, 9: time}             ledger key

Prices are integers in 1/100 yen per kg-CO2 (``--price`` with up to two
decimals); a trade's amount is grams × price, exact, in 1/100,000 yen. An
order's id is its leaf index, so the ledger's order is the order of arrival.
"""

from crev.reading import valid_device_id
from crev.registry_format import (
    FORMAT_VERSION,
    MAX_GRAMS,
    RegistryFormatError,
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
        self.kid = kid

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
    ) -> dict:
        """The map an account signs; absent options are left out, so each order has one form."""
        fields = {0: FORMAT_VERSION, 1: side, 2: account, 13: time_s, 14: nonce}  # type: dict[int, object]
        if side == SIDE_CANCEL:
            fields[15] = cancels
            return fields
        fields[3] = grams
        fields[4] = price
        if side == SIDE_SELL:
            fields[5] = place
            fields[6] = type_path
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
        elif side == SIDE_SELL:
            _need(fields, (0, 1, 2, 3, 4, 5, 6, 13, 14), (12,), "sell order")
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
        if not _uint(self.grams) or not 0 < self.grams <= MAX_GRAMS:
            return "grams must be a positive whole number"
        if not _uint(self.price) or not 0 < self.price <= MAX_PRICE:
            return "the price must be positive (in 1/100 yen per kg)"
        if self.expires is not None and not _uint(self.expires):
            return "expires must be an unsigned integer"
        if self.side == SIDE_SELL:
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
