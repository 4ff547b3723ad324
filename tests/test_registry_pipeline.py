"""SPEC §8 issuance end to end, on real components, with two generator types at one site.

Simulated SDM630 meters (a PV meter, a wind meter and a grid meter) -> a real
`crev gateway run` on a simulated clock -> a real mosquitto -> a real
`crev ingest run` -> `crev registry issue`, run once while ingest is still
storing and once after it stopped. The site types the wind meter
``wind/small``; the PV meter keeps its source's name, ``solar``.

Every issued figure is computed again by hand from the signed readings in
the store (the SQLite file, or a PostgreSQL database in the test's other
variant): per (device, slot) issuance and type, grams =
floor((carry + Σ self_mWh × factor_mg) / 10^9), the carry followed per
(device, type) in leaf order; and over the run, per type, Σ grams × 10^9 +
the final carry = Σ self_mWh × factor_mg of the readings issued.
"""

import json
import sqlite3
import time
from pathlib import Path

import pytest
from harness import (
    Mosquitto,
    Service,
    free_port,
    gateway_config,
    ingest_config,
    init_gateway,
    port_open,
    run_crev,
    wait_for,
    write_toml,
)
from store_support import Location, count, location

from crev import cbor
from crev.dgcc import SOURCE_NAMES
from crev.ledger_format import LEAF_READING, leaf_data
from crev.reading import Reading
from crev.registry_format import LEAF_ISSUANCE, NANOGRAMS_PER_GRAM, Issuance, slot_of
from crev_ingest.database import connect

DEVICE = "dgc-twogen-0001"
SOLAR_SERIAL, WIND_SERIAL, GRID_SERIAL = "630101", "630102", "630103"
WIND_TYPE = "wind/small"
FACTOR_G = "441.234"  # g-CO2/kWh: a factor whose carries matter
FACTOR_MG = 441_234
OWNER = "twogen-owner"
SITE = "twogen-site"
PLACE = "Japan/Fukushima/Koriyama"
SPEED = 1800  # simulated seconds per wall second: one 30-minute slot a second
INTERVAL_S = 300  # six readings a slot
RUN_S = 30  # wall seconds of readings: about 15 simulated hours, 30 slots
MID_RUN_ISSUE_S = 15  # the first `crev registry issue`, while ingest is running
# On PostgreSQL the same run, about half as long: at full length that variant takes 40 s on the
# 2-core CI machine. Some 16 slots, most issued with both types, still in two passes.
PG_RUN_S, PG_MID_RUN_ISSUE_S = 16, 8


def sim_epoch() -> int:
    """As `crev demo`: yesterday, slot-aligned, so that no signed timestamp lies ahead of now."""
    return (int(time.time()) - 86400 - 3600) // 1800 * 1800


def two_generator_site(tmp_path: Path, broker: Mosquitto) -> tuple[Path, Path, list[int]]:
    """The simulator's and the gateway's configurations, and the simulated meters' ports."""
    pv, wind, grid = free_port(), free_port(), free_port()
    # From 06:00, so that the sun rises and sets during the run while the wind blows on.
    # Registers refresh every 0.1 wall s (3 simulated minutes): most readings see new counters.
    sim = write_toml(
        tmp_path / "sim.toml",
        "update_s = 0.1\n\n[site]\nseed = 5\nspeed = %d\ntick_s = 60\n"
        'start = "2026-06-21T06:00:00+09:00"\npv_peak_w = 5000\nwind_peak_w = 4000\nload_avg_w = 2500\n\n'
        '[[meter]]\nname = "pv"\nprofile = "sdm630"\nport = %d\nmeasures = "pv"\nregister = "export"\nserial = %s\n\n'
        '[[meter]]\nname = "wind"\nprofile = "sdm630"\nport = %d\nmeasures = "wind"\nregister = "export"\n'
        "serial = %s\n\n"
        '[[meter]]\nname = "grid"\nprofile = "sdm630"\nport = %d\nmeasures = "grid"\nserial = %s\n'
        % (SPEED, pv, SOLAR_SERIAL, wind, WIND_SERIAL, grid, GRID_SERIAL),
    )
    # The accelerated clock makes the site look SPEED times more powerful: max_power_w is scaled to match.
    meters = (
        '[[meter]]\nname = "pv"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
        'source = "solar"\ncounter = "export"\nmax_power_w = 1e8\n\n'
        '[[meter]]\nname = "wind"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
        'source = "wind"\ncounter = "export"\nmax_power_w = 1e8\n\n'
        '[[meter]]\nname = "grid"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "grid"\nmax_power_w = 1e8\n'
        % (pv, wind, grid)
    )
    simulation = "[simulation]\nepoch = %d\nspeed = %d\n" % (sim_epoch(), SPEED)
    gateway = gateway_config(tmp_path, DEVICE, broker.url, meters, interval_s=INTERVAL_S, extra=simulation)
    return sim, gateway, [pv, wind, grid]


