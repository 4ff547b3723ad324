"""crev benchmarks: `make bench`. Reports ratios to a baseline measured in the same run.

The machine is shared and noisy, so absolute times are printed for
information only; compare the ratios.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import audit_bench  # noqa: E402
import dashboard_bench  # noqa: E402
import gateway_bench  # noqa: E402
import ingest_bench  # noqa: E402
import market_api_bench  # noqa: E402
import matching_bench  # noqa: E402
import registry_bench  # noqa: E402
import site_control_bench  # noqa: E402
import witness_bench  # noqa: E402

from crev.keys import SigningKey  # noqa: E402
from crev.reading import ChainHead  # noqa: E402

CHANNELS = [
    (0, "SDM630-PV-0001", 1, 12_345_677_734),
    (1, "SDM630-GRID-0009", 0, 3_000_000_000),
    (2, "SDM630-GRID-0009", 0, 1_500_000_000),
]


def time_cpython_sign(backend: str, iterations: int) -> float:
    """Median seconds to build and sign one reading, over 5 rounds."""
    key = SigningKey(bytes(range(32)), backend)
    head = ChainHead(100, b"\x07" * 32, 1_790_000_000, CHANNELS)

    def one(i: int) -> bytes:
        now = [(c[0], c[1], c[2], c[3] + 1000 * i) for c in CHANNELS]
        return head.next_reading("dgc-bench-0001", 1_790_000_060 + i, 1, now, "crev-bench/1").sign(key)

    one(0)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(iterations):
            one(i + 1)
        rounds.append((time.perf_counter() - start) / iterations)
    return statistics.median(rounds)


def time_micropython_sign(iterations: int) -> dict[str, float]:
    from support import MICROPYTHON_RUNNER

    with tempfile.NamedTemporaryFile("w", suffix=".json") as params:
        json.dump({"iterations": iterations}, params)
        params.flush()
        done = subprocess.run(
            [
                "node",
                str(MICROPYTHON_RUNNER),
                str(ROOT / "benchmarks" / "micropython_sign.py"),
                "--file",
                "/bench/params.json=" + params.name,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
    if done.returncode != 0:
        raise SystemExit("MicroPython benchmark failed:\n" + done.stderr)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _firmware_meters() -> list[dict[str, object]]:
    """The two SDM630 meters of the firmware benchmarks, in the compact form provisioning writes."""
    from crev import dgcc
    from crev_gateway.config import BusURL, MeterConfig
    from crev_gateway.firmware_config import compact_meter
    from crev_gateway.profiles import load_profile

    profile = load_profile("sdm630")
    url = BusURL("rtu", device="/dev/ttyS1")
    meters = [
        MeterConfig("pv", "sdm630", url, 1, "generation", dgcc.SOURCE_SOLAR, "export"),
        MeterConfig("grid", "sdm630", url, 2, "grid", dgcc.SOURCE_GRID, "import"),
    ]
    return [compact_meter(m, profile) for m in meters]


FIRMWARE_FILES = {"/bench/fakes.py": ROOT / "tests" / "micropython" / "fakes.py"}


def time_micropython_firmware(iterations: int, signing: str) -> dict[str, float]:
    """The firmware's whole path per reading on MicroPython-wasm (benchmarks/micropython_firmware.py).

    ``signing``: "table" (the fast table), "ints" (the comb in Python ints) or "limbs"
    (the comb in 12-bit limbs, firmware/dgc/limbs25519.py: what main.py uses without the table).
    """
    params = {"iterations": iterations, "signing": signing, "meters": _firmware_meters()}
    result: dict[str, float] = _run_micropython(
        ROOT / "benchmarks" / "micropython_firmware.py", params, FIRMWARE_FILES
    )[-1]
    return result


def _run_micropython(
    script: Path,
    params: dict[str, object],
    files: dict[str, Path],
    steps: bool = False,
    fixed_heap: int | None = None,
    collect_after: int = 0,
) -> list[dict[str, Any]]:
    """The JSON lines the script prints; ``steps``: run.mjs --steps (one top-level call per step).

    ``fixed_heap``: run.mjs --fixed-heap in a heap of that many bytes.
    """
    from support import MICROPYTHON_RUNNER

    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        json.dump(params, handle)
        handle.flush()
        command = ["node", str(MICROPYTHON_RUNNER), str(script), "--file", "/bench/params.json=" + handle.name]
        for target, source in files.items():
            command += ["--file", "%s=%s" % (target, source)]
        if steps:
            command.append("--steps")
        if fixed_heap is not None:
            command += ["--fixed-heap", "--heap", str(fixed_heap), "--collect-after", str(collect_after)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit("MicroPython benchmark failed:\n" + done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


# ---------------------------------------------------------------- the firmware's heap

# Measured with benchmarks/micropython_firmware.py before the allocation work
# of issue 13 (whole-segment reads, bigint SHA-512, double-and-add signing):
# what one reading allocated with the GC off, without the signing table.
CHURN_BEFORE = 1_865_376

HEAP_GOALS = {"live": 48 * 1024, "step": 32 * 1024}


def heap_micropython_firmware(quick: bool) -> list[dict[str, Any]]:
    """The heap run of benchmarks/micropython_firmware.py: one JSON line per step.

    The firmware runs as `crev provision` writes it to a board, compiled to .mpy.
    """

    params: dict[str, object] = {
        "mode": "heap",
        "mpy": True,
        "signing": "limbs",  # firmware/main.py's "signing": "limbs" (the ints' garbage would swamp the counts)
        "meters": _firmware_meters(),
        "steady": 20 if quick else 1000,
    }
    if quick:
        params.update({"segment_records": 16, "max_segments": 4})  # a small ring, filled quickly
    with tempfile.TemporaryDirectory(prefix="crev-bench-mpy-") as tmp:
        files = _firmware_mpy_files(Path(tmp))
        return _run_micropython(ROOT / "benchmarks" / "micropython_firmware.py", params, files, steps=True)


def _firmware_mpy_files(tmp: Path) -> dict[str, Path]:
    """The run.mjs --file arguments for the firmware compiled to .mpy (in ``tmp``), and the stand-ins."""
    from crev_cli.provision import compile_modules, firmware_files

    files = dict(FIRMWARE_FILES)
    for path, data in compile_modules(firmware_files({})):
        if path.startswith("/lib/") and path.endswith(".mpy"):
            host = tmp / path.strip("/").replace("/", "_")
            host.write_bytes(data)
            files["/mpy/" + path[len("/lib/") :]] = host
    return files


def summarize_heap(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures `make bench` prints, from the heap run's lines."""
    setup = {line["phase"]: line for line in lines if "alloc" not in line and "live" in line}
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if "alloc" in line:
            by_phase.setdefault(line["phase"], []).append(line)
    measured = [line for line in lines if "alloc" in line]
    live = {phase: line["live"] for phase, line in setup.items()}
    interpreter = live["interpreter"]
    code = live["firmware imported"] - interpreter + live["umqtt imported"] - live["stand-ins imported"]
    stand_ins = live["stand-ins imported"] - live["firmware imported"]
    stand_ins += live["stand-in objects made"] - live["umqtt imported"]
    not_firmware = interpreter + stand_ins
    steady = by_phase["steady"]
    # A step's "live" is the heap kept after the step before it: the figure after
    # each steady interval but the last is the next one's.
    after_steady = [s["live"] for s in steady[1:]]
    window = max(1, min(100, len(after_steady) // 2))
    passes = by_phase["steady pass"]
    signing_passes = [p["alloc"] for p in passes if p["signed"]]
    idle_passes = sorted(p["alloc"] for p in passes if not p["signed"])
    replay = by_phase["replay pass"]
    outage = by_phase["outage"]
    received = next(line for line in lines if line["phase"] == "received")
    not_compiled = [name for name in received["loaded"] if not name.endswith(".mpy")]
    if not_compiled:
        raise SystemExit("the heap benchmark loaded firmware modules from source: %s" % not_compiled)
    return {
        "interpreter": interpreter,
        "stand_ins": stand_ins,
        "code": code,
        "data": max(after_steady) - live["stand-in objects made"],
        "ring": next(line for line in lines if line["phase"] == "ring"),
        "intervals": len(steady),
        "live_max": max(after_steady),
        "firmware_live_max": max(after_steady) - not_firmware,
        "live_max_anywhere": max(s["live"] for s in measured),
        "growth": max(after_steady[-window:]) - max(after_steady[:window]),
        "growth_window": window,
        "steady_interval_alloc": max(s["alloc"] for s in steady),
        "signing_pass_alloc": max(signing_passes),
        "idle_pass_alloc": idle_passes[len(idle_passes) // 2],
        "outage_intervals": len(outage),
        "outage_alloc": max(s["alloc"] for s in outage),
        "outage_live_max": max(s["live"] for s in outage),
        "replay_backlog": replay[0]["pending"],
        "replay_interval_alloc": sum(p["alloc"] for p in replay),
        "replay_pass_alloc": max(p["alloc"] for p in replay),
        "replay_live_max": max(p["live"] for p in replay),
        "replay_signed": any(p["signed"] for p in replay),
        "drain_intervals": len(by_phase.get("after", [])),
        "received": received,
    }


def _kb(n: float) -> str:
    return "%.1f kB" % (n / 1024)


# ---------------------------------------------------------------- the smallest heap the loop runs in

FLOOR_RESOLUTION = 4096
FLOOR_COLLECT_AFTER = 1024  # run.mjs --collect-after: a step may start with this much garbage
FLOOR_BISECT_RING = (16, 4)  # records a segment, segments: filled in a few seconds


def floor_run(
    signing: str, heap: int, steady: int, outage: bool, ring: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Whether the real loop (benchmarks/micropython_firmware.py "floor") runs in a fixed heap of ``heap`` bytes.

    Its report: "ok", and "failed_in" (the phase or module a MemoryError escaped in).

    ``steady`` intervals, then with ``outage`` a broker outage until the ring is full, the
    replay and two intervals after. Succeeds only if no MemoryError escaped and none was
    absorbed (every reading made, delivered once in order, no extra reconnection).
    """
    params: dict[str, object] = {
        "mode": "floor",
        "mpy": True,
        "signing": signing,
        "meters": _firmware_meters(),
        "steady": steady,
        "outage": outage,
    }
    if ring is not None:
        params.update({"segment_records": ring[0], "max_segments": ring[1]})
    with tempfile.TemporaryDirectory(prefix="crev-bench-floor-") as tmp:
        files = _firmware_mpy_files(Path(tmp))
        lines = _run_micropython(
            ROOT / "benchmarks" / "micropython_firmware.py",
            params,
            files,
            steps=True,
            fixed_heap=heap,
            collect_after=FLOOR_COLLECT_AFTER,
        )
    report = next(line for line in lines if line["phase"] == "floor")
    if report.get("heap", 0) > heap:
        raise SystemExit("the fixed heap grew past %d bytes: %s" % (heap, report))
    return report


def smallest_heap(signing: str, steady: int, outage: bool, low: int, high: int, ring: tuple[int, int] | None) -> int:
    """Bisect for the smallest heap, to FLOOR_RESOLUTION, between ``low`` (assumed to fail) and ``high``."""
    if not floor_run(signing, high, steady, outage, ring)["ok"]:
        raise SystemExit("the %s loop did not run in a fixed heap of %d bytes" % (signing, high))
    while high - low > FLOOR_RESOLUTION:
        middle = (low + high) // 2 // 1024 * 1024
        if floor_run(signing, middle, steady, outage, ring)["ok"]:
            high = middle
        else:
            low = middle
    return high


def heap_floors(quick: bool) -> dict[tuple[str, str], dict[str, Any]]:
    """For each signing mode and scenario: the smallest heap found, and whether the full run confirmed it."""
    from concurrent.futures import ThreadPoolExecutor

    steady_bisect, steady_full = (5, 20) if quick else (20, 300)
    plans = {
        # (mode, scenario): (low, high) of the search
        ("limbs", "steady"): (64 * 1024, 256 * 1024),
        ("limbs", "outage"): (64 * 1024, 256 * 1024),
        ("ints", "steady"): (64 * 1024, 2048 * 1024),
        ("ints", "outage"): (64 * 1024, 2048 * 1024),
    }

    def one(key: tuple[str, str]) -> dict[str, Any]:
        mode, scenario = key
        outage = scenario == "outage"
        low, high = plans[key]
        floor = smallest_heap(mode, steady_bisect, outage, low, high, FLOOR_BISECT_RING)
        # The figure again with the full run: 300 intervals, or the full ring (not with --quick).
        if outage:
            confirmed = floor_run(mode, floor, steady_bisect, True, FLOOR_BISECT_RING if quick else None)["ok"]
        else:
            confirmed = floor_run(mode, floor, steady_full, False)["ok"]
        return {"floor": floor, "confirmed": confirmed}

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(plans, pool.map(one, plans), strict=True))


def report_heap_floors(quick: bool) -> None:
    floors = heap_floors(quick)
    steady_bisect, steady_full = (5, 20) if quick else (20, 300)
    ring = "%d-reading ring" % (FLOOR_BISECT_RING[0] * FLOOR_BISECT_RING[1])
    print("== the smallest heap the firmware's loop runs in, on MicroPython-wasm, by signing mode ==")
    print(
        "Method: tests/micropython/run.mjs --fixed-heap keeps the heap at N bytes, as on a board (this port "
        "otherwise adds heap whenever an allocation does not fit); the firmware, compiled to .mpy, boots one "
        "module a step and then runs App.run one pass per step, the stand-ins of fakes.py for UART and broker. "
        "A run fails on a MemoryError, or on one the firmware absorbed (a missed reading, a reading not "
        "delivered once and in order, an extra reconnection). Bisection to %d B: %d steady intervals, or %d "
        "then an outage that fills a %s and its replay; the figure found is then run again with %s. This "
        "port collects only between steps, at most every %d B allocated (run.mjs --collect-after): a pass "
        "must fit with all its garbage, so N bounds from above what a board needs, which also collects "
        "within a pass. The heap includes the interpreter, this script and the stand-ins (see above)."
        % (
            FLOOR_RESOLUTION,
            steady_bisect,
            steady_bisect,
            ring,
            "%d intervals and the full 1,024-reading ring" % steady_full if not quick else "%d intervals" % steady_full,
            FLOOR_COLLECT_AFTER,
        )
    )
    labels = {
        "limbs": "12-bit limbs (firmware/dgc/limbs25519.py)",
        "ints": "the comb in Python ints",
    }
    print("%-44s %18s %22s" % ("signing", "steady intervals", "outage, then replay"))
    for mode, label in labels.items():
        cells = []
        for scenario in ("steady", "outage"):
            found = floors[(mode, scenario)]
            cells.append("%s%s" % (_kb(found["floor"]), "" if found["confirmed"] else " (NOT confirmed)"))
        print("%-44s %18s %22s" % (label, cells[0], cells[1]))
    print(
        "Not measured: the table mode (its 960-point table is built in one signing pass, which here would "
        "have to hold all the garbage of building it). The ints mode's figure is its boot and its signing "
        "pass with no collection in between: on a board, which collects within a pass, it needs less, by an "
        "amount this port cannot show (docs/provisioning-a-microcontroller.md has a unix-port measurement)."
    )


def report_firmware_heap(quick: bool, churn_per_reading: float) -> None:
    h = summarize_heap(heap_micropython_firmware(quick))
    received = h["received"]
    print("== firmware heap on MicroPython-wasm: the real loop (App.run), no signing table ==")
    print(
        "Method: tests/micropython/run.mjs --steps drives App.run one interval per top-level call (%d passes "
        "of 200 ms on a fake clock) and runs gc.collect() in a call of its own between steps: this port's GC "
        "collects only at the top level. The heap in use at the start of a step is the live heap. Within a "
        "step the GC is off (gc.disable(), gc.mem_alloc() before and after), so a step's allocation is all it "
        "allocated: an upper bound of its peak above the live heap (save the few buffers MicroPython frees "
        "itself when it grows them). The first interval after the outage, and one steady interval, run one "
        "pass per step. Stand-ins: tests/micropython/fakes.py's UART and MQTT broker; the firmware is compiled "
        "to .mpy as `crev provision` writes it." % 300
    )
    rows = [
        ("live heap: the interpreter and this script", _kb(h["interpreter"])),
        ("  + the stand-ins (fakes.py, the fake UART's registers)", _kb(h["stand_ins"])),
        ("  + the firmware's modules, imported from .mpy", _kb(h["code"])),
        ("  + the firmware's data after an interval", _kb(h["data"])),
        ("live heap after each interval, max over %d" % h["intervals"], _kb(h["live_max"])),
        ("  the firmware's share (code and data)", _kb(h["firmware_live_max"])),
        ("  growth: max of the last %d - max of the first %d" % ((h["growth_window"],) * 2), "%+d B" % h["growth"]),
        ("  max anywhere in the run (outage, replay, after)", _kb(h["live_max_anywhere"])),
        ("allocated in a steady interval, GC off, max", _kb(h["steady_interval_alloc"])),
        ("  in its pass that reads, signs, commits, publishes", _kb(h["signing_pass_alloc"])),
        ("  in an idle pass (median)", "%d B" % h["idle_pass_alloc"]),
        ("outage: intervals until the ring was full, paused", "%d" % h["outage_intervals"]),
        ("  allocated in an outage interval, GC off, max", _kb(h["outage_alloc"])),
        ("first interval after it: backlog replayed", "%d readings" % h["replay_backlog"]),
        ("  allocated in the whole interval, GC off", _kb(h["replay_interval_alloc"])),
        ("  allocated in one of its passes, GC off, max", _kb(h["replay_pass_alloc"])),
        ("  live heap after each of its passes, max", _kb(h["replay_live_max"])),
        ("the broker got", "%d readings" % received["readings"]),
        ("  in seq order: gaps, resent", "%d, %d" % (received["gaps"], received["duplicates"])),
        ("one reading's churn, GC off (timing run above)", _kb(churn_per_reading)),
    ]
    for label, value in rows:
        print("%-56s %14s" % (label, value))
    print("Goals, measured here:")
    goals = [
        (
            "firmware's live heap <= 48 kB between intervals",
            h["firmware_live_max"] <= HEAP_GOALS["live"],
            "%s, of which %s is module code" % (_kb(h["firmware_live_max"]), _kb(h["code"])),
        ),
        (
            "allocation in a replay pass <= 32 kB beyond the live heap",
            h["replay_pass_alloc"] <= HEAP_GOALS["step"],
            _kb(h["replay_pass_alloc"]),
        ),
        (
            "allocation in any interval <= 32 kB beyond the live heap",
            max(h["steady_interval_alloc"], h["replay_interval_alloc"]) <= HEAP_GOALS["step"],
            "steady %s, after the outage %s (GC off: every record's and every bigint's garbage counts)"
            % (_kb(h["steady_interval_alloc"]), _kb(h["replay_interval_alloc"])),
        ),
        ("no growth over %d intervals" % h["intervals"], h["growth"] <= 0, "%+d B" % h["growth"]),
        (
            "churn per reading halved (was %s)" % _kb(CHURN_BEFORE),
            churn_per_reading * 2 <= CHURN_BEFORE,
            "%s, %.1fx less" % (_kb(churn_per_reading), CHURN_BEFORE / churn_per_reading),
        ),
    ]
    for goal, met, figure in goals:
        print("  [%s] %s: %s" % ("met" if met else "NOT met", goal, figure))
    print(
        "Cannot be measured here: the heap a given board's MicroPython build leaves free (it varies with the "
        "port and its Wi-Fi and Bluetooth stacks); fragmentation under a collector that runs within a pass "
        "(this port's runs only between calls; the next section fixes the heap's size to find the smallest that "
        "works); the exact peak within a pass (only the upper bound above); a build with the firmware frozen "
        "into flash or in a ROMFS, where module code takes no heap (this port loads .mpy into the heap, as a "
        "board's filesystem does)."
    )
    if quick:
        print(
            "(--quick: %d intervals and a 64-reading ring; `make bench` runs 1,000 and the full ring)" % h["intervals"]
        )


def host_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return None


def report_firmware(iterations: int, baseline_s: float) -> dict[str, float]:
    with_table = time_micropython_firmware(iterations, "table")
    ints = time_micropython_firmware(iterations, "ints")
    without = time_micropython_firmware(iterations, "limbs")
    print("== firmware, one whole reading on MicroPython-wasm ==")
    print("(read 2 meters over Modbus RTU, DGC-C rules, sign, flash outbox append, MQTT publish, PUBACK)")
    print("%-38s %12s %10s %14s" % ("setup", "per reading", "ratio", "heap churn"))
    rows = (
        ("with the signing table", with_table),
        ("the small comb in Python ints", ints),
        ("the comb in 12-bit limbs", without),
    )
    for label, result in rows:
        us = result["us_per_reading"]
        print(
            "%-38s %9.1f ms %9.0fx %11.0f kB"
            % (label, us / 1000, us / 1e6 / baseline_s, result["alloc_per_reading"] / 1024)
        )
    mhz = host_mhz()
    if mhz:
        low, high = (without["us_per_reading"] / 1e6 * mhz / 240 * k for k in (1.0, 2.7))
        print(
            "ESP32 at 240 MHz, estimated: %.2f-%.2f s per reading without the table. Method: this wasm time "
            "x (%.0f MHz host / 240 MHz) x 1.0-2.7, the range of an x86 core's instructions per clock over the "
            "ESP32's Xtensa LX6 (2-4x) divided by WebAssembly's cost over native code (1.5-2x). No ESP32 was "
            "measured." % (low, high, mhz)
        )
    print(
        "Heap churn is what one reading allocates with the GC off (the live heap is measured below). The "
        "signing table holds 960 points, about 200 kB. Without it the board signs in limbs "
        "(firmware/dgc/limbs25519.py): no garbage per field operation, at %.1fx the time of the comb in ints."
        % (without["us_per_reading"] / ints["us_per_reading"])
    )
    return without


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations, to check the benchmarks still run")
    parser.add_argument("--firmware-only", action="store_true", help="only the MicroPython and firmware sections")
    args = parser.parse_args()
    n = 5 if args.quick else 200

    baseline = time_cpython_sign("cryptography", n * 5)
    pure = time_cpython_sign("pure", n)
    micro = time_micropython_sign(max(5, n // 4))
    micro_s = micro["us_per_reading"] / 1e6

    print("== build + sign one reading (3 channels) ==")
    print("%-38s %12s %10s" % ("setup", "per reading", "ratio"))
    print("%-38s %10.1f us %9.1fx" % ("CPython + cryptography (baseline)", baseline * 1e6, 1.0))
    print("%-38s %10.1f us %9.1fx" % ("CPython + pure Ed25519", pure * 1e6, pure / baseline))
    print("%-38s %10.1f us %9.1fx" % ("MicroPython-wasm + pure Ed25519", micro_s * 1e6, micro_s / baseline))
    print()
    print("MicroPython heap allocated per reading (gc.mem_alloc delta, GC off): %d bytes" % micro["alloc_per_reading"])
    print()
    without_table = report_firmware(max(5, n // 4), baseline)
    print()
    report_firmware_heap(args.quick, without_table["alloc_per_reading"])
    print()
    report_heap_floors(args.quick)
    if args.firmware_only:
        return
    print()
    gateway_bench.report(3 if args.quick else 30)
    print()
    if args.quick:
        ingest_bench.report(20, 3)
    else:
        ingest_bench.report(1000, 10)
    print()
    audit_bench.report(2000 if args.quick else 100_000)
    print()
    registry_bench.report(20 if args.quick else 1000, 2, 1 if args.quick else 3)
    print()
    matching_bench.report(2000 if args.quick else 20_000, 1 if args.quick else 3)
    print()
    market_api_bench.report(100 if args.quick else 1000, 1 if args.quick else 3)
    print()
    if args.quick:
        dashboard_bench.report(200, 5, 10)
    else:
        dashboard_bench.report(10_000, 100, 100)
    print()
    if args.quick:
        witness_bench.report(50, 1, 5000)
    else:
        witness_bench.report(1000, 3, 100_000)
    print()
    site_control_bench.report(*((1, 3, 2000, 1) if args.quick else (6, 10, 100_000, 5)))


if __name__ == "__main__":
    main()
