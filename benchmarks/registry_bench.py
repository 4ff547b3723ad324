"""The registry: issuance throughput, and a retirement's trace bundle (export, size, offline verification).

A real SQLite ledger holds two devices on two sites of one owner, each with
a reading a minute over the same slots (30 readings per device and slot),
sealed every 1,000 leaves, plus one reading per device that closes the last
slot. Rows are inserted directly, with their leaves and their readings' gs
column, as ingest stores them.

Issuance: one ``Registry.issue()`` pass over every closed slot, timed on a
fresh copy of the ledger each round. The baseline, in the same run and on the
same copy, is reading the same rows from the store
(``SELECT leaf_idx, t1, gs ... ORDER BY leaf_idx`` for each device, every
row fetched: what issuance reads, the COSE bytes being needed only for rows
without gs).

Trace: the owner retires everything it holds, so the retirement takes one
lot per (device, slot) and every reading issued stands behind it. The bundle
is exported and verified in this process; the baseline is raw Ed25519
verification (cryptography) of the same readings' signatures, parsing done
beforehand and only verify() timed.
"""

import cProfile
import io
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from crev import cbor  # noqa: E402
from crev.cose import Sign1, sig_structure  # noqa: E402
from crev.keys import SigningKey, key_id  # noqa: E402
from crev.ledger_format import ACTION_ENROL, LEAF_READING  # noqa: E402
from crev.reading import ChainHead  # noqa: E402
from crev.registry_format import SLOT_S  # noqa: E402
from crev_cli.bundle_verify import BundleReader  # noqa: E402
from crev_cli.trace_verify import verify_trace  # noqa: E402
from crev_ingest.ledger import Ledger  # noqa: E402
from crev_ingest.store import Store  # noqa: E402
from crev_ingest.validate import generation_json  # noqa: E402
from crev_market.registry import Registry, sign_retirement  # noqa: E402
from crev_market.trace_export import export_trace  # noqa: E402

LEDGER_KEY = SigningKey(bytes([9]) * 32)
ORIGIN = "crev.bench/ledger"
OWNER = "owner-bench-0001"
OWNER_KEY = SigningKey(bytes([61]) * 32)
PLACE = "Japan/Fukushima/Koriyama"
FACTOR_MG = 441_234
START = 1_700_000_000 // SLOT_S * SLOT_S  # a slot boundary
BLOCK_LEAVES = 1000
RAW_READ = "SELECT leaf_idx, t1, gs FROM readings WHERE dev = ? AND leaf_idx >= ? ORDER BY leaf_idx"


def device_keys(devices: int) -> list[tuple[str, SigningKey]]:
    return [("dgc-bench-%04d" % (d + 1), SigningKey(bytes([d + 1]) * 32)) for d in range(devices)]


def build_ledger(path: Path, devices: int, slots: int) -> int:
    """Each device: ``slots`` slots of a reading a minute, then one reading that closes the last slot."""
    store = Store(path)
    ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, BLOCK_LEAVES)
    registry = Registry(store, ledger, FACTOR_MG, "bench factor")
    keys = device_keys(devices)
    setup_ms = (START - 3600) * 1000
    with store.transaction():
        for dev, key in keys:
            ledger.key_event(ACTION_ENROL, dev, key.public_key, START - 3600, setup_ms)
        ledger.seal(setup_ms)
    registry.add_account(OWNER, "Bench owner", OWNER_KEY.public_key, True, setup_ms)
    for d, (dev, _key) in enumerate(keys):
        registry.add_site("site-bench-%04d" % (d + 1), OWNER, PLACE, [dev], {}, None, None, None, setup_ms)
    heads = [ChainHead() for _ in keys]
    counters = [[1_000_000 + d, 500_000, 200_000] for d in range(devices)]
    per_device = slots * SLOT_S // 60 + 1
    batch = 2000
    for first in range(0, per_device, batch):
        with store.transaction():
            for i in range(first, min(per_device, first + batch)):
                t1 = START + 60 * (i + 1)
                for d, (dev, key) in enumerate(keys):
                    g, imp, exp = (c + step for c, step in zip(counters[d], (50_000, 10_000, 20_000), strict=True))
                    counters[d] = [g, imp, exp]
                    channels = [(0, "PV-" + dev, 1, g), (1, "G-" + dev, 0, imp), (2, "G-" + dev, 0, exp)]
                    reading = heads[d].next_reading(dev, t1, 1, channels, "crev-bench/1", t0=t1 - 60)
                    cose = reading.sign(key)
                    heads[d] = heads[d].advance(reading, cose)
                    leaf = ledger.append(LEAF_READING, t1 * 1000, cose)
                    store.add_reading(dev, reading.seq, reading.t0, reading.t1, leaf, cose, generation_json(reading))
                    if ledger.size - ledger.sealed_size >= BLOCK_LEAVES:
                        ledger.seal(t1 * 1000)
    with store.transaction():
        if ledger.size > ledger.sealed_size:
            ledger.seal((START + 60 * (per_device + 1)) * 1000)
    store.close()
    return per_device * devices


