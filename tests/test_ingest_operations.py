"""`crev ingest run` as an operator meets it: it says when it cannot reach the broker, and alarms on a flood.

The flood's alarm is a row of the store: that test runs on both stores.
"""

import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from harness import Mosquitto, Service, free_port, ingest_config, run_crev, wait_for
from ingest_support import Device
from paho.mqtt.enums import CallbackAPIVersion
from store_support import count, location, rows

from crev.keys import SigningKey


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def with_metrics(config: Path, port: int, extra: str = "") -> None:
    config.write_text(config.read_text() + '\n[metrics]\nlisten = "127.0.0.1:%d"\n%s' % (port, extra))


@pytest.mark.slow
def test_ingest_keeps_saying_it_cannot_reach_the_broker_until_it_can(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)  # not started yet: nothing listens on its port
    broker_port, metrics_port = broker.port, free_port()
    config = ingest_config(tmp_path, broker.url)
    with_metrics(config, metrics_port)
    assert run_crev(tmp_path, "ingest", "init", "--config", str(config)).returncode == 0
    ingest = Service("ingest", ["ingest", "run", "--config", str(config)], tmp_path).start()
    try:
        wait_for(lambda: ingest.log().count("cannot reach the broker") >= 2, 20, "ingest to say it, twice")
        assert "127.0.0.1:%d" % broker_port in ingest.log()
        assert metric(metrics_port, "crev_ingest_broker_connected") == 0
        broker.start()
        wait_for(lambda: "subscribed" in ingest.log(), 40, "ingest to connect once the broker is there")
        wait_for(lambda: metric(metrics_port, "crev_ingest_broker_connected") == 1, 10, "the metric to say so")
        broker.stop()
        wait_for(lambda: "lost the broker" in ingest.log(), 20, "ingest to say it lost the broker")
        assert metric(metrics_port, "crev_ingest_broker_connected") == 0
    finally:
        assert ingest.stop() == 0, ingest.log()
        broker.stop()


@pytest.mark.slow
def test_a_device_that_floods_is_alarmed_and_a_replayed_backlog_is_not(
    tmp_path: Path, broker: Mosquitto, store_url: str | None
) -> None:
    config = ingest_config(tmp_path, broker.url, store_url=store_url)
    config.write_text(config.read_text() + "\n[validation]\nmax_per_minute = 30\n")
    assert run_crev(tmp_path, "ingest", "init", "--config", str(config)).returncode == 0
    backlog = Device("dgc-backlog-0001", SigningKey(bytes([21]) * 32), t1=(int(time.time()) - 86400) // 60 * 60)
    enrolled = run_crev(
        tmp_path,
        *("ingest", "enroll", "--config", str(config), "--device", backlog.dev),
        *("--pubkey", backlog.key.public_key.hex()),
    )
    assert enrolled.returncode == 0, enrolled.stderr
    ingest = Service("ingest", ["ingest", "run", "--config", str(config)], tmp_path).start()
    try:
        wait_for(lambda: "subscribed" in ingest.log(), 30, "ingest to subscribe")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="crev-test-flood")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        # A day-old backlog, replayed as fast as the broker takes it: no alarm.
        for _ in range(100):
            client.publish("crev/v1/%s/reading" % backlog.dev, backlog.next(), qos=1).wait_for_publish(5)
        # Garbage, live, far more than 30 a minute: one alarm.
        for i in range(60):
            client.publish("crev/v1/dgc-flood-0001/reading", b"junk %d" % i, qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()

        db = location(tmp_path, store_url)

        def alarms() -> list[tuple[str, str]]:
            return [(str(r[0]), str(r[1])) for r in rows(db, "SELECT kind, dev FROM alarms")]

        def stored() -> int:
            return count(db, "SELECT count(*) FROM readings")

        wait_for(lambda: ("FLOOD", "dgc-flood-0001") in alarms() and stored() == 100, 30, "the alarm and the backlog")
        assert alarms().count(("FLOOD", "dgc-flood-0001")) == 1, "one alarm while it goes on, not sixty"
        assert ("FLOOD", backlog.dev) not in alarms()
        assert "dgc-flood-0001 floods the broker" in ingest.log()
    finally:
        assert ingest.stop() == 0, ingest.log()
