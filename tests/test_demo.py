"""`crev demo` runs the whole pipeline and ends with a passing ledger audit."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_runs_end_to_end(tmp_path: Path, broker: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crev_cli.main",
            "demo",
            "--minutes",
            "0.3",
            "--no-live",
            "--broker",
            broker,
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=tmp_path,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"crev audit ledger: OK \(full\): \d+ leaves", done.stdout)
    # The auditor's path: one site's bundle, exported and verified offline.
    assert "RESULT: PASS" in done.stdout, done.stdout
    workdir = tmp_path / "demo"
    bundle = workdir / "dgc-demo-tokyo-0001.bundle"
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "crev_cli.main",
            "audit",
            "verify",
            str(bundle),
            "--json",
            "--ledger-key",
            str(workdir / "ledger.pub"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["result"] == "pass" and report["totals"]["readings"] >= 10
    assert report["gaps"] == [] and report["first_failure"] is None
    for site in ("Tokyo", "Osaka", "Sapporo"):
        row = next(line for line in done.stdout.splitlines() if site in line)
        readings = int(row.split("│")[2])
        assert readings >= 10, row
    assert "BAD_SIGNATURE 1" in done.stdout and "UNKNOWN_KEY 1" in done.stdout
