"""Ingest throughput against a bare subscriber that only verifies signatures.

A fleet of pre-signed readings (default 1,000 devices) is queued at a real
mosquitto for a persistent session while the consumer is offline; then the
consumer starts and we time how fast it drains the queue. That measures the
consumer, not the publisher. The baseline, in the same run, is a bare paho
subscriber that parses each COSE_Sign1 and verifies its Ed25519 signature,
nothing else. ingest runs as real processes: on SQLite 1 worker, then 2 workers
on the shared subscription; on a real PostgreSQL 1, 2 and 4 workers, each with
its own client id and connections, one of them integrating. Its rate is read
from the store. Then the integrator alone, against hashing the same leaves.
"""

import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Mosquitto, Service, crev_command, wait_for, write_toml  # noqa: E402

from crev.keys import SigningKey  # noqa: E402
from crev.reading import ChainHead  # noqa: E402

BASELINE = r"""
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from crev.cose import Sign1
port, expected, keys_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
keys = {}
for line in open(keys_file):
    kid, pub = line.split()
    keys[bytes.fromhex(kid)] = bytes.fromhex(pub)
state = {"n": 0, "first": None, "last": None, "bad": 0}
def on_message(client, userdata, message):
    if state["first"] is None:
        state["first"] = time.perf_counter()
    envelope = Sign1.from_bytes(message.payload)
    try:
        envelope.verify(keys[envelope.kid])
    except Exception:
        state["bad"] += 1
    state["n"] += 1
    state["last"] = time.perf_counter()
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv5)
client.on_message = on_message
client.connect("127.0.0.1", port, clean_start=False)
client.loop_start()
deadline = time.time() + 600
while state["n"] < expected and time.time() < deadline:
    time.sleep(0.05)
client.loop_stop()
print(state["n"], state["last"] - state["first"], state["bad"])
"""


