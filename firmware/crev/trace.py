"""Trace bundles (SPEC §10): one retirement traced back to the meter readings, checked offline.

A trace bundle is one deterministic CBOR array with definite lengths::

    ["crev-trace", 1, meta, [block...], [entry...], [reading...]]

    meta     {0: origin, 1: ledger kid, 2: retirement id (its leaf index),
              3: exported_ms, 4: the listed block's checkpoint signed note,
              which ties the origin to the ledger key}
    block    [height, signed_header, consistency], as in an evidence bundle
    entry    [leaf_index, leaf_type, received_ms, data, height, inclusion_path]
             in ledger order: the key events of every device whose readings
             are traced, the account events of every account involved, the
             site events of every site, the issuances, every earlier leaf
             that moved grams of the traced lots (trades, retirements), and
             last the retirement itself
    reading  a byte string holding [leaf_index, received_ms, cose, height,
             inclusion_path], sorted by device and leaf index

Each inclusion path proves ``[leaf_type, received_ms, data]`` in the tree
of the listed block at ``height``. The checks, numbered as in the report
and in docs/auditing.md:

    0 the bundle's structure
    1 block header signatures, and hash links between consecutive blocks
    2 consistency proofs between the listed blocks
    3 inclusion proofs of every entry and reading
    4 signatures: ledger-signed entries by the ledger key, readings by a key
      enrolled for their device, the retirement (and any order) by its
      account's key
    5 schema and canonical form
    6 every reading is covered by exactly one issuance in the bundle, and
      every reading an issuance covers is in the bundle
    7 DGC-C values recomputed where a reading's predecessor is present
    8 every issuance's lots recomputed from its readings, factor and carry,
      with its site, owner, place and factor those of the site in force
    9 the grams followed lot by lot, move by move, to the retirement: the
      account held what it retired and no gram is counted twice
"""

from crev import cbor, registry_replay
from crev.errors import CrevError
from crev.evidence import (
    BlockChecks,
    Failure,
    KeyHistory,
    ReadingChecks,
    _cose_of,
    _inclusion_failure,
    _peek,
    _uint,
)
from crev.keys import key_id
from crev.ledger_format import LEAF_KEY_EVENT, LedgerFormatError, parse_key_event
from crev.reading import Reading
from crev.registry_format import LEAF_ISSUANCE, LEAF_RETIREMENT, REGISTRY_LEAVES, generation_entries
from crev.registry_replay import RegistryReplay, ReplayError

MAGIC = "crev-trace"
VERSION = 1
T_ORIGIN, T_LEDGER_KID, T_RETIREMENT, T_EXPORTED, T_CHECKPOINT = range(5)

CHECK_NAMES = (
    "bundle structure",
    "block signatures and hash links",
    "consistency between blocks",
    "inclusion proofs",
    "signatures",
    "schema and canonical form",
    "readings covered once",
    "DGC-C values recomputed",
    "issuance lots recomputed",
    "grams followed to the retirement",
)
FORMAT, BLOCKS, CONSISTENCY, INCLUSION, SIGNATURE, SCHEMA, COVERAGE, RECOMPUTE, ISSUANCE, GRAMS = range(10)


class TraceFailure(Failure):
    """The first thing wrong with one item of a trace bundle."""

    def __init__(self, check: int, item: str, position: int, detail: str) -> None:
        Failure.__init__(self, check, item, position, detail)
        self.leaf = None  # type: int | None

    def where(self) -> str:
        if self.item == "entry":
            return "entry #%d (leaf %s)" % (self.position, self.leaf if self.leaf is not None else "?")
        return Failure.where(self)

    def describe(self) -> str:
        return "%s: check %d (%s) failed: %s" % (self.where(), self.check, CHECK_NAMES[self.check], self.detail)

    def to_dict(self) -> dict:
        result = Failure.to_dict(self)
        result["check_name"] = CHECK_NAMES[self.check]
        result["leaf"] = self.leaf
        return result


def failure(check: int, item: str, position: int, detail: str, leaf: "int | None" = None) -> TraceFailure:
    made = TraceFailure(check, item, position, detail)
    made.leaf = leaf
    return made


