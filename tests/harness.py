"""Real components for integration tests and benchmarks.

A real mosquitto on a free loopback port, the simulators and the gateway
as real ``crev`` processes, and an MQTT subscriber that records readings.
"""

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from crev.reading import Reading, reading_hash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if found is None:
        raise AssertionError("mosquitto is not installed; run .ci/run or `apt-get install mosquitto`")
    return found


class Mosquitto:
    """A real broker on a free port; stop() and start() keep port and persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = "mqtt://127.0.0.1:%d" % self.port
        self.config = workdir / "mosquitto.conf"
        (workdir / "mosquitto-data").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            # Started as root, mosquitto would switch to user "mosquitto" and
            # then fail to write its persistence file in our private tmp dir.
            "user %s\n"
            "listener %d 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            "persistence_location %s/\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            "autosave_interval 1\n" % (getpass.getuser(), self.port, workdir / "mosquitto-data")
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.workdir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.config)], stdout=log, stderr=log)
        wait_for(lambda: port_open(self.port), 10, "mosquitto on port %d" % self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None


def crev_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "crev_cli.main", *args]


@dataclass
class Service:
    """A `crev` subprocess with its output in a log file."""

    name: str
    args: list[str]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / (self.name + ".log")

    def start(self) -> "Service":
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(crev_command(*self.args), stdout=log, stderr=log, cwd=self.workdir)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sim_config(workdir: Path, meters: str, speed: float, tick_s: int = 60, seed: int = 7) -> Path:
    # Registers refresh once a wall second, half-way between the gateway's
    # reads (which start on whole seconds), so one interval sees one state.
    return write_toml(
        workdir / "sim.toml",
        'truth = "truth.jsonl"\ntimeout_sleep_s = 5\nupdate_s = 1.0\nupdate_phase_s = 0.5\n\n'
        "[site]\nseed = %d\nspeed = %g\ntick_s = %d\n"
        'start = "2026-06-21T00:00:00+09:00"\npv_peak_w = 5000\nload_avg_w = 700\n\n%s' % (seed, speed, tick_s, meters),
    )


def gateway_config(
    workdir: Path, device: str, broker_url: str, meters: str, interval_s: int = 1, extra: str = "", outbox: str = ""
) -> Path:
    return write_toml(
        workdir / ("%s.toml" % device),
        '[device]\nid = "%s"\nkey = "%s.key"\ninterval_s = %d\nclock = "synchronised"\n\n'
        '[mqtt]\nurl = "%s"\nkeepalive_s = 5\n\n[outbox]\npath = "%s-outbox.sqlite"\n%s\n'
        "[modbus]\ntimeout_s = 0.5\nretries = 1\nbackoff_s = 0.05\npause_s = 0\n\n%s\n%s"
        % (device, device, interval_s, broker_url, device, outbox, extra, meters),
    )


def init_gateway(workdir: Path, config: Path) -> bytes:
    done = subprocess.run(
        crev_command("gateway", "init", "--config", str(config)), capture_output=True, text=True, cwd=workdir
    )
    assert done.returncode == 0, done.stderr
    pubkey = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("pubkey"))
    return bytes.fromhex(pubkey)


class ReadingCollector:
    """A subscriber with a persistent session that records every reading it gets."""

    def __init__(self, broker_port: int, client_id: str = "crev-test-collector") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.status: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", broker_port, keepalive=5)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, "the collector to connect")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe([("crev/v1/+/reading", 1), ("crev/v1/+/status", 1)])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            if message.topic.endswith("/status"):
                self.status[message.topic.split("/")[2]] = bytes(message.payload)
            else:
                self.messages.append((message.topic, bytes(message.payload)))

    def readings(self, device: str | None = None) -> list[Reading]:
        with self.lock:
            raw = [p for t, p in self.messages if device is None or t == "crev/v1/%s/reading" % device]
        return [Reading.from_cose(p) for p in raw]

    def payloads(self, device: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == "crev/v1/%s/reading" % device]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def check_chain(payloads: list[bytes]) -> list[Reading]:
    """Distinct readings sorted by seq; asserts seq 0.. is continuous and prev links."""
    by_seq: dict[int, bytes] = {}
    for raw in payloads:
        seq = Reading.from_cose(raw).seq
        if seq in by_seq:
            assert by_seq[seq] == raw, "seq %d was used for two different readings" % seq
        by_seq[seq] = raw
    seqs = sorted(by_seq)
    assert seqs == list(range(len(seqs))), "seq gaps: missing %s" % sorted(set(range(max(seqs) + 1)) - set(seqs))
    readings: list[Reading] = []
    previous: bytes | None = None
    for seq in seqs:
        reading = Reading.from_cose(by_seq[seq])
        expected_prev = bytes(32) if previous is None else reading_hash(previous)
        assert reading.prev == expected_prev, "prev of seq %d does not link" % seq
        if readings:
            assert reading.t0 == readings[-1].t1, "t0 of seq %d is not the previous t1" % seq
        readings.append(reading)
        previous = by_seq[seq]
    return readings


def load_truth(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def ingest_config(
    workdir: Path,
    broker_url: str,
    block_interval_s: float = 1.0,
    store_url: str | None = None,
    client_id: str | None = None,
    name: str = "ingest.toml",
) -> Path:
    """An ingest config on the SQLite file crev.sqlite, or on the PostgreSQL database ``store_url``."""
    storage = 'url = "%s"' % store_url if store_url else 'path = "crev.sqlite"'
    mqtt = '[mqtt]\nurl = "%s"\n' % broker_url + ('client_id = "%s"\n' % client_id if client_id else "")
    return write_toml(
        workdir / name,
        '%s\n[storage]\n%s\n\n[ledger]\nkey = "ledger.key"\n'
        'origin = "crev.test/ledger"\nblock_interval_s = %g\nblock_max_leaves = 1000\n\n'
        "[emission]\ndefault_g_per_kwh = 423\n" % (mqtt, storage, block_interval_s),
    )


def run_crev(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(crev_command(*args), capture_output=True, text=True, cwd=workdir, timeout=120, check=False)
