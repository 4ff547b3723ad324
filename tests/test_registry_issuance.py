"""C-REV issuance (SPEC §8) over a real SQLite ledger: grams, carries, supplements, arrival orders and sites.

Every expected gram here is computed by hand from the meters' Δ values the
test feeds the devices, never from what the registry wrote; ``replay`` then
re-derives each issuance from the signed leaves and checks the tables.
"""

import functools
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest
from registry_support import (
    BASE,
    FACTOR_LABEL,
    FACTOR_MG,
    ORIGIN,
    OWNER,
    Replay,
    TwoGenDevice,
    add_site,
    expected_self,
    issue_now,
    make_registry,
    open_owner,
    quiet,
    relaxed,
    replay,
    seal,
    send,
    send_many,
    step,
)

from crev import cbor
from crev.keys import SigningKey
from crev.registry_format import LEAF_ISSUANCE, NANOGRAMS_PER_GRAM, SLOT_S, Issuance
from crev_ingest.ledger import Ledger
from crev_ingest.store import Store
from crev_market.registry import Registry

GIGA = NANOGRAMS_PER_GRAM
SITE = "site-0001"


def _device(dev: str = "dgc-issue-0001", seed: int = 31) -> Device:
    return Device(dev, SigningKey(bytes([seed]) * 32), t1=BASE)


def _two_gen(dev: str = "dgc-issue-0002", seed: int = 32) -> TwoGenDevice:
    return TwoGenDevice(dev, SigningKey(bytes([seed]) * 32), t1=BASE)


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[LocalIngest]:
    local = quiet(LocalIngest(tmp_path))
    yield local
    local.store.close()


def _carry_forward(carry: int, self_mwh: int, factor_mg: int) -> tuple[int, int, int]:
    """(carry_in, grams, carry_out) of one lot, by hand."""
    grams, carry_out = divmod(carry + self_mwh * factor_mg, GIGA)
    return carry, grams, carry_out


def _lots_by_slot(ingest: LocalIngest) -> list[tuple[int, int, str, int, int, int, int]]:
    rows = ingest.store.db.execute(
        "SELECT i.slot, i.supplement, l.type, l.self_mwh, l.carry_in, l.grams, l.carry_out "
        "FROM lots l JOIN issuances i ON i.leaf_idx = l.issuance_leaf ORDER BY i.leaf_idx, l.lot_index"
    )
    return [(int(a), int(b), str(c), int(d), int(e), int(f), int(g)) for a, b, c, d, e, f, g in rows]


# ------------------------------------------------------------------ grams and carries by hand

# (solar Δ, export Δ) of the first reading of each slot; later readings vary from it.
# Slot 3 is a night: nothing generated, nothing self-consumed, no issuance.
SLOT_PROFILES = [(37_003, 11_000), (120_517, 95_000), (999, 0), (0, 0), (654_321, 123_457)]


