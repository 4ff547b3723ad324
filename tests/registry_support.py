"""Registry test helpers: sites on a LocalIngest, a two-generator device, hand computations and a replay.

``replay`` re-derives every issuance from the ledger's leaves alone and checks
the registry's tables against them, so each registry test ends with the same
independent account of what was issued.
"""

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest
from store_support import storage_toml

from crev import cbor
from crev.dgcc import SOURCE_NAMES
from crev.keys import SigningKey
from crev.ledger_format import LEAF_READING
from crev.reading import Reading
from crev.registry_format import LEAF_ISSUANCE, NANOGRAMS_PER_GRAM, SLOT_S, Issuance, slot_of
from crev_ingest.database import Database
from crev_ingest.validate import Outcome
from crev_market.registry import Registry

ORIGIN = "crev.test/ledger"
FACTOR_MG = 441_234  # 441.234 g-CO2/kWh: a factor whose carries matter
FACTOR_LABEL = "test factor"
OWNER = "owner-0001"
OWNER_KEY = SigningKey(bytes([61]) * 32)
PLACE = "Japan/Fukushima/Koriyama"
# A slot boundary well in the past, so that days of readings still end before NOW.
BASE = (NOW - 5 * 86400) // SLOT_S * SLOT_S


def quiet(ingest: LocalIngest) -> LocalIngest:
    """Seal only when the test says so (or when the registry seals its own leaves)."""
    ingest.ledger.block_max_leaves = 1 << 40
    return ingest


def relaxed(ingest: LocalIngest) -> LocalIngest:
    """No fsync per commit (PRAGMA synchronous=OFF): for tests that commit thousands of times and never crash.

    On PostgreSQL the tests' server runs without fsync already (postgres_support).
    """
    if ingest.store.db.dialect == "sqlite":
        ingest.store.db.execute("PRAGMA synchronous=OFF")
    return ingest


def send(ingest: LocalIngest, raw: bytes) -> Outcome:
    """Ingest one reading without sealing; the ledger is synced first, as other stores may have appended."""
    topic = "crev/v1/%s/reading" % Reading.from_cose(raw).dev
    with ingest.store.transaction():
        ingest.ledger.sync()
        outcome = ingest.ingestor.process(topic, raw, NOW * 1000)
    assert outcome.status == "accepted", (outcome.status, outcome.reason, outcome.detail)
    return outcome


def send_many(ingest: LocalIngest, raws: list[bytes]) -> None:
    """Ingest readings in one transaction (fast bulk loading), without sealing."""
    with ingest.store.transaction():
        ingest.ledger.sync()
        for raw in raws:
            topic = "crev/v1/%s/reading" % Reading.from_cose(raw).dev
            outcome = ingest.ingestor.process(topic, raw, NOW * 1000)
            assert outcome.status == "accepted", (outcome.status, outcome.reason, outcome.detail)


def seal(ingest: LocalIngest) -> None:
    with ingest.store.transaction():
        ingest.ledger.sync()
        if ingest.ledger.size > ingest.ledger.sealed_size:
            ingest.ledger.seal(NOW * 1000)


def make_registry(ingest: LocalIngest, factor_mg: int = FACTOR_MG) -> Registry:
    return Registry(ingest.store, ingest.ledger, factor_mg, FACTOR_LABEL)


def open_owner(registry: Registry, account: str = OWNER, key: SigningKey = OWNER_KEY) -> None:
    registry.add_account(account, "Owner " + account, key.public_key, True, NOW * 1000)


def add_site(
    registry: Registry,
    site: str,
    devices: list[str],
    types: dict[str, str] | None = None,
    factor_mg: int | None = FACTOR_MG,
    owner: str = OWNER,
) -> int:
    label = None if factor_mg is None else FACTOR_LABEL
    return registry.add_site(site, owner, PLACE, devices, types or {}, factor_mg, label, None, NOW * 1000)


