"""The registry's ledger leaves (SPEC §8 and §10), shared by the registry and the offline verifier.

Each leaf's data is a COSE_Sign1 (SPEC §3 profile) over a deterministic CBOR
map with integer keys; docs/ledger-format.md gives every field. Key 0 of every
map is the format version, 1.

    type 4  account event   {0: 1, 1: action, 2: account, 3: name, 4: pubkey,
                             5: disclosed, 6: role, 7: time}          ledger key
    type 5  site event      {0: 1, 1: action, 2: site, 3: owner, 4: place,
                             5: [dev...], 6: [[meter_id, type]...], 7: factor_mg,
                             8: factor_label, 9: floor (optional), 10: time}   ledger key
    type 5  release         {0: 1, 1: 3, 2: site, 3: dev, 4: slot, 5: reason,
                             6: time}: a slot held by a smart-meter mismatch
                             (SPEC §13) may be issued              ledger key
    type 6  issuance        {0: 1, 1: site, 2: dev, 3: slot, 4: supplement,
                             5: owner, 6: place, 7: factor_mg, 8: factor_label,
                             9: [reading leaf...], 10: [[type, self_mwh, carry_in,
                             grams, carry_out]...], 11: time}          ledger key
    type 9  retirement      {0: 1, 1: account, 2: grams, 3: [[issuance leaf,
                             lot index, grams]...], 4: beneficiary, 5: purpose,
                             6: year, 7: time, 8: nonce}               the account's key

Types 7 (orders) and 8 (trades) belong to the market. A lot is named by
``(issuance leaf, lot index)``: the index of its type in the issuance's list.

Parsing checks every field's type and range, so a parsed leaf is well formed;
signature checks need the right key and are a separate argument.
"""

from crev import cbor
from crev.cose import Sign1
from crev.dgcc import ROLE_GENERATION, SOURCE_NAMES
from crev.errors import CrevError, InvalidInput
from crev.reading import Reading, valid_device_id

LEAF_ACCOUNT = 4
LEAF_SITE = 5
LEAF_ISSUANCE = 6
LEAF_ORDER = 7
LEAF_TRADE = 8
LEAF_RETIREMENT = 9
REGISTRY_LEAVES = (LEAF_ACCOUNT, LEAF_SITE, LEAF_ISSUANCE, LEAF_ORDER, LEAF_TRADE, LEAF_RETIREMENT)

FORMAT_VERSION = 1

ACCOUNT_OPEN = 1
ACCOUNT_KEY_CHANGE = 2
ACCOUNT_CLOSE = 3
ROLE_PARTICIPANT = 1
ROLE_OPERATOR = 2

SITE_REGISTER = 1
SITE_CHANGE = 2
SITE_RELEASE = 3  # SPEC §13: a slot held by a smart-meter mismatch is released (class Release)

SLOT_S = 1800
# grams = floor((carry + self_mWh × factor_mg_per_kWh) / 10^9): mWh × mg/kWh is 10^-9 g.
NANOGRAMS_PER_GRAM = 1000000000

MAX_NAME = 100
MAX_TEXT = 200
MAX_LABEL = 100
MAX_PATH = 255
MAX_SEGMENT = 64
MAX_DEPTH = 8
MAX_FACTOR_MG = 2000000  # 2000 g-CO2/kWh
MAX_GRAMS = 1 << 53

# Retirement map keys.
R_ACCOUNT, R_GRAMS, R_LOTS, R_BENEFICIARY, R_PURPOSE, R_YEAR, R_TIME, R_NONCE = range(1, 9)


class RegistryFormatError(InvalidInput):
    """A registry leaf is not what its signer should have signed."""

    def __init__(self, detail: str) -> None:
        super().__init__("REGISTRY_FORMAT", detail)


# ------------------------------------------------------------------ values


def _uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: object, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and value == value.strip() and _printable(value)


def _printable(text: str) -> bool:
    return all(32 <= ord(c) != 127 for c in text)