@pytest.mark.parametrize("passes", ["one pass", "a pass per slot"])
def test_grams_follow_the_hand_computed_carry_across_slots(ingest: LocalIngest, passes: str) -> None:
    device = _device()
    ingest.enroll(device)
    registry = make_registry(ingest)
    open_owner(registry)
    add_site(registry, SITE, [device.dev])

    per_slot: list[int] = []  # self_mWh of each slot, by hand
    batches: list[list[bytes]] = []
    for k, (gen0, exp0) in enumerate(SLOT_PROFILES):
        total, batch = 0, []
        for j in range(30):  # 30 readings of 60 s: t1 = S+60 .. S+1800
            gen = gen0 + 17 * j if gen0 else 0
            exp = exp0 + 3 * j if exp0 else 0
            if k == 1 and j == 7:
                exp = gen + 5  # EXPORT_EXCEEDS_GEN: self 0 for this interval, never negative
            batch.append(step(device, 60, gen, 4_000 + j, exp))
            if k or j:  # seq 0 has no baseline, hence no energies
                total += expected_self([gen], 4_000 + j, exp)[0]
        per_slot.append(total)
        batches.append(batch)
    closing = step(device, 60, 1_000, 0, 0)  # t1 = S5 + 60 closes slot 4

    # The data must make carries matter: slot by slot rounding would lose grams.
    assert sum(s * FACTOR_MG // GIGA for s in per_slot) < sum(per_slot) * FACTOR_MG // GIGA

    raws = [raw for batch in batches for raw in batch] + [closing]
    if passes == "one pass":
        send_many(ingest, raws)
        seal(ingest)
        issue_now(registry)
    else:
        sent = 0
        for k in range(len(SLOT_PROFILES)):
            end = 30 * (k + 1) + 1  # slot k, and the first reading of the next slot, which closes it
            send_many(ingest, raws[sent:end])
            sent = end
            seal(ingest)
            issue_now(registry)
        assert sent == len(raws)

    carry, expected = 0, []
    for k, self_mwh in enumerate(per_slot):
        if self_mwh == 0:
            continue  # nothing self-consumed: no issuance, the carry waits
        carry_in, grams, carry = _carry_forward(carry, self_mwh, FACTOR_MG)
        expected.append((BASE + k * SLOT_S, 0, "solar", self_mwh, carry_in, grams, carry))
    assert _lots_by_slot(ingest) == expected
    assert any(lot[4] for lot in expected), "no carry was ever passed on"

    held = {(lot[6], lot[4]): lot[7] for lot in registry.holdings(OWNER)}
    assert held == {(slot, "solar"): grams for slot, _, _, _, _, grams, _ in expected if grams}
    assert all(lot[2] == SITE and lot[5] == "Japan/Fukushima/Koriyama" for lot in registry.holdings(OWNER))
    assert not replay(ingest.store.db).unissued()


def test_two_generator_types_give_two_lots_per_slot_with_their_own_carries(ingest: LocalIngest) -> None:
    device = _two_gen()
    ingest.enroll(device)
    registry = make_registry(ingest)
    open_owner(registry)
    types = {device.wind: "wind/small"}
    add_site(registry, SITE, [device.dev], types)

    rng = random.Random(5)
    raws: list[bytes] = []
    per_slot: list[dict[str, int]] = []
    for k in range(4):
        sums = {"solar": 0, "wind/small": 0}
        for j in range(15):  # readings of 120 s: t1 = S+120 .. S+1800
            solar = rng.randrange(0, 90_000) if k != 2 else 0
            wind = rng.randrange(0, 60_000) if k != 1 else 0  # a calm slot: the wind lot issues nothing new
            imp = rng.randrange(0, 20_000)
            exp = rng.randrange(0, (solar + wind) // 2 + 1)
            raws.append(step(device, 120, solar, imp, exp, wind=wind))
            if k or j:
                s_solar, s_wind = expected_self([solar, wind], imp, exp)
                sums["solar"] += s_solar
                sums["wind/small"] += s_wind
        per_slot.append(sums)
    raws.append(step(device, 120, 1_000, 0, 0, wind=1_000))
    send_many(ingest, raws)
    seal(ingest)
    assert issue_now(registry) == 4

    carries = {"solar": 0, "wind/small": 0}
    expected = []
    for k, sums in enumerate(per_slot):
        for path in ("solar", "wind/small"):
            carry_in, grams, carries[path] = _carry_forward(carries[path], sums[path], FACTOR_MG)
            expected.append((BASE + k * SLOT_S, 0, path, sums[path], carry_in, grams, carries[path]))
    assert _lots_by_slot(ingest) == expected
    assert per_slot[1]["wind/small"] == 0 and per_slot[2]["solar"] == 0
    # The carries really are separate: each type's chain differs from the other's.
    assert [e[6] for e in expected if e[2] == "solar"] != [e[6] for e in expected if e[2] == "wind/small"]
    held_types = {(lot[6], lot[4]) for lot in registry.holdings(OWNER)}
    assert {(BASE, "solar"), (BASE, "wind/small")} <= held_types
    assert not replay(ingest.store.db, types).unissued()


def test_a_simulated_day_issues_exactly_its_co2(ingest: LocalIngest) -> None:
    """48 slots of readings every 300 s, issued as each slot closes: Σ grams × 10^9 + carries = the CO2."""
    device = _two_gen()
    ingest.enroll(device)
    registry = make_registry(ingest)
    open_owner(registry)
    add_site(registry, SITE, [device.dev])

    rng = random.Random(48)
    day_self = {"solar": 0, "wind": 0}
    for slot in range(48):
        batch = []
        for j in range(6):
            hour = (slot * 1800 + (j + 1) * 300) / 3600
            solar = int(90_000 * max(0.0, 1 - abs(hour - 12) / 6) ** 1.5) + rng.randrange(0, 50)
            wind = rng.randrange(0, 25_000)
            load = 30_000 + rng.randrange(0, 40_000)
            g = solar + wind
            imp, exp = (0, g - load) if g > load else (load - g, 0)
            if slot == 30 and j == 2:
                exp = g + 1_000  # a battery exported through the grid meter: self 0
            batch.append(step(device, 300, solar, imp, exp, wind=wind))
            if slot or j:
                s_solar, s_wind = expected_self([solar, wind], imp, exp)
                day_self["solar"] += s_solar
                day_self["wind"] += s_wind
        send_many(ingest, batch)
        seal(ingest)
        issue_now(registry)  # the previous slot closes with this slot's readings
    send(ingest, step(device, 300, 500, 0, 0, wind=500))
    seal(ingest)
    issue_now(registry)

    result = replay(ingest.store.db)
    assert not result.unissued()
    assert len({i.slot for _, i in result.issuances}) == 48
    for path, self_mwh in day_self.items():
        key = (device.dev, path)
        assert result.self_issued[key] == self_mwh
        assert result.grams[key] * GIGA + result.carry[key] == self_mwh * FACTOR_MG
    total_grams = sum(result.grams.values())
    assert total_grams * GIGA + sum(result.carry.values()) == sum(day_self.values()) * FACTOR_MG
    assert sum(lot[7] for lot in registry.holdings(OWNER)) == total_grams


# ------------------------------------------------------------------ late readings


def _issuance_leaves(ingest: LocalIngest) -> list[tuple[int, Issuance]]:
    """Every issuance leaf, decoded from the leaf CBOR [type, received_ms, data] and verified."""
    found = []
    for idx, data in ingest.store.db.execute(
        "SELECT idx, data FROM leaves WHERE type = ? ORDER BY idx", (LEAF_ISSUANCE,)
    ):
        decoded = cbor.loads(bytes(data))
        assert isinstance(decoded, list) and decoded[0] == LEAF_ISSUANCE and isinstance(decoded[2], bytes)
        found.append((int(idx), Issuance.parse(decoded[2], LEDGER_KEY.public_key)))
    return found


def test_a_late_reading_goes_into_a_supplementary_issuance(ingest: LocalIngest) -> None:
    device = _device()
    ingest.enroll(device)
    registry = make_registry(ingest)
    open_owner(registry)
    add_site(registry, SITE, [device.dev])
    raws = [step(device, 60, 40_000 + 101 * n, 2_000, 9_000) for n in range(151)]  # slots 0..4, one in slot 5
    late = (10, 20)  # both in slot 0
    send_many(ingest, [raw for n, raw in enumerate(raws[:91]) if n not in late])  # slots 0..2, one in slot 3
    seal(ingest)
    assert issue_now(registry) == 3
    assert [(i.slot, i.supplement, len(i.readings)) for _, i in _issuance_leaves(ingest)] == [
        (BASE, 0, 28),
        (BASE + SLOT_S, 0, 30),
        (BASE + 2 * SLOT_S, 0, 30),
    ]

    for number, n in enumerate(late, start=1):
        assert send(ingest, raws[n]).seq == n  # seq n+1.. went first; n comes after its slot was issued
        # The rest of the open slot and the first reading of the next: both passes below must see n.
        send_many(ingest, raws[61 + 30 * number : 91 + 30 * number])
        seal(ingest)
        assert issue_now(registry) == 2
        assert issue_now(registry) == 0, "a second pass found something to issue again"
        row = ingest.store.db.execute("SELECT leaf_idx FROM readings WHERE dev = ? AND seq = ?", (device.dev, n))
        late_leaf = int(row.fetchone()[0])
        supplements = [i for _, i in _issuance_leaves(ingest) if i.slot == BASE and i.supplement > 0]
        assert [(i.supplement, i.readings) for i in supplements][-1] == (number, [late_leaf])
        assert supplements[-1].lots[0][1] == 40_000 + 101 * n - 9_000  # its self_mWh, by hand

    every = [r for _, i in _issuance_leaves(ingest) for r in i.readings]
    assert len(every) == len(set(every)) == 150  # every reading but the one in the open slot, once
    result = replay(ingest.store.db)
    assert not result.unissued()
    key = (device.dev, "solar")
    assert result.grams[key] * GIGA + result.carry[key] == result.self_issued[key] * FACTOR_MG


@pytest.mark.parametrize("arrives", ["before its slot is issued", "after its slot was issued"])
def test_a_pass_issues_every_sealed_reading_of_a_closed_slot(ingest: LocalIngest, arrives: str) -> None:
    """SPEC §7 `crev registry issue` issues every closed slot now; §8 a late reading goes into a supplement."""
    device = _device()
    ingest.enroll(device)
    registry = make_registry(ingest)
    open_owner(registry)
    add_site(registry, SITE, [device.dev])
    raws = [step(device, 60, 40_000, 2_000, 9_000) for _ in range(36)]  # slot 0: seq 0..29, slot 1: 30..35
    send_many(ingest, raws[:21] + raws[22:])  # seq 21 is late; slot 1 has begun
    if arrives == "after its slot was issued":
        seal(ingest)
        assert issue_now(registry) == 1
    send(ingest, raws[21])
    seal(ingest)
    issue_now(registry)
    result = replay(ingest.store.db)
    assert [(r.seq, r.slot) for r in result.unissued()] == []


# ------------------------------------------------------------------ arrival orders

ORDER_KEYS = (SigningKey(bytes([41]) * 32), SigningKey(bytes([42]) * 32))
ORDER_TYPES = {"WT-dgc-order-0002": "wind/offshore"}


@functools.cache
def _arrival_readings() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """36 readings of 300 s from each of two devices (one of them with two generators), then one closing each."""
    rng = random.Random(20260601)
    one = Device("dgc-order-0001", ORDER_KEYS[0], t1=BASE)
    two = TwoGenDevice("dgc-order-0002", ORDER_KEYS[1], t1=BASE)
    readings = []
    for _ in range(36):
        for device in (one, two):
            gen = rng.choice([0, rng.randrange(1, 30_000), rng.randrange(30_000, 300_000)])
            wind = rng.choice([0, rng.randrange(1, 80_000)]) if device is two else 0
            exp = rng.choice([0, (gen + wind) // 3, gen + wind + 7])  # sometimes more export than generation
            readings.append(step(device, 300, gen, rng.randrange(0, 50_000), exp, wind=wind))
    closing = (step(one, 1800, 5_000, 0, 0), step(two, 1800, 5_000, 0, 0, wind=5_000))
    return tuple(readings), closing


def _orders(n: int) -> st.SearchStrategy[list[int]]:
    """A random permutation, or the sending order with a few readings held back by up to n places."""
    delayed = st.dictionaries(st.integers(0, n - 1), st.integers(1, n), max_size=12).map(
        lambda delays: sorted(range(n), key=lambda i: (i + delays.get(i, 0), i))
    )
    return st.one_of(delayed, st.permutations(list(range(n))))


ACTIONS = ("", "", "", "seal", "issue", "seal+issue")


def _check_conservation(result: Replay, types: dict[str, str]) -> None:
    """Per (device, type): Σ grams × 10^9 + the last carry = Σ self_mWh of its closed slots × the factor."""
    closed: dict[tuple[str, str], int] = {}
    for reading in result.readings.values():
        if result.closed(reading):
            for path, mwh in reading.by_type(types).items():
                closed[(reading.dev, path)] = closed.get((reading.dev, path), 0) + mwh
    for key, self_mwh in closed.items():
        assert result.grams.get(key, 0) * GIGA + result.carry.get(key, 0) == self_mwh * FACTOR_MG, key


@pytest.fixture(scope="module")
def order_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger with the two devices enrolled and their sites registered, copied for each example."""
    directory = tmp_path_factory.mktemp("order-template")
    ingest = LocalIngest(directory)
    for key, dev in zip(ORDER_KEYS, ("dgc-order-0001", "dgc-order-0002"), strict=True):
        ingest.enroll(Device(dev, key))
    registry = make_registry(ingest)
    open_owner(registry)
    add_site(registry, "site-order-1", ["dgc-order-0001"])
    add_site(registry, "site-order-2", ["dgc-order-0002"], ORDER_TYPES)
    ingest.store.close()
    return directory / "crev.sqlite"


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_arrival_order_issues_each_reading_once_and_keeps_every_nanogram(
    order_template: Path, data: st.DataObject
) -> None:
    readings, closing = _arrival_readings()
    order = data.draw(_orders(len(readings)), label="order")
    actions = data.draw(st.lists(st.sampled_from(ACTIONS), min_size=len(order), max_size=len(order)), label="actions")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(order_template, Path(tmp) / "crev.sqlite")
        ingest = relaxed(quiet(LocalIngest(Path(tmp))))
        try:
            registry = make_registry(ingest)
            for i, action in zip(order, actions, strict=True):
                send(ingest, readings[i])
                if "seal" in action:
                    seal(ingest)
                if "issue" in action:
                    issue_now(registry)
            seal(ingest)
            issue_now(registry)
            midway = replay(ingest.store.db, ORDER_TYPES)  # no reading twice, tables = leaves
            _check_conservation_of_covered(midway)

            # One more reading per device closes the slot of its last one; a pass then issues everything.
            for raw in closing:
                send(ingest, raw)
            seal(ingest)
            issue_now(registry)
            result = replay(ingest.store.db, ORDER_TYPES)
            assert [(r.dev, r.seq) for r in result.unissued()] == []
            assert all(result.closed(result.readings[leaf]) for leaf in result.covered)
            _check_conservation(result, ORDER_TYPES)
            assert issue_now(registry) == 0
        finally:
            ingest.store.close()


def _check_conservation_of_covered(result: Replay) -> None:
    for key, nanograms in result.nanograms.items():
        assert result.grams[key] * GIGA + result.carry[key] == nanograms, key


# ------------------------------------------------------------------ sites


def test_a_device_without_a_site_is_issued_once_its_site_is_registered(ingest: LocalIngest) -> None:
    waiting, sited = _device("dgc-nosite-0001", 51), _device("dgc-sited-0001", 52)
    ingest.enroll(waiting)
    ingest.enroll(sited)
    registry = make_registry(ingest)
    open_owner(registry)
    add_site(registry, "site-sited", [sited.dev])
    raws = []
    for n in range(100):  # 3 slots of 30 readings, and 10 in a fourth, open slot
        raws.append(step(waiting, 60, 30_000 + n, 1_000, 2_000))
        raws.append(step(sited, 60, 20_000 + n, 1_000, 2_000))
    send_many(ingest, raws)
    seal(ingest)
    assert issue_now(registry) == 3
    stored = ingest.store.db.execute("SELECT count(*) FROM readings WHERE dev = ?", (waiting.dev,)).fetchone()[0]
    assert stored == 100
    issued_devs = {i.dev for _, i in replay(ingest.store.db).issuances}
    assert issued_devs == {sited.dev}

    add_site(registry, "site-late", [waiting.dev])
    assert issue_now(registry) == 3
    result = replay(ingest.store.db)
    assert {(i.site, i.dev) for _, i in result.issuances} == {("site-sited", sited.dev), ("site-late", waiting.dev)}
    assert not result.unissued()
    covered = sorted(result.readings[leaf].seq for leaf in result.covered if result.readings[leaf].dev == waiting.dev)
    assert covered == list(range(90))
    assert issue_now(registry) == 0


def test_a_site_change_of_factor_applies_to_the_slots_issued_after_it(ingest: LocalIngest) -> None:
    device = _device()
    ingest.enroll(device)
    registry = make_registry(ingest)
    open_owner(registry)
    add_site(registry, SITE, [device.dev])
    new_factor, new_label = 512_345, "utility adjusted factor FY2024"

    def slot_readings(k: int) -> tuple[list[bytes], int]:
        raws, total = [], 0
        for j in range(30):
            gen, exp = 50_000 + 1_000 * k + 7 * j, 8_000
            raws.append(step(device, 60, gen, 0, exp))
            total += expected_self([gen], 0, exp)[0] if (k or j) else 0
        return raws, total

    (s0, t0), (s1, t1), (s2, t2), (s3, t3) = (slot_readings(k) for k in range(4))
    send_many(ingest, s0 + s1 + s2[:1])
    seal(ingest)
    assert issue_now(registry) == 2
    before = ingest.store.db.execute(
        "SELECT i.leaf_idx, i.factor_mg, i.factor_label, l.grams, l.carry_out, v.data FROM issuances i "
        "JOIN lots l ON l.issuance_leaf = i.leaf_idx JOIN leaves v ON v.idx = i.leaf_idx ORDER BY i.leaf_idx"
    ).fetchall()

    registry.change_site(SITE, None, None, [], {}, new_factor, new_label, None, NOW * 1000)
    send_many(ingest, s2[1:] + s3 + [step(device, 60, 1_000, 0, 0)])
    seal(ingest)
    assert issue_now(registry) == 2

    factors = ingest.store.db.execute("SELECT slot, factor_mg, factor_label FROM issuances ORDER BY slot").fetchall()
    assert factors == [
        (BASE, FACTOR_MG, FACTOR_LABEL),
        (BASE + SLOT_S, FACTOR_MG, FACTOR_LABEL),
        (BASE + 2 * SLOT_S, new_factor, new_label),
        (BASE + 3 * SLOT_S, new_factor, new_label),
    ]
    after = ingest.store.db.execute(
        "SELECT i.leaf_idx, i.factor_mg, i.factor_label, l.grams, l.carry_out, v.data FROM issuances i "
        "JOIN lots l ON l.issuance_leaf = i.leaf_idx JOIN leaves v ON v.idx = i.leaf_idx ORDER BY i.leaf_idx"
    ).fetchall()
    assert after[:2] == before, "the change rewrote an issuance made before it"

    carry, grams = 0, []
    for total, factor in ((t0, FACTOR_MG), (t1, FACTOR_MG), (t2, new_factor), (t3, new_factor)):
        _carry_in, g, carry = _carry_forward(carry, total, factor)
        grams.append(g)
    assert [row[3] for row in after] == grams
    result = replay(ingest.store.db)
    key = (device.dev, "solar")
    assert result.grams[key] * GIGA + result.carry[key] == (t0 + t1) * FACTOR_MG + (t2 + t3) * new_factor


# ------------------------------------------------------------------ two registries on one ledger


def _second_registry(path: Path) -> tuple[Store, Registry]:
    store = Store(path)
    return store, Registry(store, Ledger(store, LEDGER_KEY, ORIGIN, 3600, 1 << 40), FACTOR_MG, FACTOR_LABEL)


def test_two_registries_on_two_connections_never_issue_a_reading_twice(ingest: LocalIngest, tmp_path: Path) -> None:
    other_store, other = _second_registry(tmp_path / "crev.sqlite")
    try:
        first = make_registry(ingest)
        devices = [_device("dgc-twice-%04d" % n, 60 + n) for n in range(3)]
        for device in devices:
            ingest.enroll(device)
        open_owner(first)
        add_site(other, "site-twice", [d.dev for d in devices])
        rng = random.Random(2)
        counts = [0, 0]
        for round_ in range(40):  # 40 × 3 readings of 300 s per device: 20 slots each
            for device in devices:
                for _ in range(3):
                    send(ingest, step(device, 300, rng.randrange(0, 90_000), 1_000, rng.randrange(0, 30_000)))
            if rng.random() < 0.7:
                seal(ingest)
            registry = (first, other)[round_ % 2]
            counts[round_ % 2] += issue_now(registry)
            if round_ % 5 == 4:
                counts[1 - round_ % 2] += issue_now((first, other)[1 - round_ % 2])  # both, back to back
        for device in devices:
            send(ingest, step(device, 1800, 1_000, 0, 0))
        seal(ingest)
        counts[0] += issue_now(first)
        counts[1] += issue_now(other)
        assert counts[0] > 0 and counts[1] > 0, "one registry did all the work: %r" % counts
        result = replay(ingest.store.db)  # asserts no reading leaf is in two issuances
        assert not result.unissued()
        assert len(result.issuances) == sum(counts)
        for key, nanograms in result.nanograms.items():
            assert result.grams[key] * GIGA + result.carry[key] == nanograms
    finally:
        other_store.close()


def test_two_registries_issuing_at_once_from_two_threads(ingest: LocalIngest, tmp_path: Path) -> None:
    """Passes racing each other on two connections while readings arrive on a third."""
    stores_registries = [_second_registry(tmp_path / "crev.sqlite") for _ in range(2)]
    devices = [_device("dgc-race-%04d" % n, 70 + n) for n in range(3)]
    for device in devices:
        ingest.enroll(device)
    setup = make_registry(ingest)
    open_owner(setup)
    add_site(setup, "site-race", [d.dev for d in devices])
    stop = threading.Event()
    counts = [0, 0]
    errors: list[BaseException] = []

    def passes(n: int) -> None:
        try:
            while not stop.wait(0.002):  # pacing, so the readings' writer gets the lock too
                counts[n] += issue_now(stores_registries[n][1])
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=passes, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        rng = random.Random(3)
        for _ in range(60):  # 60 × 2 readings of 300 s per device: 20 slots each
            for device in devices:
                for _ in range(2):
                    send(ingest, step(device, 300, rng.randrange(1, 90_000), 1_000, rng.randrange(0, 30_000)))
            seal(ingest)
        for device in devices:
            send(ingest, step(device, 1800, 1_000, 0, 0))
        seal(ingest)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    counts[0] += issue_now(stores_registries[0][1])
    for store, _registry in stores_registries:
        store.close()
    result = replay(ingest.store.db)
    assert not result.unissued()
    assert len(result.issuances) == sum(counts) == 3 * 20