@dataclass
class TwoGenDevice(Device):
    """A site with a solar and a wind generator meter: counters are [solar, wind, import, export]."""

    counters: list[int] = field(default_factory=lambda: [1_000_000, 3_000_000, 500_000, 200_000])

    @property
    def solar(self) -> str:
        return "PV-" + self.dev

    @property
    def wind(self) -> str:
        return "WT-" + self.dev

    def channels(self) -> list[tuple[int, str, int, int]]:
        s, w, i, e = self.counters
        grid = "G-" + self.dev
        return [(0, self.solar, 1, s), (0, self.wind, 2, w), (1, grid, 0, i), (2, grid, 0, e)]

    def next(
        self, gen: int = 50_000, imp: int = 10_000, exp: int = 20_000, advance: bool = True, wind: int = 0
    ) -> bytes:
        """``gen`` is the solar meter's Δ and ``wind`` the wind meter's."""
        counters = [self.counters[0] + gen, self.counters[1] + wind, self.counters[2] + imp, self.counters[3] + exp]
        saved, self.counters = self.counters, counters
        t1 = self.t1 + 60
        reading = self.head.next_reading(self.dev, t1, 1, self.channels(), "crev-test/1", t0=t1 - 60)
        cose = reading.sign(self.key)
        if advance:
            self.head = self.head.advance(reading, cose)
            self.t1 = t1
        else:
            self.counters = saved
        return cose


def step(device: Device, seconds: int, gen: int, imp: int, exp: int, wind: int = 0) -> bytes:
    """The device's next reading, ``seconds`` after its previous one (it starts where the last one ended)."""
    device.t1 += seconds - 60
    if isinstance(device, TwoGenDevice):
        return device.next(gen, imp, exp, wind=wind)
    assert wind == 0, "a one-generator device has no wind meter"
    return device.next(gen, imp, exp)


