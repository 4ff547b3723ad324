"""`crev audit export|verify|ledger` as an auditor and an operator run them.

What reads the store (export, and the ledger's audit) runs on both stores;
what reads a bundle alone runs once, on a bundle exported from SQLite.
"""

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
from bundle_support import DEV, START, AuditLedger, make_ledger, pack, parts
from harness import ingest_config, run_crev
from ingest_support import LEDGER_KEY, NOW
from store_support import location, rows, tamper

from crev_cli.audit_cmd import iso

ROOT = Path(__file__).resolve().parent.parent

# Runs a crev command with every socket and every SQLite connection refused.
OFFLINE = """
import socket, sqlite3, sys

def refuse(*args, **kwargs):
    raise RuntimeError("offline verification touched the network or a database")

socket.socket.__init__ = refuse  # the class stays a class, so ssl and friends still import
for name in ("socketpair", "create_connection", "create_server", "getaddrinfo"):
    setattr(socket, name, refuse)
sqlite3.connect = refuse

from crev_cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


def _site(directory: Path, readings: int = 30, start: int = START, store_url: str | None = None) -> AuditLedger:
    """A ledger (in crev.sqlite, or at ``store_url``) with its ingest.toml, ledger key and published public key."""
    ledger = make_ledger(directory, readings, start, store_url)
    ingest_config(directory, "mqtt://127.0.0.1:1", store_url=store_url)
    key = directory / "ledger.key"
    key.write_text(LEDGER_KEY.seed_bytes().hex() + "\n")
    key.chmod(0o600)
    (directory / "ledger.pub").write_text(LEDGER_KEY.public_key.hex() + "\n")
    return ledger


@pytest.fixture
def site(tmp_path: Path, store_url: str | None) -> Path:
    """A site on each store, for what exports from it or audits it."""
    _site(tmp_path, store_url=store_url).ingest.store.close()
    return tmp_path


@pytest.fixture
def sqlite_site(tmp_path: Path) -> Path:
    """A site on SQLite, for what only verifies the bundle exported from it."""
    _site(tmp_path).ingest.store.close()
    return tmp_path


def _export(directory: Path, out: str = "audit.bundle", *extra: str) -> subprocess.CompletedProcess[str]:
    return run_crev(
        directory,
        *("audit", "export", "--config", "ingest.toml", "--device", DEV, "--out", out),
        *(extra or ("--from", iso(START), "--to", iso(NOW))),
    )


def test_export_then_verify_through_the_cli(site: Path) -> None:
    exported = _export(site)
    assert exported.returncode == 0, exported.stderr
    assert "30 readings of %s in the range (seq 0..29)" % DEV in exported.stdout
    verified = run_crev(site, "audit", "verify", "audit.bundle", "--ledger-key", "ledger.pub")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "RESULT: PASS" in verified.stdout and "Totals over the 30 readings in the range" in verified.stdout
    assert "Gaps: none" in verified.stdout
    as_json = run_crev(site, "audit", "verify", "audit.bundle", "--ledger-key", LEDGER_KEY.public_key.hex(), "--json")
    report = json.loads(as_json.stdout)
    assert report["result"] == "pass" and report["totals"]["readings"] == 30
    assert [c["status"] for c in report["checks"]] == ["ok"] * 7
    assert report["bundle"]["dev"] == DEV and report["first_failure"] is None


def test_a_tampered_bundle_exits_1_and_names_the_reading(sqlite_site: Path) -> None:
    site = sqlite_site
    assert _export(site).returncode == 0
    path = site / "audit.bundle"
    data = path.read_bytes()
    value = parts(data)  # the reading changed, its group packed again
    cose = value[5][5][2]
    value[5][5][2] = cose[:100] + bytes([cose[100] ^ 0x40]) + cose[101:]
    path.write_bytes(pack(value))
    verified = run_crev(site, "audit", "verify", "audit.bundle", "--ledger-key", "ledger.pub")
    assert verified.returncode == 1
    # The payload is damaged, so the reading cannot say its seq; its place in the chain can.
    assert "First failure: reading #5 (unreadable; seq 5 expected here): check 3 (inclusion proofs)" in verified.stdout
    report = json.loads(
        run_crev(site, "audit", "verify", "audit.bundle", "--ledger-key", "ledger.pub", "--json").stdout
    )
    assert report["first_failure"]["check"] == 3 and report["first_failure"]["expected_seq"] == 5


def _verify_json(site: Path) -> tuple[int, dict[str, Any]]:
    done = run_crev(site, "audit", "verify", "audit.bundle", "--ledger-key", "ledger.pub", "--json")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    report = json.loads(done.stdout)
    # SPEC §6: these five are always at the top level, whatever else the report carries.
    assert {"ok", "readings", "self_mwh", "gaps", "failure"} <= report.keys()
    assert isinstance(report["readings"], int) and isinstance(report["self_mwh"], int)
    return done.returncode, report


def test_the_json_report_has_the_spec_top_level(sqlite_site: Path) -> None:
    site = sqlite_site
    assert _export(site).returncode == 0
    code, passed = _verify_json(site)
    assert code == 0 and passed["ok"] is True and passed["result"] == "pass"
    assert passed["readings"] == passed["totals"]["readings"] == 30
    assert passed["self_mwh"] == passed["totals"]["self_mwh"] > 0
    assert passed["gaps"] == [] and passed["failure"] is None

    path = site / "audit.bundle"
    data = path.read_bytes()
    value = parts(data)  # the reading changed, its group packed again
    cose = value[5][5][2]
    value[5][5][2] = cose[:100] + bytes([cose[100] ^ 0x40]) + cose[101:]
    path.write_bytes(pack(value))
    code, tampered = _verify_json(site)
    assert code == 1 and tampered["ok"] is False and tampered["result"] == "fail"
    assert tampered["readings"] == tampered["totals"]["readings"]
    assert tampered["self_mwh"] == tampered["totals"]["self_mwh"]
    # The damaged reading cannot be counted, so the walk sees seq 5 missing.
    assert [(gap["first_seq"], gap["last_seq"]) for gap in tampered["gaps"]] == [(5, 5)]
    failure = tampered["failure"]
    assert failure is not None and failure["check"] == 3 and failure["expected_seq"] == 5
    assert failure["text"] == tampered["first_failure_text"]
    assert failure["text"].startswith("reading #5 (unreadable; seq 5 expected here): check 3 (inclusion proofs)")
    assert {k: v for k, v in failure.items() if k != "text"} == tampered["first_failure"]

    # Not a bundle at all: the walk never starts, and the counts say so.
    path.write_bytes(b"not a bundle")
    code, garbage = _verify_json(site)
    assert code == 1 and garbage["ok"] is False
    assert garbage["readings"] == 0 and garbage["self_mwh"] == 0 and garbage["gaps"] == []
    assert garbage["failure"]["check"] == 0 and garbage["failure"]["text"]
    text = run_crev(site, "audit", "verify", "audit.bundle", "--ledger-key", "ledger.pub")
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "RESULT: FAIL" in text.stdout and "Gaps:" not in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("audit", "verify", "missing.bundle", "--ledger-key", "ledger.pub"), "cannot read missing.bundle"),
        (("audit", "verify", "ingest.toml", "--ledger-key", "abc"), "--ledger-key must be"),
        (("audit", "verify", "ingest.toml", "--ledger-key", "ledger.pub", "--jobs", "0"), "--jobs must be"),
    ],
)
def test_verify_mistakes_get_one_line_and_exit_2(sqlite_site: Path, args: tuple[str, ...], message: str) -> None:
    done = run_crev(sqlite_site, *args)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--from", "yesterday", "--to", "2026-01-01"), "--from 'yesterday' is not a date"),
        (("--from", "2026-01-02", "--to", "2026-01-01"), "--to must be after --from"),
        (("--from", "2020-01-01", "--to", "2020-01-02"), "no readings of"),
    ],
)
def test_export_mistakes_get_one_line_and_exit_2(site: Path, extra: tuple[str, ...], message: str) -> None:
    done = _export(site, "audit.bundle", *extra)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (site / "audit.bundle").exists()


def test_export_names_a_missing_directory_and_an_unknown_device(site: Path) -> None:
    done = _export(site, "no/such/dir/a.bundle")
    assert done.returncode == 2 and "does not exist" in done.stderr
    done = run_crev(
        site,
        *("audit", "export", "--config", "ingest.toml", "--device", "dgc-nobody-0009"),
        *("--from", str(START), "--to", str(NOW), "--out", "x.bundle"),
    )
    assert done.returncode == 2 and "dgc-nobody-0009 is not enrolled" in done.stderr


def test_verify_runs_with_network_and_databases_refused(tmp_path: Path) -> None:
    # Enough readings for the worker processes to take part.
    _site(tmp_path, readings=700, start=NOW - 60 * 800).ingest.store.close()
    assert _export(tmp_path, "big.bundle", "--from", str(NOW - 60 * 800), "--to", str(NOW)).returncode == 0
    offline = [sys.executable, "-c", OFFLINE]
    done = _run([*offline, "audit", "verify", "big.bundle", "--ledger-key", "ledger.pub", "--jobs", "2"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RESULT: PASS" in done.stdout and "Totals over the 700 readings" in done.stdout
    # The guard bites: the ledger check, which needs the database, is refused.
    control = _run([*offline, "audit", "ledger", "--config", "ingest.toml"], tmp_path)
    assert control.returncode != 0 and "touched the network or a database" in control.stdout + control.stderr


@pytest.mark.slow
def test_verify_in_a_fresh_virtualenv_with_nothing_but_crev(
    sqlite_site: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No third-party package at all: without cryptography the pure Ed25519 verifies."""
    site = sqlite_site
    assert _export(site).returncode == 0
    wheels = tmp_path_factory.mktemp("wheels")
    # Built from a copy, so that setuptools' build/ never lands in the checkout.
    source = tmp_path_factory.mktemp("source") / "crev"
    skip = shutil.ignore_patterns(".*", "node_modules", "build", "test-artifacts", "__pycache__", "*.egg-info")
    shutil.copytree(ROOT, source, ignore=skip)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    built = _run([*pip_wheel, "-w", str(wheels), str(source)], ROOT)
    assert built.returncode == 0, built.stderr
    fresh = tmp_path_factory.mktemp("fresh") / "venv"
    venv.create(fresh, with_pip=True)
    python = fresh / "bin" / "python"
    wheel = next(wheels.glob("crev-*.whl"))
    installed = _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], ROOT)
    assert installed.returncode == 0, installed.stderr
    env = {"PATH": "/usr/bin:/bin", "HOME": str(fresh)}
    probe = _run([str(python), "-c", "import cryptography"], ROOT, env)
    assert probe.returncode != 0, "the fresh virtualenv should not have cryptography"
    done = _run(
        [str(fresh / "bin" / "crev"), "audit", "verify", "audit.bundle", "--ledger-key", "ledger.pub"], site, env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RESULT: PASS" in done.stdout


def test_incremental_ledger_audit_checks_only_what_is_new(tmp_path: Path, store_url: str | None) -> None:
    ledger = _site(tmp_path, readings=10, store_url=store_url)
    first = run_crev(tmp_path, "audit", "ledger", "--config", "ingest.toml", "--state", "audit.state")
    assert first.returncode == 0 and "OK (full)" in first.stdout, first.stdout + first.stderr
    state = json.loads((tmp_path / "audit.state").read_text())
    ledger.send(5)
    ledger.seal()
    second = run_crev(tmp_path, "audit", "ledger", "--config", "ingest.toml", "--state", "audit.state")
    assert second.returncode == 0, second.stdout
    assert "OK (since block %d): 10 leaves" % state["height"] in second.stdout
    assert json.loads((tmp_path / "audit.state").read_text())["height"] > state["height"]
    ledger.ingest.store.close()

    # Rewriting the block verified last time is caught, incrementally and in full.
    where = location(tmp_path, store_url)
    ((header,),) = rows(where, "SELECT header FROM blocks WHERE height = ?", (state["height"],))
    changed = bytes(header[:-1]) + bytes([header[-1] ^ 1])
    assert tamper(where, "UPDATE blocks SET header = ? WHERE height = ?", (changed, state["height"])) == 1
    (tmp_path / "audit.state").write_text(json.dumps(state))
    third = run_crev(tmp_path, "audit", "ledger", "--config", "ingest.toml", "--state", "audit.state")
    assert third.returncode == 1 and "blocks row height %d" % state["height"] in third.stdout
    full = run_crev(tmp_path, "audit", "ledger", "--config", "ingest.toml", "--state", "audit.state", "--full")
    assert full.returncode == 1


def test_a_broken_state_file_is_one_line(sqlite_site: Path) -> None:
    site = sqlite_site
    (site / "audit.state").write_text("{not json")
    done = run_crev(site, "audit", "ledger", "--config", "ingest.toml", "--state", "audit.state")
    assert done.returncode == 2 and "not an audit state file" in done.stderr and "--full" in done.stderr
    assert os.path.exists(site / "audit.state")
