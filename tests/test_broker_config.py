"""The shipped broker settings and the per-device credentials, on a real mosquitto."""

import getpass
import signal
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from harness import free_port, mosquitto_binary, port_open, wait_for
from ingest_support import Device, LocalIngest
from paho.mqtt.enums import CallbackAPIVersion

from crev.keys import SigningKey
from crev_ingest.broker import INGEST_USER, write_broker_users

ROOT = Path(__file__).resolve().parent.parent


def start_broker(tmp_path: Path, settings: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = tmp_path / ("mosquitto-%d.conf" % port)
    conf.write_text("user %s\nlistener %d 127.0.0.1\n%s\n" % (getpass.getuser(), port, settings))
    log = (tmp_path / "mosquitto.log").open("ab")
    process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
    wait_for(lambda: port_open(port), 10, "mosquitto")
    return process, port


def client(port: int, user: str, password: str, client_id: str, clean: bool = True) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    c.username_pw_set(user, password)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def shipped_settings(kind: str) -> str:
    """The queueing lines of ingest/mosquitto/crev.conf (listeners and paths are per test)."""
    text = (ROOT / "ingest" / "mosquitto" / "crev.conf").read_text()
    lines = [line for line in text.splitlines() if line.startswith(("max_queued", "max_packet", "allow_anonymous"))]
    return "\n".join(lines) if kind == "crev" else "allow_anonymous true"


@pytest.mark.slow
def test_devices_may_write_only_their_own_topics(tmp_path: Path) -> None:
    ingest = LocalIngest(tmp_path)
    a, b = Device("dgc-acl-a001", SigningKey(bytes([1]) * 32)), Device("dgc-acl-b002", SigningKey(bytes([2]) * 32))
    ingest.enroll(a)
    ingest.enroll(b)
    users = write_broker_users(ingest.store, tmp_path / "broker")
    assert users == [INGEST_USER, a.dev, b.dev]
    broker_dir = tmp_path / "broker"
    process, port = start_broker(
        tmp_path,
        "password_file %s\nacl_file %s\n%s" % (broker_dir / "passwd", broker_dir / "acl", shipped_settings("crev")),
    )
    try:
        password = {u: (broker_dir / "passwords" / (u + ".pass")).read_text().strip() for u in users}
        received: list[str] = []
        sub = client(port, INGEST_USER, password[INGEST_USER], "acl-ingest")
        sub.on_message = lambda c, u, m: received.append(m.topic)
        sub.subscribe([("crev/v1/+/reading", 1), ("crev/v1/+/order", 1), ("crev/v1/+/cmd", 1)])
        time.sleep(0.3)
        clients: list[mqtt.Client] = []

        def publish_as_a(topic: str, data: bytes) -> None:
            """Each on a new connection: mosquitto drops a device that publishes where it may not."""
            dev_a = client(port, a.dev, password[a.dev], "acl-a-%d" % len(clients))
            clients.append(dev_a)
            wait_for(dev_a.is_connected, 5, "device a to connect")
            info = dev_a.publish(topic, data, qos=1)
            wait_for(lambda: info.is_published() or not dev_a.is_connected(), 5, "the publish to end")

        publish_as_a("crev/v1/%s/reading" % a.dev, b"own")
        publish_as_a("crev/v1/%s/order" % a.dev, b"own order")
        for topic in ("%s/reading" % b.dev, "%s/order" % b.dev, "%s/cmd" % a.dev, "%s/other" % a.dev):
            publish_as_a("crev/v1/" + topic, b"not allowed")
        wait_for(lambda: len(received) >= 2, 5, "the device's own messages")
        time.sleep(0.5)
        assert sorted(received) == ["crev/v1/%s/order" % a.dev, "crev/v1/%s/reading" % a.dev], (
            "the ACL keeps a device to its own reading and order topics"
        )
        # One device cannot flood the broker with one huge message: it is refused.
        received.clear()
        publish_as_a("crev/v1/%s/reading" % a.dev, bytes(20_000))
        time.sleep(0.5)
        assert received == [], "a message beyond max_packet_size reaches no one"
        intruder = client(port, a.dev, "wrong password", "acl-x")
        time.sleep(0.5)
        assert not intruder.is_connected()
        for c in (sub, intruder, *clients):
            c.loop_stop()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize(("settings", "expect_all"), [("default", False), ("crev", True)])
def test_a_burst_for_an_offline_subscriber_is_kept_only_with_the_shipped_settings(
    tmp_path: Path, settings: str, expect_all: bool
) -> None:
    process, port = start_broker(
        tmp_path, shipped_settings(settings).replace("allow_anonymous false", "allow_anonymous true")
    )
    try:
        received: list[bytes] = []
        sub = client(port, "ingest", "", "burst-sub", clean=False)
        sub.subscribe("crev/v1/+/reading", qos=1)
        time.sleep(0.3)
        sub.disconnect()
        sub.loop_stop()
        pub = client(port, "dev", "", "burst-pub")
        burst = 3000
        for i in range(burst):
            pub.publish("crev/v1/dgc-burst-0001/reading", str(i).encode(), qos=1)
        wait_for(lambda: len(pub._out_messages) == 0, 60, "the burst to reach the broker")
        pub.loop_stop()
        again = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="burst-sub", clean_session=False)
        again.on_message = lambda c, u, m: received.append(bytes(m.payload))
        again.connect("127.0.0.1", port)
        again.loop_start()
        time.sleep(3)
        again.loop_stop()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    if expect_all:
        assert len(received) == burst
    else:
        assert len(received) < burst // 2, "mosquitto's default queue limit drops most of the burst"
