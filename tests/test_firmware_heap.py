"""The firmware through a broker outage that fills its outbox ring, on real MicroPython, with its heap measured.

tests/micropython/heap_outage.py runs the real loop (App.run) with the
tests' fake UART and MQTT broker, one interval per top-level call of the
WebAssembly port and the first interval after the outage one pass per call,
with gc.collect() between calls: the heap a step starts with is the live
heap, and a step runs with the GC off, so what it allocates is everything it
allocated. The bounds checked here are allocation counts, not times: the
replay streams the outbox a batch per pass, and neither a pass nor the live
heap grows with the backlog. The ring here is 4 segments of 16 readings, so
that it fills in a few seconds; `make bench` runs the full ring.

The last two tests run the loop in a heap that cannot grow (run.mjs
--fixed-heap, through benchmarks/run.py floor_run): it must run through an
outage and its replay a little above the smallest heap `make bench` found,
and run out of memory in the loop (not at boot) well below it.
"""

import hashlib
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import MICROPYTHON_PACKAGE, MICROPYTHON_RUNNER, ROOT

from crev.keys import SigningKey
from crev.reading import ZERO_HASH, verify_reading
from crev_gateway.config import BusURL, MeterConfig
from crev_gateway.firmware_config import compact_meter
from crev_gateway.profiles import load_profile

SEED = bytes(range(7, 39))
RING = (16, 4)  # records a segment, segments
INTERVAL_S = 60
PASS_BOUND = 32 * 1024  # what one pass (a replay pass, or the pass that signs) may allocate beyond the live heap
LIVE_SLACK = 1024  # what the live heap may differ by between a quiet interval and an outage
REPLAY_BATCH = 8  # firmware/dgc/app.py