def fresh_copy(source: Path, target: Path) -> None:
    """A copy of a closed store (its WAL checkpointed into the main file on close)."""
    for suffix in ("-wal", "-shm"):
        wal = source.with_name(source.name + suffix)
        assert not wal.exists() or wal.stat().st_size == 0 or suffix == "-shm", "the store was not checkpointed"
    shutil.copyfile(source, target)


def raw_read_rate(path: Path, devices: list[str]) -> float:
    """Rows per second of reading every device's readings, as issuance selects them."""
    db = sqlite3.connect(str(path))
    try:
        start = time.perf_counter()
        rows = 0
        for dev in devices:
            rows += len(db.execute(RAW_READ, (dev, 0)).fetchall())
        elapsed = time.perf_counter() - start
    finally:
        db.close()
    return rows / elapsed


def timed_issue(path: Path, now_ms: int) -> tuple[float, int, int]:
    """(seconds, readings issued, issuances) of one Registry.issue() pass."""
    store = Store(path)
    try:
        ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, BLOCK_LEAVES)
        registry = Registry(store, ledger, FACTOR_MG, "bench factor")
        start = time.perf_counter()
        summary = registry.issue(now_ms)
        elapsed = time.perf_counter() - start
    finally:
        store.close()
    if summary.held:
        raise SystemExit("issuance was held for %s" % ", ".join(summary.held))
    return elapsed, summary.readings, summary.issuances


def retire_all(path: Path, now_ms: int) -> tuple[int, int, int]:
    """Retire everything the owner holds: (retirement id, grams, lots)."""
    store = Store(path)
    try:
        ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, BLOCK_LEAVES)
        registry = Registry(store, ledger, FACTOR_MG, "bench factor")
        grams = sum(lot[7] for lot in registry.holdings(OWNER))
        retirement = registry.prepare_retirement(OWNER, grams, "Bench beneficiary", "benchmark", 2023, now_ms)
        signed = sign_retirement(retirement, OWNER_KEY)
        with store.transaction():
            ledger.sync()
            retirement_id = registry.retire(signed, now_ms)
    finally:
        store.close()
    return retirement_id, grams, len(retirement.lots)


def bundle_signatures(bundle: Path, devices: int) -> list[tuple[Ed25519PublicKey, bytes, bytes]]:
    """(key, signature, Sig_structure) of every reading in a trace bundle."""
    keys = {}
    for _dev, key in device_keys(devices):
        keys[key_id(key.public_key)] = Ed25519PublicKey.from_public_bytes(key.public_key)
    jobs = []
    with bundle.open("rb") as handle:
        reader = BundleReader(handle)
        reader.array()
        for _ in range(3):  # magic, version, meta
            reader.item()
        for _ in range(reader.array()):  # blocks
            reader.item()
        for _ in range(reader.array()):  # entries
            reader.item()
        for _ in range(reader.array()):
            item = cbor.loads(reader.item())  # each reading is wrapped in a byte string
            assert isinstance(item, list)
            envelope = Sign1.from_bytes(item[2])
            jobs.append((keys[envelope.kid], envelope.signature, sig_structure(envelope.protected, envelope.payload)))
    return jobs


def raw_verify_rate(jobs: list[tuple[Ed25519PublicKey, bytes, bytes]]) -> float:
    start = time.perf_counter()
    for key, signature, message in jobs:
        key.verify(signature, message)
    return len(jobs) / (time.perf_counter() - start)