def path_problem(path: object) -> "str | None":
    """None when ``path`` is a place or type path of SPEC §8, else what is wrong.

    Segments are separated by one ``/``; none is empty or has leading or
    trailing spaces, so ``Japan//Tokyo``, ``/Japan`` and ``Japan/`` are refused.
    """
    if not isinstance(path, str) or not path:
        return "a path is a non-empty text such as Japan/Fukushima/Koriyama"
    if len(path) > MAX_PATH:
        return "a path has at most %d characters" % MAX_PATH
    segments = path.split("/")
    if len(segments) > MAX_DEPTH:
        return "a path has at most %d segments" % MAX_DEPTH
    for segment in segments:
        if not segment:
            return "%r has an empty segment (no leading, trailing or doubled '/')" % path
        if segment != segment.strip() or not _printable(segment):
            return "%r has a segment with surrounding spaces or control characters" % path
        if len(segment) > MAX_SEGMENT:
            return "%r has a segment longer than %d characters" % (path, MAX_SEGMENT)
    return None


def path_matches(condition: str, path: str) -> bool:
    """SPEC §8: a condition matches its path and every path below it, whole segment by segment."""
    return path == condition or path.startswith(condition + "/")


def _ascii_digits(text: str) -> bool:
    # str.isdigit() also takes "١" and "²": a quantity is written in ASCII digits only.
    return bool(text) and all("0" <= c <= "9" for c in text)


def parse_decimal(text: str, places: int, what: str) -> int:
    """A positive decimal with at most ``places`` decimals, in units of 10^-places.

    ``parse_decimal("1.5", 3, "--kg")`` is 1500. Raises ValueError with a
    sentence saying what is wrong.
    """
    value = text.strip() if isinstance(text, str) else ""
    whole, dot, part = value.partition(".")
    if not whole:
        whole = "0" if dot and part else ""
    if not _ascii_digits(whole) or (dot and not _ascii_digits(part)):
        raise ValueError("%s %r is not a positive number such as 12.5" % (what, text))
    if len(part) > places:
        raise ValueError("%s %r has more than %d decimals" % (what, text, places))
    units = int(whole) * 10**places + int((part + "0" * places)[:places] or "0")  # type: int
    if units <= 0:
        raise ValueError("%s must be more than zero" % what)
    return units


def parse_kg(text: str) -> int:
    """``--kg`` to whole grams: up to three decimals, more than zero."""
    grams = parse_decimal(text, 3, "--kg")
    if grams > MAX_GRAMS:
        raise ValueError("--kg %r is beyond any registry's holdings" % text)
    return grams


