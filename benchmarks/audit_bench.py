"""Evidence bundles: export time, size per reading, and offline verification throughput.

A real SQLite ledger holds N readings of one device interleaved with N of
another (so proofs are as long as in a shared ledger), sealed every 1,000
leaves. The bundle covers the first device's N readings. The baseline, in
the same run, is raw Ed25519 verification (cryptography) of the same
readings' signatures: parsing done beforehand, only verify() timed.
Verification runs in this process (1 job, then one per CPU) and once as the
`crev audit verify` command, for its peak RSS.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from crev import cbor  # noqa: E402
from crev.cose import Sign1, sig_structure  # noqa: E402
from crev.keys import SigningKey  # noqa: E402
from crev.ledger_format import ACTION_ENROL, LEAF_READING  # noqa: E402
from crev.reading import ChainHead  # noqa: E402
from crev_cli.bundle_verify import BundleReader, default_jobs, unpack_readings, verify_bundle  # noqa: E402
from crev_ingest.export import ExportRequest, export_bundle  # noqa: E402
from crev_ingest.ledger import Ledger  # noqa: E402
from crev_ingest.store import Store  # noqa: E402

LEDGER_KEY = SigningKey(bytes([9]) * 32)
DEV = "dgc-bench-0001"
START = 1_700_000_000


def build_ledger(path: Path, readings: int) -> None:
    store = Store(path)
    ledger = Ledger(store, LEDGER_KEY, "crev.bench/ledger", 3600, 1000)
    devices = [(DEV, SigningKey(bytes([1]) * 32)), ("dgc-bench-0002", SigningKey(bytes([2]) * 32))]
    with store.transaction():
        for dev, key in devices:
            ledger.key_event(ACTION_ENROL, dev, key.public_key, START, START * 1000)
        ledger.seal(START * 1000)
    heads = [ChainHead() for _ in devices]
    counters = [1_000_000, 500_000, 200_000]
    batch = 2000
    for start in range(0, readings, batch):
        with store.transaction():
            for i in range(start, min(readings, start + batch)):
                counters = [counters[0] + 50_000, counters[1] + 10_000, counters[2] + 20_000]
                for d, (dev, key) in enumerate(devices):
                    channels = [(0, "PV-%d" % d, 1, counters[0]), (1, "G-%d" % d, 0, counters[1])]
                    channels.append((2, "G-%d" % d, 0, counters[2]))
                    t1 = START + 60 * (i + 1)
                    reading = heads[d].next_reading(dev, t1, 1, channels, "crev-bench/1", t0=t1 - 60)
                    cose = reading.sign(key)
                    heads[d] = heads[d].advance(reading, cose)
                    leaf = ledger.append(LEAF_READING, t1 * 1000, cose)
                    store.add_reading(dev, reading.seq, reading.t0, reading.t1, leaf, cose)
                    if ledger.size - ledger.sealed_size >= 1000:
                        ledger.seal(t1 * 1000)
    with store.transaction():
        if ledger.size > ledger.sealed_size:
            ledger.seal((START + 60 * (readings + 1)) * 1000)
    store.close()


def raw_verify_rate(bundle: Path, sample: int) -> float:
    """Ed25519 verifies per second over the bundle's own signatures."""
    jobs: list[tuple[bytes, bytes]] = []
    with bundle.open("rb") as handle:
        reader = BundleReader(handle)
        reader.array()
        for _ in range(3):
            reader.item()
        for _ in range(reader.array()):
            reader.item()
        for _ in range(reader.array()):
            reader.item()
        for _ in range(reader.array()):  # proof groups: [height, nodes, count, packed readings]
            reader.array()
            reader.item()
            reader.item()
            count = reader.item()
            for raw in unpack_readings(reader.item(), count):
                item = cbor.loads(raw)  # each reading is wrapped in a byte string
                assert isinstance(item, list)
                if len(jobs) < sample:
                    envelope = Sign1.from_bytes(item[2])
                    jobs.append((envelope.signature, sig_structure(envelope.protected, envelope.payload)))
    key = Ed25519PublicKey.from_public_bytes(SigningKey(bytes([1]) * 32).public_key)
    start = time.perf_counter()
    for signature, message in jobs:
        key.verify(signature, message)
    return len(jobs) / (time.perf_counter() - start)


