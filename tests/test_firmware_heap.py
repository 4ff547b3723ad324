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
PASS_BOUND = 32 * 1024  # what one replay pass may allocate beyond the live heap
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


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    from crev import dgcc

    profile = load_profile("sdm630")
    url = BusURL("rtu", device="/dev/ttyS1")
    meters = [
        MeterConfig("pv", "sdm630", url, 1, "generation", dgcc.SOURCE_SOLAR, "export"),
        MeterConfig("grid", "sdm630", url, 2, "grid", dgcc.SOURCE_GRID, "import"),
    ]
    params = {
        "interval_s": INTERVAL_S,
        "segment_records": RING[0],
        "max_segments": RING[1],
        "steady": 4,
        "seed": list(SEED),
        "meters": [compact_meter(m, profile) for m in meters],
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