def format_kg(grams: int) -> str:
    sign = "-" if grams < 0 else ""
    return "%s%d.%03d" % (sign, abs(grams) // 1000, abs(grams) % 1000)


def slot_of(t1: int) -> int:
    """SPEC §2: the start S of the 30-minute slot (S, S+1800] that holds t1."""
    return ((t1 - 1) // SLOT_S) * SLOT_S


def lot_id(issuance_leaf: int, index: int) -> str:
    return "%d.%d" % (issuance_leaf, index)


def parse_lot_id(text: str) -> tuple:
    leaf, dot, index = text.partition(".")
    if not dot or not leaf.isdigit() or not index.isdigit():
        raise ValueError("a lot id is ISSUANCE.INDEX, such as 1234.0")
    return int(leaf), int(index)


# ------------------------------------------------------------------ envelopes


def signed_map(signed: bytes, public_key: "bytes | None", what: str) -> tuple:
    """Parse a COSE_Sign1 over a map; verify it when ``public_key`` is given.

    Returns ``(fields, kid)``. Raises RegistryFormatError.
    """
    try:
        envelope = Sign1.from_bytes(signed)
        if public_key is not None:
            envelope.verify(public_key)
        fields = cbor.loads(envelope.payload)
    except CrevError as err:
        raise RegistryFormatError("%s: %s" % (what, err))
    if not isinstance(fields, dict):
        raise RegistryFormatError("%s is not a map" % what)
    if fields.get(0) != FORMAT_VERSION:
        raise RegistryFormatError("%s is not format version %d" % (what, FORMAT_VERSION))
    return fields, envelope.kid


def _need(fields: dict, keys: tuple, optional: tuple, what: str) -> None:
    for key in keys:
        if key not in fields:
            raise RegistryFormatError("%s lacks field %d" % (what, key))
    for key in fields:
        if key not in keys and key not in optional:
            raise RegistryFormatError("%s has an unknown field %d" % (what, key))


# ------------------------------------------------------------------ type 4: account events


class AccountEvent:
    def __init__(
        self, action: int, account: str, name: str, pubkey: bytes, disclosed: bool, role: int, time_s: int
    ) -> None:
        self.action = action
        self.account = account
        self.name = name
        self.pubkey = pubkey
        self.disclosed = disclosed
        self.role = role
        self.time_s = time_s

    def to_map(self) -> dict:
        return {
            0: FORMAT_VERSION,
            1: self.action,
            2: self.account,
            3: self.name,
            4: self.pubkey,
            5: self.disclosed,
            6: self.role,
            7: self.time_s,
        }

    @classmethod
    def parse(cls, signed: bytes, ledger_key: "bytes | None") -> "AccountEvent":
        fields, _kid = signed_map(signed, ledger_key, "account event")
        _need(fields, (0, 1, 2, 3, 4, 5, 6, 7), (), "account event")
        event = cls(fields[1], fields[2], fields[3], fields[4], fields[5], fields[6], fields[7])
        problem = event.problem()
        if problem:
            raise RegistryFormatError("account event: " + problem)
        return event

    def problem(self) -> "str | None":
        if self.action not in (ACCOUNT_OPEN, ACCOUNT_KEY_CHANGE, ACCOUNT_CLOSE) or not _uint(self.action):
            return "action must be 1 (open), 2 (key change) or 3 (close)"
        if not valid_device_id(self.account):
            return "account id %r does not follow ^[a-z0-9][a-z0-9-]{2,62}$" % (self.account,)
        if not _text(self.name, MAX_NAME):
            return "name must be 1..%d printable characters without surrounding spaces" % MAX_NAME
        if not isinstance(self.pubkey, bytes) or len(self.pubkey) != 32:
            return "pubkey must be 32 bytes"
        if self.disclosed is not True and self.disclosed is not False:
            return "disclosed must be true or false"
        if self.role not in (ROLE_PARTICIPANT, ROLE_OPERATOR) or not _uint(self.role):
            return "role must be 1 (participant) or 2 (operator)"
        if not _uint(self.time_s):
            return "time must be an unsigned integer"
        return None


# ------------------------------------------------------------------ type 5: site events


class SiteEvent:
    def __init__(
        self,
        action: int,
        site: str,
        owner: str,
        place: str,
        devices: list,
        types: list,
        factor_mg: int,
        factor_label: str,
        floor: "int | None",
        time_s: int,
    ) -> None:
        self.action = action
        self.site = site
        self.owner = owner
        self.place = place
        self.devices = devices  # sorted device ids
        self.types = types  # [[meter_id, type path]] sorted by meter_id
        self.factor_mg = factor_mg
        self.factor_label = factor_label
        self.floor = floor  # the controller's minimum price, in 1/100 yen per kg; None: it may not sell
        self.time_s = time_s

    def to_map(self) -> dict:
        fields = {
            0: FORMAT_VERSION,
            1: self.action,
            2: self.site,
            3: self.owner,
            4: self.place,
            5: list(self.devices),
            6: [list(t) for t in self.types],
            7: self.factor_mg,
            8: self.factor_label,
            10: self.time_s,
        }  # type: dict[int, object]
        if self.floor is not None:
            fields[9] = self.floor
        return fields

    def type_of(self, meter_id: str, source_name: str) -> "str | None":
        """The type path of a generator meter; None when the site's path is not under its source."""
        for entry in self.types:
            if entry[0] == meter_id:
                path = entry[1]
                return path if path_matches(source_name, path) else None
        return source_name

    @classmethod
    def parse(cls, signed: bytes, ledger_key: "bytes | None") -> "SiteEvent":
        fields, _kid = signed_map(signed, ledger_key, "site event")
        return cls.from_fields(fields)

    @classmethod
    def from_fields(cls, fields: dict) -> "SiteEvent":
        _need(fields, (0, 1, 2, 3, 4, 5, 6, 7, 8, 10), (9,), "site event")
        event = cls(
            fields[1],
            fields[2],
            fields[3],
            fields[4],
            fields[5],
            fields[6],
            fields[7],
            fields[8],
            fields.get(9),
            fields[10],
        )
        problem = event.problem()
        if problem:
            raise RegistryFormatError("site event: " + problem)
        return event

    def problem(self) -> "str | None":
        if self.action not in (SITE_REGISTER, SITE_CHANGE) or not _uint(self.action):
            return "action must be 1 (register) or 2 (change)"
        if not valid_device_id(self.site) or not valid_device_id(self.owner):
            return "site and owner must be ids like ^[a-z0-9][a-z0-9-]{2,62}$"
        problem = path_problem(self.place)
        if problem:
            return "place: " + problem
        if not isinstance(self.devices, list) or not self.devices:
            return "a site has at least one device"
        for i, dev in enumerate(self.devices):
            if not valid_device_id(dev) or (i and dev <= self.devices[i - 1]):
                return "devices must be valid device ids, sorted and unique"
        if not isinstance(self.types, list):
            return "types must be a list"
        for i, entry in enumerate(self.types):
            if not isinstance(entry, list) or len(entry) != 2 or not _text(entry[0], 64):
                return "a type entry is [meter_id, type path]"
            if i and entry[0] <= self.types[i - 1][0]:
                return "type entries must be sorted by meter_id and unique"
            problem = path_problem(entry[1])
            if problem:
                return "type of %s: %s" % (entry[0], problem)
        if not _uint(self.factor_mg) or self.factor_mg > MAX_FACTOR_MG:
            return "factor must be 0..%d mg-CO2/kWh" % MAX_FACTOR_MG
        if not _text(self.factor_label, MAX_LABEL):
            return "the factor's label must be 1..%d printable characters" % MAX_LABEL
        if self.floor is not None and (not _uint(self.floor) or self.floor == 0):
            return "the controller's floor price must be a positive number of 1/100 yen"
        if not _uint(self.time_s):
            return "time must be an unsigned integer"
        return None


class Release:
    """A type 5 leaf with action 3 (SPEC §13): an operator releases the issuance of one device's
    slot held by a SMART_METER_MISMATCH, giving the reason."""

    def __init__(self, site: str, dev: str, slot: int, reason: str, time_s: int) -> None:
        self.action = SITE_RELEASE
        self.site = site
        self.dev = dev
        self.slot = slot
        self.reason = reason
        self.time_s = time_s

    def to_map(self) -> dict:
        return {
            0: FORMAT_VERSION,
            1: SITE_RELEASE,
            2: self.site,
            3: self.dev,
            4: self.slot,
            5: self.reason,
            6: self.time_s,
        }

    @classmethod
    def from_fields(cls, fields: dict) -> "Release":
        _need(fields, (0, 1, 2, 3, 4, 5, 6), (), "release")
        release = cls(fields[2], fields[3], fields[4], fields[5], fields[6])
        problem = release.problem()
        if problem:
            raise RegistryFormatError("release: " + problem)
        return release

    def problem(self) -> "str | None":
        if not valid_device_id(self.site) or not valid_device_id(self.dev):
            return "site and dev must be valid ids"
        if not _uint(self.slot) or self.slot % SLOT_S:
            return "slot must be a multiple of %d seconds" % SLOT_S
        if not _text(self.reason, MAX_TEXT):
            return "the reason must be 1..%d printable characters without surrounding spaces" % MAX_TEXT
        if not _uint(self.time_s):
            return "time must be an unsigned integer"
        return None


def parse_site_leaf(signed: bytes, ledger_key: "bytes | None") -> "SiteEvent | Release":
    """A type 5 leaf: a site event (register, change) or a release (action 3)."""
    fields, _kid = signed_map(signed, ledger_key, "site event")
    if fields.get(1) == SITE_RELEASE:
        return Release.from_fields(fields)
    return SiteEvent.from_fields(fields)


# ------------------------------------------------------------------ type 6: issuance


class Issuance:
    def __init__(
        self,
        site: str,
        dev: str,
        slot: int,
        supplement: int,
        owner: str,
        place: str,
        factor_mg: int,
        factor_label: str,
        readings: list,
        lots: list,
        time_s: int,
    ) -> None:
        self.site = site
        self.dev = dev
        self.slot = slot
        self.supplement = supplement  # 0 for a slot's first issuance, then 1, 2, ... for late readings
        self.owner = owner
        self.place = place
        self.factor_mg = factor_mg
        self.factor_label = factor_label
        self.readings = readings  # leaf indices of the readings covered, ascending
        self.lots = lots  # [[type, self_mwh, carry_in, grams, carry_out]] sorted by type
        self.time_s = time_s

    def to_map(self) -> dict:
        return {
            0: FORMAT_VERSION,
            1: self.site,
            2: self.dev,
            3: self.slot,
            4: self.supplement,
            5: self.owner,
            6: self.place,
            7: self.factor_mg,
            8: self.factor_label,
            9: list(self.readings),
            10: [list(lot) for lot in self.lots],
            11: self.time_s,
        }

    def grams(self) -> int:
        total = 0
        for lot in self.lots:
            total += lot[3]
        return total

    @classmethod
    def parse(cls, signed: bytes, ledger_key: "bytes | None") -> "Issuance":
        fields, _kid = signed_map(signed, ledger_key, "issuance")
        _need(fields, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), (), "issuance")
        issuance = cls(*[fields[k] for k in range(1, 12)])
        problem = issuance.problem()
        if problem:
            raise RegistryFormatError("issuance: " + problem)
        return issuance

    def problem(self) -> "str | None":
        if not valid_device_id(self.site) or not valid_device_id(self.dev) or not valid_device_id(self.owner):
            return "site, dev and owner must be valid ids"
        if not _uint(self.slot) or self.slot % SLOT_S:
            return "slot must be a multiple of %d seconds" % SLOT_S
        if not _uint(self.supplement) or not _uint(self.time_s):
            return "supplement and time must be unsigned integers"
        problem = path_problem(self.place)
        if problem:
            return "place: " + problem
        if not _uint(self.factor_mg) or self.factor_mg > MAX_FACTOR_MG or not _text(self.factor_label, MAX_LABEL):
            return "factor must be 0..%d mg-CO2/kWh with a label" % MAX_FACTOR_MG
        if not isinstance(self.readings, list) or not self.readings:
            return "an issuance covers at least one reading"
        for i, leaf in enumerate(self.readings):
            if not _uint(leaf) or (i and leaf <= self.readings[i - 1]):
                return "reading leaf indices must be ascending and unique"
        if not isinstance(self.lots, list):
            return "lots must be a list"
        for i, lot in enumerate(self.lots):
            if not isinstance(lot, list) or len(lot) != 5 or path_problem(lot[0]) is not None:
                return "a lot is [type, self_mwh, carry_in, grams, carry_out]"
            if i and lot[0] <= self.lots[i - 1][0]:
                return "lots must be sorted by type and unique"
            for value in lot[1:]:
                if not _uint(value):
                    return "a lot's quantities are unsigned integers"
            if lot[2] >= NANOGRAMS_PER_GRAM or lot[4] >= NANOGRAMS_PER_GRAM:
                return "a carry is less than one gram (10^9 units)"
        return None


def issue_type(self_mwh: int, factor_mg: int, carry_in: int) -> tuple:
    """SPEC §8: ``(grams, carry_out)`` of one type in one issuance, exactly."""
    total = carry_in + self_mwh * factor_mg
    return total // NANOGRAMS_PER_GRAM, total % NANOGRAMS_PER_GRAM


def generation_entries(reading: Reading) -> "list | None":
    """``[[meter_id, source, self_mwh], ...]`` of a reading's generators (key 9), or None without energies."""
    if reading.generator_self is None:
        return None
    sources = {}
    for channel in reading.channels:
        if channel[0] == ROLE_GENERATION:
            sources[channel[1]] = channel[2]
    return [[meter_id, sources[meter_id], self_j] for meter_id, self_j in reading.generator_self]


def type_sums(entries: "list | None", site: SiteEvent) -> dict:
    """Self-consumption per type path of one reading, from its generation entries.

    Raises RegistryFormatError when the site gives a meter a type that is
    not under the meter's source: such a reading is held, never guessed.
    """
    sums = {}  # type: dict[str, int]
    for meter_id, source, self_j in entries or ():
        source_name = SOURCE_NAMES[source]
        path = site.type_of(meter_id, source_name)
        if path is None:
            raise RegistryFormatError(
                "site %s gives meter %s a type outside its source %s" % (site.site, meter_id, source_name)
            )
        sums[path] = sums.get(path, 0) + self_j
    return sums


def compute_lots(type_sums: list, carries: dict, factor_mg: int) -> list:
    """The lots of one issuance from its readings' per-type sums.

    ``type_sums`` holds one {type: self_mwh} per reading; ``carries`` the
    carry per type before this issuance (absent: 0).
    """
    totals = {}  # type: dict[str, int]
    for sums in type_sums:
        for path in sums:
            totals[path] = totals.get(path, 0) + sums[path]
    lots = []
    for path in sorted(totals):
        carry_in = carries.get(path, 0)
        grams, carry_out = issue_type(totals[path], factor_mg, carry_in)
        lots.append([path, totals[path], carry_in, grams, carry_out])
    return lots


# ------------------------------------------------------------------ type 9: retirement


class Retirement:
    def __init__(
        self,
        account: str,
        grams: int,
        lots: list,
        beneficiary: str,
        purpose: str,
        year: int,
        time_s: int,
        nonce: bytes,
    ) -> None:
        self.account = account
        self.grams = grams
        self.lots = lots  # [[issuance leaf, lot index, grams]], oldest slot first
        self.beneficiary = beneficiary
        self.purpose = purpose
        self.year = year
        self.time_s = time_s
        self.nonce = nonce
        self.kid = b""

    def to_map(self) -> dict:
        return {
            0: FORMAT_VERSION,
            R_ACCOUNT: self.account,
            R_GRAMS: self.grams,
            R_LOTS: [list(lot) for lot in self.lots],
            R_BENEFICIARY: self.beneficiary,
            R_PURPOSE: self.purpose,
            R_YEAR: self.year,
            R_TIME: self.time_s,
            R_NONCE: self.nonce,
        }

    @classmethod
    def parse(cls, signed: bytes, account_key: "bytes | None") -> "Retirement":
        """Parse a retirement; with ``account_key``, also verify the account's signature."""
        fields, kid = signed_map(signed, account_key, "retirement")
        _need(fields, (0, 1, 2, 3, 4, 5, 6, 7, 8), (), "retirement")
        retirement = cls(*[fields[k] for k in range(1, 9)])
        retirement.kid = kid
        problem = retirement.problem()
        if problem:
            raise RegistryFormatError("retirement: " + problem)
        return retirement

    def problem(self) -> "str | None":
        if not valid_device_id(self.account):
            return "account must be a valid id"
        if not _uint(self.grams) or self.grams == 0 or self.grams > MAX_GRAMS:
            return "grams must be a positive whole number"
        if not isinstance(self.lots, list) or not self.lots:
            return "a retirement names the lots it takes"
        total = 0
        seen = []
        for lot in self.lots:
            if not isinstance(lot, list) or len(lot) != 3 or not all(_uint(v) for v in lot) or lot[2] == 0:
                return "a lot taken is [issuance leaf, lot index, grams > 0]"
            if [lot[0], lot[1]] in seen:
                return "lot %d.%d is named twice" % (lot[0], lot[1])
            seen.append([lot[0], lot[1]])
            total += lot[2]
        if total != self.grams:
            return "the lots add up to %d g, not the %d g retired" % (total, self.grams)
        if not _text(self.beneficiary, MAX_TEXT) or not _text(self.purpose, MAX_TEXT):
            return "beneficiary and purpose must be 1..%d printable characters" % MAX_TEXT
        if not _uint(self.year) or not 2000 <= self.year <= 2200:
            return "the reporting year must be between 2000 and 2200"
        if not _uint(self.time_s):
            return "time must be an unsigned integer"
        if not isinstance(self.nonce, bytes) or len(self.nonce) != 16:
            return "nonce must be 16 bytes"
        return None