def timed_verify(bundle: Path, jobs: int) -> tuple[float, int]:
    with bundle.open("rb") as handle:
        start = time.perf_counter()
        result = verify_bundle(handle, LEDGER_KEY.public_key, False, jobs)
        elapsed = time.perf_counter() - start
    if result.failure_count:
        raise SystemExit("the benchmark bundle did not verify: %s" % result.failures[0].describe())
    return elapsed, result.readings


PEAK_RSS = """
import contextlib, io, resource, sys
from crev_cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[1:])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
own = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(code, own, workers)
"""


def command_peak_rss_mib(bundle: Path, key_file: Path) -> tuple[float, float]:
    """Peak RSS of `crev audit verify` itself and of its largest worker, in MiB."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, "audit", "verify", str(bundle), "--ledger-key", str(key_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    code, own, workers = (int(x) for x in done.stdout.split())
    if code != 0:
        raise SystemExit("crev audit verify failed:\n" + done.stderr)
    return own / 1024, workers / 1024


def report(readings: int) -> None:
    with tempfile.TemporaryDirectory(prefix="crev-audit-bench-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        build_ledger(directory / "crev.sqlite", readings)
        built = time.perf_counter() - started
        bundle = directory / "device.bundle"
        store = Store(directory / "crev.sqlite")
        started = time.perf_counter()
        request = ExportRequest(
            DEV, START, START + 60 * (readings + 1), bundle, "crev.bench/ledger", LEDGER_KEY.public_key, 423, 0
        )
        export_bundle(store, request)
        exported = time.perf_counter() - started
        store.close()
        size = bundle.stat().st_size
        key_file = directory / "ledger.pub"
        key_file.write_text(LEDGER_KEY.public_key.hex())

        raw_before = raw_verify_rate(bundle, min(readings, 20_000))
        one_s, count = timed_verify(bundle, 1)
        jobs = default_jobs()
        many_s, _ = timed_verify(bundle, jobs)
        raw_after = raw_verify_rate(bundle, min(readings, 20_000))
        raw = (raw_before + raw_after) / 2
        rss = command_peak_rss_mib(bundle, key_file)
        # The same ledger, a tenth of the range: memory should not grow with the bundle.
        small = directory / "tenth.bundle"
        store = Store(directory / "crev.sqlite")
        tenth = ExportRequest(
            DEV, START, START + 60 * (readings // 10), small, "crev.bench/ledger", LEDGER_KEY.public_key, 423, 0
        )
        export_bundle(store, tenth)
        store.close()
        small_rss = command_peak_rss_mib(small, key_file)

    print("== evidence bundle: %d readings of one device in a ledger of %d leaves ==" % (count, 2 * readings + 2))
    print("ledger built in %.1f s; export took %.1f s (%.0f readings/s)" % (built, exported, count / exported))
    print("bundle size: %d bytes, %.0f bytes per reading" % (size, size / count))
    print("%-46s %14s %8s" % ("setup", "readings/s", "ratio"))
    print("%-46s %14.0f %7.2fx" % ("raw Ed25519 verify, cryptography (baseline)", raw, 1.0))
    print("%-46s %14.0f %7.2fx" % ("crev audit verify, 1 job", count / one_s, count / one_s / raw))
    print(
        "%-46s %14.0f %7.2fx"
        % ("crev audit verify, %d jobs (%d CPUs)" % (jobs, os.cpu_count() or 1), count / many_s, count / many_s / raw)
    )
    print("peak RSS of `crev audit verify`: %.1f MiB, its largest worker %.1f MiB" % rss)
    workers = "worker %.1f MiB" % small_rss[1] if small_rss[1] else "no workers at this size"
    print(
        "  ... on a tenth of the readings: %.1f MiB, %s (ratio %.2fx; the bundle is streamed)"
        % (small_rss[0], workers, rss[0] / small_rss[0])
    )
