"""`crev registry ...` as an operator and account holders type it (SPEC §7, §8, §10).

Mistakes get exit 2, one line on stderr that names what is wrong, and leave
the ledger exactly as it was. The happy path runs the installed `crev`
script: keygen, account, site, issue, holdings, retire.
"""

import json
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ingest_support import LocalIngest
from registry_support import (
    BASE,
    TwoGenDevice,
    quiet,
    replay,
    seal,
    send_many,
    step,
    table_counts,
    write_ingest_config,
)

from crev.keyfile import load_key
from crev.keys import SigningKey
from crev.registry_format import NANOGRAMS_PER_GRAM, format_kg
from crev_cli.main import main

CREV = Path(sys.executable).parent / "crev"
FIRST, SECOND = "dgc-cli-0001", "dgc-cli-0002"
PLACE = "Japan/Fukushima/Koriyama"


def _ledger(directory: Path) -> None:
    """Two devices, three slots and a bit each (the last slot open), sealed; an ingest.toml and the ledger key."""
    ingest = quiet(LocalIngest(directory))
    first = TwoGenDevice(FIRST, SigningKey(bytes([91]) * 32), t1=BASE)
    second = TwoGenDevice(SECOND, SigningKey(bytes([92]) * 32), t1=BASE)
    raws = []
    for device in (first, second):
        ingest.enroll(device)
        for n in range(100):  # 60 s apart: slots 0..2 closed by the readings of slot 3
            raws.append(step(device, 60, 30_000 + 97 * n, 2_000, 7_000 + n, wind=11_000 + 13 * n))
    send_many(ingest, raws)
    seal(ingest)
    ingest.store.close()
    write_ingest_config(directory)


def _crev(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `crev ARGV` in-process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _counts(directory: Path) -> dict[str, int]:
    db = sqlite3.connect(str(directory / "crev.sqlite"))
    try:
        return table_counts(db)
    finally:
        db.close()


def _run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CREV), *args], capture_output=True, text=True, cwd=directory, timeout=120, check=False)


# ------------------------------------------------------------------ the happy path


