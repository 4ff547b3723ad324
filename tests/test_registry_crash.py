"""SIGKILL during `crev registry issue`: a pass commits whole or not at all, and the next pass completes it.

The ledger is built in-process with the ledger key the CLI loads from its key
file, with issuances already made (so carries run on) and late readings
waiting (so supplements are due). Each round copies it, starts the real CLI
in a child process, kills it with SIGKILL after a random delay spread over
the whole run, and checks the store the kill left, a complete pass after it,
and `crev audit ledger`. On SQLite (a copy of the file) and on PostgreSQL (a
database made from the built one as its template).
"""

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness import crev_command, run_crev
from ingest_support import LocalIngest
from registry_support import (
    BASE,
    Replay,
    TwoGenDevice,
    add_site,
    issue_now,
    make_registry,
    open_owner,
    quiet,
    relaxed,
    replay,
    seal,
    send_many,
    step,
    table_counts,
    write_ingest_config,
)
from store_support import Location, copy, discard

from crev.keys import SigningKey
from crev_ingest.database import connect, is_postgres_url

DEVICES = 6
READINGS = 240  # per device, 900 s apart: 120 slots
ISSUED_FIRST = 80  # readings per device issued before the ledger is copied
ROUNDS = 10
# A PostgreSQL round costs about twice an SQLite one (its `crev audit ledger` alone takes 2.4 s on
# the 2-core CI machine): four rounds still spread their kills over start-up, the pass and its commit.
PG_ROUNDS = 4
TYPES = {"WT-dgc-crash-%04d" % n: "wind/onshore" for n in range(DEVICES)}


def _build(directory: Path, store_url: str | None) -> None:
    ingest = relaxed(quiet(LocalIngest(directory, store_url)))
    registry = make_registry(ingest)
    open_owner(registry)
    rng = random.Random(9)
    devices = [TwoGenDevice("dgc-crash-%04d" % n, SigningKey(bytes([80 + n]) * 32), t1=BASE) for n in range(DEVICES)]
    for n, device in enumerate(devices):
        ingest.enroll(device)
        add_site(registry, "site-crash-%d" % n, [device.dev], {device.wind: TYPES[device.wind]})
    chains = []
    for device in devices:
        chain = []
        for _ in range(READINGS):
            solar, wind = rng.randrange(0, 120_000), rng.randrange(0, 70_000)
            chain.append(step(device, 900, solar, rng.randrange(0, 9_000), rng.randrange(0, 40_000), wind=wind))
        chains.append(chain)
    late = set(range(5, ISSUED_FIRST, 17))  # withheld from the first pass, sent with the rest
    for chain in chains:
        send_many(ingest, [raw for n, raw in enumerate(chain[:ISSUED_FIRST]) if n not in late])
    seal(ingest)
    assert issue_now(registry) > 0
    for chain in chains:
        send_many(ingest, [chain[n] for n in sorted(late)] + chain[ISSUED_FIRST:])
    seal(ingest)
    # The last connection: the WAL is checkpointed into crev.sqlite, and PostgreSQL can copy the database.
    ingest.store.close()


def _round_dir(tmp_path: Path, name: str, pristine: Location) -> tuple[Path, Location]:
    """A directory with an ingest.toml on a copy of the pristine store."""
    directory = tmp_path / name
    directory.mkdir()
    where = copy(pristine, directory / "crev.sqlite")
    write_ingest_config(directory, store_url=str(where) if is_postgres_url(where) else None)
    return directory, where


def _replay(where: Location) -> Replay:
    db = connect(where, read_only=True)
    try:
        return replay(db, TYPES)
    finally:
        db.close()


def _counts(where: Location) -> dict[str, int]:
    db = connect(where, read_only=True)
    try:
        counts = table_counts(db)
        counts["issue_cursors"] = int(db.execute("SELECT count(*) FROM issue_cursors").fetchone()[0])
        counts["tiles"] = int(
            db.execute("SELECT (SELECT count(*) FROM tiles) + (SELECT count(*) FROM tile_edge)").fetchone()[0]
        )
        return counts
    finally:
        db.close()


def _shape(result: Replay) -> list[tuple[object, ...]]:
    """What a pass issued, without its clock: leaf, device, slot, supplement, readings and lots."""
    return [(leaf, i.dev, i.slot, i.supplement, tuple(i.readings), str(i.lots)) for leaf, i in result.issuances]


def _issued_count(stdout: str) -> int:
    words = stdout.split()
    assert words[:1] == ["issued"], stdout
    return int(words[1])


@pytest.mark.slow
def test_sigkill_at_random_moments_of_an_issuance_pass(tmp_path: Path, store_url: str | None) -> None:
    source = tmp_path / "source"
    source.mkdir()
    _build(source, store_url)
    pristine = store_url or source / "crev.sqlite"
    _before_dir, before_store = _round_dir(tmp_path, "before", pristine)
    before, before_counts = _replay(before_store), _counts(before_store)
    assert before.issuances and before.readings

    # The reference: one complete pass, timed, on its own copy.
    reference_dir, reference_store = _round_dir(tmp_path, "reference", pristine)
    started = time.monotonic()
    done = run_crev(reference_dir, "registry", "issue", "--config", "ingest.toml")
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    reference, reference_counts = _replay(reference_store), _counts(reference_store)
    pending = len(reference.issuances) - len(before.issuances)
    assert _issued_count(done.stdout) == pending and pending > 300
    assert not reference.unissued()
    assert any(i.supplement for _, i in reference.issuances[len(before.issuances) :]), "no supplement was due"

    rng = random.Random(os.getpid())
    outcomes = []
    rounds = PG_ROUNDS if store_url else ROUNDS
    for k in range(rounds):
        directory, where = _round_dir(tmp_path, "round-%d" % k, pristine)
        # Spread the kills over the whole run: start-up, the pass's transaction, its commit, the exit.
        delay = duration * 1.1 * (k + rng.random()) / rounds
        child = subprocess.Popen(
            crev_command("registry", "issue", "--config", str(directory / "ingest.toml")),
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        _out, err = child.communicate(timeout=60)
        assert child.returncode in (0, -signal.SIGKILL), err.decode()

        # What the kill left: the pass's issuances all or none, and rows that agree with the leaves.
        killed = _replay(where)  # asserts no reading leaf in two issuances and tables = leaves
        committed = len(killed.issuances) - len(before.issuances)
        assert committed in (0, pending), "a killed pass left %d of its %d issuances" % (committed, pending)
        assert _counts(where) == (reference_counts if committed else before_counts)
        outcomes.append("%.3fs:%s" % (delay, "committed" if committed else "nothing"))

        done = run_crev(directory, "registry", "issue", "--config", "ingest.toml")
        assert done.returncode == 0, done.stderr
        assert _issued_count(done.stdout) == pending - committed
        after = _replay(where)
        assert _shape(after) == _shape(reference), "the ledger after the kill and a full pass differs"
        for key, nanograms in after.nanograms.items():
            assert after.grams[key] * 1_000_000_000 + after.carry[key] == nanograms

        audit = run_crev(directory, "audit", "ledger", "--config", "ingest.toml")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert audit.stderr == ""
        discard(where)
        shutil.rmtree(directory)
    print("full pass %.3fs; kills: %s" % (duration, ", ".join(outcomes)))
    assert any(o.endswith("nothing") for o in outcomes), "no kill landed before the commit: %s" % outcomes