def timed_verify_trace(bundle: Path, jobs: int = 1) -> tuple[float, int]:
    with bundle.open("rb") as handle:
        start = time.perf_counter()
        result = verify_trace(handle, LEDGER_KEY.public_key, jobs)
        elapsed = time.perf_counter() - start
    if result.failure_count:
        raise SystemExit("the benchmark trace did not verify: %s" % result.failures[0].describe())
    return elapsed, result.readings


def profile_verify(bundle: Path, top: int) -> str:
    profiler = cProfile.Profile()
    with bundle.open("rb") as handle:
        profiler.enable()
        verify_trace(handle, LEDGER_KEY.public_key)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def report(slots: int, devices: int = 2, rounds: int = 3, profile: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="crev-registry-bench-") as tmp:
        directory = Path(tmp)
        master = directory / "master.sqlite"
        started = time.perf_counter()
        readings = build_ledger(master, devices, slots)
        built = time.perf_counter() - started
        devs = [dev for dev, _key in device_keys(devices)]
        now_ms = (START + 60 * (slots * SLOT_S // 60 + 10)) * 1000

        issue_s: list[float] = []
        raw_rates: list[float] = []
        issued = issuances = 0
        work = directory / "crev.sqlite"
        for _ in range(rounds):
            fresh_copy(master, work)
            before = raw_read_rate(work, devs)
            elapsed, issued, issuances = timed_issue(work, now_ms)
            after = raw_read_rate(work, devs)
            issue_s.append(elapsed)
            raw_rates.extend([before, after])
        issue_rate = issued / statistics.median(issue_s)
        raw_rate = statistics.median(raw_rates)

        retirement_id, grams, lots = retire_all(work, now_ms + 1000)
        bundle = directory / "retirement.trace"
        store = Store(work)
        started = time.perf_counter()
        summary = export_trace(store, retirement_id, bundle, ORIGIN, LEDGER_KEY.public_key, now_ms + 2000)
        exported = time.perf_counter() - started
        store.close()

        jobs = bundle_signatures(bundle, devices)
        raw_before = raw_verify_rate(jobs)
        verify_s, count = timed_verify_trace(bundle)
        parallel_s, _count = timed_verify_trace(bundle, 2)
        raw_after = raw_verify_rate(jobs)
        raw_verify = (raw_before + raw_after) / 2
        profiled = profile_verify(bundle, 25) if profile else ""

    print(
        "== registry issuance: %d readings of %d devices on %d sites, %d slots each, ledger of %d leaves =="
        % (readings, devices, devices, slots, readings + 2 * devices + 1)
    )
    print("ledger built in %.1f s; %d rounds, each on a fresh copy (median shown)" % (built, rounds))
    print("one issue() pass: %d issuances covering %d readings" % (issuances, issued))
    print("%-46s %14s %8s" % ("setup", "readings/s", "ratio"))
    print("%-46s %14.0f %7.2fx" % ("raw SELECT of the same rows (baseline)", raw_rate, 1.0))
    print(
        "%-46s %14.0f %7.2fx"
        % ("Registry.issue(), %.2f s per pass" % statistics.median(issue_s), issue_rate, issue_rate / raw_rate)
    )
    print()
    print(
        "== trace bundle: one retirement of %d lots (%d slots x %d devices), %s kg =="
        % (lots, slots, devices, "%d.%03d" % (grams // 1000, grams % 1000))
    )
    print(
        "export took %.1f s (%.0f readings/s); %d issuances, %d entries, %d readings"
        % (exported, summary.readings / exported, summary.issuances, summary.entries, summary.readings)
    )
    print("bundle size: %d bytes, %.0f bytes per reading" % (summary.bytes, summary.bytes / count))
    print("%-46s %14s %8s" % ("setup", "readings/s", "ratio"))
    print("%-46s %14.0f %7.2fx" % ("raw Ed25519 verify, cryptography (baseline)", raw_verify, 1.0))
    print("%-46s %14.0f %7.2fx" % ("crev audit verify (trace), 1 job", count / verify_s, count / verify_s / raw_verify))
    print(
        "%-46s %14.0f %7.2fx"
        % ("crev audit verify (trace), 2 jobs", count / parallel_s, count / parallel_s / raw_verify)
    )
    if profiled:
        print()
        print("cProfile of verify_trace, by own time:")
        print(profiled)


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    report(20 if quick else 1000, 2, 1 if quick else 3, "--profile" in sys.argv[1:])


if __name__ == "__main__":
    main()
