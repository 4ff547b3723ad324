"""`crev demo` runs the whole pipeline and ends with a passing ledger audit."""

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_runs_end_to_end(tmp_path: Path, broker: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crev_cli.main", "demo", "--minutes", "0.3", "--no-live", "--broker", broker],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=tmp_path,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"crev audit ledger: OK: \d+ leaves", done.stdout)
    for site in ("Tokyo", "Osaka", "Sapporo"):
        row = next(line for line in done.stdout.splitlines() if site in line)
        readings = int(row.split("│")[2])
        assert readings >= 10, row
    assert "BAD_SIGNATURE 1" in done.stdout and "UNKNOWN_KEY 1" in done.stdout
