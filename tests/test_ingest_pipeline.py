"""gateway -> mosquitto -> ingest, all real processes; then `crev audit ledger`. On both stores."""

import random
import sqlite3
import time
from pathlib import Path

import pytest
from harness import (
    Mosquitto,
    Service,
    free_port,
    gateway_config,
    ingest_config,
    init_gateway,
    load_truth,
    run_crev,
    wait_for,
)
from store_support import location, rows
from test_gateway_pipeline import DAY_SPEED, DEVICE, start_sim, sunspec_site, sunspec_site_with_gateway

from crev.keys import SigningKey
from crev.ledger_format import leaf_data
from crev.reading import Reading


def device_public_key(workdir: Path) -> str:
    """The public key of the gateway key that `crev gateway init` wrote."""
    return SigningKey(bytes.fromhex((workdir / ("%s.key" % DEVICE)).read_text().strip())).public_key.hex()


@pytest.mark.slow
def test_readings_flow_into_the_ledger_exactly_once(tmp_path: Path, broker: Mosquitto, store_url: str | None) -> None:
    config = ingest_config(tmp_path, broker.url, store_url=store_url)
    assert run_crev(tmp_path, "ingest", "init", "--config", str(config)).returncode == 0
    sim, gw_config = sunspec_site_with_gateway(tmp_path, broker, speed=DAY_SPEED)
    pubkey = device_public_key(tmp_path)
    done = run_crev(tmp_path, "ingest", "enroll", "--config", str(config), "--device", DEVICE, "--pubkey", pubkey)
    assert done.returncode == 0, done.stderr
    ingest = Service("ingest", ["ingest", "run", "--config", str(config)], tmp_path).start()
    wait_for(lambda: "subscribed" in ingest.log(), 30, "ingest to subscribe")
    gateway = Service("gateway", ["gateway", "run", "--config", str(gw_config)], tmp_path).start()
    time.sleep(12)
    assert gateway.stop() == 0, gateway.log()
    sim.stop()
    db_path = location(tmp_path, store_url)
    with sqlite3.connect(tmp_path / ("%s-outbox.sqlite" % DEVICE)) as outbox:
        last = outbox.execute("SELECT last_cose FROM chain").fetchone()[0]
    last_seq = Reading.from_cose(bytes(last)).seq
    wait_for(lambda: rows(db_path, "SELECT count(*) FROM readings")[0][0] == last_seq + 1, 20, "ingest to store all")
    time.sleep(1.5)  # one more block interval
    assert ingest.stop() == 0, ingest.log()

    seqs = [row[0] for row in rows(db_path, "SELECT seq FROM readings WHERE dev = '%s' ORDER BY seq" % DEVICE)]
    assert seqs == list(range(last_seq + 1)), "every reading stored exactly once"
    assert rows(db_path, "SELECT count(*) FROM quarantine")[0][0] == 0
    assert rows(db_path, "SELECT count(*) FROM leaves WHERE type = 1")[0][0] == last_seq + 1

    truth = load_truth(tmp_path / "truth.jsonl")
    counters = {
        tuple(r["meters"]["site"]["certified"][k] for k in ("generation", "import", "export")): i
        for i, r in enumerate(truth)
    }
    stored = rows(db_path, "SELECT l.data FROM readings r JOIN leaves l ON l.idx = r.leaf_idx ORDER BY r.seq")
    readings = [Reading.from_cose(leaf_data(bytes(row[0]))) for row in stored]
    first, last_position = (counters[tuple(c[3] for c in r.channels)] for r in (readings[0], readings[-1]))
    series_self = rows(db_path, "SELECT sum(self_mwh), sum(co2_g) FROM series")[0]
    true_self = sum(int(rec["self_wh"]) * 1000 for rec in truth[first + 1 : last_position + 1])
    assert series_self[0] == true_self
    assert abs(float(series_self[1]) - true_self * 423 / 1e6) < 1e-6

    audit = run_crev(tmp_path, "audit", "ledger", "--config", str(config))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "OK (full):" in audit.stdout


@pytest.mark.slow
def test_ingest_killed_10_times_while_5_gateways_publish_loses_nothing(
    tmp_path: Path, broker: Mosquitto, store_url: str | None
) -> None:
    config = ingest_config(tmp_path, broker.url, store_url=store_url)
    assert run_crev(tmp_path, "ingest", "init", "--config", str(config)).returncode == 0
    # Ingest subscribes once before any gateway publishes: from then on its
    # persistent session makes the broker keep readings while it is down.
    args = ["ingest", "run", "--config", str(config)]
    first = Service("ingest", args, tmp_path).start()
    wait_for(lambda: "subscribed" in first.log(), 30, "ingest to subscribe")
    first.kill()
    port = free_port()
    sim_meters, gw_meters = sunspec_site(port)
    sim = start_sim(tmp_path, sim_meters, [port], 600)
    gateways = []
    devices = ["dgc-crash-%04d" % i for i in range(5)]
    for device in devices:
        gw_config = gateway_config(tmp_path, device, broker.url, gw_meters)
        pubkey = init_gateway(tmp_path, gw_config).hex()
        done = run_crev(tmp_path, "ingest", "enroll", "--config", str(config), "--device", device, "--pubkey", pubkey)
        assert done.returncode == 0, done.stderr
        gateways.append(Service(device, ["gateway", "run", "--config", str(gw_config)], tmp_path).start())
    rng = random.Random(10)
    for _ in range(10):
        ingest = Service("ingest", args, tmp_path).start()
        time.sleep(rng.uniform(1.0, 3.0))
        ingest.kill()
    ingest = Service("ingest", args, tmp_path).start()
    time.sleep(2)
    for gateway in gateways:
        assert gateway.stop() == 0, gateway.log()
    sim.stop()
    db_path = location(tmp_path, store_url)
    last_seqs = {}
    for device in devices:
        with sqlite3.connect(tmp_path / ("%s-outbox.sqlite" % device)) as outbox:
            assert outbox.execute("SELECT count(*) FROM pending").fetchone()[0] == 0, "the broker has every reading"
            last_seqs[device] = Reading.from_cose(
                bytes(outbox.execute("SELECT last_cose FROM chain").fetchone()[0])
            ).seq
    total = sum(seq + 1 for seq in last_seqs.values())
    wait_for(lambda: rows(db_path, "SELECT count(*) FROM readings")[0][0] == total, 60, "ingest to catch up")
    time.sleep(1.5)
    assert ingest.stop() == 0, ingest.log()
    for device in devices:
        seqs = [r[0] for r in rows(db_path, "SELECT seq FROM readings WHERE dev = '%s' ORDER BY seq" % device)]
        assert seqs == list(range(last_seqs[device] + 1)), "%s: every published reading stored once" % device
    assert rows(db_path, "SELECT count(*) FROM quarantine")[0][0] == 0
    audit = run_crev(tmp_path, "audit", "ledger", "--config", str(config))
    assert audit.returncode == 0, audit.stdout + audit.stderr
