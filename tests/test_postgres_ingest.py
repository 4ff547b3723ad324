"""Ingest on PostgreSQL, all real processes: workers standing for separate hosts (each its own
client id and connections), gateways publishing through mosquitto, the integrator SIGKILLed
while it integrates, and the database stopped under load."""

import random
import time
from pathlib import Path

import psycopg
import pytest
from harness import Mosquitto, Service, free_port, gateway_config, ingest_config, init_gateway, run_crev, wait_for
from postgres_support import PostgresServer
from test_gateway_pipeline import start_sim, sunspec_site

from crev.reading import Reading


def _count(url: str, query: str) -> int:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute(query).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def _seqs(url: str, dev: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as db:
        return [int(r[0]) for r in db.execute("SELECT seq FROM readings WHERE dev = %s ORDER BY seq", (dev,))]


class Worker:
    """`crev ingest run` with its own config and client id, restartable under the same id."""

    def __init__(self, workdir: Path, broker_url: str, store_url: str, number: int) -> None:
        self.name = "ingest-%d" % number
        config = ingest_config(workdir, broker_url, 1.0, store_url, "crev-ingest-host-%d" % number, self.name + ".toml")
        self.config = config
        self.service = Service(self.name, ["ingest", "run", "--config", str(config)], workdir)
        self.seen = 0  # log length when last started

    def start(self) -> "Worker":
        self.seen = len(self.service.log())
        self.service.start()
        return self

    def new_log(self) -> str:
        return self.service.log()[self.seen :]

    def integrating(self) -> bool:
        return self.service.alive() and "integrating:" in self.new_log()


def _start_workers(workdir: Path, broker: Mosquitto, url: str, count: int) -> list[Worker]:
    """`crev ingest init`, then ``count`` workers, each subscribed before any gateway publishes:
    from then on its persistent session makes the broker keep what it has not acknowledged."""
    workers = [Worker(workdir, broker.url, url, n) for n in range(count)]
    assert run_crev(workdir, "ingest", "init", "--config", str(workers[0].config)).returncode == 0
    for worker in workers:
        worker.start()
    for worker in workers:

        def subscribed(worker: Worker = worker) -> bool:
            return "subscribed" in worker.new_log()

        wait_for(subscribed, 30, "%s to subscribe" % worker.name)
    return workers


def _drain_and_stop(
    workdir: Path, url: str, workers: list[Worker], sim: Service, gateways: list[Service], devices: list[str]
) -> None:
    """Stop the gateways, wait until every reading they published is in the ledger, stop the workers, check."""
    for gateway in gateways:
        assert gateway.stop() == 0, gateway.log()
    sim.stop()
    last = _last_seqs(workdir, devices)
    total = sum(seq + 1 for seq in last.values())
    wait_for(lambda: _count(url, "SELECT count(*) FROM readings") >= total, 90, "the workers to catch up")
    wait_for(lambda: _count(url, "SELECT count(*) FROM pending") == 0, 30, "the integrator to drain pending")
    for worker in workers:
        assert worker.service.stop() == 0, worker.service.log()
    _check_all_stored_once(workdir, url, workers[0].config, last)


def _fleet(
    workdir: Path, broker: Mosquitto, url: str, workers: list[Worker], devices: list[str]
) -> tuple[Service, list[Service]]:
    port = free_port()
    sim_meters, gw_meters = sunspec_site(port)
    sim = start_sim(workdir, sim_meters, [port], 600)
    gateways = []
    for device in devices:
        gw_config = gateway_config(workdir, device, broker.url, gw_meters)
        pubkey = init_gateway(workdir, gw_config).hex()
        done = run_crev(
            workdir, "ingest", "enroll", "--config", str(workers[0].config), "--device", device, "--pubkey", pubkey
        )
        assert done.returncode == 0, done.stderr
        gateways.append(Service(device, ["gateway", "run", "--config", str(gw_config)], workdir).start())
    return sim, gateways


def _last_seqs(workdir: Path, devices: list[str]) -> dict[str, int]:
    import sqlite3

    last = {}
    for device in devices:
        with sqlite3.connect(workdir / ("%s-outbox.sqlite" % device)) as outbox:
            assert outbox.execute("SELECT count(*) FROM pending").fetchone()[0] == 0, "the broker has every reading"
            raw = outbox.execute("SELECT last_cose FROM chain").fetchone()[0]
            last[device] = Reading.from_cose(bytes(raw)).seq
    return last


def _check_all_stored_once(workdir: Path, url: str, config: Path, last: dict[str, int]) -> None:
    for device, seq in last.items():
        assert _seqs(url, device) == list(range(seq + 1)), "%s: every published reading stored once" % device
    assert _count(url, "SELECT count(*) FROM quarantine") == 0
    assert _count(url, "SELECT count(*) FROM pending") == 0
    assert _count(url, "SELECT count(*) FROM leaves") == _count(url, "SELECT max(idx) + 1 FROM leaves")
    audit = run_crev(workdir, "audit", "ledger", "--config", str(config))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "OK (full):" in audit.stdout


@pytest.mark.slow
def test_the_integrator_killed_10_times_under_5_gateways_loses_nothing(
    tmp_path: Path, broker: Mosquitto, postgres: PostgresServer
) -> None:
    url = postgres.create_database()
    workers = _start_workers(tmp_path, broker, url, 3)
    devices = ["dgc-pg-crash-%04d" % i for i in range(5)]
    sim, gateways = _fleet(tmp_path, broker, url, workers, devices)
    rng = random.Random(14)
    killed: list[str] = []
    for _ in range(10):
        wait_for(lambda: any(w.integrating() for w in workers), 20, "a worker to integrate")
        leader = next(w for w in workers if w.integrating())
        before = _count(url, "SELECT count(*) FROM leaves")
        time.sleep(rng.uniform(1.0, 2.5))
        assert _count(url, "SELECT count(*) FROM leaves") > before, "%s integrates" % leader.name
        leader.service.kill()  # SIGKILL, mid-integration or not
        killed.append(leader.name)
        leader.start()  # the same host comes back, under its client id
    wait_for(lambda: any(w.integrating() for w in workers), 20, "a worker to integrate")
    _drain_and_stop(tmp_path, url, workers, sim, gateways, devices)
    assert len(set(killed)) >= 2, "the integrator moved between workers: %s" % killed


@pytest.mark.slow
def test_postgres_stopped_for_30_s_under_load_loses_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    server = PostgresServer()  # its own server: this test stops it
    server.init()
    server.start()
    try:
        url = server.create_database()
        workers = _start_workers(tmp_path, broker, url, 2)
        devices = ["dgc-pg-down-%04d" % i for i in range(3)]
        sim, gateways = _fleet(tmp_path, broker, url, workers, devices)
        wait_for(lambda: _count(url, "SELECT count(*) FROM readings") > 10, 30, "readings to flow")
        server.stop()
        down_at = time.monotonic()
        time.sleep(30)
        for worker in workers:
            assert worker.service.alive(), worker.service.log()[-2000:]
        assert any("cannot write the store" in w.new_log() for w in workers), workers[0].new_log()[-2000:]
        server.start()
        assert time.monotonic() - down_at >= 30
        _drain_and_stop(tmp_path, url, workers, sim, gateways, devices)
    finally:
        server.destroy()