def fleet(devices: int, per_device: int) -> tuple[list[tuple[str, bytes]], list[tuple[str, SigningKey]]]:
    keys = [("dgc-fleet-%05d" % i, SigningKey(i.to_bytes(4, "big") * 8)) for i in range(devices)]
    timed: list[tuple[int, bytes, str, bytes]] = []
    for dev, key in keys:
        head = ChainHead()
        counters = [1_000_000, 500_000, 200_000]
        t1 = int(time.time()) // 60 * 60 - 60 * per_device
        for _ in range(per_device):
            counters = [counters[0] + 40_000, counters[1] + 10_000, counters[2] + 15_000]
            channels = [
                (0, "PV-" + dev, 1, counters[0]),
                (1, "G-" + dev, 0, counters[1]),
                (2, "G-" + dev, 0, counters[2]),
            ]
            t1 += 60
            reading = head.next_reading(dev, t1, 1, channels, "bench/1", t0=t1 - 60)
            cose = reading.sign(key)
            head = head.advance(reading, cose)
            timed.append((t1, cose[-8:], "crev/v1/%s/reading" % dev, cose))
    # Interleave devices, as a fleet's traffic would be: every device's reading of one interval, in
    # no particular order (their signatures' order), before the next interval's.
    timed.sort()
    return [(topic, cose) for _t1, _order, topic, cose in timed], keys


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def register_session(port: int, client_id: str, topic: str) -> None:
    """Create a persistent session with a subscription, then go offline."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=True, properties=properties)
    client.loop_start()
    client.subscribe(topic, qos=1)
    time.sleep(0.5)
    client.loop_stop()
    client.disconnect()


def storage_per_reading(location: str) -> tuple[float, float | None]:
    """Bytes of the whole store and of its Merkle tree (tiles and the tile edge), per stored reading.

    SQLite: used pages (the tree's share needs SQLite's dbstat table; without
    it, None). PostgreSQL: the tables with their indexes and TOAST.
    """
    from crev_ingest.database import connect

    db = connect(location)
    try:
        readings = max(1, int(db.execute("SELECT count(*) FROM readings").fetchone()[0]))
        if db.dialect == "postgresql":
            total = int(db.execute("SELECT pg_database_size(current_database())").fetchone()[0])
            empty = int(db.execute("SELECT pg_database_size('template1')").fetchone()[0])
            tree = int(
                db.execute("SELECT pg_total_relation_size('tiles') + pg_total_relation_size('tile_edge')").fetchone()[0]
            )
            return (total - empty) / readings, tree / readings
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        used = int(db.execute("PRAGMA page_count").fetchone()[0]) - int(
            db.execute("PRAGMA freelist_count").fetchone()[0]
        )
        try:
            found = db.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN ('tiles', 'sqlite_autoindex_tiles_1', 'tile_edge')"
            ).fetchone()[0]
            tree_bytes: float | None = int(found) / readings
        except sqlite3.OperationalError:
            tree_bytes = None
        return used * page / readings, tree_bytes
    finally:
        db.close()


def _count(location: str, query: str) -> int:
    from crev_ingest.database import connect

    db = connect(location, read_only=not location.startswith("postgresql"))
    try:
        value = db.execute(query).fetchone()[0]
        return 0 if value is None else int(value)
    finally:
        db.close()


def ingest_rate(
    work: Path,
    broker: Mosquitto,
    messages: list[tuple[str, bytes]],
    keys: list[tuple[str, SigningKey]],
    workers: int,
    store_url: str | None = None,
) -> tuple[float, tuple[float, float | None]]:
    """Readings per second from the first one received to the last one in the ledger."""
    run = work / ("ingest-%s-%d" % ("pg" if store_url else "sqlite", workers))
    run.mkdir()
    storage = 'url = "%s"' % store_url if store_url else 'path = "crev.sqlite"'
    config = write_toml(
        run / "ingest.toml",
        '[mqtt]\nurl = "%s"\n\n[storage]\n%s\n\n[ledger]\nkey = "ledger.key"\n'
        'origin = "bench/ledger"\nblock_interval_s = 10\nblock_max_leaves = 100000\n' % (broker.url, storage),
    )
    subprocess.run(crev_command("ingest", "init", "--config", str(config)), check=True, capture_output=True, cwd=run)
    # Enrol the fleet directly through the ledger API (1,000 CLI calls would dominate the set-up).
    from crev_ingest.keyfile import load_key
    from crev_ingest.ledger import ACTION_ENROL, Ledger
    from crev_ingest.store import Store

    location = store_url or str(run / "crev.sqlite")
    store = Store(location)
    ledger = Ledger(store, load_key(run / "ledger.key"), "bench/ledger", 10, 100000)
    store.begin()
    for dev, key in keys:
        ledger.key_event(ACTION_ENROL, dev, key.public_key, int(time.time()) - 3600, int(time.time() * 1000))
    store.commit()
    store.close()
    tag = "%s-%d" % ("pg" if store_url else "sqlite", workers)
    for worker in range(workers):
        register_session(broker.port, "bench-ingest-%s-%d" % (tag, worker), "$share/crev-ingest/crev/v1/+/reading")
    publish_all(broker.port, messages)
    services = []
    for worker in range(workers):
        # Each worker keeps its own stable client id, and so its own broker session: a host of its own.
        worker_config = write_toml(
            run / ("ingest-%d.toml" % worker),
            config.read_text().replace("[mqtt]\n", '[mqtt]\nclient_id = "bench-ingest-%s-%d"\n' % (tag, worker)),
        )
        services.append(Service("ingest-%d" % worker, ["ingest", "run", "--config", str(worker_config)], run).start())
    wanted = len(messages) + len(keys)  # the readings and the key events
    wait_for(lambda: _count(location, "SELECT count(*) FROM leaves") >= wanted, 900, "ingest", interval=0.1)
    done_s = time.time()
    # ingest stamps each reading when it takes the message: from the first to "all in the ledger".
    first_ms = _count(location, "SELECT min(received_ms) FROM leaves WHERE type = 1")
    elapsed = max(0.001, done_s - first_ms / 1000)
    for service in services:
        service.stop()
    for worker in range(workers):
        # End the workers' sessions, or the next run's share group would include them.
        forget = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-ingest-%s-%d" % (tag, worker), protocol=mqtt.MQTTv5
        )
        forget.connect("127.0.0.1", broker.port, clean_start=True)
        forget.disconnect()
    return len(messages) / elapsed, storage_per_reading(location)


def integrator_rate(work: Path, readings: list[bytes], store_url: str | None) -> tuple[float, float]:
    """The integrator alone: pending readings integrated per second, and the same leaves hashed in memory."""
    from crev import merkle
    from crev_ingest.config import parse
    from crev_ingest.integrator import BATCH, Integrator
    from crev_ingest.ledger import LEAF_READING, Ledger, encode_leaf
    from crev_ingest.metrics import IngestMetrics
    from crev_ingest.store import Store
    from crev_ingest.validate import Ingestor

    run = work / ("integrator-%s" % ("pg" if store_url else "sqlite"))
    run.mkdir()
    location = store_url or str(run / "crev.sqlite")
    config = parse({"ledger": {"origin": "bench/ledger", "block_max_leaves": 100000}}, run / "ingest.toml")
    store = Store(location)
    key = SigningKey(bytes([5]) * 32)
    ledger = Ledger(store, key, "bench/ledger", 3600, 100000)
    from crev.reading import Reading

    store.begin()
    for raw in readings:
        reading = Reading.from_cose(raw)
        store.add_pending(reading.dev, reading.seq, int(time.time() * 1000), "crev/v1/%s/reading" % reading.dev, raw)
    store.commit()
    integrator = Integrator(config, key, IngestMetrics(), threading.Event(), "bench")
    ingestor = Ingestor(store, ledger, config)
    started = time.perf_counter()
    while integrator.integrate_once(store, ledger, ingestor) >= BATCH:
        pass
    integrated = time.perf_counter() - started
    assert store.leaf_count() == len(readings), "the integrator left readings pending"
    store.close()
    started = time.perf_counter()
    frontier = merkle.MerkleFrontier()
    for raw in readings:
        frontier.append(merkle.leaf_hash(encode_leaf(LEAF_READING, 0, raw)))
    hashed = time.perf_counter() - started
    return len(readings) / integrated, len(readings) / hashed


def report(devices: int, per_device: int) -> None:
    from postgres_support import PostgresServer

    messages, keys = fleet(devices, per_device)
    pg_rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work)
        broker.start()
        postgres = PostgresServer()
        postgres.init()
        postgres.start(durable=True)  # fsync on, as SQLite's synchronous=FULL
        try:
            keys_file = work / "keys.txt"
            keys_file.write_text("".join("%s %s\n" % (k.kid.hex(), k.public_key.hex()) for _d, k in keys))
            register_session(broker.port, "bench-baseline", "crev/v1/+/reading")
            publish_all(broker.port, messages)
            done = subprocess.run(
                [sys.executable, "-c", BASELINE, str(broker.port), str(len(messages)), str(keys_file)],
                capture_output=True,
                text=True,
                check=True,
            )
            received, seconds, bad = done.stdout.split()
            baseline = (int(received) - 1) / max(0.001, float(seconds))
            one, (store_bytes, tree_bytes) = ingest_rate(work, broker, messages, keys, 1)
            two, _storage = ingest_rate(work, broker, messages, keys, 2)
            pg_storage: tuple[float, float | None] = (0.0, None)
            for workers in (1, 2, 4):
                url = postgres.create_database("bench_%d" % workers)
                pg_rates[workers], storage = ingest_rate(work, broker, messages, keys, workers, url)
                if workers == 1:
                    pg_storage = storage
            raw = [payload for _topic, payload in messages]
            sqlite_integrator, hashing = integrator_rate(work, raw, None)
            pg_integrator, _hashing = integrator_rate(work, raw, postgres.create_database("bench_integrator"))
        finally:
            postgres.destroy()
            broker.stop()
    print("== ingest: %d devices x %d pre-signed readings, drained from a real mosquitto ==" % (devices, per_device))
    print("   (rate: first reading received to the last one in the ledger; PostgreSQL 15 with fsync on)")
    print("%-52s %10s %8s" % ("", "readings/s", "ratio"))
    print("%-52s %10.0f %7.2fx" % ("bare paho subscriber, Ed25519 verify only", baseline, 1.0))
    print("%-52s %10.0f %7.2fx" % ("ingest on SQLite, 1 worker (verify, store, ledger, ack)", one, one / baseline))
    print(
        "%-52s %10.0f %7.2fx   (%.2fx one worker)"
        % ("ingest on SQLite, 2 workers sharing the subscription", two, two / baseline, two / one)
    )
    for workers, rate in pg_rates.items():
        print(
            "%-52s %10.0f %7.2fx   (%.2fx one worker)"
            % ("ingest on PostgreSQL, %d worker%s" % (workers, "s" if workers > 1 else ""), rate, rate / baseline,
               rate / pg_rates[1])
        )  # fmt: skip
    print("   (the workers are processes on this 2-core machine, standing for hosts: 4 share 2 cores)")
    print("%-52s %10s %8s" % ("", "leaves/s", "ratio"))
    print("%-52s %10.0f %7.2fx" % ("the same leaves hashed into a tree in memory", hashing, 1.0))
    print("%-52s %10.0f %7.2fx" % ("integrator alone on SQLite", sqlite_integrator, sqlite_integrator / hashing))
    print("%-52s %10.0f %7.2fx" % ("integrator alone on PostgreSQL", pg_integrator, pg_integrator / hashing))
    tree = "" if tree_bytes is None else ", of which the Merkle tree %.0f" % tree_bytes
    print("storage: %.0f bytes per reading in the SQLite store%s" % (store_bytes, tree))
    pg_tree = "" if pg_storage[1] is None else ", of which the Merkle tree %.0f" % pg_storage[1]
    print("storage: %.0f bytes per reading on PostgreSQL%s" % (pg_storage[0], pg_tree))
    if int(bad):
        print("baseline saw %s bad signatures" % bad)


if __name__ == "__main__":
    report(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 10)
