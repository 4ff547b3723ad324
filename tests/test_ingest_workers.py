"""Two ingest workers on one database, and a message that fails half-way."""

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from ingest_support import LEDGER_KEY, NOW, Device

from crev.keys import SigningKey
from crev_ingest.audit import verify_ledger
from crev_ingest.config import parse
from crev_ingest.ledger import ACTION_ENROL, ACTION_REVOKE
from crev_ingest.service import IngestService
from crev_ingest.store import Store


def service(tmp_path: Path, name: str) -> IngestService:
    key_file = tmp_path / "ledger.key"
    if not key_file.exists():
        key_file.write_text(LEDGER_KEY.seed_bytes().hex())
        key_file.chmod(0o600)
    config = parse({"ledger": {"origin": "crev.test/ledger", "block_max_leaves": 5}}, tmp_path / "ingest.toml")
    return IngestService(config, client_id=name)  # never connected: batches are fed directly


def message(raw: bytes, dev: str, mid: int) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(mid=mid, topic=("crev/v1/%s/reading" % dev).encode())
    msg.payload = raw
    msg.qos = 1
    return msg


def enrol(tmp_path: Path, devices: list[Device]) -> None:
    worker = service(tmp_path, "enrol")
    worker.store.begin()
    for device in devices:
        worker.ledger.key_event(ACTION_ENROL, device.dev, device.key.public_key, NOW - 86400, NOW * 1000)
    worker.store.commit()
    worker.store.close()


def test_two_workers_interleaving_keep_one_valid_ledger(tmp_path: Path) -> None:
    devices = [Device("dgc-worker-%03d" % i, SigningKey(bytes([60 + i]) * 32)) for i in range(3)]
    enrol(tmp_path, devices)
    a, b = service(tmp_path, "worker-a"), service(tmp_path, "worker-b")
    mid = 0
    for round_ in range(6):
        for i, device in enumerate(devices):
            mid += 1
            worker = a if (round_ + i) % 2 else b
            worker.process_batch([message(device.next(), device.dev, mid)])
    store = Store(tmp_path / "crev.sqlite")
    counts, _state = verify_ledger(store, LEDGER_KEY.public_key, "crev.test/ledger")
    assert counts["readings"] == 18
    assert store.db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    assert counts["blocks"] >= 3


def test_a_message_failing_half_way_leaves_no_partial_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = Device("dgc-worker-900", SigningKey(bytes([90]) * 32))
    enrol(tmp_path, [device])
    worker = service(tmp_path, "worker-x")
    worker.process_batch([message(device.next(), device.dev, 1)])
    real = worker.store.add_series

    def broken(row: tuple[str, int, int, str, int, int, int, int, int, float]) -> None:
        raise RuntimeError("disk trouble in the middle of a message")

    monkeypatch.setattr(worker.store, "add_series", broken)
    failing = device.next()
    worker.process_batch([message(failing, device.dev, 2)])  # the leaf and reading rows were already written
    monkeypatch.setattr(worker.store, "add_series", real)
    worker.process_batch([message(device.next(), device.dev, 3)])
    reason, raw = worker.store.db.execute("SELECT reason, raw FROM quarantine").fetchone()
    assert reason == "INTERNAL_ERROR" and bytes(raw) == failing, "kept for inspection, not lost"
    # The audit passes only if no leaf or row of the failed message remained.
    counts, _state = verify_ledger(worker.store, LEDGER_KEY.public_key, "crev.test/ledger")
    assert counts["readings"] == 2
    seqs = [r[0] for r in worker.store.db.execute("SELECT seq FROM readings ORDER BY seq")]
    assert seqs == [0, 2]
    assert worker.store.open_gaps(device.dev) == [(device.dev, 1, 1)], "the failed seq shows as a gap"


def test_a_worker_sees_keys_enrolled_and_revoked_by_another_process_at_its_next_batch(tmp_path: Path) -> None:
    # The worker keeps the keys it has read between batches; a key event written through another
    # connection to the same file must still count from the very next batch.
    device = Device("dgc-worker-700", SigningKey(bytes([70]) * 32))
    other = Device("dgc-worker-701", SigningKey(bytes([71]) * 32))
    enrol(tmp_path, [other])
    worker = service(tmp_path, "worker-keys")
    worker.process_batch([message(other.next(), other.dev, 1), message(device.next(advance=False), device.dev, 2)])
    enrol(tmp_path, [device])
    worker.process_batch([message(device.next(), device.dev, 3)])
    elsewhere = service(tmp_path, "revoker")
    elsewhere.store.begin()
    elsewhere.ledger.key_event(ACTION_REVOKE, device.dev, device.key.public_key, NOW - 3600, NOW * 1000)
    elsewhere.store.commit()
    elsewhere.store.close()
    worker.process_batch([message(device.next(), device.dev, 4), message(other.next(), other.dev, 5)])
    reasons = [r[0] for r in worker.store.db.execute("SELECT reason FROM quarantine ORDER BY id")]
    assert reasons == ["UNKNOWN_KEY", "REVOKED_KEY"]
    assert [r[0] for r in worker.store.db.execute("SELECT dev FROM readings ORDER BY leaf_idx")] == [
        other.dev,
        device.dev,
        other.dev,
    ]
