"""`crev demo` runs the whole pipeline and ends with a passing ledger audit, on SQLite or PostgreSQL."""

import glob
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crev_cli import local_postgres
from crev_cli.main import main
from crev_ingest.config import load
from crev_ingest.database import connect


def run_demo(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    # No CREV_DEMO_POSTGRES_URL in this environment: --store postgres starts a server of its own.
    return subprocess.run(
        [
            *(sys.executable, "-m", "crev_cli.main", "demo", "--minutes", "0.3", "--no-live"),
            *(*options, "--workdir", str(tmp_path / "demo")),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_runs_end_to_end(tmp_path: Path, broker: str) -> None:
    done = run_demo(tmp_path, "--broker", broker)
    workdir = tmp_path / "demo"
    issued = check_demo_outcome(done, workdir)
    assert "ledger store: SQLite, %s" % (workdir / "crev.sqlite") in done.stdout, done.stdout
    # Meters -> gateways -> broker -> ingest -> issuance: every lot recomputed by hand.
    assert check_issuance_by_hand(workdir / "crev.sqlite") == issued


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_postgres_it_starts(tmp_path: Path) -> None:
    """`--store postgres`: the same day on a server the demo starts in its work directory, and stops."""
    done = run_demo(tmp_path, "--broker", "mosquitto", "--store", "postgres")
    workdir = tmp_path / "demo"
    issued = check_demo_outcome(done, workdir)
    assert "ledger store: PostgreSQL, database crev_demo on the demo's own server" in done.stdout, done.stdout
    config = load(workdir / "ingest.toml")
    assert config.storage_url is not None and "host=" in config.storage_url
    assert not (workdir / "crev.sqlite").exists()
    # The server is down at the end, cleanly, with the ledger kept: start it again and recompute every lot.
    server_dir = (workdir / "postgres").resolve()
    server = local_postgres.LocalPostgres(server_dir)
    assert not server.running()
    server.start()
    try:
        assert check_issuance_by_hand(config.store_location) == issued
    finally:
        assert server.stop()
        if not server_dir.is_relative_to(tmp_path):  # the demo put it outside, where pytest does not clean
            shutil.rmtree(server_dir)


def check_demo_outcome(done: subprocess.CompletedProcess[str], workdir: Path) -> int:
    """What every demo run shows, on either store; the number of slots issued."""
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"crev audit ledger: OK \(full\): \d+ leaves", done.stdout)
    # The auditor's path: one site's bundle, exported and verified offline.
    assert done.stdout.count("RESULT: PASS") == 2, done.stdout
    # The registry's path: every site issues C-REV, one owner retires, the trace verifies.
    issued = re.search(r"C-REV issued in all: (\d+) slots, ([\d.]+) kg-CO2", done.stdout)
    assert issued is not None and int(issued.group(1)) > 0, done.stdout
    # The market service ran beside ingest and issued as blocks sealed; the dashboard and market were announced.
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/\s+\(login token: \S+\)", done.stdout), done.stdout
    assert re.search(r"market:\s+http://127\.0\.0\.1:\d+/", done.stdout), done.stdout
    assert "issued" in (workdir / "market.log").read_text()
    for owner in ("tokyo-home", "osaka-office", "sapporo-wind"):
        held = re.search(r"%s\s+holds\s+([\d.]+) kg-CO2 in (\d+) lots" % owner, done.stdout)
        assert held is not None and float(held.group(1)) > 0, done.stdout
    assert "for      Nerima Elementary School" in done.stdout
    # The market's path: two controllers sell slot by slot, two buyers with conditions buy, the buyer's
    # retirement traces the trade.
    for owner in ("osaka-office", "sapporo-wind"):
        sold = re.search(r"controller of %s: (\d+) sell orders placed \(([\d.]+) kg-CO2" % owner, done.stdout)
        assert sold is not None and int(sold.group(1)) > 0 and float(sold.group(2)) > 0, done.stdout
    for buyer in ("city-office", "green-fund"):
        bought = re.search(r"%s buys .*: (\d+) trades, ([\d.]+) kg filled" % buyer, done.stdout)
        assert bought is not None and int(bought.group(1)) >= 1 and float(bought.group(2)) > 0, done.stdout
    assert re.search(r"traded\s+[\d.]+ kg from osaka-office to city-office", done.stdout), done.stdout
    assert re.search(
        r"registry\s+replayed:\s+\d+\s+leaves,\s+\d+\s+issuances\s+\(\d+\s+g\),\s+1\s+retirements", done.stdout
    )
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
    return int(issued.group(1))


def check_issuance_by_hand(location: Path | str) -> int:
    """Every issuance of the demo's ledger, recomputed here from its devices' signed readings.

    For each (device, slot): the readings it covers are exactly the device's
    readings of that slot with energies, and its grams are
    floor((carry + Σ self_mWh × factor_mg) / 10^9), with the carry followed
    from the device's previous issuance.
    """
    from crev import cbor
    from crev.ledger_format import leaf_data
    from crev.reading import Reading
    from crev.registry_format import Issuance

    db = connect(location, read_only=True)
    by_dev: dict[str, dict[int, list[tuple[int, Reading]]]] = {}
    for leaf, data in db.execute(
        "SELECT r.leaf_idx, l.data FROM readings r JOIN leaves l ON l.idx = r.leaf_idx ORDER BY r.leaf_idx"
    ):
        reading = Reading.from_cose(leaf_data(bytes(data)))
        slot = (reading.t1 - 1) // 1800 * 1800
        by_dev.setdefault(reading.dev, {}).setdefault(slot, []).append((int(leaf), reading))
    carries: dict[str, int] = {}
    checked = 0
    for (data,) in db.execute("SELECT l.data FROM issuances i JOIN leaves l ON l.idx = i.leaf_idx ORDER BY i.leaf_idx"):
        issuance = Issuance.parse(cbor.loads(bytes(data))[2], None)  # type: ignore[index]
        slot_readings = by_dev[issuance.dev][issuance.slot]
        assert issuance.readings == [leaf for leaf, r in slot_readings], "the slot's readings, all and only"
        self_mwh = sum(r.energies[3] for _leaf, r in slot_readings if r.energies is not None)
        carry = carries.get(issuance.dev, 0)
        total = carry + self_mwh * 423_000
        assert issuance.lots == [["solar", self_mwh, carry, total // 10**9, total % 10**9]]
        carries[issuance.dev] = total % 10**9
        checked += 1
    db.close()
    return checked


def test_demo_on_postgres_without_postgresql_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CREV_DEMO_POSTGRES_URL", raising=False)
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["demo", "--store", "postgres", "--workdir", str(tmp_path / "demo")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "apt-get install postgresql" in error and "CREV_DEMO_POSTGRES_URL" in error
    assert not (tmp_path / "demo" / "ingest.toml").exists()


def test_demo_refuses_a_postgres_url_that_is_not_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CREV_DEMO_POSTGRES_URL", "sqlite:///crev.sqlite")
    assert main(["demo", "--store", "postgres", "--workdir", str(tmp_path / "demo")]) == 2
    error = capsys.readouterr().err
    assert error == "crev: CREV_DEMO_POSTGRES_URL must be a postgresql:// URL, got 'sqlite:///crev.sqlite'\n"


def test_demo_keeps_a_postgres_password_out_of_ingest_toml(tmp_path: Path) -> None:
    from crev_cli.demo import storage_toml

    (tmp_path / "ingest.toml").write_text(storage_toml(tmp_path, "postgresql://crev:p%40ss@db.example:5433/crev"))
    assert "p%40ss" not in (tmp_path / "ingest.toml").read_text()
    assert (tmp_path / "postgres.password").stat().st_mode & 0o077 == 0
    assert load(tmp_path / "ingest.toml").storage_url == "postgresql://crev:p%40ss@db.example:5433/crev"


@pytest.mark.slow
def test_demo_keep_leaves_the_dashboard_and_the_market_running(tmp_path: Path) -> None:
    """`--keep`: after the summary, a newcomer can open both pages; Ctrl-C stops everything."""
    import signal
    import time
    import urllib.request

    demo = subprocess.Popen(
        [
            *(sys.executable, "-m", "crev_cli.main", "demo", "--minutes", "0.2", "--no-live", "--keep"),
            *("--broker", "mosquitto", "--workdir", str(tmp_path / "demo")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    assert demo.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "kept running" in line:
            break
    output = "".join(lines)
    assert "kept running" in output, output
    dashboard = re.findall(r"dashboard: (http://127\.0\.0\.1:\d+/)\s+\(login token: (\S+)\)", output)[-1]
    market = re.findall(r"market:\s+(http://127\.0\.0\.1:\d+/)", output)[-1]
    request = urllib.request.Request(dashboard[0] + "api/v1/fleet", headers={"Authorization": "Bearer " + dashboard[1]})
    with urllib.request.urlopen(request, timeout=10) as response:
        fleet = json.loads(response.read())
    assert fleet["total"] == 3 and fleet["summary"]["devices"] == 3
    with urllib.request.urlopen(market + "api/v1/trades", timeout=10) as response:
        trades = json.loads(response.read())
    # Both buyers bought from the controllers' sells, slot by slot.
    assert len(trades) >= 2 and len({t["buy"] for t in trades}) == 2, trades
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=60) in (0, 130)