def adopt(found: Failure) -> TraceFailure:
    """A reading or block failure from the evidence checks, in this bundle's numbering."""
    made = failure(found.check, found.item, found.position, found.detail)
    made.dev, made.seq, made.height = found.dev, found.seq, found.height
    return made


def check_meta(meta: object, ledger_public_key: bytes) -> "TraceFailure | None":
    if not isinstance(meta, dict) or sorted(meta) != [0, 1, 2, 3, 4]:
        return failure(FORMAT, "bundle", -1, "meta must be a map with keys 0..4")
    if not isinstance(meta[T_ORIGIN], str) or not _uint(meta[T_RETIREMENT]) or not _uint(meta[T_EXPORTED]):
        return failure(FORMAT, "bundle", -1, "meta: origin is text, retirement and exported_ms unsigned integers")
    if not isinstance(meta[T_CHECKPOINT], str):
        return failure(FORMAT, "bundle", -1, "meta field 4 (the checkpoint) is not text")
    if meta[T_LEDGER_KID] != key_id(ledger_public_key):
        named = meta[T_LEDGER_KID].hex() if isinstance(meta[T_LEDGER_KID], bytes) else "?"
        return failure(
            BLOCKS,
            "bundle",
            -1,
            "the bundle names ledger key %s, not the given key %s" % (named, key_id(ledger_public_key).hex()),
        )
    return None


class DeviceKeys(KeyHistory):
    """The key history of every traced device at once (KeyHistory is per device)."""

    def __init__(self, ledger_public_key: bytes) -> None:
        KeyHistory.__init__(self, ledger_public_key, "")
        self.kid_device = {}  # type: dict[bytes, str]
        self.dev = "its device"
        self.last_kid = b""

    def validity_problem(self, kid: bytes, leaf_index: int, t1: int) -> "str | None":
        # The reading checks ask this last, once the signature holds: remember
        # whose key it was, so the caller can hold the reading's dev against it.
        self.last_kid = kid
        return KeyHistory.validity_problem(self, kid, leaf_index, t1)

    def add_event(self, statement: bytes, leaf: int) -> "str | None":
        try:
            action, dev, pubkey, when = parse_key_event(statement, self.key)
        except LedgerFormatError as err:
            return err.detail
        kid = key_id(pubkey)
        owner = self.kid_device.setdefault(kid, dev)
        if owner != dev:
            return "key %s is enrolled for %s and %s" % (kid.hex(), owner, dev)
        history = self.enrolments.setdefault(kid, [])
        if action == 1:
            history.append([leaf, pubkey, None])
        else:
            for entry in history:
                if entry[1] == pubkey and entry[2] is None:
                    entry[2] = when
        return None


class TraceReadingChecks(ReadingChecks):
    """Checks 3, 4, 5 and 7 of a trace's readings; picklable, so worker processes can run batches."""

    def check_item(self, position: int, raw: object, previous: "Reading | None") -> tuple:
        """``(failure, reading, info)``; info is (leaf, dev, t1, generation entries, meter ids)."""
        if not isinstance(raw, bytes):
            return failure(FORMAT, "reading", position, "a reading item is a byte string"), None, None
        try:
            item = cbor.loads(raw)
        except CrevError as err:
            return failure(FORMAT, "reading", position, "the reading item is not CBOR: %s" % err), None, None
        found, reading, _summary = self.check_one(position, item, previous)
        if found is not None:
            made = adopt(found)
            if reading is not None:
                made.dev, made.seq = reading.dev, reading.seq
            return made, None, None
        assert isinstance(item, list) and isinstance(self.keys, DeviceKeys)
        owner = self.keys.kid_device.get(self.keys.last_kid)
        if owner != reading.dev:
            return failure(SIGNATURE, "reading", position, "signed by a key of %s" % owner), None, None
        meters = sorted(set(c[1] for c in reading.channels))
        return None, reading, (item[0], reading.dev, reading.t1, generation_entries(reading), meters)

    def check_batch(self, first_position: int, items: list, before: "bytes | None", group: object = None) -> list:
        """One ``(failure, info)`` per item, for the verifier's worker processes."""
        results = []
        previous = None  # type: Reading | None
        if before is not None:
            previous = _peek(_cose_of(before))
        for offset, raw in enumerate(items):
            found, reading, info = self.check_item(first_position + offset, raw, previous)
            results.append((found, info))
            previous = reading
        return results