def test_keygen_account_site_issue_holdings_and_retire(tmp_path: Path) -> None:
    _ledger(tmp_path)
    made = _run(tmp_path, "registry", "keygen", "--out", "alice.key")
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600
    pubkey = load_key(tmp_path / "alice.key", "account").public_key.hex()
    assert pubkey in made.stdout

    config = ("--config", "ingest.toml")
    site = ("--site", "site-a", "--owner", "alice-co", "--place", PLACE, "--device", SECOND)
    for args in (
        ("registry", "account", "add", *config, "--account", "alice-co", "--name", "Alice Co", "--pubkey", pubkey),
        ("registry", "site", "add", *config, *site, "--type", "WT-%s=wind/small" % SECOND, "--factor", "441.234"),
    ):
        done = _run(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
    issued = _run(tmp_path, "registry", "issue", *config)
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.startswith("issued 3 slots from 90 readings")

    shown = _run(tmp_path, "registry", "holdings", *config, "--account", "alice-co", "--json")
    assert shown.returncode == 0, shown.stderr
    holdings = json.loads(shown.stdout)
    lots = holdings["lots"]
    assert {(lot["site"], lot["type"], lot["place"]) for lot in lots} == {
        ("site-a", "solar", PLACE),
        ("site-a", "wind/small", PLACE),
    }
    assert sorted({lot["slot"] for lot in lots}) == [BASE, BASE + 1800, BASE + 3600]
    assert [lot["slot"] for lot in lots] == sorted(lot["slot"] for lot in lots), "not oldest slot first"
    assert holdings["grams"] == sum(lot["grams"] for lot in lots) > 0
    db = sqlite3.connect(str(tmp_path / "crev.sqlite"))
    try:
        result = replay(db, {"WT-%s" % SECOND: "wind/small"})
    finally:
        db.close()
    assert holdings["grams"] == sum(result.grams.values())
    for key, nanograms in result.nanograms.items():
        assert result.grams[key] * NANOGRAMS_PER_GRAM + result.carry[key] == nanograms

    grams = lots[0]["grams"] + 1  # more than the oldest lot: the retirement takes two lots
    retired = _run(
        tmp_path,
        *("registry", "retire", *config, "--account", "alice-co", "--key", "alice.key", "--kg", format_kg(grams)),
        *("--beneficiary", "Koriyama City", "--purpose", "FY2026 offset", "--year", "2026", "--json"),
    )
    assert retired.returncode == 0, retired.stderr
    receipt = json.loads(retired.stdout)
    assert receipt["grams"] == grams
    assert isinstance(receipt["retirement"], int)
    assert [lot["grams"] for lot in receipt["lots"]] == [lots[0]["grams"], 1]
    db = sqlite3.connect(str(tmp_path / "crev.sqlite"))
    try:
        leaf_type = db.execute("SELECT type FROM leaves WHERE idx = ?", (receipt["retirement"],)).fetchone()
    finally:
        db.close()
    assert leaf_type == (9,), "the retirement id is not the index of a retirement leaf"

    again = json.loads(_run(tmp_path, "registry", "holdings", *config, "--account", "alice-co", "--json").stdout)
    assert again["grams"] == holdings["grams"] - grams
    assert [lot["lot"] for lot in again["lots"]] == [lot["lot"] for lot in lots[1:]]
    assert again["lots"][0]["grams"] == lots[1]["grams"] - 1

    audit = _run(tmp_path, "audit", "ledger", *config)
    assert audit.returncode == 0, audit.stdout + audit.stderr


# ------------------------------------------------------------------ mistakes


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Accounts alice-co (holding C-REV of site-a) and bob-co; device SECOND in no site."""
    directory = tmp_path_factory.mktemp("registry-cli")
    _ledger(directory)
    config = ["--config", str(directory / "ingest.toml")]
    for account in ("alice", "bob"):
        key = directory / (account + ".key")
        assert main(["registry", "keygen", "--out", str(key)]) == 0
        pubkey = load_key(key, "account").public_key.hex()
        add = ["registry", "account", "add", *config, "--account", account + "-co", "--name", account.title()]
        assert main([*add, "--pubkey", pubkey]) == 0
    site = ["registry", "site", "add", *config, "--site", "site-a", "--owner", "alice-co", "--place", PLACE]
    assert main([*site, "--device", FIRST]) == 0
    assert main(["registry", "issue", *config]) == 0
    return directory


@pytest.fixture
def ledger(registry_template: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "ledger"
    shutil.copytree(registry_template, directory)  # keeps the key files' mode 0600
    return directory


def _held(directory: Path, account: str) -> int:
    db = sqlite3.connect(str(directory / "crev.sqlite"))
    try:
        row = db.execute(
            "SELECT coalesce(sum(CASE WHEN to_account = ?1 THEN grams ELSE 0 END) - "
            "sum(CASE WHEN from_account = ?1 THEN grams ELSE 0 END), 0) FROM lot_moves",
            (account,),
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


def _site_add(
    place: str, device: str = SECOND, owner: str = "bob-co", site: str = "site-b"
) -> Callable[[Path], list[str]]:
    def argv(d: Path) -> list[str]:
        config = ["--config", str(d / "ingest.toml")]
        return [
            "registry",
            "site",
            "add",
            *config,
            "--site",
            site,
            "--owner",
            owner,
            "--place",
            place,
            "--device",
            device,
        ]

    return argv


def _retire(
    kg: str | Callable[[Path], str], account: str = "alice-co", key: str = "alice.key"
) -> Callable[[Path], list[str]]:
    def argv(d: Path) -> list[str]:
        quantity = kg(d) if callable(kg) else kg
        return [
            *("registry", "retire", "--config", str(d / "ingest.toml"), "--account", account),
            *("--key", str(d / key), "--kg", quantity, "--beneficiary", "Someone", "--purpose", "a test"),
        ]

    return argv


def _holdings(account: str) -> Callable[[Path], list[str]]:
    return lambda d: ["registry", "holdings", "--config", str(d / "ingest.toml"), "--account", account]


def _site_change(site: str) -> Callable[[Path], list[str]]:
    return lambda d: [
        "registry",
        "site",
        "change",
        "--config",
        str(d / "ingest.toml"),
        "--site",
        site,
        "--place",
        "Japan/Osaka",
    ]


MISTAKES: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "site add for an unknown owner": (_site_add(PLACE, owner="nobody"), ("nobody",)),
    "holdings of an unknown account": (_holdings("nobody"), ("nobody",)),
    "retire for an unknown account": (_retire("1", account="nobody"), ("nobody",)),
    "site change of an unknown site": (_site_change("site-nope"), ("site-nope",)),
    "a device already in another site": (_site_add(PLACE, device=FIRST), (FIRST, "site-a")),
    "place with a doubled /": (_site_add("Japan//Tokyo"), ("--place",)),
    "place with a leading /": (_site_add("/Japan"), ("--place",)),
    "place with a trailing /": (_site_add("Japan/"), ("--place",)),
    "an empty place": (_site_add(""), ("--place",)),
    "a negative --kg": (_retire("-1"), ("--kg",)),
    "a zero --kg": (_retire("0"), ("--kg",)),
    "a zero --kg with decimals": (_retire("0.000"), ("--kg",)),
    "a non-numeric --kg": (_retire("abc"), ("--kg",)),
    "four decimals in --kg": (_retire("1.2345"), ("--kg", "decimals")),
    "retire with another account's key": (_retire("0.001", key="bob.key"), ("alice-co",)),
    "retire more than held": (_retire(lambda d: format_kg(_held(d, "alice-co") + 1)), ("holds",)),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_gets_one_line_exit_2_and_records_nothing(
    ledger: Path, mistake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, words = MISTAKES[mistake]
    capsys.readouterr()
    before = _counts(ledger)
    held = _held(ledger, "alice-co")
    assert held > 0
    code, out, err = _crev(argv(ledger), capsys)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and err.endswith("\n") and err.startswith("crev: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, "%r does not say %r" % (err, word)
    assert out == ""
    assert _counts(ledger) == before, "a refused command recorded something"
    assert _held(ledger, "alice-co") == held


def test_a_mistake_in_the_real_process_is_one_line_too(ledger: Path) -> None:
    before = _counts(ledger)
    done = _run(ledger, *_retire("1.2345")(ledger))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--kg" in done.stderr, done.stderr
    assert done.stdout == ""
    assert _counts(ledger) == before