def split_self(total: int, generation: list[int]) -> list[int]:
    """SPEC §2 by hand: floor shares, then one mWh each to the largest remainders (ties: channel order)."""
    g = sum(generation)
    if g == 0:
        return [0] * len(generation)
    shares = [total * gj // g for gj in generation]
    order = sorted(range(len(generation)), key=lambda j: (-(total * generation[j] % g), j))
    for j in order[: total - sum(shares)]:
        shares[j] += 1
    return shares


def expected_self(generation: list[int], imp: int, exp: int) -> list[int]:
    """self_j of one interval by hand: self = G − E, or 0 when E > G (EXPORT_EXCEEDS_GEN)."""
    g = sum(generation)
    return split_self(0 if exp > g else g - exp, generation)


def issue_now(registry: Registry) -> int:
    return registry.issue(NOW * 1000).issuances


def write_ledger_key(path: Path) -> Path:
    """ingest_support.LEDGER_KEY as a key file, so the CLI signs with the ledger LocalIngest built."""
    path.write_text(LEDGER_KEY.seed_bytes().hex() + "\n")
    path.chmod(0o600)
    return path


def write_ingest_config(directory: Path, factor_g: str = "441.234", store_url: str | None = None) -> Path:
    """An ingest.toml on ``directory``/crev.sqlite, or on the PostgreSQL database ``store_url``."""
    write_ledger_key(directory / "ledger.key")
    config = directory / "ingest.toml"
    config.write_text(
        '[mqtt]\nurl = "mqtt://127.0.0.1:1"\n\n[storage]\n%s\n\n'
        '[ledger]\nkey = "ledger.key"\norigin = "%s"\nblock_interval_s = 3600\nblock_max_leaves = 100000\n\n'
        "[emission]\ndefault_g_per_kwh = %s\n" % (storage_toml(store_url), ORIGIN, factor_g)
    )
    return config


def table_counts(db: "sqlite3.Connection | Database") -> dict[str, int]:
    tables = (
        "leaves",
        "blocks",
        "account_events",
        "site_events",
        "site_devices",
        "issuances",
        "lots",
        "lot_moves",
        "retirements",
    )
    return {t: int(db.execute("SELECT count(*) FROM %s" % t).fetchone()[0]) for t in tables}


# ------------------------------------------------------------------ replay


@dataclass
class ReadingLeaf:
    leaf: int
    dev: str
    seq: int
    t1: int
    generators: list[tuple[str, str, int]] | None  # (meter_id, source name, self_j); None without energies

    @property
    def slot(self) -> int:
        return slot_of(self.t1)

    @property
    def self_mwh(self) -> int:
        return sum(g[2] for g in self.generators or ())

    def by_type(self, types: dict[str, str]) -> dict[str, int]:
        sums: dict[str, int] = {}
        for meter_id, source, self_j in self.generators or ():
            path = types.get(meter_id, source)
            sums[path] = sums.get(path, 0) + self_j
        return sums


@dataclass
class Replay:
    readings: dict[int, ReadingLeaf]
    issuances: list[tuple[int, Issuance]]  # in leaf order
    covered: dict[int, int]  # reading leaf -> issuance leaf
    grams: dict[tuple[str, str], int]  # (dev, type) -> grams issued
    carry: dict[tuple[str, str], int]  # (dev, type) -> the last carry_out
    self_issued: dict[tuple[str, str], int]  # (dev, type) -> self_mWh of the readings covered
    nanograms: dict[tuple[str, str], int]  # (dev, type) -> Σ self_mWh × factor of the readings covered
    sealed_size: int

    def open_slot(self, dev: str) -> int | None:
        """The slot of the device's latest sealed reading: every slot before it is closed."""
        t1s = [r.t1 for r in self.readings.values() if r.dev == dev and r.leaf < self.sealed_size]
        return slot_of(max(t1s)) if t1s else None

    def closed(self, reading: ReadingLeaf) -> bool:
        open_slot = self.open_slot(reading.dev)
        return reading.leaf < self.sealed_size and open_slot is not None and reading.slot < open_slot

    def unissued(self) -> list[ReadingLeaf]:
        """Sealed readings of closed slots that self-consumed something and are in no issuance."""
        return [r for r in self.readings.values() if self.closed(r) and r.self_mwh > 0 and r.leaf not in self.covered]


def _rows(db: "sqlite3.Connection | Database", query: str) -> list[tuple[object, ...]]:
    return [tuple(row) for row in db.execute(query)]


def replay(db: "sqlite3.Connection | Database", types: dict[str, str] | None = None) -> Replay:
    """Re-derive every issuance from the leaves and check the registry's rows against them.

    ``types`` maps generator meters to their site's type paths (default: the
    source's name). Asserts: each issuance is signed by the ledger key; the
    issuances, lots and issuing lot moves rows are exactly what the leaves
    say; no reading leaf is in two issuances; each covers only sealed readings
    of its device and slot, once that slot was closed; supplements count
    0, 1, 2, ...; each lot's self_mWh is its readings' and its grams and carry
    follow exactly from the previous carry of its (device, type).
    """
    types = types or {}
    blocks = sorted(int(r[0]) for r in db.execute("SELECT tree_size FROM blocks"))
    readings: dict[int, ReadingLeaf] = {}
    issuances: list[tuple[int, Issuance]] = []
    for idx, leaf_type, data in db.execute("SELECT idx, type, data FROM leaves ORDER BY idx"):
        decoded = cbor.loads(bytes(data))
        assert isinstance(decoded, list) and decoded[0] == leaf_type
        if leaf_type == LEAF_READING:
            reading = Reading.from_cose(decoded[2])
            generators = None
            if reading.generator_self is not None:
                sources = {c[1]: SOURCE_NAMES[c[2]] for c in reading.channels if c[0] == 0}
                generators = [(m, sources[m], s) for m, s in reading.generator_self]
            readings[idx] = ReadingLeaf(idx, reading.dev, reading.seq, reading.t1, generators)
        elif leaf_type == LEAF_ISSUANCE:
            issuances.append((idx, Issuance.parse(decoded[2], LEDGER_KEY.public_key)))

    # The tables say exactly what the leaves say.
    issuance_rows = [
        (leaf, i.site, i.dev, i.slot, i.supplement, i.owner, i.place, i.factor_mg, i.factor_label, len(i.readings))
        for leaf, i in issuances
    ]
    assert (
        _rows(
            db,
            "SELECT leaf_idx, site, dev, slot, supplement, owner, place, factor_mg, factor_label, readings "
            "FROM issuances ORDER BY leaf_idx",
        )
        == issuance_rows
    ), "the issuances table disagrees with the issuance leaves"
    assert [int(r[0]) for r in db.execute("SELECT time FROM issuances ORDER BY leaf_idx")] == [
        i.time_s for _, i in issuances
    ]
    assert _rows(
        db,
        "SELECT issuance_leaf, lot_index, type, self_mwh, carry_in, grams, carry_out, dev FROM lots "
        "ORDER BY issuance_leaf, lot_index",
    ) == [(leaf, n, *lot, i.dev) for leaf, i in issuances for n, lot in enumerate(i.lots)], (
        "the lots table disagrees with the issuance leaves"
    )
    issuance_leaves = {leaf for leaf, _ in issuances}
    assert _rows(
        db,
        "SELECT leaf_idx, issuance_leaf, lot_index, from_account, to_account, grams FROM lot_moves "
        "WHERE from_account IS NULL ORDER BY leaf_idx, lot_index",
    ) == [(leaf, leaf, n, None, i.owner, lot[3]) for leaf, i in issuances for n, lot in enumerate(i.lots) if lot[3]], (
        "the issuing lot moves disagree with the issuance leaves"
    )
    assert {int(r[0]) for r in db.execute("SELECT issuance_leaf FROM lot_moves")} <= issuance_leaves

    covered: dict[int, int] = {}
    supplements: dict[tuple[str, int], int] = {}
    grams: dict[tuple[str, str], int] = {}
    carry: dict[tuple[str, str], int] = {}
    self_issued: dict[tuple[str, str], int] = {}
    nanograms: dict[tuple[str, str], int] = {}
    for leaf, issuance in issuances:
        sealed_then = max((size for size in blocks if size <= leaf), default=0)
        sums: dict[str, int] = {}
        for r_leaf in issuance.readings:
            assert r_leaf not in covered, "reading leaf %d is in issuances %d and %d" % (r_leaf, covered[r_leaf], leaf)
            covered[r_leaf] = leaf
            covers = readings.get(r_leaf)
            assert covers is not None, "issuance %d covers leaf %d, which is not a reading" % (leaf, r_leaf)
            assert covers.dev == issuance.dev and covers.slot == issuance.slot, (
                "issuance %d (%s, slot %d) covers %s seq %d of slot %d"
                % (leaf, issuance.dev, issuance.slot, covers.dev, covers.seq, covers.slot)
            )
            assert r_leaf < sealed_then, "issuance %d covers leaf %d, not sealed before it" % (leaf, r_leaf)
            for path, mwh in covers.by_type(types).items():
                sums[path] = sums.get(path, 0) + mwh
        assert any(
            r.dev == issuance.dev and r.leaf < sealed_then and r.t1 > issuance.slot + SLOT_S for r in readings.values()
        ), "issuance %d of slot %d before the slot was closed" % (leaf, issuance.slot)
        expected_supplement = supplements.get((issuance.dev, issuance.slot), 0)
        assert issuance.supplement == expected_supplement, "issuance %d of %s slot %d is supplement %d, expected %d" % (
            leaf,
            issuance.dev,
            issuance.slot,
            issuance.supplement,
            expected_supplement,
        )
        supplements[(issuance.dev, issuance.slot)] = expected_supplement + 1
        assert {lot[0]: lot[1] for lot in issuance.lots} == sums, (
            "issuance %d: lots %r, but its readings self-consumed %r" % (leaf, issuance.lots, sums)
        )
        assert any(lot[1] for lot in issuance.lots), "issuance %d issues nothing self-consumed" % leaf
        for path, self_mwh, carry_in, lot_grams, carry_out in issuance.lots:
            key = (issuance.dev, path)
            assert carry_in == carry.get(key, 0), "issuance %d %s: carry_in %d, the last carry_out was %d" % (
                leaf,
                path,
                carry_in,
                carry.get(key, 0),
            )
            total = carry_in + self_mwh * issuance.factor_mg
            assert (lot_grams, carry_out) == (total // NANOGRAMS_PER_GRAM, total % NANOGRAMS_PER_GRAM)
            grams[key] = grams.get(key, 0) + lot_grams
            carry[key] = carry_out
            self_issued[key] = self_issued.get(key, 0) + self_mwh
            nanograms[key] = nanograms.get(key, 0) + self_mwh * issuance.factor_mg
    return Replay(readings, issuances, covered, grams, carry, self_issued, nanograms, blocks[-1] if blocks else 0)