def _run_steps(script: Path, files: dict[str, Path]) -> str:
    """``script`` under run.mjs --steps (support.run_micropython without --steps); its stdout."""
    node = shutil.which("node")
    if node is None or not MICROPYTHON_PACKAGE.exists():
        pytest.fail("node or the MicroPython WebAssembly package is missing; run `make test` to set them up")
    command = [node, str(MICROPYTHON_RUNNER), str(script), "--steps"]
    for fs_path, host_path in files.items():
        command += ["--file", "%s=%s" % (fs_path, host_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if done.returncode != 0:
        pytest.fail("MicroPython failed:\n" + done.stderr)
    return done.stdout


def _meters() -> list[dict[str, Any]]:
    from crev import dgcc

    profile = load_profile("sdm630")
    url = BusURL("rtu", device="/dev/ttyS1")
    meters = [
        MeterConfig("pv", "sdm630", url, 1, "generation", dgcc.SOURCE_SOLAR, "export"),
        MeterConfig("grid", "sdm630", url, 2, "grid", dgcc.SOURCE_GRID, "import"),
    ]
    return [compact_meter(m, profile) for m in meters]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:

    params = {
        "interval_s": INTERVAL_S,
        "segment_records": RING[0],
        "max_segments": RING[1],
        "steady": 4,
        "seed": list(SEED),
        "meters": _meters(),
    }
    path: Path = tmp_path_factory.mktemp("heap") / "params.json"
    path.write_text(json.dumps(params))
    out = _run_steps(
        ROOT / "tests" / "micropython" / "heap_outage.py",
        {"/test/params.json": path, "/test/fakes.py": ROOT / "tests" / "micropython" / "fakes.py"},
    )
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _phase(run: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in run if line["phase"] == name]


def test_the_outage_fills_the_ring_and_pauses_readings(run: list[dict[str, Any]]) -> None:
    outage = _phase(run, "outage")
    assert outage[-1]["paused"] and not any(s["paused"] for s in outage[:-1])
    assert all(s["sent"] == 0 for s in outage)
    replay = _phase(run, "replay")
    backlog = replay[0]["pending"]
    assert RING[0] * (RING[1] - 1) < backlog <= RING[0] * RING[1], "the ring was full when the broker came back"


def test_the_replay_sends_every_reading_once_in_seq_order(run: list[dict[str, Any]]) -> None:
    public = SigningKey(SEED).public_key
    received = _phase(run, "received")[0]
    readings = [verify_reading(bytes.fromhex(c), public) for c in received["readings"]]
    assert [r.seq for r in readings] == list(range(received["next_seq"])), "all of them, once each, in seq order"
    previous = ZERO_HASH
    for cose, reading in zip(received["readings"], readings, strict=True):
        assert reading.prev == previous
        previous = hashlib.sha256(bytes.fromhex(cose)).digest()
    t1s = [r.t1 for r in readings]
    gaps = [b - a for a, b in itertools.pairwise(t1s)]
    assert set(gaps) <= {INTERVAL_S, 2 * INTERVAL_S, 3 * INTERVAL_S}, "every boundary, or a span over the pause"
    assert gaps.count(INTERVAL_S) >= len(gaps) - 2
    after = _phase(run, "after")
    assert after[-1]["pending"] == 0 and after[-1]["signed"], "readings resumed once the backlog was sent"


def test_each_replay_pass_sends_one_batch_and_allocates_within_the_bound(run: list[dict[str, Any]]) -> None:
    replay = [p for p in _phase(run, "replay") if not p["signed"]]
    sending = [p for p in replay if p["sent"]]
    assert sum(p["sent"] for p in sending) == _phase(run, "replay")[0]["pending"], "the backlog went in this interval"
    assert max(p["sent"] for p in sending) == REPLAY_BATCH and len(sending) > 2
    worst = max(p["alloc"] for p in replay)
    assert worst <= PASS_BOUND, "a replay pass allocated %d bytes with the GC off" % worst


def test_the_pass_that_reads_signs_commits_and_publishes_allocates_within_the_bound(
    run: list[dict[str, Any]],
) -> None:
    # The signature in 12-bit limbs (firmware/dgc/limbs25519.py) leaves no garbage per field
    # operation; with Python ints this pass allocated about 240 kB.
    signing = [p for p in _phase(run, "quiet pass") + _phase(run, "replay") if p["signed"]]
    assert signing, "the quiet interval signs one reading"
    worst = max(p["alloc"] for p in signing)
    assert worst <= PASS_BOUND, "the pass that signs allocated %d bytes with the GC off" % worst


def test_a_boundary_between_two_calls_of_the_loop_is_not_skipped(run: list[dict[str, Any]]) -> None:
    quiet = _phase(run, "quiet pass")
    assert len(quiet) == INTERVAL_S * 1000 // 200
    assert [p["signed"] for p in quiet].count(True) == 1, "one reading in the interval run one pass per call"


def test_the_live_heap_does_not_grow_with_the_backlog(run: list[dict[str, Any]]) -> None:
    steady = _phase(run, "steady")
    quiet = max(s["live"] for s in steady[1:])
    outage = [s["live"] for s in _phase(run, "outage")]
    assert max(outage) <= quiet + LIVE_SLACK, "the live heap grew with the outage: %s" % outage[-5:]
    replay = [s["live"] for s in _phase(run, "replay")]
    assert max(replay) <= quiet + LIVE_SLACK
    after = [s["live"] for s in _phase(run, "after")]
    assert after[-1] <= quiet + LIVE_SLACK


# ---------------------------------------------------------------- the smallest heap (run.mjs --fixed-heap)

# `make bench` bisects for the smallest fixed heap the loop runs in (benchmarks/run.py
# heap_floors); with the limbs, the steady loop and an outage with its replay both found
# FLOOR_LIMBS on the WebAssembly port. This checks that figure both ways, on a small ring.
# The ring is RING, which is also benchmarks/run.py's FLOOR_BISECT_RING.
FLOOR_LIMBS = 139 * 1024
FLOOR_MARGIN = 8 * 1024  # two steps of the bisection: room for a change of the port's layout, not of the firmware's
# Three steps below: the live heap (about 106 kB with the stand-ins) still boots, the first signing pass does not fit.
FLOOR_BELOW = 12 * 1024


def _floor_run(heap: int, tmp: Path) -> dict[str, Any]:
    """benchmarks/micropython_firmware.py "floor" in a fixed heap, as benchmarks/run.py floor_run runs it.

    Not through benchmarks/run.py: importing it imports every benchmark, and with them
    ingest's fast CBOR decoder, installed process-wide.
    """
    from crev_cli.provision import compile_modules, firmware_files

    params = {
        "mode": "floor",
        "mpy": True,
        "signing": "limbs",
        "meters": _meters(),
        "steady": 3,
        "outage": True,
        "segment_records": RING[0],
        "max_segments": RING[1],
    }
    (tmp / "params.json").write_text(json.dumps(params))
    files = {"/bench/params.json": tmp / "params.json", "/bench/fakes.py": ROOT / "tests" / "micropython" / "fakes.py"}
    for path, data in compile_modules(firmware_files({})):
        if path.startswith("/lib/") and path.endswith(".mpy"):
            host = tmp / path.strip("/").replace("/", "_")
            host.write_bytes(data)
            files["/mpy/" + path[len("/lib/") :]] = host
    node = shutil.which("node")
    if node is None or not MICROPYTHON_PACKAGE.exists():
        pytest.fail("node or the MicroPython WebAssembly package is missing; run `make test` to set them up")
    command = [node, str(MICROPYTHON_RUNNER), str(ROOT / "benchmarks" / "micropython_firmware.py"), "--steps"]
    command += ["--fixed-heap", "--heap", str(heap), "--collect-after", "1024"]
    for fs_path, host_path in files.items():
        command += ["--file", "%s=%s" % (fs_path, host_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    if done.returncode != 0:
        pytest.fail("MicroPython failed:\n" + done.stderr)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    report: dict[str, Any] = next(line for line in lines if line["phase"] == "floor")
    assert report.get("heap", 0) <= heap, "the fixed heap grew"
    return report


def test_the_loop_runs_through_an_outage_in_its_measured_heap(tmp_path: Path) -> None:
    report = _floor_run(FLOOR_LIMBS + FLOOR_MARGIN, tmp_path)
    assert report["ok"], report
    assert report["connections"] == 2 and report["readings"] == report["next_seq"] > RING[0] * RING[1]


def test_a_heap_well_below_it_runs_out_in_the_loop(tmp_path: Path) -> None:
    # Not at boot: the loop itself, which keeps the same live heap, needs the room.
    report = _floor_run(FLOOR_LIMBS - FLOOR_BELOW, tmp_path)
    assert not report["ok"]
    assert report["failed_in"] in ("warm-up", "steady", "outage", "replay", "after"), report
