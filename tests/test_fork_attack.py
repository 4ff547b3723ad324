"""Issue 15: a fork signed with the ledger's own key is caught by the witness, by `crev audit verify --witness`
and by `crev audit mirror`.

Real processes: mosquitto, `crev ingest run` (the honest ledger; the witness cosigns its blocks over loopback
HTTP), `crev witness run`, and every other `crev` command as a subprocess.

The fork is what an operator holding the ledger key can make and show to an auditor: a copy of the honest
store taken once the witness had cosigned its first readings (size M), continued under the same key and
origin with another history. In it the operator revokes the device's key, enrols one of its own for the
device and signs readings with it that claim twice the generation. A bundle of the fork verifies with the
ledger key alone; only the witness, which cosigned the honest tree of size N, tells the two apart.

The fork's checkpoints reach the witness through the log side's own client (crev_ingest.witnessing, the
thread `crev ingest run` starts), at three sizes: N - 2 (smaller), N (the same size, another root) and
N + 5 (larger, with no consistency proof from N that can verify).
"""

import dataclasses
import hashlib
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from harness import Mosquitto, Service, free_port, ingest_config, port_open, run_crev, wait_for
from ingest_support import Device
from test_witnessing import ORIGIN, cosigned_size, latest_size, publish, rows

from crev import note
from crev.keys import SigningKey
from crev_ingest import config as ingest_config_file
from crev_ingest.keyfile import load_key
from crev_ingest.ledger import ACTION_ENROL, ACTION_REVOKE, Ledger
from crev_ingest.metrics import IngestMetrics
from crev_ingest.store import Store
from crev_ingest.validate import Ingestor
from crev_ingest.witnessing import WitnessConfig, Witnessing
from crev_witness.state import WitnessState

DEVICE = "dgc-forked-0001"
OPERATOR_KEY = SigningKey(hashlib.sha256(b"the operator's own key for the device, in the fork").digest())


