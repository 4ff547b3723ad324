"""SPEC §11, the log side: a real `crev ingest run` sends each block to a real `crev witness run`.

Every block gets cosigned; a witness killed with SIGKILL keeps its state and,
once back, catches up through a consistency proof; while it is down, ingest
stores and seals on without waiting.
"""

import sqlite3
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import Mosquitto, Service, free_port, ingest_config, port_open, run_crev, wait_for
from ingest_support import Device
from paho.mqtt.enums import CallbackAPIVersion

from crev import note
from crev.keys import SigningKey
from crev_ingest.database import connect

ORIGIN = "crev.test/ledger"


def rows(location: Path | str, query: str) -> list[tuple[Any, ...]]:
    """Rows of the ledger store, an SQLite file or a PostgreSQL URL."""
    db = connect(location, read_only=True)
    try:
        return [tuple(r) for r in db.execute(query)]
    finally:
        db.close()


def publish(broker: Mosquitto, device: Device, count: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="crev-test-witnessing")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for _ in range(count):
        client.publish("crev/v1/%s/reading" % device.dev, device.next(), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


@pytest.mark.slow
def test_every_block_is_cosigned_and_a_witness_back_from_sigkill_catches_up(
    tmp_path: Path, broker: Mosquitto, store_url: str | None
) -> None:
    config = ingest_config(tmp_path, broker.url, block_interval_s=0.5, store_url=store_url)
    initialised = run_crev(tmp_path, "ingest", "init", "--config", str(config))
    assert initialised.returncode == 0, initialised.stderr
    printed = dict(line.split(None, 1) for line in initialised.stdout.splitlines())
    ledger_vkey = note.parse_vkey(printed["vkey"])
    assert ledger_vkey.name == ORIGIN and ledger_vkey.public_key.hex() == printed["pubkey"]

    witness_dir = tmp_path / "witness"
    witness_dir.mkdir()
    port = free_port()
    witness_toml = witness_dir / "witness.toml"
    witness_toml.write_text(
        '[witness]\nname = "witness.test"\nkey = "witness.key"\nlisten = "127.0.0.1:%d"\nstate = "w.sqlite"\n\n'
        '[[log]]\norigin = "%s"\nvkey = "%s"\n' % (port, ORIGIN, printed["vkey"])
    )
    made = run_crev(witness_dir, "witness", "init", "--config", str(witness_toml))
    assert made.returncode == 0, made.stderr
    witness_vkey = note.parse_vkey(dict(line.split(None, 1) for line in made.stdout.splitlines())["vkey"])
    config.write_text(
        config.read_text() + '\n[[witness]]\nurl = "http://127.0.0.1:%d"\nvkey = "%s"\n' % (port, witness_vkey.vkey())
    )
    device = Device("dgc-witnessed-0001", SigningKey(bytes([31]) * 32), t1=(int(time.time()) - 3600) // 60 * 60)
    enrolled = run_crev(
        tmp_path, "ingest", "enroll", "--config", str(config), "--device", device.dev,
        "--pubkey", device.key.public_key.hex(),
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    db: Path | str = store_url or tmp_path / "crev.sqlite"

    witness = Service("witness", ["witness", "run", "--config", str(witness_toml)], witness_dir)
    ingest = Service("ingest", ["ingest", "run", "--config", str(config)], tmp_path).start()
    try:
        wait_for(lambda: "subscribed" in ingest.log(), 30, "ingest to subscribe")
        # The witness is not up yet: ingest stores and seals all the same, and says so.
        publish(broker, device, 20)
        wait_for(lambda: rows(db, "SELECT count(*) FROM readings")[0][0] == 20, 20, "ingest to store")
        wait_for(lambda: "witness witness.test: cannot reach" in ingest.log(), 20, "ingest to say the witness is down")
        witness.start()
        wait_for(lambda: port_open(port), 30, "the witness to listen")
        wait_for(lambda: cosigned_size(db) == latest_size(db), 60, "the witness to cosign the newest block")

        # SIGKILL the witness; the ledger grows; back, it catches up from the size it kept.
        witness.kill()
        publish(broker, device, 20)
        wait_for(lambda: rows(db, "SELECT count(*) FROM readings")[0][0] == 40, 20, "ingest to store more")
        before_restart = cosigned_size(db)
        wait_for(lambda: latest_size(db) > before_restart, 20, "a new block while the witness is down")
        witness.start()
        wait_for(lambda: cosigned_size(db) == latest_size(db), 60, "the witness to catch up")
    finally:
        assert ingest.stop() == 0, ingest.log()
        witness.stop()

    # An auditor requires the witness: the bundle's checkpoint carries its cosignature.
    exported = run_crev(
        tmp_path, "audit", "export", "--config", str(config), "--device", device.dev,
        "--from", "0", "--to", str(int(time.time()) + 60), "--out", "w.bundle",
    )  # fmt: skip
    assert exported.returncode == 0 and "carries 1 witness cosignatures" in exported.stdout, exported.stdout
    verify = ["audit", "verify", "w.bundle", "--ledger-key", printed["pubkey"], "--witness", witness_vkey.vkey()]
    passed = run_crev(tmp_path, *verify, "--quorum", "1")
    assert passed.returncode == 0 and "witness.test at " in passed.stdout, passed.stdout + passed.stderr
    other = note.VerifierKey("witness.other", 0x04, SigningKey(bytes([32]) * 32).public_key).vkey()
    failed = run_crev(tmp_path, *verify, "--witness", other, "--quorum", "2")
    assert failed.returncode == 1 and "only 1 of the 2 witnesses required" in failed.stdout, failed.stdout
    bad = run_crev(tmp_path, *verify, "--quorum", "3")
    assert bad.returncode == 2 and "--quorum must be 1 to the number of --witness keys" in bad.stderr

    # Every cosignature kept verifies with the witness's vkey over its block's checkpoint, and the
    # witness's own state holds the newest size it cosigned.
    kept = rows(db, "SELECT c.height, c.size, c.line, b.checkpoint FROM cosignatures c JOIN blocks b USING (height)")
    assert len(kept) >= 2
    for _height, size, line, checkpoint in kept:
        opened = note.open_checkpoint(str(checkpoint) + str(line).rstrip("\n") + "\n", [ledger_vkey, witness_vkey])
        assert opened[0].size == size and len(opened[1].verified) == 2
    with sqlite3.connect(witness_dir / "w.sqlite", timeout=10) as state:
        assert state.execute("SELECT * FROM sqlite_master WHERE type = 'table'").fetchall(), "the witness's state"
    assert rows(db, "SELECT witness, size, error FROM witness_state") == [("witness.test", cosigned_size(db), None)]


def cosigned_size(db: Path | str) -> int:
    return int(rows(db, "SELECT coalesce(max(size), 0) FROM cosignatures")[0][0])


def latest_size(db: Path | str) -> int:
    return int(rows(db, "SELECT coalesce(max(tree_size), 0) FROM blocks")[0][0])