def _entry_item(item: object) -> bool:
    return (
        isinstance(item, list)
        and len(item) == 6
        and _uint(item[0])
        and _uint(item[1])
        and _uint(item[2])
        and isinstance(item[3], bytes)
        and _uint(item[4])
        and isinstance(item[5], list)
        and all(isinstance(h, bytes) and len(h) == 32 for h in item[5])
    )


class TraceChecks:
    """Checks 3 to 9 of a trace bundle, fed its sections in file order."""

    def __init__(self, ledger_public_key: bytes, meta: dict, blocks: BlockChecks) -> None:
        self.key = ledger_public_key
        self.meta = meta
        self.blocks = blocks
        self.keys = DeviceKeys(ledger_public_key)
        # (position, leaf, type, data) of the registry entries, replayed at the end
        self.entries = []  # type: list[tuple[int, int, int, bytes]]
        # reading leaf -> (dev, t1, generation entries, meter ids, position)
        self.readings = {}  # type: dict[int, tuple]
        # reading leaf -> the issuance leaf that covers it
        self.covered = {}  # type: dict[int, int]
        self._last_leaf = -1
        self.replay = RegistryReplay(ledger_public_key, partial=True)
        self.reading_checks = TraceReadingChecks(blocks.roots, self.keys)

    def add_entry(self, position: int, item: object) -> "TraceFailure | None":
        if not _entry_item(item):
            return failure(FORMAT, "entry", position, "an entry is [leaf, type, received_ms, data, height, path]")
        assert isinstance(item, list)
        leaf, leaf_type, received_ms, data, height, path = item
        if leaf <= self._last_leaf:
            return failure(FORMAT, "entry", position, "entries are not in ledger order", leaf)
        self._last_leaf = leaf
        if leaf_type != LEAF_KEY_EVENT and leaf_type not in REGISTRY_LEAVES:
            return failure(FORMAT, "entry", position, "leaf type %d has no place among the entries" % leaf_type, leaf)
        found = _inclusion_failure(
            self.blocks.roots, leaf_type, [leaf, received_ms, data, height, path], "entry", position
        )
        if found is not None:
            return failure(INCLUSION, "entry", position, found.detail, leaf)
        if leaf_type == LEAF_KEY_EVENT:
            problem = self.keys.add_event(data, leaf)
            if problem is not None:
                return failure(SIGNATURE, "entry", position, "key event: " + problem, leaf)
            try:
                self.replay.on_key_event(leaf, data)  # the device keys behind controllers' sells
            except ReplayError as err:
                return failure(SIGNATURE, "entry", position, err.detail, leaf)
            return None
        self.entries.append((position, leaf, leaf_type, data))
        return None

    def add_reading(self, position: int, raw: object, previous: "Reading | None") -> tuple:
        """Checks 3, 4, 5 and 7 of one reading item; returns (failure, reading)."""
        found, reading, info = self.reading_checks.check_item(position, raw, previous)
        if found is None:
            found = self.record(position, info)
        return found, (reading if found is None else None)

    def record(self, position: int, info: tuple) -> "TraceFailure | None":
        """Keep what checks 6 and 8 need of a reading that passed its own checks."""
        leaf = info[0]
        if leaf in self.readings:
            return failure(FORMAT, "reading", position, "leaf %d is listed twice" % leaf)
        self.readings[leaf] = info[1:] + (position,)
        return None

    def lookup(self, leaf: int) -> "tuple | None":
        found = self.readings.get(leaf)
        return None if found is None else found[:3]

    def finish(self) -> "TraceFailure | None":
        """Checks 6, 8 and 9 over the whole bundle, in ledger order."""
        replay = self.replay
        for position, leaf, leaf_type, data in self.entries:
            if leaf_type == LEAF_ISSUANCE:
                missing = _issuance_gap(data, self.readings, leaf, self.covered)
                if missing is not None:
                    return failure(COVERAGE, "entry", position, missing, leaf)
            try:
                replay.apply(leaf, leaf_type, data, self.lookup)
            except ReplayError as err:
                return failure(CHECK_OF_CATEGORY[err.category], "entry", position, err.detail, leaf)
        for reading_leaf, info in sorted(self.readings.items()):
            if reading_leaf not in self.covered:
                found = failure(
                    COVERAGE, "reading", info[4], "leaf %d is covered by no issuance in the bundle" % reading_leaf
                )
                found.dev = info[0]
                return found
        if not self.entries or self.entries[-1][2] != LEAF_RETIREMENT or self.entries[-1][1] != self.meta[T_RETIREMENT]:
            return failure(GRAMS, "bundle", -1, "the last entry is not retirement %d" % self.meta[T_RETIREMENT])
        position, leaf, _type, _data = self.entries[-1]
        retirement = replay.retirements[leaf]
        for issuance_leaf, index, _grams in retirement.lots:
            issuance = replay.issuances.get(issuance_leaf)
            if issuance is None or index >= len(issuance.lots):
                return failure(
                    GRAMS, "entry", position, "lot %d.%d is not traced in the bundle" % (issuance_leaf, index), leaf
                )
        return None

    def report(self) -> dict:
        """What the report names behind the retirement (call after finish() returned None)."""
        replay = self.replay
        leaf = self.meta[T_RETIREMENT]
        retirement = replay.retirements[leaf]
        lots = []
        meters = set()  # type: set[str]
        for issuance_leaf, index, grams in retirement.lots:
            issuance = replay.issuances[issuance_leaf]
            lot = issuance.lots[index]
            lot_meters = set()  # type: set[str]
            for reading_leaf in issuance.readings:
                lot_meters.update(self.readings[reading_leaf][3])
            meters.update(lot_meters)
            lots.append(
                {
                    "lot": "%d.%d" % (issuance_leaf, index),
                    "grams": grams,
                    "site": issuance.site,
                    "dev": issuance.dev,
                    "type": lot[0],
                    "place": issuance.place,
                    "slot": issuance.slot,
                    "self_mwh": lot[1],
                    "factor_mg_per_kwh": issuance.factor_mg,
                    "factor_label": issuance.factor_label,
                    "readings": len(issuance.readings),
                    "meters": sorted(lot_meters),
                }
            )
        account = replay.accounts.get(retirement.account)
        return {
            "retirement": leaf,
            "account": retirement.account,
            "account_name": account.name if account is not None and account.disclosed else "undisclosed",
            "grams": retirement.grams,
            "beneficiary": retirement.beneficiary,
            "purpose": retirement.purpose,
            "year": retirement.year,
            "time": retirement.time_s,
            "lots": lots,
            "sites": sorted(set(lot["site"] for lot in lots)),
            "places": sorted(set(lot["place"] for lot in lots)),
            "types": sorted(set(lot["type"] for lot in lots)),
            "slots": sorted(set(lot["slot"] for lot in lots)),
            "meters": sorted(meters),
            "issuances": len(replay.issuances),
            "readings": len(self.readings),
            "trades": [
                {
                    "trade": trade_leaf,
                    "seller": trade.seller,
                    "buyer": trade.buyer,
                    "grams": trade.grams,
                    "price": trade.price,
                    "amount": trade.amount,
                }
                for trade_leaf, trade in sorted(replay.trades.items())
            ],
        }


def _issuance_gap(data: bytes, readings: dict, leaf: int, covered: dict) -> "str | None":
    """Check 6 for one issuance: its readings are all here, and in no other issuance."""
    from crev.registry_format import Issuance, RegistryFormatError

    try:
        issuance = Issuance.parse(data, None)
    except RegistryFormatError:
        return None  # the replay names the problem
    for reading_leaf in issuance.readings:
        if reading_leaf not in readings:
            return "reading leaf %d of this issuance is not in the bundle" % reading_leaf
        if reading_leaf in covered:
            return "reading leaf %d is covered by issuances %d and %d" % (reading_leaf, covered[reading_leaf], leaf)
    for reading_leaf in issuance.readings:
        covered[reading_leaf] = leaf
    return None


CHECK_OF_CATEGORY = {
    registry_replay.SIGNATURE: SIGNATURE,
    registry_replay.SCHEMA: SCHEMA,
    registry_replay.COVERAGE: COVERAGE,
    registry_replay.ISSUANCE: ISSUANCE,
    registry_replay.STATE: GRAMS,
}