def checked(tmp_path: Path, *args: str) -> str:
    done = run_crev(tmp_path, *args)
    assert done.returncode == 0, "crev %s: %s%s" % (" ".join(args[:2]), done.stdout, done.stderr)
    return done.stdout


def issuance_count(db_path: Location) -> int:
    return count(db_path, "SELECT count(*) FROM issuances")


def signed_payload(leaf: bytes) -> bytes:
    """The signed data of a ledger leaf, [type, received_ms, data]."""
    decoded = cbor.loads(leaf)
    assert isinstance(decoded, list) and isinstance(decoded[2], bytes)
    return decoded[2]


def type_of(meter_id: str, source: int) -> str:
    """The site's type of a generator meter: wind/small for the wind meter, else the source's name."""
    return WIND_TYPE if meter_id == WIND_SERIAL else SOURCE_NAMES[source]


@pytest.mark.slow
def test_two_generator_types_are_issued_exactly_on_real_components(
    tmp_path: Path, broker: Mosquitto, store_url: str | None
) -> None:
    config = str(ingest_config(tmp_path, broker.url, store_url=store_url))
    ledger_pubkey = bytes.fromhex(
        next(
            line.split()[1]
            for line in checked(tmp_path, "ingest", "init", "--config", config).splitlines()
            if line.startswith("pubkey")
        )
    )
    sim_toml, gw_toml, ports = two_generator_site(tmp_path, broker)
    pubkey = init_gateway(tmp_path, gw_toml).hex()
    checked(tmp_path, "ingest", "enroll", "--config", config, "--device", DEVICE, "--pubkey", pubkey)
    # The site is registered before any reading arrives.
    owner_pubkey = checked(tmp_path, "registry", "keygen", "--out", "owner.key").split()[1]
    checked(
        tmp_path,
        *("registry", "account", "add", "--config", config, "--account", OWNER),
        *("--name", "Koriyama two-generator owner", "--pubkey", owner_pubkey),
    )
    checked(
        tmp_path,
        *("registry", "site", "add", "--config", config, "--site", SITE, "--owner", OWNER, "--place", PLACE),
        *("--device", DEVICE, "--type", "%s=%s" % (WIND_SERIAL, WIND_TYPE), "--factor", FACTOR_G),
    )

    sim = Service("sim", ["sim", "meters", "--config", str(sim_toml)], tmp_path).start()
    wait_for(lambda: all(port_open(p) for p in ports), 20, "the simulated meters")
    ingest = Service("ingest", ["ingest", "run", "--config", config], tmp_path).start()
    wait_for(lambda: "subscribed" in ingest.log(), 30, "ingest to subscribe")
    gateway = Service("gateway", ["gateway", "run", "--config", str(gw_toml)], tmp_path).start()
    db_path = location(tmp_path, store_url)
    started = time.monotonic()
    run_s, mid_run_issue_s = (PG_RUN_S, PG_MID_RUN_ISSUE_S) if store_url else (RUN_S, MID_RUN_ISSUE_S)
    time.sleep(mid_run_issue_s)
    assert gateway.alive(), gateway.log()
    # Issuance while ingest goes on storing and sealing (as from a systemd timer).
    first_pass = checked(tmp_path, "registry", "issue", "--config", config)
    mid_run_issuances = issuance_count(db_path)
    time.sleep(max(0.0, run_s - (time.monotonic() - started)))
    assert gateway.stop() == 0, gateway.log()
    sim.stop()
    with sqlite3.connect(tmp_path / ("%s-outbox.sqlite" % DEVICE)) as outbox:
        last_seq = Reading.from_cose(bytes(outbox.execute("SELECT last_cose FROM chain").fetchone()[0])).seq
        assert outbox.execute("SELECT count(*) FROM pending").fetchone()[0] == 0, "the broker has every reading"

    def stored() -> int:
        return count(db_path, "SELECT count(*) FROM readings WHERE dev = ?", (DEVICE,))

    wait_for(lambda: stored() == last_seq + 1, 20, "ingest to store every reading")
    time.sleep(2)  # a block interval and more: the last readings are sealed
    assert ingest.stop() == 0, ingest.log()
    final_pass = checked(tmp_path, "registry", "issue", "--config", config)
    again = checked(tmp_path, "registry", "issue", "--config", config)
    assert again.startswith("issued 0 slots from 0 readings"), again

    db = connect(db_path, read_only=True)
    try:
        sealed = int(db.execute("SELECT max(tree_size) FROM blocks").fetchone()[0])
        assert db.execute("SELECT count(*) FROM leaves").fetchone()[0] == sealed, "the registry sealed its leaves"
        assert db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
        readings = {
            int(leaf): Reading.from_cose(leaf_data(bytes(data)))
            for leaf, data in db.execute(
                "SELECT r.leaf_idx, l.data FROM readings r JOIN leaves l ON l.idx = r.leaf_idx WHERE r.dev = ? "
                "ORDER BY r.seq",
                (DEVICE,),
            )
        }
        reading_leaves = {
            int(idx): signed_payload(bytes(data))
            for idx, data in db.execute("SELECT idx, data FROM leaves WHERE type = ?", (LEAF_READING,))
        }
        issuance_leaves = [
            (int(idx), Issuance.parse(signed_payload(bytes(data)), ledger_pubkey))
            for idx, data in db.execute("SELECT idx, data FROM leaves WHERE type = ? ORDER BY idx", (LEAF_ISSUANCE,))
        ]
        issuance_rows = db.execute(
            "SELECT leaf_idx, dev, slot, supplement, factor_mg, readings FROM issuances ORDER BY leaf_idx"
        ).fetchall()
        lot_rows: dict[int, list[tuple[str, int, int, int, int]]] = {}
        for leaf, type_path, self_mwh, carry_in, lot_grams, carry_out in db.execute(
            "SELECT issuance_leaf, type, self_mwh, carry_in, grams, carry_out FROM lots "
            "ORDER BY issuance_leaf, lot_index"
        ):
            lot_rows.setdefault(int(leaf), []).append((str(type_path), self_mwh, carry_in, lot_grams, carry_out))
    finally:
        db.close()

    # The readings table holds exactly the signed readings of the ledger's reading leaves.
    assert sorted(r.seq for r in readings.values()) == list(range(last_seq + 1))
    assert {leaf: r.seq for leaf, r in readings.items()} == {
        leaf: Reading.from_cose(cose).seq for leaf, cose in reading_leaves.items()
    }

    # Self-consumption per type of each reading, from its signed key 9 and its generation channels.
    per_type: dict[int, dict[str, int]] = {}
    for leaf, reading in readings.items():
        sources = {c[1]: c[2] for c in reading.channels if c[0] == 0}
        assert sources == {SOLAR_SERIAL: SOURCE_NAMES.index("solar"), WIND_SERIAL: SOURCE_NAMES.index("wind")}
        sums: dict[str, int] = {}
        for meter_id, self_j in reading.generator_self or ():
            path = type_of(meter_id, sources[meter_id])
            sums[path] = sums.get(path, 0) + self_j
        per_type[leaf] = sums
        if reading.generator_self is not None:
            assert [m for m, _ in reading.generator_self] == [SOLAR_SERIAL, WIND_SERIAL]

    # (a) every issuance and lot by hand, the carry followed per (device, type) in leaf order.
    assert [(leaf, i.dev, i.slot, i.supplement, i.factor_mg, len(i.readings)) for leaf, i in issuance_leaves] == [
        tuple(row) for row in issuance_rows
    ], "the issuances table disagrees with the issuance leaves"
    carry: dict[str, int] = {}
    grams: dict[str, int] = {}
    nanograms: dict[str, int] = {}
    covered: dict[int, int] = {}
    both_types = 0
    lots_per_type: dict[str, int] = {}
    for leaf, issuance in issuance_leaves:
        assert (issuance.dev, issuance.site, issuance.owner, issuance.place) == (DEVICE, SITE, OWNER, PLACE)
        assert issuance.factor_mg == FACTOR_MG
        assert issuance.supplement == 0, "no reading came late, so no slot has a supplement"
        slot_sums: dict[str, int] = {}
        for r_leaf in issuance.readings:
            assert r_leaf not in covered, "reading leaf %d issued twice" % r_leaf
            covered[r_leaf] = leaf
            assert r_leaf < leaf and r_leaf in readings, "issuance %d covers leaf %d" % (leaf, r_leaf)
            assert slot_of(readings[r_leaf].t1) == issuance.slot
            for path, mwh in per_type[r_leaf].items():
                slot_sums[path] = slot_sums.get(path, 0) + mwh
        expected = []
        for path in sorted(slot_sums):
            carry_in = carry.get(path, 0)
            total = carry_in + slot_sums[path] * FACTOR_MG
            expected.append((path, slot_sums[path], carry_in, total // NANOGRAMS_PER_GRAM, total % NANOGRAMS_PER_GRAM))
            carry[path] = total % NANOGRAMS_PER_GRAM
            grams[path] = grams.get(path, 0) + total // NANOGRAMS_PER_GRAM
            nanograms[path] = nanograms.get(path, 0) + slot_sums[path] * FACTOR_MG
        assert lot_rows.get(leaf) == expected, "issuance %d (slot %d): lots %r, by hand %r" % (
            leaf,
            issuance.slot,
            lot_rows.get(leaf),
            expected,
        )
        assert [tuple(lot) for lot in issuance.lots] == expected, "issuance leaf %d disagrees with its rows" % leaf
        # (b) the two types are separate lots: two when both generators self-consumed in the slot.
        assert set(slot_sums) <= {"solar", WIND_TYPE}
        if all(slot_sums.get(path, 0) > 0 for path in ("solar", WIND_TYPE)):
            both_types += 1
            assert [lot[0] for lot in expected] == ["solar", WIND_TYPE]
        for path, mwh, *_rest in expected:
            if mwh > 0:
                lots_per_type[path] = lots_per_type.get(path, 0) + 1
    assert set(lot_rows) == {leaf for leaf, _ in issuance_leaves}

    # Which readings were issued: every one of each closed slot that self-consumed anything, and no other.
    open_slot = slot_of(max(r.t1 for r in readings.values()))
    slot_self: dict[int, int] = {}
    for leaf, reading in readings.items():
        slot_self[slot_of(reading.t1)] = slot_self.get(slot_of(reading.t1), 0) + sum(per_type[leaf].values())
    should = {leaf for leaf, r in readings.items() if slot_of(r.t1) < open_slot and slot_self[slot_of(r.t1)] > 0}
    assert set(covered) == should
    slots = sorted({slot_of(r.t1) for r in readings.values()})
    assert len(issuance_leaves) == sum(1 for s in slots if s < open_slot and slot_self[s] > 0)

    # (c) over the run, per type: Σ grams × 10^9 + the final carry = Σ self_mWh × factor of the readings issued.
    for path in ("solar", WIND_TYPE):
        issued_self = sum(per_type[leaf].get(path, 0) for leaf in covered)
        assert issued_self > 0, "%s self-consumed nothing in the issued slots" % path
        assert grams[path] * NANOGRAMS_PER_GRAM + carry[path] == issued_self * FACTOR_MG == nanograms[path]
        assert 0 <= carry[path] < NANOGRAMS_PER_GRAM

    # Enough happened for the figures to mean something, across both issuance passes.
    assert len(slots) >= 2 * run_s // 3, slots
    assert both_types >= 5, "only %d issuances with both types" % both_types
    assert 0 < mid_run_issuances < len(issuance_leaves), (first_pass, final_pass)
    held = json.loads(checked(tmp_path, "registry", "holdings", "--config", config, "--account", OWNER, "--json"))
    assert held["grams"] == sum(grams.values())

    audit = run_crev(tmp_path, "audit", "ledger", "--config", config)
    assert audit.returncode == 0, audit.stdout + audit.stderr

    print(
        "\n%d readings, %d slots, %d issuances (%d in the mid-run pass, %d with both types), "
        "lots with self: %s, grams: %s, final carry: %s"
        % (len(readings), len(slots), len(issuance_leaves), mid_run_issuances, both_types, lots_per_type, grams, carry)
    )
