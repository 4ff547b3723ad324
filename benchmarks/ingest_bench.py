"""Ingest throughput against a bare subscriber that only verifies signatures.

A fleet of pre-signed readings (default 1,000 devices) is queued at a real
mosquitto for a persistent session while the consumer is offline; then the
consumer starts and we time how fast it drains the queue. That measures the
consumer, not the publisher. The baseline, in the same run, is a bare paho
subscriber that parses each COSE_Sign1 and verifies its Ed25519 signature,
nothing else. ingest runs as a real process (1 worker, then 2 workers on the
shared subscription); its rate is read from its SQLite file.
"""

import sqlite3
import subprocess
import sys
import tempfile
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
    messages = []
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
            messages.append(("crev/v1/%s/reading" % dev, cose))
    # Interleave devices, as a fleet's traffic would be.
    messages.sort(key=lambda m: m[1][-8:])
    return messages, keys


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


def storage_per_reading(db: Path) -> tuple[float, float | None]:
    """Bytes of the whole store and of its Merkle tree (the tiles table and its index), per stored reading.

    The tree's share needs SQLite's dbstat table; without it, None.
    """
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        readings = int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        used = int(conn.execute("PRAGMA page_count").fetchone()[0]) - int(
            conn.execute("PRAGMA freelist_count").fetchone()[0]
        )
        try:
            tree = conn.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN ('tiles', 'sqlite_autoindex_tiles_1')"
            ).fetchone()[0]
        except sqlite3.OperationalError:
            tree = None
    readings = max(1, readings)
    return used * page / readings, None if tree is None else int(tree) / readings


def ingest_rate(
    work: Path, broker: Mosquitto, messages: list[tuple[str, bytes]], keys: list[tuple[str, SigningKey]], workers: int
) -> tuple[float, tuple[float, float | None]]:
    run = work / ("ingest-%d" % workers)
    run.mkdir()
    config = write_toml(
        run / "ingest.toml",
        '[mqtt]\nurl = "%s"\n\n[storage]\npath = "crev.sqlite"\n\n[ledger]\nkey = "ledger.key"\n'
        'origin = "bench/ledger"\nblock_interval_s = 10\nblock_max_leaves = 100000\n' % broker.url,
    )
    subprocess.run(crev_command("ingest", "init", "--config", str(config)), check=True, capture_output=True, cwd=run)
    # Enrol the fleet directly through the ledger API (1,000 CLI calls would dominate the set-up).
    from crev_ingest.keyfile import load_key
    from crev_ingest.ledger import ACTION_ENROL, Ledger
    from crev_ingest.store import Store

    store = Store(run / "crev.sqlite")
    ledger = Ledger(store, load_key(run / "ledger.key"), "bench/ledger", 10, 100000)
    store.begin()
    for dev, key in keys:
        ledger.key_event(ACTION_ENROL, dev, key.public_key, int(time.time()) - 3600, int(time.time() * 1000))
    store.commit()
    store.close()
    for worker in range(workers):
        register_session(broker.port, "bench-ingest-%d-%d" % (workers, worker), "$share/crev-ingest/crev/v1/+/reading")
    publish_all(broker.port, messages)
    services = []
    for worker in range(workers):
        # Each worker keeps its own stable client id, and so its own broker session.
        worker_config = write_toml(
            run / ("ingest-%d.toml" % worker),
            config.read_text().replace("[mqtt]\n", '[mqtt]\nclient_id = "bench-ingest-%d-%d"\n' % (workers, worker)),
        )
        services.append(Service("ingest-%d" % worker, ["ingest", "run", "--config", str(worker_config)], run).start())
    db = run / "crev.sqlite"

    def stored() -> int:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])

    wait_for(lambda: stored() >= len(messages), 900, "ingest to store the fleet", interval=0.2)
    # ingest stamps each reading leaf when it takes the message: first to last is its drain time.
    with sqlite3.connect(db, timeout=30) as conn:
        first_ms, last_ms = conn.execute(
            "SELECT min(received_ms), max(received_ms) FROM leaves WHERE type = 1"
        ).fetchone()
    elapsed = max(0.001, (int(last_ms) - int(first_ms)) / 1000)
    for service in services:
        service.stop()
    for worker in range(workers):
        # End the workers' sessions, or the next run's share group would include them.
        forget = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-ingest-%d-%d" % (workers, worker), protocol=mqtt.MQTTv5
        )
        forget.connect("127.0.0.1", broker.port, clean_start=True)
        forget.disconnect()
    return (len(messages) - 1) / elapsed, storage_per_reading(db)


def report(devices: int, per_device: int) -> None:
    messages, keys = fleet(devices, per_device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work)
        broker.start()
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
        finally:
            broker.stop()
    print("== ingest: %d devices x %d pre-signed readings, drained from a real mosquitto ==" % (devices, per_device))
    print("%-48s %10s %8s" % ("", "readings/s", "ratio"))
    print("%-48s %10.0f %7.2fx" % ("bare paho subscriber, Ed25519 verify only", baseline, 1.0))
    print("%-48s %10.0f %7.2fx" % ("ingest, 1 worker (verify, store, ledger, ack)", one, one / baseline))
    print(
        "%-48s %10.0f %7.2fx   (%.2fx one worker)"
        % ("ingest, 2 workers sharing the subscription", two, two / baseline, two / one)
    )
    tree = "" if tree_bytes is None else ", of which the Merkle tree (tiles) %.0f" % tree_bytes
    print("storage: %.0f bytes per reading in the SQLite store%s" % (store_bytes, tree))
    if int(bad):
        print("baseline saw %s bad signatures" % bad)


if __name__ == "__main__":
    report(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 10)