def printed(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The ``name value`` lines that `crev ingest init` and `crev witness init` print."""
    return dict(line.split(None, 1) for line in done.stdout.splitlines())


def all_sealed_and_cosigned(db: Path, readings: int) -> bool:
    """Every reading is a leaf, every leaf under the newest block, and the witness cosigned that block."""
    stored, leaves = (
        int(n) for n in rows(db, "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM leaves)")[0]
    )
    return stored == readings and latest_size(db) == leaves and cosigned_size(db) == leaves


def witness_row(db: Path) -> tuple[object, ...] | None:
    found = rows(db, "SELECT size, checked_ms, error FROM witness_state")
    return found[0] if found else None


class Fork:
    """The operator's second ledger: the honest store as it was at size M, grown with other leaves."""

    def __init__(self, directory: Path, honest: Path, device: Device) -> None:
        self.directory = directory
        self.db = directory / "crev.sqlite"
        directory.mkdir()
        # A consistent copy while ingest runs: SQLite's online backup, WAL included.
        with sqlite3.connect(honest / "crev.sqlite") as source, sqlite3.connect(self.db) as target:
            source.backup(target)
        source.close()
        target.close()
        shutil.copy(honest / "ledger.key", directory / "ledger.key")  # the same ledger key
        (directory / "ledger.key").chmod(0o600)
        self.config = directory / "ingest.toml"
        self.config.write_text(
            '[storage]\npath = "crev.sqlite"\n[ledger]\nkey = "ledger.key"\norigin = "%s"\n' % ORIGIN
        )  # the same origin; no [[witness]]: the submissions below stand in for its witnessing thread
        self.store = Store(self.db)
        self.ledger = Ledger(self.store, load_key(directory / "ledger.key"), ORIGIN, 3600, 10**9)
        self.ingestor = Ingestor(self.store, self.ledger, ingest_config_file.load(self.config))
        self.size_at_copy = self.ledger.sealed_size
        assert self.ledger.size == self.size_at_copy, "the copy was taken with every leaf sealed"
        # The operator's key for the device from the last shared reading's end on; the chain of seq and
        # prev goes on unbroken, so the fork's readings pass every check of ingest and of a bundle.
        with self.store.transaction():
            self.ledger.sync()
            when = device.t1 + 1
            now_ms = int(time.time() * 1000)
            self.ledger.key_event(ACTION_REVOKE, DEVICE, device.key.public_key, when, now_ms)
            self.ledger.key_event(ACTION_ENROL, DEVICE, OPERATOR_KEY.public_key, when, now_ms)
        self.device = dataclasses.replace(device, key=OPERATOR_KEY)

    def grow_to(self, size: int) -> None:
        """Readings claiming twice the generation, through ingest's own validation, then one sealed block."""
        with self.store.transaction():
            self.ledger.sync()
            while self.ledger.size < size:
                outcome = self.ingestor.process(
                    "crev/v1/%s/reading" % DEVICE, self.device.next(gen=100_000), int(time.time() * 1000)
                )
                assert outcome.status == "accepted", outcome
            self.ledger.seal(int(time.time() * 1000))
        assert self.ledger.sealed_size == size

    def submit(self, url: str, witness_vkey: note.VerifierKey) -> str:
        """Run the log side's witnessing thread on the fork until it records the witness's answer; that answer."""
        before = witness_row(self.db)
        witnessing = Witnessing(self.db, [WitnessConfig(url, witness_vkey)], IngestMetrics())
        witnessing.start()
        try:
            wait_for(lambda: witness_row(self.db) != before, 30, "the fork's witnessing to record an answer")
        finally:
            witnessing.stop()
        row = witness_row(self.db)
        assert row is not None and isinstance(row[2], str), row
        return row[2]


@pytest.mark.slow
def test_a_fork_with_the_ledger_key_is_refused_by_the_witness_by_verify_and_by_the_mirror(
    tmp_path: Path, broker: Mosquitto
) -> None:
    honest = tmp_path / "honest"
    honest.mkdir()
    config = ingest_config(honest, broker.url, block_interval_s=0.3)
    init = run_crev(honest, "ingest", "init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    pubkey, ledger_vkey = printed(init)["pubkey"], note.parse_vkey(printed(init)["vkey"])

    witness_dir = tmp_path / "witness"
    witness_dir.mkdir()
    port = free_port()
    witness_toml = witness_dir / "witness.toml"
    witness_toml.write_text(
        '[witness]\nname = "witness.test"\nkey = "witness.key"\nlisten = "127.0.0.1:%d"\nstate = "witness.sqlite"\n'
        '\n[[log]]\norigin = "%s"\nvkey = "%s"\n' % (port, ORIGIN, ledger_vkey.vkey())
    )
    made = run_crev(witness_dir, "witness", "init", "--config", str(witness_toml))
    assert made.returncode == 0, made.stderr
    witness_vkey = note.parse_vkey(printed(made)["vkey"])
    url = "http://127.0.0.1:%d" % port
    config.write_text(config.read_text() + '\n[[witness]]\nurl = "%s"\nvkey = "%s"\n' % (url, witness_vkey.vkey()))
    device = Device(DEVICE, SigningKey(bytes([51]) * 32), t1=(int(time.time()) - 7200) // 60 * 60)
    enrolled = run_crev(
        honest, "ingest", "enroll", "--config", str(config), "--device", DEVICE,
        "--pubkey", device.key.public_key.hex(),
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr

    witness = Service("witness", ["witness", "run", "--config", str(witness_toml)], witness_dir).start()
    ingest = Service("ingest", ["ingest", "run", "--config", str(config)], honest)
    db = honest / "crev.sqlite"
    try:
        wait_for(lambda: port_open(port) or not witness.alive(), 30, "the witness to listen")
        assert witness.alive(), witness.log()
        ingest.start()
        wait_for(lambda: "subscribed" in ingest.log(), 30, "ingest to subscribe")
        publish(broker, device, 10)
        wait_for(lambda: all_sealed_and_cosigned(db, 10), 30, "the first readings sealed and cosigned")
        fork = Fork(tmp_path / "fork", honest, dataclasses.replace(device))
        publish(broker, device, 10)
        wait_for(lambda: all_sealed_and_cosigned(db, 20), 30, "the rest sealed and cosigned")
        assert ingest.stop() == 0, ingest.log()
        honest_size = latest_size(db)
        shared = fork.size_at_copy
        assert shared < honest_size - 2, (shared, honest_size)

        # (a) The witness refuses each fork checkpoint, and keeps it with the checkpoint it cosigned.
        answers = {}
        for stage, size in (("smaller", honest_size - 2), ("fork", honest_size), ("bad-proof", honest_size + 5)):
            fork.grow_to(size)
            answers[stage] = fork.submit(url, witness_vkey)
            if stage == "fork":
                same_size = run_crev(fork.directory, "ingest", "publish", "--config", "ingest.toml", "--out", "same")
                assert same_size.returncode == 0, same_size.stderr
        # tlog-witness: a tree smaller than the cosigned one gets 409 with the witness's size (text/x.tlog.size),
        # which no honest log of that size can have; the same size with another root is a 409 with a message;
        # a consistency proof from the cosigned size that does not verify is a 422.
        assert answers == {
            "smaller": "409 with a size '%d' this log never had: a fork, or another log" % honest_size,
            "fork": "409 size %d was cosigned with another root hash" % honest_size,
            "bad-proof": "422 the consistency proof from size %d to %d does not verify"
            % (honest_size, honest_size + 5),
        }
        honest_checkpoint = rows(db, "SELECT checkpoint FROM blocks ORDER BY height DESC LIMIT 1")[0][0]
        honest_root = note.open_checkpoint(honest_checkpoint, [ledger_vkey])[0].root
        state = WitnessState(witness_dir / "witness.sqlite")
        try:
            kept = state.evidence(ORIGIN)
            latest = state.latest(ORIGIN)
        finally:
            state.close()
        assert [(e.reason, e.size, e.latest_size) for e in kept] == [
            ("smaller", honest_size - 2, honest_size),
            ("fork", honest_size, honest_size),
            ("bad-proof", honest_size + 5, honest_size),
        ]
        fork_checkpoints = {
            int(size): str(text) for size, text in rows(fork.db, "SELECT tree_size, checkpoint FROM blocks")
        }
        for evidence in kept:
            # Anyone can check the evidence with the two vkeys: the ledger key signed both trees.
            assert evidence.note == fork_checkpoints[evidence.size]
            assert note.open_checkpoint(evidence.note, [ledger_vkey])[0].root == evidence.root != honest_root
            cosigned, opened = note.open_checkpoint(evidence.latest_note, [ledger_vkey, witness_vkey])
            assert (cosigned.size, cosigned.root, len(opened.verified)) == (honest_size, honest_root, 2)
            assert "EVIDENCE (%s)" % evidence.reason in witness.log()
        assert latest is not None and (latest.size, latest.root) == (honest_size, honest_root)
        origin_hash = hashlib.sha256(ORIGIN.encode()).hexdigest()
        with urllib.request.urlopen("%s/%s/checkpoint" % (url, origin_hash), timeout=10) as answer:
            assert note.open_checkpoint(answer.read(), [ledger_vkey, witness_vkey])[0].root == honest_root
    finally:
        ingest.stop()
        witness.stop()
    assert "witness stopped" in witness.log()

    # (b) The honest bundle, exported once the witness had cosigned its newest block, passes with a quorum
    # of that witness; the fork's bundle passes on the ledger key alone and fails with the witness required.
    verify = ("audit", "verify", "device.bundle", "--ledger-key", pubkey)
    quorum = ("--witness", witness_vkey.vkey(), "--quorum", "1")
    for directory in (honest, fork.directory):
        exported = run_crev(
            directory, "audit", "export", "--config", "ingest.toml", "--device", DEVICE,
            "--from", "0", "--to", str(int(time.time()) + 60), "--out", "device.bundle",
        )  # fmt: skip
        assert exported.returncode == 0, exported.stderr
    passed = run_crev(honest, *verify, *quorum)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "Witnesses: 1 cosigned, 1 required\n  witness.test at " in passed.stdout and "RESULT: PASS" in passed.stdout
    alone = run_crev(fork.directory, *verify)
    assert alone.returncode == 0 and "RESULT: PASS" in alone.stdout, alone.stdout  # the ledger key cannot tell
    refused = run_crev(fork.directory, *verify, *quorum)
    assert refused.returncode == 1, refused.stdout
    no_quorum = "only 0 of the 1 witnesses required (of 1 given) cosigned the bundle's checkpoint"
    assert "Witnesses: 0 cosigned, 1 required" in refused.stdout and "RESULT: FAIL" in refused.stdout
    assert "First failure: " + no_quorum in refused.stdout, refused.stdout

    # The operator pastes the witness's cosignature of the honest block onto its fork's newest block: a
    # cosignature signs the checkpoint's text (origin, size, root), so it verifies over neither.
    fork_height = fork.ledger.height
    fork.store.close()
    honest_line = rows(db, "SELECT line FROM cosignatures ORDER BY height DESC LIMIT 1")[0][0]
    with sqlite3.connect(fork.db) as forged:
        forged.execute(
            "INSERT INTO cosignatures (height, witness, size, timestamp, line) VALUES (?, ?, ?, ?, ?)",
            (fork_height, witness_vkey.name, honest_size + 5, int(time.time()), honest_line),
        )
    forged.close()
    exported = run_crev(
        fork.directory, "audit", "export", "--config", "ingest.toml", "--device", DEVICE,
        "--from", "0", "--to", str(int(time.time()) + 60), "--out", "device.bundle",
    )  # fmt: skip
    assert "its checkpoint carries 1 witness cosignatures" in exported.stdout, exported.stdout + exported.stderr
    refused = run_crev(fork.directory, *verify, *quorum)
    assert refused.returncode == 1 and "First failure: " + no_quorum in refused.stdout, refused.stdout

    # (c) A mirror of the honest log, cosigned, refuses the fork: for its lack of a cosignature with the
    # witness required, and as a fork, proven from its own tiles, on the ledger key alone.
    for directory in (honest, fork.directory):
        published = run_crev(directory, "ingest", "publish", "--config", "ingest.toml", "--out", "www")
        assert published.returncode == 0, published.stderr
    mirror = tmp_path / "mirror"
    mirrored = run_crev(tmp_path, "audit", "mirror", str(honest / "www"), "--ledger-key", pubkey, *quorum[:2],
                        "--out", str(mirror))  # fmt: skip
    assert mirrored.returncode == 0, mirrored.stderr
    assert "cosigned by 1 of the 1 witnesses given (1 required): witness.test" in mirrored.stdout
    kept_files = {p: p.read_bytes() for p in mirror.rglob("*") if p.is_file()}
    forked_www = str(fork.directory / "www")
    refusals = [
        (
            [*quorum[:2]],
            forked_www,
            "only 0 of the 1 witnesses required (of 1 given) cosigned the checkpoint of %s (size %d)"
            % (forked_www, honest_size + 5),
        ),
        (
            [],
            forked_www,
            "the log at %s is not consistent with the mirror's checkpoint of size %d: its checkpoint of size %d, "
            "signed by the ledger key, rewrites the history under it (a fork)"
            % (forked_www, honest_size, honest_size + 5),
        ),
        (
            [],
            str(fork.directory / "same"),
            "the log at %s is not consistent with the mirror's checkpoint of size %d: its checkpoint of the same "
            "size has another root (a fork)" % (fork.directory / "same", honest_size),
        ),
    ]
    for witnesses, source, message in refusals:
        done = run_crev(tmp_path, "audit", "mirror", source, "--ledger-key", pubkey, *witnesses, "--out", str(mirror))
        assert done.returncode == 1, done.stdout
        assert done.stderr == "crev: %s\n" % message
        assert {p: p.read_bytes() for p in mirror.rglob("*") if p.is_file()} == kept_files  # the copy as it was
